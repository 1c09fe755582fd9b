"""Rollback never hangs, strands or lies: cancellation of running and waiting steps on a real store.

Each test runs on the database SAGAKIT_TEST_DB selects (SQLite by default,
PostgreSQL with ``SAGAKIT_TEST_DB=postgres``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    NonRetryableError,
    RetryPolicy,
    SagaBuilder,
    SagaEngine,
    SagaStateError,
    SagaStatus,
    StepContext,
    StepStatus,
    send,
    wait_for,
)
from sagakit.machine import SagaState
from tests.crash.hung_child import make_definition

ONE = RetryPolicy(max_attempts=1)


async def poll(what: str, check: Any, timeout: float = 10.0) -> Any:
    """Await *check()* until it returns something truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


async def start_hung_worker(
    store_url: str, marker: Path, *, lease_seconds: float, worker_id: str | None = None
) -> subprocess.Popen[bytes]:
    """A worker process whose saga's second step has started and hangs (see tests/crash/hung_child.py)."""
    errors = marker.with_suffix(".err")
    args = [str(lease_seconds), *([worker_id] if worker_id else [])]
    with errors.open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.crash.hung_child", store_url, str(marker), *args],
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )

    async def started() -> bool:
        assert child.poll() is None, errors.read_text()
        return marker.exists()

    try:
        await poll("the child's step to start", started, timeout=30)
    except BaseException:
        child.kill()
        child.wait(10)
        raise
    return child


async def running(engine: SagaEngine, sid: str, step: str) -> bool:
    return (await engine.get(sid)).steps[step].status is StepStatus.RUNNING


async def test_compensate_cancels_a_plain_def_step_and_records_its_late_result(store_url: str) -> None:
    release = threading.Event()
    entered = threading.Event()
    undone: list[str] = []

    def blocking(ctx: StepContext) -> str:
        entered.set()
        release.wait(30)
        return "late"

    def undo(ctx: StepContext) -> None:
        undone.append(ctx.step)

    b = SagaBuilder("threads")
    b.step("a", lambda ctx: "ok", undo)
    b.step("b", blocking, undo, retry=ONE)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("threads")
        await poll("the thread to start", lambda: asyncio.sleep(0, entered.is_set()))
        await engine.compensate(sid, reason="customer cancelled")
        snap = await engine.wait(sid, timeout=10)
        # rolled back while the thread still runs: it was abandoned, not waited for
        assert not release.is_set()
        assert snap.status is SagaStatus.COMPENSATED
        assert snap.steps["b"].status is StepStatus.COMPENSATED
        assert undone == ["b", "a"]
        release.set()

        async def late_recorded() -> bool:
            snap = await engine.get(sid)
            return any(h.kind == "stale_rejected" and "abandoned" in h.message for h in snap.history)

        await poll("the abandoned thread's result to be recorded", late_recorded)
    reader = SagaEngine(store_url)
    try:
        final = await reader.get(sid)
    finally:
        await reader.close()
    assert final.status is SagaStatus.COMPENSATED
    assert final.steps["b"].result is None  # "late" was never applied


@dataclass
class StartPod:
    execution_id: str = ""


@dataclass
class PodFinished:
    execution_id: str = ""


@dataclass
class DeletePod:
    execution_id: str = ""


@dataclass
class Approved:
    by: str = ""


async def outbox_types(store_url: str) -> list[str]:
    engine = SagaEngine(store_url)
    await engine._ensure_open()
    try:
        rows = await engine.store.outbox_claim("test", time.time(), time.time() + 60, 100)
        return [r.destination for r in rows]
    finally:
        await engine.close()


async def test_compensate_stops_a_send_that_waits_forever_and_sends_its_compensation(store_url: str) -> None:
    # Seed 004's user cancel of a running execution: delete the pod now.
    b = SagaBuilder("execution")
    b.step(
        "run_pod",
        send(StartPod, success=PodFinished),  # no reply timeout: it would wait forever
        send(DeletePod),  # fire and forget: done once committed
    )
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("execution", {"execution_id": "e-1"})
        await poll("the command to go out", lambda: running(engine, sid, "run_pod"))
        await engine.compensate(sid, reason="user cancelled the execution")
        snap = await engine.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["run_pod"].status is StepStatus.COMPENSATED
    cancelled = [h for h in snap.history if h.kind == "step_cancelled"]
    assert cancelled and "may have had its effect" in cancelled[0].message
    types = await outbox_types(store_url)
    assert [t.rsplit(".", 1)[-1] for t in types] == ["StartPod", "DeletePod"]


