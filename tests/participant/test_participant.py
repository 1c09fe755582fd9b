"""Participants on the in-memory transport: faults, the handler context, the record of handled commands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sagakit._errors import StoreError
from sagakit._messages import Fault, from_payload, message_type_name
from sagakit.participant import FAULT_TYPE_NAME, MessageContext, Participant
from sagakit.participant._participant import fault_of
from sagakit.stores.memory import MemoryStore
from sagakit.transports.memory import MemoryBroker, MemoryTransport

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
from .scenarios import (
    a_fault_fails_the_saga_step_at_once,
    charging,
    fault_is_replied_and_the_command_acknowledged,
    handler_gets_the_context,
    redelivery_after_a_restart_is_answered_from_the_record,
)


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker(redelivery_delay=0.01)


@pytest.fixture
def transports(broker: MemoryBroker) -> MakeTransport:
    def make(**options: Any) -> MemoryTransport:
        return MemoryTransport(broker)

    return make


@pytest.fixture
async def sender(transports: MakeTransport) -> AsyncIterator[Any]:
    t = transports()
    await t.start()
    yield t
    await t.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A participant's store on SQLite and on PostgreSQL, whatever SAGAKIT_TEST_DB says."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/payments.db"
    return str(request.getfixturevalue("pg_url"))


async def test_fault_is_replied_and_the_command_acknowledged(broker: MemoryBroker, transports: MakeTransport) -> None:
    await fault_is_replied_and_the_command_acknowledged(transports)
    assert broker.dead_letters == []


async def test_handler_gets_the_context(transports: MakeTransport) -> None:
    await handler_gets_the_context(transports)


async def test_redelivery_after_a_restart_is_answered_from_the_record(transports: MakeTransport, db_url: str) -> None:
    await redelivery_after_a_restart_is_answered_from_the_record(transports, db_url)


async def test_a_duplicated_command_is_handled_once(
    broker: MemoryBroker, transports: MakeTransport, sender: Any, db_url: str
) -> None:
    await create_effects(db_url)
    payments = Participant(transports(), name="payments", store=db_url)
    charging(payments)
    env = saga_command(Charge(order_id="o-1", amount=5))
    broker.duplicate_next[env.type_name] = 1
    async with Replies(transports) as replies, payments:
        await send_command(sender, env)
        await replies.wait(2)
    assert (payments.handled, payments.duplicates) == (1, 1)
    assert await effects(db_url) == {f"{env.saga_id}:charge:action": 1}
    first, second = replies.envelopes
    assert first.message_id == second.message_id  # the same reply: the engine's inbox drops the copy
    assert first.payload == second.payload


async def test_a_fault_rolls_back_the_handlers_writes_and_a_retry_is_handled_anew(
    transports: MakeTransport, sender: Any, db_url: str
) -> None:
    await create_effects(db_url)
    payments = Participant(transports(), name="payments", store=db_url)
    fail = [True]

    @payments.handles(Charge)
    async def charge(cmd: Charge, ctx: MessageContext) -> Charged:
        await apply_effect(ctx)
        if fail[0]:
            raise RuntimeError("payment provider down")
        return Charged(order_id=cmd.order_id, charge_key=ctx.idempotency_key)

    env = saga_command(Charge(order_id="o-1", amount=5), token=1)
    async with Replies(transports) as replies, payments:
        await send_command(sender, env)
        [fault] = await replies.wait(1)
        assert await effects(db_url) == {}
        fail[0] = False
        retry = saga_command(Charge(order_id="o-1", amount=5), saga_id=env.saga_id, token=2)
        assert retry.message_id == env.message_id  # a saga's retry resends the same message id
        await send_command(sender, retry)
        await replies.wait(2)
    assert fault.type_name == FAULT_TYPE_NAME
    assert from_payload(Fault, fault.payload).message == "payment provider down"
    reply = replies.envelopes[1]
    assert (reply.type_name, reply.token) == (message_type_name(Charged), 2)
    assert await effects(db_url) == {f"{env.saga_id}:charge:action": 1}
    assert (payments.faults, payments.handled) == (1, 1)


async def test_a_command_that_does_not_validate_is_a_fault(transports: MakeTransport, sender: Any) -> None:
    payments = Participant(transports(), name="payments")
    called: list[Any] = []
    payments.handles(Charge)(called.append)
    env = saga_command(Charge(order_id="o-1", amount=5))
    bad = type(env)(**{**{k: getattr(env, k) for k in env.__slots__}, "payload": {"order_id": "o-1"}})
    async with Replies(transports) as replies, payments:
        await send_command(sender, bad)
        [fault] = await replies.wait(1)
    f = from_payload(Fault, fault.payload)
    assert f.error_type == "MessageMappingError"
    assert "amount" in f.message
    assert called == []


class BrokenStore(MemoryStore):
    """A store whose database is down for participants."""

    def handling(self, participant: str, message_id: str, at: float) -> Any:
        raise StoreError("database unreachable")


async def test_a_failing_record_is_no_fault_and_the_command_comes_back(
    broker: MemoryBroker, transports: MakeTransport, sender: Any
) -> None:
    payments = Participant(transports(), name="payments", store=BrokenStore())
    called: list[Any] = []
    payments.handles(Charge)(called.append)
    env = saga_command(Charge(order_id="o-1", amount=5))
    async with Replies(transports) as replies, payments:
        await send_command(sender, env)
        for _ in range(2000):
            if broker.dead_letters:
                break
            await asyncio.sleep(0.01)
    [letter] = broker.dead_letters
    assert "database unreachable" in letter.reason
    assert replies.envelopes == []
    assert called == []


async def test_plain_handlers_and_handlers_returning_nothing(transports: MakeTransport, sender: Any) -> None:
    payments = Participant(transports(), name="payments")
    seen: list[str] = []

    @payments.handles(Charge)
    def charge(cmd: Charge) -> None:
        seen.append(cmd.order_id)

    async with payments:
        await send_command(sender, saga_command(Charge(order_id="o-1", amount=5)))
        for _ in range(1000):
            if payments.handled:
                break
            await asyncio.sleep(0.01)
    assert seen == ["o-1"]
    assert (payments.handled, payments.faults) == (1, 0)


def test_a_handler_must_take_the_command_or_the_command_and_a_context() -> None:
    payments = Participant(MemoryTransport(MemoryBroker()), name="payments")
    for bad in (lambda: None, lambda a, b, c: None, lambda a, *, strict: None):
        with pytest.raises(TypeError, match=r"must take the command, or the command and a MessageContext"):
            payments.handles(Charge)(bad)
    payments.handles(Charge)(lambda cmd, ctx=None: None)
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        Participant(MemoryTransport(MemoryBroker()), name="")


async def test_forget_drops_old_records(transports: MakeTransport, sender: Any, tmp_path: Any) -> None:
    now = [1000.0]
    url = f"sqlite:///{tmp_path}/payments.db"
    await create_effects(url)
    payments = Participant(transports(), name="payments", store=url, clock=lambda: now[0])
    charging(payments)
    env = saga_command(Charge(order_id="o-1", amount=5))
    async with Replies(transports) as replies, payments:
        await send_command(sender, env)
        await replies.wait(1)
        now[0] += 100
        assert await payments.forget(older_than=200) == 0
        assert await payments.forget(older_than=50) == 1
        await send_command(sender, env)  # forgotten: handled again
        await replies.wait(2)
    assert await effects(url) == {f"{env.saga_id}:charge:action": 2}
    with pytest.raises(RuntimeError, match="needs a store"):
        await Participant(transports(), name="x").forget(1.0)


def test_a_fault_keeps_the_innermost_frames_within_its_bounds() -> None:
    def deep(n: int) -> None:
        if n == 0:
            raise KeyError("x" * 50_000)
        deeper(n - 1)

    def deeper(n: int) -> None:  # frames that alternate are not folded into "repeated N times"
        deep(n)

    try:
        deep(200)
    except KeyError as e:
        fault = fault_of(e, "app.Cmd")
    assert (fault.error_type, fault.command_type) == ("KeyError", "app.Cmd")
    assert len(fault.message) <= 2000 and fault.message.endswith("(truncated)")
    assert len(fault.traceback) <= 4000
    assert fault.traceback.startswith("Traceback (most recent call last):\n…(outer frames cut)…")
    assert 'raise KeyError("x" * 50_000)' in fault.traceback
    assert fault.traceback.rstrip().endswith("(truncated)")
    assert "\nKeyError: 'xxx" in fault.traceback


async def test_a_fault_fails_the_saga_step_at_once(transports: MakeTransport, store_url: str) -> None:
    await a_fault_fails_the_saga_step_at_once(transports, store_url)


async def test_a_participant_that_cannot_subscribe_closes_what_it_opened(tmp_path: Any) -> None:
    class Refusing(MemoryTransport):
        async def subscribe(self, destinations: Any, group: str, handler: Any) -> None:
            raise StoreError("broker refused")  # any error of the subscription

    store_url = f"sqlite:///{tmp_path}/payments.db"
    payments = Participant(Refusing(MemoryBroker()), name="payments", store=store_url)
    payments.handles(Charge)(lambda cmd: None)
    with pytest.raises(StoreError, match="broker refused"):
        await payments.start()
    assert payments.store is not None
    with pytest.raises(StoreError, match="is not open"):
        async with payments.store.handling("payments", "m", 0.0):
            pass


async def test_two_instances_given_one_command_at_once_apply_it_once(
    broker: MemoryBroker, transports: MakeTransport, sender: Any, db_url: str
) -> None:
    """Two instances of a participant on one database, the command delivered twice at once: one effect."""
    await create_effects(db_url)
    instances = [Participant(transports(), name="payments", store=db_url) for _ in range(2)]
    for p in instances:

        @p.handles(Charge)
        async def charge(cmd: Charge, ctx: MessageContext) -> Charged:
            await apply_effect(ctx)
            await asyncio.sleep(0.3)  # the other copy arrives while this transaction is open
            return Charged(order_id=cmd.order_id, charge_key=ctx.idempotency_key)

    env = saga_command(Charge(order_id="o-1", amount=5))
    broker.duplicate_next[env.type_name] = 1
    async with Replies(transports) as replies, instances[0], instances[1]:
        await send_command(sender, env)
        await replies.wait(2)
    assert sum(p.handled for p in instances) == 1
    assert sum(p.duplicates for p in instances) == 1
    assert await effects(db_url) == {f"{env.saga_id}:charge:action": 1}
    assert replies.envelopes[0].payload == replies.envelopes[1].payload


async def test_a_handler_returning_something_that_is_no_message_is_a_fault(
    transports: MakeTransport, sender: Any
) -> None:
    payments = Participant(transports(), name="payments")
    payments.handles(Charge)(lambda cmd: {"order_id": cmd.order_id})
    async with Replies(transports) as replies, payments:
        await send_command(sender, saga_command(Charge(order_id="o-1", amount=5)))
        [fault] = await replies.wait(1)
    f = from_payload(Fault, fault.payload)
    assert (f.error_type, payments.handled, payments.faults) == ("MessageMappingError", 0, 1)
    assert "is not a message" in f.message
