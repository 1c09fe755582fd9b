"""User hooks that raise fail the step (or dead-letter the event) with the error: no saga is left hanging.

On the store of SAGAKIT_TEST_DB (SQLite, or PostgreSQL): the error and its
traceback are in the saga's history as the store keeps it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from sagakit import RetryPolicy, SagaBuilder, SagaEngine, SagaStatus, StepContext, StepStatus
from sagakit._messages import message_type_name, send, wait_for
from sagakit.participant import Participant
from sagakit.transports.memory import MemoryBroker, MemoryTransport

ONCE = RetryPolicy(max_attempts=1)


class Reserve(BaseModel):
    order_id: str


class Reserved(BaseModel):
    order_id: str
    quantity: int


class Approval(BaseModel):
    order_id: str


class Done(BaseModel):
    saga_id: str
    missing_field: str


class State(BaseModel):
    order_id: str
    quantity: int = 0


undone: list[str] = []


async def undo(ctx: StepContext) -> None:
    undone.append(ctx.saga_id)


async def run(store_url: str, defn: Any, data: dict[str, Any]) -> Any:
    broker = MemoryBroker()
    stock = Participant(MemoryTransport(broker), name="stock")

    @stock.handles(Reserve)
    def reserve(cmd: Reserve) -> Reserved:
        return Reserved(order_id=cmd.order_id, quantity=-1 if cmd.order_id == "neg" else 3)

    async with stock, SagaEngine(store_url, transport=MemoryTransport(broker)) as engine:
        engine.register(defn)
        sid = await engine.start(defn.name, data)
        return await engine.wait(sid, timeout=20)


def failed_message(snap: Any, step: str) -> str:
    return next(h.message for h in snap.history if h.kind == "step_failed" and h.step == step)


def failed_traceback(snap: Any, step: str) -> str:
    tb = next(h.traceback for h in snap.history if h.kind == "step_failed" and h.step == step)
    assert tb, f"no traceback recorded for the failure of {step!r}"
    return str(tb)


async def test_a_command_builder_that_raises_fails_the_step(store_url: str) -> None:
    b = SagaBuilder("builder_raises")
    b.step("prepare", lambda ctx: None, undo)
    b.step("reserve", send(Reserve, success=Reserved, to_command=lambda s: Reserve(order_id=s["no_such_key"])))
    snap = await run(store_url, b.build(), {"order_id": "o1"})
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["reserve"].status is StepStatus.FAILED
    assert "to_command raised KeyError: 'no_such_key'" in failed_message(snap, "reserve")
    tb = failed_traceback(snap, "reserve")
    assert "in <lambda>" in tb and "KeyError: 'no_such_key'" in tb
    assert snap.id in undone


async def test_a_merge_hook_that_raises_fails_the_step(store_url: str) -> None:
    def merge(state: Any, event: Reserved) -> Any:
        raise ValueError("stock system sent nonsense")

    b = SagaBuilder("merge_raises")
    b.step("reserve", send(Reserve, success=Reserved, merge=merge), retry=ONCE)
    snap = await run(store_url, b.build(), {"order_id": "o1"})
    assert snap.status is SagaStatus.COMPENSATED
    assert "stock system sent nonsense" in failed_message(snap, "reserve")
    assert "in merge" in failed_traceback(snap, "reserve")


async def test_a_reply_the_state_model_refuses_fails_the_step(store_url: str) -> None:
    class Strict(BaseModel):
        order_id: str
        quantity: int = 0

        def model_post_init(self, _: Any) -> None:
            if self.quantity < 0:
                raise ValueError("quantity must not be negative")

    b = SagaBuilder("model_refuses")
    b.state(Strict)
    b.step("reserve", send(Reserve, success=Reserved), retry=ONCE)
    snap = await run(store_url, b.build(), {"order_id": "neg"})
    assert snap.status is SagaStatus.COMPENSATED
    assert "quantity must not be negative" in failed_message(snap, "reserve")
    assert "quantity must not be negative" in failed_traceback(snap, "reserve")


async def test_invalid_data_from_update_data_fails_the_step_and_it_is_compensated(store_url: str) -> None:
    async def count(ctx: StepContext) -> None:
        ctx.update_data(quantity="many")

    b = SagaBuilder("update_invalid")
    b.state(State)
    b.step("count", count, undo, retry=ONCE)
    snap = await run(store_url, b.build(), {"order_id": "o1"})
    assert snap.status is SagaStatus.COMPENSATED
    assert "ctx.update_data: the new saga data is invalid" in failed_message(snap, "count")
    assert "quantity" in failed_traceback(snap, "count")
    assert "quantity" in failed_message(snap, "count")
    assert snap.steps["count"].status is StepStatus.COMPENSATED  # it ran: its effect is undone


async def test_an_outcome_event_that_cannot_be_built_is_recorded_and_the_saga_still_finishes(store_url: str) -> None:
    b = SagaBuilder("outcome_unbuildable")
    b.step("a", lambda ctx: None)
    b.on_completed(Done)
    snap = await run(store_url, b.build(), {})
    assert snap.status is SagaStatus.COMPLETED
    [entry] = [h for h in snap.history if h.kind == "event_failed"]
    assert "missing_field" in entry.message


async def test_a_correlation_hook_that_raises_dead_letters_the_event_with_its_error(store_url: str) -> None:
    def broken(e: Approval) -> str:
        raise RuntimeError("lookup table missing")

    b = SagaBuilder("correlation_raises")
    b.step("approve", wait_for(Approval, correlation=broken))
    broker = MemoryBroker()
    async with SagaEngine(store_url, transport=MemoryTransport(broker)) as engine:
        engine.register(b.build())
        sid = await engine.start("correlation_raises", {}, correlation_id="o1")
        await engine._messaging.ready()
        await engine.publish(Approval(order_id="o1"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not await engine.dead_letters() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        [letter] = await engine.dead_letters()
        snap = await engine.get(sid)
    assert letter.type_name == message_type_name(Approval)
    assert "correlation extractor raised RuntimeError: lookup table missing" in letter.reason
    assert snap.status is SagaStatus.RUNNING  # still waiting: the event was not its
