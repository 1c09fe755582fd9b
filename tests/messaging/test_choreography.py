"""Choreographed sagas on the in-memory broker, on the suite's database (SQLite, or PostgreSQL)."""

from __future__ import annotations

import asyncio
import json

import pytest

from sagakit import DefinitionError, SagaEngine, SagaStatus, choreography, send
from sagakit._messages import Envelope
from sagakit._transport import Delivery
from sagakit.transports.memory import MemoryBroker
from tests.messaging.choreography import (
    OrderCancelled,
    OrderPlaced,
    PaymentCaptured,
    ReleaseStock,
    StockReleased,
    StockReserved,
    cancelled_flow_compensates,
    failure_compensates_in_reverse,
    flow_completes,
    order_flow,
    out_of_order_and_duplicates,
    poll,
    several_trackers_share_the_flows,
    stalled_flow_hits_its_deadline,
)
from tests.messaging.test_message_saga import MakeTransport, broker, saga_for, transports

__all__ = ["broker", "transports"]


async def test_flow_completes(store_url: str, transports: MakeTransport) -> None:
    await flow_completes(store_url, transports)


async def test_failure_compensates_in_reverse(store_url: str, transports: MakeTransport) -> None:
    await failure_compensates_in_reverse(store_url, transports)


async def test_out_of_order_and_duplicates(store_url: str, transports: MakeTransport) -> None:
    await out_of_order_and_duplicates(store_url, transports)


async def test_stalled_flow_hits_its_deadline(store_url: str, transports: MakeTransport) -> None:
    await stalled_flow_hits_its_deadline(store_url, transports)


async def test_cancelled_flow_compensates(store_url: str, transports: MakeTransport) -> None:
    await cancelled_flow_compensates(store_url, transports)


async def test_several_trackers_share_the_flows(store_url: str, transports: MakeTransport) -> None:
    await several_trackers_share_the_flows(store_url, transports)


async def test_nothing_is_sent_on_the_way_forward(
    store_url: str, broker: MemoryBroker, transports: MakeTransport
) -> None:
    await flow_completes(store_url, transports)
    sent = {m.destination for m in broker.published}
    assert "shop.ReleaseStock" not in sent and "shop.RefundPayment" not in sent
    assert {"shop.OrderPlaced", "shop.StockReserved", "shop.PaymentCaptured", "shop.OrderShipped"} <= sent


async def test_a_stage_event_with_no_correlation_is_dead_lettered(store_url: str, transports: MakeTransport) -> None:
    flow = (
        choreography("strict")
        .starts_on(OrderPlaced, correlate=lambda e: e.address if e.address != "none" else None)
        .then(StockReserved)
        .build()
    )
    engine = SagaEngine(store_url, transport=transports())
    engine.register(flow)
    async with engine:
        await engine.publish(OrderPlaced(order_id="o-9", amount=1, address="none"))
        for _ in range(500):
            letters = await engine.dead_letters()
            if letters:
                break
            await asyncio.sleep(0.02)
        assert await engine.list(name="strict") == []
    [letter] = letters
    assert "choreography strict" in letter.reason and "non-empty" in letter.reason


async def test_before_start_refuse_dead_letters_an_event_of_a_flow_not_started(
    store_url: str, transports: MakeTransport
) -> None:
    flow = (
        choreography("strict_start", before_start="refuse")
        .starts_on(OrderPlaced, correlate=lambda e: e.order_id)
        .then(StockReserved)
        .then(PaymentCaptured)
        .build()
    )
    engine = SagaEngine(store_url, transport=transports())
    engine.register(flow)
    async with engine:
        await engine.publish(StockReserved(order_id="o-7", amount=1, address="a", reservation="r"))
        letters = await poll(engine.dead_letters, 10, "the early event is dead-lettered")
        assert await engine.list(name="strict_start") == []
        await engine.publish(OrderPlaced(order_id="o-7", amount=1))

        async def started() -> bool:
            return bool(await engine.list(name="strict_start", correlation_id="o-7"))

        await poll(started, 10, "the start event opens the saga")
        await engine.publish(StockReserved(order_id="o-7", amount=1, address="a", reservation="r"))

        async def waits_for_payment() -> bool:
            found = await engine.list(name="strict_start", correlation_id="o-7")
            return bool(found) and found[0].steps["PaymentCaptured"].status.value == "running"

        await poll(waits_for_payment, 10, "the started flow takes its events")
    [letter] = letters
    assert "no flow 'o-7' has started" in letter.reason


