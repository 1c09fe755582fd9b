"""Participant scenarios on any transport: tests/participant runs them in memory, tests/transports on each broker.

Each takes ``make_transport(**options)``: a new transport on the test's broker
(option ``ack_timeout``, which the in-memory one ignores).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sagakit import RetryPolicy, SagaBuilder, SagaEngine, SagaStatus, StepContext
from sagakit._messages import Envelope, Fault, from_payload, message_type_name, send
from sagakit._transport import Transport
from sagakit.machine import SagaState, StepState
from sagakit.participant import FAULT_TYPE_NAME, MessageContext, Participant

from .kit import (
    Charge,
    Charged,
    MakeTransport,
    Replies,
    apply_effect,
    create_effects,
    effects,
    saga_command,
    send_command,
)


async def fault_is_replied_and_the_command_acknowledged(make_transport: MakeTransport) -> None:
    """A handler that raises: a Fault with the command's correlation is the reply, and the command is done."""
    payments = Participant(make_transport(), name="payments")
    calls: list[str] = []

    @payments.handles(Charge)
    def charge(cmd: Charge) -> Charged:
        calls.append(cmd.order_id)
        if cmd.order_id == "o-fire":
            raise ValueError("card reader on fire " + "!" * 10_000)
        return Charged(order_id=cmd.order_id, charge_key="k")

    sender = make_transport()
    await sender.start()
    try:
        async with Replies(make_transport) as replies, payments:
            env = saga_command(Charge(order_id="o-fire", amount=5), token=3)
            await send_command(sender, env)
            [fault] = await replies.wait(1)
            # A second command, handled after the first: had the first been left
            # unacknowledged, its redelivery would be handled again meanwhile.
            ok = saga_command(Charge(order_id="o-ok", amount=5))
            await send_command(sender, ok)
            await replies.wait(2)
    finally:
        await sender.close()
    assert fault.type_name == FAULT_TYPE_NAME
    assert (fault.saga_id, fault.step, fault.token, fault.correlation_id, fault.causation_id) == (
        env.saga_id,
        env.step,
        3,
        env.correlation_id,
        env.message_id,
    )
    assert fault.headers["traceparent"] == env.headers["traceparent"]
    f = from_payload(Fault, fault.payload)
    assert f.error_type == "ValueError"
    assert f.message.startswith("card reader on fire !!!")
    assert len(f.message) <= 2000
    assert f.command_type == message_type_name(Charge)
    assert "in charge" in f.traceback and "ValueError: card reader on fire" in f.traceback
    assert len(f.traceback) <= 4000
    assert calls == ["o-fire", "o-ok"]
    assert (payments.faults, payments.handled) == (1, 1)
    [reply] = replies.to(ok)
    assert reply.type_name == message_type_name(Charged)


async def handler_gets_the_context(make_transport: MakeTransport) -> None:
    """A two-argument handler gets the envelope's headers and the idempotency key its saga step sees."""
    payments = Participant(make_transport(), name="payments")
    seen: list[MessageContext] = []

    @payments.handles(Charge)
    async def charge(cmd: Charge, ctx: MessageContext) -> Charged:
        seen.append(ctx)
        return Charged(order_id=cmd.order_id, charge_key=ctx.idempotency_key)

    saga_id = uuid.uuid4().hex
    action = saga_command(Charge(order_id="o-1", amount=1), saga_id=saga_id, token=7)
    compensation = saga_command(Charge(order_id="o-1", amount=-1), saga_id=saga_id, token=9, direction="compensation")
    plain = Envelope.wrap(Charge(order_id="o-2", amount=2), message_id="app-msg-1", timestamp=0.0)
    sender = make_transport()
    await sender.start()
    try:
        async with Replies(make_transport) as replies, payments:
            for env in (action, compensation, plain):
                await send_command(sender, env)
            await replies.wait(3)
    finally:
        await sender.close()
    by_id = {c.message_id: c for c in seen}
    assert len(seen) == 3
    ctx = by_id[action.message_id]
    assert (ctx.saga_id, ctx.step, ctx.token, ctx.correlation_id, ctx.type_name) == (
        saga_id,
        "charge",
        7,
        f"corr-{saga_id}",
        message_type_name(Charge),
    )
    assert ctx.headers["traceparent"] == action.headers["traceparent"]
    assert ctx.delivery_count >= 1
    assert ctx.connection is None  # no store
    for env, compensating in ((action, False), (compensation, True)):
        # The key the engine gives the saga's own step (StepContext of an attempt of "charge").
        step_sees = StepContext._of(saga_state(saga_id), "charge", 2, compensating)
        assert by_id[env.message_id].idempotency_key == step_sees.idempotency_key
    assert by_id["app-msg-1"].idempotency_key == "app-msg-1"
    assert by_id["app-msg-1"].saga_id is None
    assert {r.payload["charge_key"] for r in replies.envelopes} == {c.idempotency_key for c in seen}


