"""Choreographed sagas in the dashboard, in a real headless Chromium.

The store is seeded by a shop whose services react to each other's events
while an engine observes them: one order goes through, one is declined and
compensated, and one flow's events arrive in reverse order. The list marks
the sagas as choreographed; a saga's page shows the marker, the stages'
timeline and the observed events with what each did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaEngine, SagaStatus
from sagakit.admin import Operations, create_app
from sagakit.transports.memory import MemoryBroker, MemoryTransport
from tests.messaging.choreography import (
    OrderPlaced,
    OrderShipped,
    PaymentCaptured,
    Shop,
    StockReserved,
    order_flow,
)
from tests.messaging.test_message_saga import saga_for

from .conftest import TOKEN, ServedApp
from .test_dashboard_browser import open_page, shot


async def seed(url: str) -> dict[str, str]:
    transports = partial(MemoryTransport, MemoryBroker())
    engine = SagaEngine(url, transport=transports())
    engine.register(order_flow())
    async with Shop(transports), engine:
        await engine.publish(OrderPlaced(order_id="ok-1", amount=40))
        await engine.publish(OrderPlaced(order_id="declined-1", amount=400))
        ok = await saga_for(engine, "ok-1", timeout=20)
        declined = await saga_for(engine, "declined-1", timeout=20)
    # No services this time: the events come in reverse order, as the test publishes them.
    engine = SagaEngine(url, transport=transports())
    engine.register(order_flow())
    async with engine:
        await engine.publish(OrderShipped(order_id="late-1", tracking="t"))
        await engine.publish(PaymentCaptured(order_id="late-1", address="a", payment_id="p"))
        await engine.publish(StockReserved(order_id="late-1", amount=1, address="a", reservation="r"))
        for _ in range(1000):  # all three kept for their turn before the start event comes
            found = await engine.list(correlation_id="late-1")
            history = (await engine.get(found[0].id)).history if found else ()
            if sum(h.kind == "observed_early" for h in history) == 3:
                break
            await asyncio.sleep(0.02)
        await engine.publish(OrderPlaced(order_id="late-1", amount=1))
        reordered = await saga_for(engine, "late-1", timeout=20)
    assert ok.status is SagaStatus.COMPLETED and declined.status is SagaStatus.COMPENSATED
    assert reordered.status is SagaStatus.COMPLETED
    return {"ok": ok.id, "declined": declined.id, "reordered": reordered.id}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    url = f"sqlite:///{tmp_path}/sagas.db"
    ids = asyncio.run(seed(url))
    ops = Operations.for_store(url, [order_flow()])
    with ServedApp(create_app(ops, token=TOKEN)) as app:
        yield app.url, ids


@pytest.fixture
def page(served: tuple[str, dict[str, str]]) -> Iterator[Any]:
    with open_page() as pg:
        yield pg


def test_choreographed_sagas_show_their_observed_events(page: Any, served: tuple[str, dict[str, str]]) -> None:
    from playwright.sync_api import expect

    base, ids = served
    page.goto(f"{base}/#/sagas")
    rows = page.locator("#results tr.saga-row")
    expect(rows).to_have_count(3)
    for i in range(3):
        expect(rows.nth(i).locator(".badge.choreo")).to_have_text("choreographed")
    shot(page, "choreography-1-list")

    # The completed flow: the marker, a stage per event on the timeline, and the events as observed.
    page.locator(f"tr.saga-row[data-id='{ids['ok']}'] a.saga-link").click()
    expect(page.locator("#saga-status")).to_have_attribute("data-status", "completed")
    expect(page.locator("#saga-choreographed")).to_have_text("choreographed")
    stages = ["OrderPlaced", "StockReserved", "PaymentCaptured", "OrderShipped"]
    for stage in stages:
        expect(page.locator(f"#timeline-attempts tr.attempt[data-step='{stage}']")).to_have_attribute(
            "data-outcome", "completed"
        )
    expect(page.locator("#timeline-attempts tr.attempt[data-step='OrderShipped'] td").nth(1)).to_have_text("stage")
    observed = page.locator("#observed-events tr.observed")
    expect(observed).to_have_count(4)
    assert sorted(r.get_attribute("data-stage") for r in observed.all()) == sorted(stages)
    expect(page.locator("#graph-svg g.node")).to_have_count(4)
    shot(page, "choreography-2-completed")

    # The declined order: the failure event observed, the stock released by a compensating command.
    page.goto(f"{base}/#/saga/{ids['declined']}")
    expect(page.locator("#saga-status")).to_have_attribute("data-status", "compensated")
    expect(page.locator("#observed-events tr.observed[data-stage='PaymentCaptured']")).to_contain_text(
        "PaymentDeclined"
    )
    expect(
        page.locator("#timeline-attempts tr.attempt[data-step='StockReserved']").filter(has_text="compensation")
    ).to_have_attribute("data-outcome", "completed")
    shot(page, "choreography-3-compensated")

    # The flow whose events came in reverse order: kept for their turn, then applied in the flow's order.
    page.goto(f"{base}/#/saga/{ids['reordered']}")
    expect(page.locator("#saga-status")).to_have_attribute("data-status", "completed")
    expect(page.locator("#observed-events tr.observed[data-kind='observed_early']")).to_have_count(3)
    expect(page.locator("#observed-events tr.observed[data-kind='observed']")).to_have_count(4)
    expect(page.locator("#observed-events")).to_contain_text("kept for its turn")
    shot(page, "choreography-4-reordered")

    # The definitions page marks the flow's definition.
    page.click("#nav-definitions")
    expect(page.locator("section.definition[data-definition='order_flow:1'] .badge.choreo")).to_have_text(
        "choreographed"
    )
    assert page.problems == []
