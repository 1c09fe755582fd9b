"""``engine.notify``: an event handed to a waiting saga through the store alone, no broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagakit import SagaEngine, SagaStateError, SagaStatus, StepStatus
from tests.worker.sagas import Approved, Rejected, approval_saga
from tests.worker.test_worker_cli import start_worker, stop


async def _waiting(engine: SagaEngine, sid: str, timeout: float = 20.0) -> Any:
    """The saga once its ``approve`` step waits for the event."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        snap = await engine.get(sid)
        if snap.steps["approve"].status is StepStatus.RUNNING:
            return snap
        await asyncio.sleep(0.02)
    raise AssertionError(f"saga {sid} never waited for its event: {snap.steps}")


async def test_notify_completes_the_waiting_step(store_url: str) -> None:
    async with SagaEngine(store_url) as engine:
        engine.register(approval_saga)
        sid = await engine.start("approval", {"order": "o-1"})
        await _waiting(engine, sid)
        await engine.notify(sid, Approved(approver="ann"))
        snap = await engine.wait(sid, timeout=20)
    assert snap.status is SagaStatus.COMPLETED
    assert snap.steps["approve"].result == {"approver": "ann"}
    assert snap.data["approver"] == "ann"  # merged into the data like a broker's reply


async def test_a_failure_event_fails_the_step_and_compensates(store_url: str) -> None:
    async with SagaEngine(store_url) as engine:
        engine.register(approval_saga)
        sid = await engine.start("approval", {})
        await _waiting(engine, sid)
        await engine.notify(sid, Rejected(reason="over budget"))
        snap = await engine.wait(sid, timeout=20)
    assert snap.status is SagaStatus.COMPENSATED
    assert "over budget" in next(h.message for h in snap.history if h.kind == "step_failed")
    assert snap.steps["reserve"].status is StepStatus.COMPENSATED


async def test_an_event_no_step_waits_for_is_refused_with_the_reason(store_url: str) -> None:
    async with SagaEngine(store_url) as engine:
        engine.register(approval_saga)
        sid = await engine.start("approval", {})
        await _waiting(engine, sid)
        await engine.notify(sid, Approved(approver="ann"))
        await engine.wait(sid, timeout=20)
        with pytest.raises(SagaStateError, match="waiting for"):
            await engine.notify(sid, Approved(approver="bob"))  # the step has completed: nothing waits
        snap = await engine.get(sid)
    assert snap.data["approver"] == "ann"


async def test_the_same_message_id_twice_applies_once(store_url: str) -> None:
    async with SagaEngine(store_url) as engine:
        engine.register(approval_saga)
        sid = await engine.start("approval", {})
        await _waiting(engine, sid)
        await engine.notify(sid, Approved(approver="ann"), message_id="approval-1")
        await engine.notify(sid, Approved(approver="bob"), message_id="approval-1")  # a retry of the same call
        snap = await engine.wait(sid, timeout=20)
    assert snap.status is SagaStatus.COMPLETED
    assert snap.data["approver"] == "ann"


async def test_events_arriving_together_claim_their_sagas_together(store_url: str) -> None:
    """Many notifies at once: their sagas are claimed in a few batched claims, not one transaction each."""
    async with SagaEngine(store_url) as engine:
        engine.register(approval_saga)
        ids = [await engine.start("approval", {"order": f"o-{i}"}) for i in range(60)]
        for sid in ids:
            await _waiting(engine, sid)
        batches: list[int] = []
        singles: list[str] = []
        store: Any = engine.store
        claim_sagas, claim_saga = store.claim_sagas, store.claim_saga

        async def counted_many(saga_ids: Any, *args: Any) -> Any:
            batches.append(len(saga_ids))
            return await claim_sagas(saga_ids, *args)

        async def counted_one(saga_id: str, *args: Any) -> Any:
            singles.append(saga_id)
            return await claim_saga(saga_id, *args)

        store.claim_sagas, store.claim_saga = counted_many, counted_one
        # Each saga gets its event twice at the same moment: one applies, the other finds nothing waiting.
        events = [engine.notify(sid, Approved(approver=f"a{i}")) for i, sid in enumerate(ids) for _ in range(2)]
        outcomes = await asyncio.gather(*events, return_exceptions=True)
        snaps = [await engine.wait(sid, timeout=20) for sid in ids]
    assert all(s.status is SagaStatus.COMPLETED for s in snaps)
    assert [s.data["approver"] for s in snaps] == [f"a{i}" for i in range(60)]
    refused = [o for o in outcomes if o is not None]
    assert len(refused) == 60 and all(isinstance(o, SagaStateError) for o in refused), refused
    assert singles == []
    assert sum(batches) >= 60 and len(batches) < 30, batches  # 120 events; claims in batches