async def test_a_compensation_answered_without_headers_is_matched_by_the_business_key(
    store_url: str, transports: MakeTransport
) -> None:
    """A service that is no sagakit participant answers the compensating command with a plain event."""
    engine = SagaEngine(store_url, transport=transports())
    engine.register(order_flow())
    stock = transports()
    await stock.start()

    async def on_release(d: Delivery) -> None:
        cmd = Envelope.from_bytes(d.body).unwrap(ReleaseStock)
        await engine.publish(StockReleased(order_id=cmd.order_id))  # a new message: no saga headers

    try:
        async with engine:
            await stock.subscribe(["shop.ReleaseStock"], "legacy-stock", on_release)
            await engine.publish(OrderPlaced(order_id="o-8", amount=1))
            await engine.publish(StockReserved(order_id="o-8", amount=1, address="a", reservation="r-8"))

            async def waits_for_payment() -> bool:
                found = await engine.list(correlation_id="o-8")
                return bool(found) and found[0].steps["PaymentCaptured"].status.value == "running"

            await poll(waits_for_payment, 10, "the flow waits for the payment")
            await engine.publish(OrderCancelled(order_id="o-8"))
            snap = await saga_for(engine, "o-8")
            letters = await engine.dead_letters()
    finally:
        await stock.close()
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["StockReserved"].status.value == "compensated"
    assert letters == []


def test_bad_declarations_are_refused_with_the_reason() -> None:
    with pytest.raises(DefinitionError, match="before_start must be 'keep' or 'refuse'"):
        choreography("x", before_start="drop")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="has no stages"):
        choreography("empty").build()
    with pytest.raises(DefinitionError, match="before starts_on"):
        choreography("x").then(StockReserved)
    with pytest.raises(DefinitionError, match="starts_on\\(\\) must come first"):
        choreography("x").starts_on(OrderPlaced, correlate=lambda e: e.order_id).starts_on(
            OrderPlaced, correlate=lambda e: e.order_id
        )
    with pytest.raises(DefinitionError, match="correlate must accept one argument"):
        choreography("x").starts_on(OrderPlaced, correlate=lambda: "x")
    with pytest.raises(DefinitionError, match="is both the event of stage 'StockReserved' and a failure"):
        (
            choreography("x")
            .starts_on(OrderPlaced, correlate=lambda e: e.order_id)
            .then(StockReserved)
            .then(PaymentCaptured, failure=StockReserved)
            .build()
        )
    with pytest.raises(DefinitionError, match="compensate must be a pydantic model or dataclass"):
        choreography("x").starts_on(OrderPlaced, correlate=lambda e: e.order_id, compensate=int)
    with pytest.raises(DefinitionError, match="depends on unknown step 'Stock'"):
        (
            choreography("x")
            .starts_on(OrderPlaced, correlate=lambda e: e.order_id)
            .then(StockReserved, after="Stock", compensate=send(ReleaseStock, success=StockReleased))
            .build()
        )


def test_the_definition_is_an_ordinary_one() -> None:
    d = order_flow()
    assert [s.name for s in d.steps] == ["OrderPlaced", "StockReserved", "PaymentCaptured", "OrderShipped"]
    assert all(not s.local for s in d.steps) and d.choreography is not None
    assert d.steps[1].after == ("OrderPlaced",)
    assert SagaStatus.COMPLETED.terminal


async def test_the_cli_shows_a_choreographed_saga(store_url: str, transports: MakeTransport) -> None:
    from click.testing import CliRunner

    from sagakit.cli._main import cli

    await flow_completes(store_url, transports)
    runner = CliRunner()
    listed = await asyncio.to_thread(runner.invoke, cli, ["list", "--store", store_url, "--json"])
    assert listed.exit_code == 0, listed.output
    [saga] = json.loads(listed.output)
    assert saga["choreographed"] is True and saga["status"] == "completed"
    shown = await asyncio.to_thread(runner.invoke, cli, ["show", saga["id"], "--store", store_url])
    assert shown.exit_code == 0, shown.output
    assert "order_flow v1 (choreographed)" in shown.output
    assert "observed" in shown.output