async def test_compensate_stops_a_wait_for_without_timeout(store_url: str) -> None:
    undone: list[str] = []

    async def reserve(ctx: StepContext) -> str:
        return "r-1"

    async def release(ctx: StepContext) -> None:
        undone.append(ctx.step)

    b = SagaBuilder("approval")
    b.step("reserve", reserve, release)
    b.step("approve", wait_for(Approved))
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("approval")
        await poll("the wait", lambda: running(engine, sid, "approve"))
        await engine.compensate(sid)
        snap = await engine.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["approve"].status is StepStatus.FAILED  # nothing was sent: nothing to undo
    assert undone == ["reserve"]


async def test_deadline_cancels_a_running_step(store_url: str) -> None:
    cancelled = asyncio.Event()
    undone: list[str] = []

    async def hangs(ctx: StepContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def undo(ctx: StepContext) -> None:
        undone.append(ctx.step)

    b = SagaBuilder("late", deadline=0.3)
    b.step("a", lambda ctx: "ok", undo)
    b.step("b", hangs, undo)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        snap = await engine.wait(await engine.start("late"), timeout=10)
    assert cancelled.is_set()
    assert snap.status is SagaStatus.COMPENSATED
    assert "deadline" in (snap.error or "")
    assert undone == ["b", "a"]


async def test_a_timed_out_step_and_a_step_whose_result_is_lost_are_compensated(store_url: str) -> None:
    created: list[str] = []
    deleted: list[str] = []

    async def create_pod(ctx: StepContext) -> None:
        created.append(ctx.idempotency_key)
        await asyncio.sleep(5)  # the pod exists; the answer never comes in time

    async def delete_pod(ctx: StepContext) -> None:
        deleted.append(ctx.step)

    async def book(ctx: StepContext) -> object:
        created.append("booking")
        return object()  # its effect happened; its result cannot be stored

    b = SagaBuilder("pods")
    b.step("pod", create_pod, delete_pod, timeout=0.05, retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        snap = await engine.wait(await engine.start("pods"), timeout=10)
    assert snap.status is SagaStatus.COMPENSATED
    assert len(created) == 2 and deleted == ["pod"]  # two attempts, the pod undone once

    b = SagaBuilder("booking")
    b.step("book", book, delete_pod)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        snap = await engine.wait(await engine.start("booking"), timeout=10)
    assert snap.status is SagaStatus.COMPENSATED
    assert deleted == ["pod", "book"]
    assert any(h.kind == "step_failed" and "JSON-serialisable" in h.message for h in snap.history)


@pytest.mark.parametrize("pivot_outcome", ["completes", "fails"])
async def test_rollback_requested_while_the_pivot_runs_waits_for_its_outcome(
    store_url: str, pivot_outcome: str
) -> None:
    go = asyncio.Event()
    undone: list[str] = []

    async def reserve(ctx: StepContext) -> str:
        return "r"

    async def release(ctx: StepContext) -> None:
        undone.append(ctx.step)

    async def charge(ctx: StepContext) -> str:
        await go.wait()
        if pivot_outcome == "fails":
            raise NonRetryableError("card declined")
        return "charged"

    b = SagaBuilder("pivoted")
    b.step("reserve", reserve, release)
    b.step("charge", charge, pivot=True)
    b.step("ship", lambda ctx: "shipped")
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("pivoted")
        await poll("the pivot to run", lambda: running(engine, sid, "charge"))
        snap = await engine.compensate(sid, reason="customer cancelled")
        assert snap.status is SagaStatus.RUNNING  # the request waits for the pivot
        assert any(h.kind == "rollback_deferred" for h in snap.history)
        go.set()
        snap = await engine.wait(sid, timeout=10)
    if pivot_outcome == "completes":
        assert snap.status is SagaStatus.COMPLETED
        refused = [h for h in snap.history if h.kind == "rollback_refused"]
        assert refused and "customer cancelled" in refused[0].message
        assert undone == []
    else:
        assert snap.status is SagaStatus.COMPENSATED
        assert undone == ["reserve"]


async def test_compensate_after_the_worker_died_finishes_the_rollback(store_url: str, tmp_path: Path) -> None:
    marker = tmp_path / "charging"
    child = await start_hung_worker(store_url, marker, lease_seconds=1.0)
    try:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    sid = marker.read_text()
    undone: list[str] = []
    definition = make_definition(marker, undone)

    # An operator's engine that runs nothing (the CLI's): it waits out the dead worker's lease.
    operator = SagaEngine(store_url)
    operator.register(definition)
    try:
        snap = await operator.compensate(sid, reason="worker died mid-charge")
    finally:
        await operator.close()
    assert snap.status is SagaStatus.COMPENSATING
    assert snap.wake_at is not None or snap.status.terminal  # never stranded without a wake-up time

    async with SagaEngine(store_url) as worker:
        worker.register(definition)
        snap = await worker.wait(sid, timeout=15)
    assert snap.status is SagaStatus.COMPENSATED
    # the charge may have happened before the worker died: it is undone too, before reserve
    assert undone == ["charge", "reserve"]


async def test_a_parked_saga_can_be_aborted_without_its_definition(store_url: str) -> None:
    b = SagaBuilder("old_flow", version=1)
    b.step("a", lambda ctx: "ok")
    starter = SagaEngine(store_url)  # not running: the saga is stored, nothing runs it
    starter.register(b.build())
    try:
        sid = await starter.start("old_flow")
    finally:
        await starter.close()

    bare = SagaEngine(store_url)  # knows no definition at all
    try:
        with pytest.raises(SagaStateError, match="not registered here: only abort and skip"):
            await bare.compensate(sid)
        snap = await bare.abort(sid, reason="flow retired", actor="alice")
        assert snap.status is SagaStatus.ABORTED
        assert snap.history[-1].message == "aborted by alice: flow retired"
        assert any(h.kind == "refused" and "compensate" in h.message for h in snap.history)
        with pytest.raises(SagaStateError, match="already finished"):
            await bare.retry(sid)
    finally:
        await bare.close()


async def test_cancelled_attempt_state_is_stored_with_its_uncertainty(store_url: str) -> None:
    async def hangs(ctx: StepContext) -> None:
        await asyncio.Event().wait()

    b = SagaBuilder("uncertain")
    b.step("a", hangs)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("uncertain")
        await poll("the step to run", lambda: running(engine, sid, "a"))
        await engine.compensate(sid)
        await engine.wait(sid, timeout=10)
        st: SagaState | None = await engine.store.get(sid)
    assert st is not None and st.steps["a"].uncertain
    assert st.steps["a"].status is StepStatus.FAILED


async def test_abort_reaches_a_hung_step_on_the_live_worker_that_holds_it(store_url: str) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hangs(ctx: StepContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    b = SagaBuilder("hung_here")
    b.step("a", hangs)
    definition = b.build()
    async with SagaEngine(store_url, lease_seconds=30.0) as worker:
        worker.register(definition)
        sid = await worker.start("hung_here")
        await asyncio.wait_for(started.wait(), 10)
        # Another process's engine, running nothing: it cannot claim the saga (the worker's
        # lease has 30 s to go), so it asks the worker, which cancels the step.
        operator = SagaEngine(store_url)
        try:
            began = time.monotonic()
            snap = await operator.abort(sid, reason="stuck on a dead card terminal", actor="alice")
            took = time.monotonic() - began
            with pytest.raises(SagaStateError, match="already finished"):
                await operator.compensate(sid)
        finally:
            await operator.close()
        assert cancelled.is_set()
    assert snap.status is SagaStatus.ABORTED
    assert took < 30.0, "the operator waited for the lease instead of asking the worker"
    assert any(h.kind == "step_cancelled" for h in snap.history)


async def test_a_refused_request_comes_back_with_the_holders_reason(store_url: str) -> None:
    started = asyncio.Event()

    async def hangs(ctx: StepContext) -> None:
        started.set()
        await asyncio.Event().wait()

    b = SagaBuilder("hung_skip")
    b.step("a", hangs)
    async with SagaEngine(store_url, lease_seconds=30.0) as worker:
        worker.register(b.build())
        sid = await worker.start("hung_skip")
        await asyncio.wait_for(started.wait(), 10)
        operator = SagaEngine(store_url)
        try:
            with pytest.raises(SagaStateError, match="is executing"):
                await operator.skip(sid, "a", result=1)
            snap = await operator.compensate(sid, reason="give up")
        finally:
            await operator.close()
        assert snap.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)
        snap = await worker.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPENSATED
    assert any(h.kind == "refused" and "skip" in h.message for h in snap.history)


async def test_cli_abort_of_a_hung_step_while_its_worker_process_is_alive(store_url: str, tmp_path: Path) -> None:
    marker = tmp_path / "charging"
    child = await start_hung_worker(store_url, marker, lease_seconds=30.0)
    try:
        sid = marker.read_text()
        cli = subprocess.run(
            [sys.executable, "-m", "sagakit", "abort", sid, "--store", store_url, "--reason", "hung", "--actor", "bob"],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert child.poll() is None, "the worker must still be alive: it applied the abort"
        await poll("the worker to cancel its step", lambda: asyncio.sleep(0, marker.with_suffix(".cancelled").exists()))
    finally:
        child.kill()
        child.wait(10)
    reader = SagaEngine(store_url)
    try:
        snap = await reader.get(sid)
    finally:
        await reader.close()
    assert snap.status is SagaStatus.ABORTED
    assert snap.error == "aborted by bob: hung"
