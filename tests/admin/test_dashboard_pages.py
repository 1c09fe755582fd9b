"""The dashboard's other pages in a real headless Chromium: under a prefix, workers, definitions, bulk actions.

The prefix test runs the FastAPI recipe of docs/operations.md as written: its
code block becomes the application's ``main.py``, served by uvicorn, and the
dashboard is used at ``/sagas/``. Screenshots go to ``test-output/dashboard/``.

Chromium missing: skipped locally, failed under CI (``require_service``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sagakit import SagaBuilder, SagaEngine, StepContext
from sagakit.admin import Operations, create_app
from tests.conftest import require_service

from . import sample_app
from .conftest import TOKEN, Seed, ServedApp, seed_sync
from .test_dashboard_browser import open_page, shot

ROOT = Path(__file__).resolve().parents[2]
ISO = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$")

# A saga whose one step runs until the test lets it finish: its worker holds the lease meanwhile.
RELEASE = threading.Event()


async def hold(ctx: StepContext) -> dict[str, bool]:
    while not RELEASE.is_set():
        await asyncio.sleep(0.05)
    return {"held": True}


def _slow() -> Any:
    b = SagaBuilder("slow", version=3)
    b.step("hold", hold)
    return b.build()


slow = _slow()


def browser() -> Any:
    return open_page()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Seed]]:
    url = f"sqlite:///{tmp_path}/sagas.db"
    seed = seed_sync(url)
    RELEASE.clear()
    ops = Operations.for_store(url, [sample_app.order, slow])
    with ServedApp(create_app(ops, token=TOKEN, run_engine=True)) as app:
        try:
            yield app.url, seed
        finally:
            RELEASE.set()  # before the server stops: a held step finishes instead of being waited for


def recipe() -> str:
    """The FastAPI recipe of docs/operations.md."""
    text = (ROOT / "docs" / "operations.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if 'app.mount("/sagas"' in b]
    assert len(blocks) == 1, "docs/operations.md has no (or several) FastAPI recipe"
    return blocks[0]


def test_the_docs_fastapi_recipe_serves_the_dashboard_under_a_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        import fastapi  # noqa: F401
    except ImportError:
        require_service("fastapi is not installed (pip install -e '.[all]' --group dev)")
    # The application as the recipe has it: main.py, and myapp/sagas.py with the definitions.
    (tmp_path / "main.py").write_text(recipe())
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "sagas.py").write_text("from tests.admin.sample_app import order\n")
    url = f"sqlite:///{tmp_path}/sagas.db"
    seed = seed_sync(url)
    monkeypatch.setenv("SAGAKIT_STORE", url)
    monkeypatch.setenv("SAGAKIT_TOKEN", TOKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "myapp", raising=False)
    monkeypatch.delitem(sys.modules, "myapp.sagas", raising=False)
    spec = importlib.util.spec_from_file_location("recipe_main", tmp_path / "main.py")
    assert spec is not None and spec.loader is not None
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)

    with ServedApp(main.app) as served, browser() as page:
        from playwright.sync_api import expect

        base = served.url
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        # /sagas is redirected to /sagas/, whose relative URLs stay under the prefix.
        page.goto(f"{base}/sagas")
        assert page.url == f"{base}/sagas/"
        expect(page.locator("[data-count=failed] .n")).to_have_text("2")
        # The application's lifespan runs the engine: the pending saga completes, and a new one too.
        expect(page.locator("[data-count=pending] .n")).to_have_text("0")
        r = httpx.post(f"{base}/orders/o-42", timeout=10)
        assert r.status_code == 200, r.text
        new_id = r.json()["saga_id"]
        shot(page, "prefix-1-overview")

        page.click("#nav-sagas")
        page.fill("#filter-correlation_id", "o-42")
        page.click("#search-button")
        row = page.locator("#results tr.saga-row")
        expect(row).to_have_count(1)
        expect(row).to_have_attribute("data-id", new_id)
        expect(row).to_have_attribute("data-status", "completed")
        row.locator("a.saga-link").click()
        assert page.url == f"{base}/sagas/#/saga/{new_id}"
        expect(page.locator("#saga-status")).to_have_attribute("data-status", "completed")
        expect(page.locator("#graph-svg g.node")).to_have_count(4)

        # An action through the mounted API: retry a failed saga with the token.
        failed = seed.failed[0]
        page.goto(f"{base}/sagas/#/saga/{failed}")
        expect(page.locator("#saga-status")).to_have_attribute("data-status", "failed")
        page.click("#action-retry")
        page.fill("#dialog-token", TOKEN)
        page.fill("#dialog-reason", "carrier is back")
        page.click("#dialog-confirm")
        expect(page.locator("#flash")).to_contain_text("retry: ok")
        expect(page.locator("#saga-status")).to_have_attribute("data-status", "completed")
        shot(page, "prefix-2-saga")

        assert requests, "the page made no request"
        outside = [u for u in requests if not u.startswith(f"{base}/sagas")]
        assert outside == [], f"requests outside the prefix: {outside}"
        assert page.problems == []

        # The API's headers hold under the prefix too.
        r = httpx.get(f"{base}/sagas/api/info", timeout=10)
        assert r.status_code == 200
        assert r.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_workers_page_shows_alive_workers_their_leases_and_heartbeat(served: tuple[str, Seed]) -> None:
    base, seed = served
    saga_id = _start_slow(base, seed.url)
    with browser() as page:
        from playwright.sync_api import expect

        page.goto(f"{base}/#/workers")
        expect(page.locator("#nav-workers")).to_have_class(re.compile("active"))
        workers = page.locator("#workers-table tr.worker")
        expect(workers).to_have_count(1)
        worker = workers.nth(0)
        expect(worker).to_contain_text("order v1")
        expect(worker).to_contain_text("slow v3")
        beat = worker.locator("time.heartbeat")
        expect(beat).to_have_text(re.compile(r"^(now|\d+ s ago)$"))
        assert ISO.match(beat.get_attribute("title") or ""), beat.get_attribute("title")
        expect(worker.locator(".lease-count")).to_have_text("1")
        worker.locator("td.leases-cell summary").click()
        lease = worker.locator(f"tr.lease[data-saga='{saga_id}']")
        expect(lease).to_be_visible()
        expect(lease).to_contain_text("slow v3")
        expect(lease.locator("time")).to_have_text(re.compile(r"^in \d+ s$"))
        shot(page, "workers")

        # Once the step finishes the lease is released.
        RELEASE.set()
        expect(worker.locator(".lease-count")).to_have_text("0", timeout=20_000)
        assert page.problems == []


def test_definitions_page_shows_versions_graph_and_counts(served: tuple[str, Seed]) -> None:
    base, seed = served
    with browser() as page:
        from playwright.sync_api import expect

        page.goto(f"{base}/#/definitions")
        order = page.locator("section.definition[data-definition='order:1']")
        expect(order).to_be_visible()
        expect(page.locator("section.definition[data-definition='slow:3']")).to_be_visible()
        expect(order).to_contain_text("registered here")
        expect(order).to_contain_text("4 step(s)")
        expect(order.locator("[data-count=failed] .n")).to_have_text("2")
        expect(order.locator("[data-count=compensated] .n")).to_have_text("1")
        expect(order.locator("[data-count=all] .n")).to_have_text(str(len(seed.all)))
        nodes = order.locator("svg.graph g.node")
        expect(nodes).to_have_count(4)
        assert {n.get_attribute("data-step") for n in nodes.all()} == {"reserve", "check_fraud", "charge", "ship"}
        expect(order.locator("svg.graph path.edge")).to_have_count(3)
        expect(order.locator("svg.graph g.node.pivot")).to_have_count(1)
        shot(page, "definitions")

        # A count opens the list filtered to the definition and the status.
        order.locator("[data-count=failed]").click()
        rows = page.locator("#results tr.saga-row")
        expect(rows).to_have_count(2)
        assert {rows.nth(i).get_attribute("data-id") for i in range(2)} == set(seed.failed)
        assert "name=order" in page.url and "version=1" in page.url and "status=failed" in page.url
        assert page.problems == []


def test_bulk_actions_on_selected_rows_with_relative_times(served: tuple[str, Seed]) -> None:
    base, seed = served
    with browser() as page:
        from playwright.sync_api import expect

        page.goto(f"{base}/#/sagas")
        rows = page.locator("#results tr.saga-row")
        expect(rows).to_have_count(len(seed.all))
        # Whole ids: rows started in the same millisecond are told apart.
        for i in range(len(seed.all)):
            link = rows.nth(i).locator("a.saga-link")
            assert link.text_content() == rows.nth(i).get_attribute("data-id")
        # Relative times, the absolute one on hover.
        created = rows.nth(0).locator("time.created")
        expect(created).to_have_text(re.compile(r"^(now|\d+ s ago|\d+ min ago)$"))
        assert ISO.match(created.get_attribute("title") or "")
        expect(page.locator("#bulk-retry")).to_be_disabled()

        # Select the failed sagas and one completed saga; retry the selection.
        for saga_id in [*seed.failed, seed.completed[0]]:
            page.check(f"tr.saga-row[data-id='{saga_id}'] input.select-row")
        expect(page.locator("#bulk-count")).to_have_text("3 selected")
        page.wait_for_timeout(2500)  # a refresh of the list keeps the selection
        expect(page.locator("#bulk-count")).to_have_text("3 selected")
        expect(page.locator("input.select-row:checked")).to_have_count(3)
        shot(page, "bulk-1-selected")
        page.click("#bulk-retry")
        expect(page.locator("#confirm-dialog")).to_be_visible()
        expect(page.locator("#dialog-title")).to_have_text("retry 3 saga(s)?")
        expect(page.locator("#dialog-text")).to_contain_text("This retries each selected saga (")
        for saga_id in [*seed.failed, seed.completed[0]]:
            expect(page.locator("#dialog-text")).to_contain_text(saga_id)
        page.fill("#dialog-token", TOKEN)
        page.fill("#dialog-reason", "carrier is back")
        page.fill("#dialog-actor", "bulk-operator")
        shot(page, "bulk-2-confirm")
        page.click("#dialog-confirm")
        # The failed ones are retried; the completed one is refused by the state machine, and said so.
        expect(page.locator("#flash")).to_contain_text("retry: 2 ok, 1 rejected")
        expect(page.locator("#flash")).to_contain_text(seed.completed[0])
        for saga_id in seed.failed:
            expect(page.locator(f"tr.saga-row[data-id='{saga_id}']")).to_have_attribute("data-status", "completed")
        expect(page.locator("input.select-row:checked")).to_have_count(0)  # done: the selection is cleared
        shot(page, "bulk-3-done")

        # The history of each retried saga names the operator and the reason.
        r = httpx.get(f"{base}/api/sagas/{seed.failed[1]}/timeline", timeout=10)
        assert [(a["action"], a["actor"], a["reason"]) for a in r.json()["admin_actions"]] == [
            ("retry", "bulk-operator", "carrier is back")
        ]

        # Select all on the page, then cancel: nothing is done.
        page.check("#select-all")
        expect(page.locator("#bulk-count")).to_have_text(f"{len(seed.all)} selected")
        page.click("#bulk-abort")
        page.click("#dialog-cancel")
        page.click("#bulk-clear")
        expect(page.locator("input.select-row:checked")).to_have_count(0)
        r = httpx.get(f"{base}/api/counts", timeout=10)
        assert r.json()["counts"]["aborted"] == 0
        assert page.problems == []


def _start_slow(base: str, url: str) -> str:
    """Start a saga of ``slow`` on the served store; wait until the served worker holds its lease."""

    async def start() -> str:
        engine = SagaEngine(url)  # not running: the served engine's worker claims the saga
        engine.register(slow)
        try:
            return await engine.start("slow", {})
        finally:
            await engine.close()

    saga_id = asyncio.run(start())
    deadline = time.monotonic() + 20
    while True:
        workers = httpx.get(f"{base}/api/workers", timeout=10).json()["workers"]
        if any(x["saga_id"] == saga_id for w in workers for x in w["leases"]):
            return saga_id
        assert time.monotonic() < deadline, f"no worker took saga {saga_id}: {workers}"
        time.sleep(0.1)