def saga_state(saga_id: str) -> SagaState:
    return SagaState(
        id=saga_id,
        name="order",
        version=1,
        status=SagaStatus.RUNNING,
        data={},
        steps={"charge": StepState()},
        created_at=0.0,
        updated_at=0.0,
    )


class HeldReplies:
    """A transport whose publishing of replies never returns: the participant stops after its commit, before its ack."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.url = inner.url
        self.reached = asyncio.Event()

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def publish(self, destination: str, body: bytes, **kw: Any) -> None:
        self.reached.set()
        await asyncio.Event().wait()

    async def subscribe(self, destinations: Any, group: str, handler: Any) -> None:
        await self.inner.subscribe(destinations, group, handler)


def charging(participant: Participant) -> None:
    """Register the handler of the restart scenarios: one effect per command, in the handling transaction."""

    @participant.handles(Charge)
    async def charge(cmd: Charge, ctx: MessageContext) -> Charged:
        await apply_effect(ctx)
        return Charged(order_id=cmd.order_id, charge_key=ctx.idempotency_key)


async def redelivery_after_a_restart_is_answered_from_the_record(make_transport: MakeTransport, store_url: str) -> None:
    """Committed, then stopped before the ack: the restarted participant replies from the record, no second effect."""
    await create_effects(store_url)
    inner: Any = make_transport(ack_timeout=1.0)
    if hasattr(inner, "close_grace"):
        inner.close_grace = 0.2  # close() cancels the held handler soon
    held = HeldReplies(inner)
    first = Participant(held, name="payments", store=store_url)
    charging(first)
    sender = make_transport()
    await sender.start()
    env = saga_command(Charge(order_id="o-1", amount=5), token=4)
    key = f"{env.saga_id}:charge:action"
    try:
        async with Replies(make_transport) as replies:
            await first.start()
            try:
                await send_command(sender, env)
                await asyncio.wait_for(held.reached.wait(), 30)  # the record and the effect are committed
                assert await effects(store_url) == {key: 1}
            finally:
                await first.close()  # the handler is cancelled before its ack: the command comes back
            assert replies.envelopes == []
            second = Participant(make_transport(ack_timeout=1.0), name="payments", store=store_url)
            charging(second)
            async with second:
                [reply] = await replies.wait(1, timeout=60)
    finally:
        await sender.close()
    assert (first.handled, second.handled, second.duplicates) == (1, 0, 1)
    assert await effects(store_url) == {key: 1}
    assert reply.type_name == message_type_name(Charged)
    assert reply.payload == {"order_id": "o-1", "charge_key": key}
    assert (reply.saga_id, reply.step, reply.token, reply.causation_id) == (env.saga_id, "charge", 4, env.message_id)


async def a_fault_fails_the_saga_step_at_once(make_transport: MakeTransport, store_url: str) -> None:
    """End to end, no reply timeout set: a handler that raises fails the step's attempt at once; retries apply."""
    name = f"pay_{uuid.uuid4().hex[:6]}"
    b = SagaBuilder(name)
    b.step(
        "charge",
        action=send(Charge, success=Charged),
        retry=RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.02),
    )
    payments = Participant(make_transport(), name="payments")
    calls: dict[str, list[int | None]] = {}

    @payments.handles(Charge)
    def charge(cmd: Charge, ctx: MessageContext) -> Charged:
        calls.setdefault(cmd.order_id, []).append(ctx.token)
        if cmd.order_id == "o-down" or len(calls[cmd.order_id]) == 1:
            raise ConnectionError(f"payment provider down for {cmd.order_id}")
        return Charged(order_id=cmd.order_id, charge_key=ctx.idempotency_key)

    engine = SagaEngine(store_url, transport=make_transport())
    engine.register(b.build())
    async with payments, engine:
        flaky = await engine.start(name, {"order_id": "o-flaky", "amount": 5.0})
        down = await engine.start(name, {"order_id": "o-down", "amount": 5.0})
        recovered = await engine.wait(flaky, timeout=60)
        failed = await engine.wait(down, timeout=60)
    assert recovered.status is SagaStatus.COMPLETED, recovered.history
    assert recovered.steps["charge"].attempts == 2
    assert recovered.data["charge_key"] == f"{flaky}:charge:action"
    assert [h.attempt for h in recovered.history if h.kind == "fault"] == [1]
    assert failed.status is SagaStatus.COMPENSATED, failed.history
    assert failed.steps["charge"].attempts == 2
    assert "participant fault: ConnectionError: payment provider down for o-down" in (
        failed.steps["charge"].error or ""
    )
    assert [h.attempt for h in failed.history if h.kind == "fault"] == [1, 2]
    assert len(set(calls["o-flaky"])) == 2 and len(calls["o-down"]) == 2  # each attempt handled anew
    assert payments.faults == 3
