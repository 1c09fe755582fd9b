"""The fake participant: replies, faults, silence, and what it received."""

from __future__ import annotations

import pytest

from sagakit import RetryPolicy, SagaBuilder, SagaStatus, send
from sagakit.testing import SagaTestEnv, run_to_end

from .sagas import Charge, Charged, ChargeFailed


def charge_saga(reply_timeout: float | None = None):
    b = SagaBuilder("pay")
    b.step(
        "charge",
        send(Charge, success=Charged, failure=ChargeFailed, reply_timeout=reply_timeout),
        retry=RetryPolicy(max_attempts=2, initial_delay=10, max_delay=10),
    )
    return b.build()


async def test_replies_complete_the_step_and_commands_are_recorded(saga_env: SagaTestEnv) -> None:
    engine = await saga_env.start_engine(charge_saga())
    payments = saga_env.participant("payments").reply(Charge, lambda cmd: Charged(payment_id=f"p-{cmd.order_id}"))
    async with payments:
        snap = await run_to_end(engine, "pay", {"order_id": "o-7", "amount": 3})
    assert snap.status is SagaStatus.COMPLETED
    assert snap.data["payment_id"] == "p-o-7"
    [got] = payments.received
    assert got.command == Charge(order_id="o-7", amount=3)
    assert got.saga_id == snap.id and got.step == "charge" and got.delivery == 1
    assert payments.count(Charge, step="charge") == 1 and payments.replies_sent == 1


async def test_a_failure_event_fails_the_step_without_retry(saga_env: SagaTestEnv) -> None:
    engine = await saga_env.start_engine(charge_saga())
    async with saga_env.participant().reply(Charge, ChargeFailed(reason="card declined")) as payments:
        snap = await run_to_end(engine, "pay", {"order_id": "o-1", "amount": 3})
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["charge"].attempts == 1
    assert payments.count() == 1


async def test_a_fault_fails_each_attempt_at_once(saga_env: SagaTestEnv) -> None:
    engine = await saga_env.start_engine(charge_saga())
    async with saga_env.participant().fault(Charge, "database is down", "OperationalError") as payments:
        snap = await run_to_end(engine, "pay", {"order_id": "o-1", "amount": 3})
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["charge"].attempts == 2  # the retry policy applies to faults
    faults = [h.message for h in snap.history if h.kind == "fault"]
    assert faults and "participant fault: OperationalError: database is down" in faults[0]
    assert payments.count() == 2


async def test_silence_runs_out_the_reply_timeout(saga_env: SagaTestEnv) -> None:
    engine = await saga_env.start_engine(charge_saga(reply_timeout=3600))
    async with saga_env.participant().ignore(Charge) as payments:
        snap = await run_to_end(engine, "pay", {"order_id": "o-1", "amount": 3})
    assert snap.status is SagaStatus.COMPENSATED
    assert payments.count() == 2  # resent after the first timeout
    assert snap.updated_at - snap.created_at >= 2 * 3600


async def test_configuring_a_new_command_after_start_is_refused(saga_env: SagaTestEnv) -> None:
    async with saga_env.participant("late").ignore(Charge) as payments:
        payments.reply(Charge, Charged(payment_id="p"))  # an answer of a known command may change
        with pytest.raises(RuntimeError, match=r"configure .*ChargeFailed before start\(\)"):
            payments.reply(ChargeFailed, None)
    with pytest.raises(ValueError, match="duplicates must be None, 'same_id' or 'new_id'"):
        saga_env.participant(duplicates="twice")
