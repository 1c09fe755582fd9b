"""The dashboard's saga page shows the items of a for-each step (real headless Chromium).

A saga whose for-each step had one item fail for good is rolled back: the
page lists every item with its status, attempts, compensation attempts and
error, secrets masked. A completed saga's items are all completed, one of
them after a retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import NonRetryableError, RetryPolicy, SagaBuilder, SagaEngine, StepContext
from sagakit.admin import Operations, create_app

from .conftest import TOKEN, ServedApp
from .test_dashboard_browser import page, shot

__all__ = ["page"]  # the fixture this module uses


def reserve(line: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    if line["sku"] == "plum":
        raise NonRetryableError("out of stock: password=hunter2")
    if line["sku"] == "pear" and ctx.attempt == 1:
        raise ConnectionError("warehouse busy")
    return {"sku": line["sku"], "secret": "hunter2"}


def release(line: dict[str, Any], ctx: StepContext) -> None:
    return None


def _definition() -> Any:
    b = SagaBuilder("lines")
    b.for_each(
        "reserve",
        items=lambda data, results: data["lines"],
        action=reserve,
        compensation=release,
        key=lambda line: line["sku"],
        parallelism=1,
        retry=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0),
    )
    return b.build()


LINES = _definition()


async def _seed(url: str) -> tuple[str, str]:
    async with SagaEngine(url, poll_interval=0.05) as engine:
        engine.register(LINES)
        ok = await engine.start("lines", {"lines": [{"sku": "apple"}, {"sku": "pear"}]})
        bad = await engine.start(
            "lines", {"lines": [{"sku": "apple"}, {"sku": "kiwi"}, {"sku": "plum"}, {"sku": "fig"}]}
        )
        await engine.wait(ok, timeout=20)
        await engine.wait(bad, timeout=20)
    return ok, bad


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, tuple[str, str]]]:
    url = f"sqlite:///{tmp_path}/sagas.db"
    ids = asyncio.run(_seed(url))
    ops = Operations.for_store(url, [LINES])
    with ServedApp(create_app(ops, token=TOKEN)) as app:
        yield app.url, ids


def test_the_saga_page_lists_the_items_of_a_for_each_step(page: Any, served: tuple[str, tuple[str, str]]) -> None:
    from playwright.sync_api import expect

    base, (ok, bad) = served
    page.goto(f"{base}/#/saga/{bad}")
    expect(page.locator("#saga-status")).to_have_attribute("data-status", "compensated")
    rows = page.locator("#items-reserve tr.item")
    expect(rows).to_have_count(4)
    statuses = [r.get_attribute("data-status") for r in rows.all()]
    assert statuses == ["compensated", "compensated", "failed", "pending"]
    apple, kiwi, plum, fig = (rows.nth(i) for i in range(4))
    expect(apple.locator("td").nth(1)).to_have_text("apple")
    expect(kiwi.locator("td").nth(4)).to_have_text("1")  # attempts
    expect(kiwi.locator("td").nth(5)).to_have_text("1")  # compensation attempts
    expect(plum.locator("td.error")).to_have_text("NonRetryableError: out of stock: password=***")
    expect(fig.locator("td").nth(4)).to_have_text("0")  # never started
    expect(page.locator("#graph-svg g.node[data-step=reserve]")).to_contain_text("for-each")
    section = page.locator("section.for-each[data-step=reserve]")
    expect(section).to_contain_text("2 compensated, 1 failed, 1 pending")
    assert "hunter2" not in page.content()
    shot(page, "for-each-items")

    page.goto(f"{base}/#/saga/{ok}")
    expect(page.locator("#saga-status")).to_have_attribute("data-status", "completed")
    rows = page.locator("#items-reserve tr.item")
    expect(rows).to_have_count(2)
    assert [r.get_attribute("data-status") for r in rows.all()] == ["completed", "completed"]
    expect(rows.nth(1).locator("td").nth(4)).to_have_text("2")  # pear failed once, then completed
    assert page.problems == []