async def test_a_process_without_the_definition_notifies_a_worker_process(pg_url: str) -> None:
    """An API process that only knows the saga's id: the event is kept with the saga and the worker applies it."""
    starter = SagaEngine(pg_url)
    starter.register(approval_saga)
    sid = await starter.start("approval", {"order": "o-9"})
    proc = start_worker(pg_url)
    api = SagaEngine(pg_url)  # no definitions registered, not running
    try:
        await _waiting(api, sid)
        await api.notify(sid, Approved(approver="ann"))
        snap = await api.wait(sid, timeout=30)
    finally:
        code, out = stop(proc)
        await api.close()
        await starter.close()
    assert snap.status is SagaStatus.COMPLETED, out
    assert snap.data["approver"] == "ann"
    kinds = [h.kind for h in snap.history]
    assert "event_queued" in kinds
    assert code == 0, out


def test_the_machine_keeps_an_event_without_the_definition_and_applies_it_on_resume() -> None:
    from sagakit.machine import QUEUED_EVENTS, Reply, Resume, decide, new_saga
    from sagakit.machine._types import Begin

    st = decide(approval_saga, new_saga(approval_saga, "s1", {}, now=0.0).state, Begin(), 0.0).state
    token = st.steps["reserve"].token
    from sagakit.machine import StepSucceeded

    st = decide(approval_saga, st, StepSucceeded("reserve", token, None), 1.0).state
    assert st.steps["approve"].status is StepStatus.RUNNING
    name = "tests.worker.sagas.Approved"
    kept = decide(None, st, Reply(name, {"approver": "ann"}), 2.0)
    assert kept.rejected is None and kept.state.meta[QUEUED_EVENTS][0]["type_name"] == name
    assert kept.state.steps["approve"].status is StepStatus.RUNNING  # nothing matched without the definition
    late = decide(None, kept.state, Reply(name, {"approver": "bob"}), 2.5).state  # a second one is kept too
    resumed = decide(approval_saga, late, Resume(), 3.0)
    assert resumed.state.status is SagaStatus.COMPLETED
    assert resumed.state.data["approver"] == "ann"  # in the order they came; the second finds nothing waiting
    assert QUEUED_EVENTS not in resumed.state.meta
    assert any(h.kind == "refused" and "bob" not in h.message for h in resumed.history)


async def test_an_event_for_a_saga_whose_worker_died_mid_step_runs_that_step_again(pg_url: str) -> None:
    """The engine that applies the event claims the saga: the dead worker's attempt runs again.

    A saga runs a local step beside a step waiting for an event; its worker dies
    mid-step. Once the lease has run out, an API process (no workers) hands the
    event over: the saga must not be left with the dead worker's attempt "running"
    and nothing due, but be resumed as a claim resumes it, so a worker finishes it.
    """
    from pydantic import BaseModel

    from sagakit import SagaBuilder, StepContext, wait_for
    from sagakit.testing import kill

    class Paid(BaseModel):
        order_id: str

    runs: list[int] = []

    async def slow(ctx: StepContext) -> None:
        runs.append(ctx.attempt)
        if len(runs) == 1:
            await asyncio.sleep(60)  # still running when its worker dies

    b = SagaBuilder("paid_beside_slow")
    b.step("slow", slow)
    b.step("paid", action=wait_for(Paid), after=())
    defn = b.build()
    first = SagaEngine(pg_url, lease_seconds=1.0, worker_id="first")
    first.register(defn)
    await first.__aenter__()
    sid = await first.start("paid_beside_slow", {"order_id": "o-1"})
    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while not runs:
        assert loop.time() < end, "the step never started"
        await asyncio.sleep(0.01)
    await kill(first)
    api = SagaEngine(pg_url, lease_seconds=1.0, worker_id="api")  # not running: no claim loop of its own
    api.register(defn)
    try:
        await api.notify(sid, Paid(order_id="o-1"))  # waits for the dead worker's lease to run out
        after = await api.get(sid)
    finally:
        await api.close()
    assert after.steps["paid"].status is StepStatus.COMPLETED
    assert any(h.kind == "resumed" and h.step == "slow" for h in after.history)
    assert after.wake_at is not None  # due: a worker picks the resumed attempt up
    async with SagaEngine(pg_url, worker_id="worker") as worker:
        worker.register(defn)
        done = await worker.wait(sid, timeout=20)
    assert done.status is SagaStatus.COMPLETED and len(runs) == 2  # the attempt, run again once
