"""The dashboard shows resource limits: in use, waiting, and a step waiting for a permit (headless Chromium)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sagakit import Resource, SagaBuilder, SagaEngine, StepContext
from sagakit.admin import Operations, create_app

from .conftest import TOKEN, ServedApp
from .test_dashboard_browser import page, shot

__all__ = ["page", "served"]  # the fixtures this module uses

GATE = threading.Event()


def charge(ctx: StepContext) -> str:
    GATE.wait(30)  # the payment provider answers when the test says so
    return "charged"


def definition() -> Any:
    b = SagaBuilder("pay")
    b.step("reserve", lambda ctx: "reserved")
    b.step("charge", charge, resource="payments")
    return b.build()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    url = f"sqlite:///{tmp_path}/sagas.db"

    async def seed() -> list[str]:
        api = SagaEngine(url)  # stores the sagas; the served engine runs them
        api.register(definition())
        try:
            return [await api.start("pay", {"order": f"o-{i}"}) for i in range(3)]
        finally:
            await api.close()

    ids = asyncio.run(seed())
    GATE.clear()
    engine = SagaEngine(url, resources=[Resource("payments", concurrency=1)])
    engine.register(definition())
    try:
        with ServedApp(create_app(Operations(engine, owns_engine=True), token=TOKEN, run_engine=True)) as app:
            yield app.url, ids
    finally:
        GATE.set()


def waiting_saga(base: str, ids: list[str]) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for sid in ids:
            steps = httpx.get(f"{base}/api/sagas/{sid}").json()["steps"]
            if steps["charge"]["waiting_for"] == "payments":
                return sid
        time.sleep(0.05)
    raise AssertionError("no saga came to wait for a permit of 'payments'")


def test_resources_in_use_and_waiting_and_a_saga_waiting_for_a_permit(page: Any, served: tuple[str, list[str]]) -> None:
    from playwright.sync_api import expect

    base, ids = served
    page.goto(f"{base}/#/")
    row = page.locator("#resources-table tr.resource[data-resource=payments]")
    expect(row.locator("td.in-use")).to_have_text("1")
    expect(row.locator("td.waiting")).to_have_text("2")
    expect(row).to_contain_text("1 at once")
    shot(page, "resources")

    sid = waiting_saga(base, ids)
    page.goto(f"{base}/#/saga/{sid}")
    wait = page.locator("#resource-waits .resource-wait[data-step=charge]")
    expect(wait).to_have_attribute("data-resource", "payments")
    expect(wait).to_contain_text("waiting for resource payments")
    expect(page.locator("#step-results")).to_contain_text("running (waiting for payments)")
    expect(page.locator("#events")).to_contain_text("resource_waiting")
    shot(page, "resource-wait")

    GATE.set()  # the provider answers: the permits go round, every saga completes
    expect(page.locator("#saga-status")).to_have_text("completed")
    expect(wait).to_have_count(0)
    page.goto(f"{base}/#/")
    expect(row.locator("td.in-use")).to_have_text("0")
    expect(row.locator("td.waiting")).to_have_text("0")
    assert page.problems == []
