"""Integration tests of SagaEngine on a real store (SQLite file by default, see conftest)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    NonRetryableError,
    NotASagaStore,
    PayloadTooLarge,
    RetryPolicy,
    SagaBuilder,
    SagaEngine,
    SagaNotFound,
    SagaStateError,
    SagaStatus,
    StepContext,
    StepStatus,
    UnknownSagaType,
)

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05, jitter=0)


class Recorder:
    """Records which step functions ran, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.contexts: list[StepContext] = []

    def action(self, name: str, result: Any = None, fail: bool = False) -> Any:
        async def fn(ctx: StepContext) -> Any:
            self.calls.append(name)
            self.contexts.append(ctx)
            if fail:
                raise NonRetryableError(f"{name} refused")
            return result if result is not None else {"done": name}

        return fn


def order_saga(rec: Recorder, fail_at: str | None = None) -> Any:
    b = SagaBuilder("order")
    b.step("reserve", rec.action("reserve", fail=fail_at == "reserve"), rec.action("release"))
    b.step("charge", rec.action("charge", fail=fail_at == "charge"), rec.action("refund"))
    b.step("ship", rec.action("ship", fail=fail_at == "ship"), rec.action("cancel"))
    return b.build()


async def test_happy_path_runs_steps_in_order_and_passes_context(store_url: str) -> None:
    rec = Recorder()
    async with SagaEngine(store_url) as engine:
        engine.register(order_saga(rec))
        sid = await engine.start("order", {"order_id": "o-1"}, correlation_id="c-1")
        snap = await engine.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPLETED
    assert rec.calls == ["reserve", "charge", "ship"]
    assert {n: s.status for n, s in snap.steps.items()} == dict.fromkeys(
        ["reserve", "charge", "ship"], StepStatus.COMPLETED
    )
    assert snap.steps["charge"].result == {"done": "charge"}
    assert snap.steps["charge"].attempts == 1
    ship_ctx = rec.contexts[2]
    assert ship_ctx.saga_id == sid
    assert ship_ctx.saga_name == "order"
    assert ship_ctx.step == "ship"
    assert ship_ctx.attempt == 1
    assert ship_ctx.data == {"order_id": "o-1"}
    assert ship_ctx.correlation_id == "c-1"
    assert ship_ctx.results == {"reserve": {"done": "reserve"}, "charge": {"done": "charge"}}
    assert ship_ctx.idempotency_key == f"{sid}:ship:action"
    kinds = [h.kind for h in snap.history]
    assert kinds[0] == "created" and kinds[-1] == "completed"
    assert kinds.count("step_completed") == 3


async def test_failure_compensates_completed_steps_in_reverse(store_url: str) -> None:
    rec = Recorder()
    async with SagaEngine(store_url) as engine:
        engine.register(order_saga(rec, fail_at="ship"))
        sid = await engine.start("order", {})
        snap = await engine.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPENSATED
    assert rec.calls == ["reserve", "charge", "ship", "refund", "release"]
    assert snap.steps["ship"].status is StepStatus.FAILED
    assert "ship refused" in (snap.steps["ship"].error or "")
    assert snap.steps["charge"].status is StepStatus.COMPENSATED
    assert snap.steps["reserve"].status is StepStatus.COMPENSATED
    refund_ctx = rec.contexts[3]
    assert refund_ctx.compensation and refund_ctx.result == {"done": "charge"}
    assert refund_ctx.idempotency_key == f"{sid}:charge:compensation"
    assert "ship" in (snap.error or "")


async def test_sync_steps_run_in_worker_threads(store_url: str) -> None:
    threads: list[str] = []

    def sync_step(ctx: StepContext) -> int:
        threads.append(threading.current_thread().name)
        return 7

    b = SagaBuilder("sync")
    b.step("a", sync_step)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        snap = await engine.wait(await engine.start("sync"), timeout=10)
    assert snap.steps["a"].result == 7
    assert threads and threads[0] != threading.main_thread().name


async def test_parallel_steps_run_concurrently(store_url: str) -> None:
    running = 0
    peak = 0

    async def slow(ctx: StepContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.1)
        running -= 1

    async def noop(ctx: StepContext) -> None:
        return None

    b = SagaBuilder("fan")
    b.step("root", noop)
    for i in range(4):
        b.step(f"p{i}", slow, after=["root"])
    b.step("join", noop, after=[f"p{i}" for i in range(4)])
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        snap = await engine.wait(await engine.start("fan"), timeout=10)
    assert snap.status is SagaStatus.COMPLETED
    assert peak == 4


async def test_transient_failures_are_retried(store_url: str) -> None:
    attempts: list[int] = []

    async def flaky(ctx: StepContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("try again")
        return "ok"

    b = SagaBuilder("flaky")
    b.step("a", flaky, retry=FAST)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        snap = await engine.wait(await engine.start("flaky"), timeout=10)
    assert snap.status is SagaStatus.COMPLETED
    assert attempts == [1, 2, 3]
    assert snap.steps["a"].attempts == 3
    assert sum(h.kind == "step_failed" for h in snap.history) == 2


async def test_non_retryable_error_skips_retries(store_url: str) -> None:
    calls = 0

    async def bad(ctx: StepContext) -> None:
        nonlocal calls
        calls += 1
        raise NonRetryableError("card declined")

    b = SagaBuilder("nr")
    b.step("a", bad, retry=FAST)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        snap = await engine.wait(await engine.start("nr"), timeout=10)
    assert calls == 1
    assert snap.status is SagaStatus.COMPENSATED
    assert "card declined" in (snap.steps["a"].error or "")


async def test_policy_non_retryable_types(store_url: str) -> None:
    calls = 0

    async def bad(ctx: StepContext) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("missing")

    b = SagaBuilder("nrt")
    b.step("a", bad, retry=RetryPolicy(max_attempts=5, initial_delay=0.01, non_retryable=(KeyError,)))
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        snap = await engine.wait(await engine.start("nrt"), timeout=10)
    assert calls == 1 and snap.steps["a"].status is StepStatus.FAILED


async def test_attempt_timeout_cancels_and_says_so(store_url: str) -> None:
    cancelled = asyncio.Event()

    async def hang(ctx: StepContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    b = SagaBuilder("slow")
    b.step("a", hang, timeout=0.1, retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        snap = await engine.wait(await engine.start("slow"), timeout=10)
    assert cancelled.is_set()
    assert snap.steps["a"].attempts == 2
    assert "timed out" in (snap.steps["a"].error or "")
    assert snap.status is SagaStatus.COMPENSATED


async def test_result_that_is_not_json_fails_the_attempt(store_url: str) -> None:
    async def weird(ctx: StepContext) -> Any:
        return {1, 2}

    b = SagaBuilder("weird")
    b.step("a", weird)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        snap = await engine.wait(await engine.start("weird"), timeout=10)
    assert snap.steps["a"].status is StepStatus.FAILED
    assert "not JSON-serialisable" in (snap.steps["a"].error or "")
    assert snap.steps["a"].attempts == 1


async def test_result_over_payload_limit_fails(store_url: str) -> None:
    async def big(ctx: StepContext) -> str:
        return "x" * 5000

    b = SagaBuilder("big", max_payload_bytes=1000)
    b.step("a", big)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        with pytest.raises(PayloadTooLarge, match="1000 bytes"):
            await engine.start("big", {"blob": "y" * 2000})
        snap = await engine.wait(await engine.start("big", {}), timeout=10)
    assert "over the limit of 1000 bytes" in (snap.steps["a"].error or "")


async def test_idempotent_start(store_url: str) -> None:
    rec = Recorder()
    async with SagaEngine(store_url) as engine:
        engine.register(order_saga(rec))
        first = await engine.start("order", {"n": 1}, idempotency_key="o-1")
        again = await engine.start("order", {"n": 2}, idempotency_key="o-1")
        both = await asyncio.gather(
            engine.start("order", {}, idempotency_key="o-2"),
            engine.start("order", {}, idempotency_key="o-2"),
        )
        await engine.wait(first, timeout=10)
        await engine.wait(both[0], timeout=10)
        assert await engine.count() == 2
    assert first == again
    assert both[0] == both[1]
    assert rec.calls.count("reserve") == 2


async def test_saga_ids_are_unique_and_sort_in_creation_order(store_url: str) -> None:
    rec = Recorder()
    async with SagaEngine(store_url) as engine:
        engine.register(order_saga(rec))
        ids = []
        for _ in range(3):
            ids.extend(await asyncio.gather(*(engine.start("order", {}) for _ in range(20))))
            await asyncio.sleep(0.002)  # the next group starts in a later millisecond
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    groups = [ids[0:20], ids[20:40], ids[40:60]]
    assert max(groups[0]) < min(groups[1]) and max(groups[1]) < min(groups[2])


async def test_start_errors_store_nothing(store_url: str) -> None:
    rec = Recorder()
    async with SagaEngine(store_url) as engine:
        engine.register(order_saga(rec))
        with pytest.raises(UnknownSagaType, match="no saga named shipping"):
            await engine.start("shipping", {})
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            await engine.start("order", {"when": object()})
        assert await engine.count() == 0


async def test_get_and_admin_on_unknown_id(store_url: str) -> None:
    async with SagaEngine(store_url) as engine:
        with pytest.raises(SagaNotFound):
            await engine.get("nope")
        for call in (engine.retry, engine.compensate, engine.abort):
            with pytest.raises(SagaNotFound):
                await call("nope")
        with pytest.raises(SagaNotFound):
            await engine.skip("nope", "a")


async def test_wait_times_out(store_url: str) -> None:
    gate = asyncio.Event()

    async def blocked(ctx: StepContext) -> None:
        await gate.wait()

    b = SagaBuilder("blocked")
    b.step("a", blocked)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("blocked")
        with pytest.raises(TimeoutError, match="still running"):
            await engine.wait(sid, timeout=0.2)
        gate.set()
        assert (await engine.wait(sid, timeout=10)).status is SagaStatus.COMPLETED


async def test_list_filters_and_pages_newest_first(store_url: str) -> None:
    rec = Recorder()
    clock_value = [1000.0]

    def clock() -> float:
        clock_value[0] += 1.0
        return clock_value[0]

    async with SagaEngine(store_url, clock=clock) as engine:
        engine.register(order_saga(rec))
        b = SagaBuilder("other")
        b.step("x", rec.action("x", fail=True))
        engine.register(b.build())
        ids = [await engine.start("order", {"i": i}, correlation_id=f"c{i % 2}") for i in range(5)]
        fail_id = await engine.start("other", {})
        for sid in [*ids, fail_id]:
            await engine.wait(sid, timeout=10)
        everything = await engine.list()
        assert [s.id for s in everything] == [fail_id, *reversed(ids)]
        assert [s.id for s in await engine.list(limit=2, offset=1)] == [ids[4], ids[3]]
        assert [s.id for s in await engine.list(name="other")] == [fail_id]
        assert {s.id for s in await engine.list(status=SagaStatus.COMPLETED)} == set(ids)
        assert {s.id for s in await engine.list(status="compensated")} == {fail_id}
        assert {s.id for s in await engine.list(correlation_id="c0")} == {ids[0], ids[2], ids[4]}
        created = sorted(s.created_at for s in everything)
        window = await engine.list(created_after=created[1], created_before=created[3])
        assert len(window) == 2
        assert await engine.count(status=SagaStatus.COMPLETED) == 5
        with pytest.raises(ValueError, match="unknown saga status"):
            await engine.list(status="weird")


async def test_compensation_failure_then_operator_retry(store_url: str) -> None:
    refund_ok = False
    refunds = 0

    async def ok(ctx: StepContext) -> str:
        return "ok"

    async def refund(ctx: StepContext) -> None:
        nonlocal refunds
        refunds += 1
        if not refund_ok:
            raise ConnectionError("bank offline")

    async def fail(ctx: StepContext) -> None:
        raise NonRetryableError("no stock")

    b = SagaBuilder("cf")
    b.step("charge", ok, refund, compensation_retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    b.step("ship", fail)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("cf")
        snap = await engine.wait(sid, timeout=10)
        assert snap.status is SagaStatus.FAILED
        assert snap.steps["charge"].status is StepStatus.COMPENSATION_FAILED
        assert "bank offline" in (snap.error or "")
        assert refunds == 2
        refund_ok = True
        await engine.retry(sid, reason="bank is back", actor="alice")
        snap = await engine.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPENSATED
    assert refunds == 3
    retry_entries = [h for h in snap.history if h.kind == "retry"]
    assert retry_entries and "alice" in retry_entries[0].message
    assert "bank is back" in retry_entries[0].message


async def test_skip_a_waiting_step_gives_its_result_to_later_steps(store_url: str) -> None:
    seen: list[Any] = []

    async def broken(ctx: StepContext) -> None:
        raise ConnectionError("down")

    async def after(ctx: StepContext) -> None:
        seen.append(ctx.results["quote"])

    b = SagaBuilder("skippy")
    b.step("quote", broken, retry=RetryPolicy(max_attempts=5, initial_delay=60, max_delay=60))
    b.step("book", after)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("skippy")
        for _ in range(200):
            snap = await engine.get(sid)
            if snap.steps["quote"].attempts == 1 and snap.steps["quote"].status is StepStatus.PENDING:
                break
            await asyncio.sleep(0.01)
        assert snap.steps["quote"].next_attempt_at is not None
        with pytest.raises(SagaStateError, match="no step 'nope'"):
            await engine.skip(sid, "nope")
        await engine.skip(sid, "quote", result={"price": 10}, reason="quoted by phone")
        snap = await engine.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPLETED
    assert snap.steps["quote"].status is StepStatus.SKIPPED
    assert seen == [{"price": 10}]
    assert any(h.kind == "skip" and "quoted by phone" in h.message for h in snap.history)


async def test_compensate_a_running_saga(store_url: str) -> None:
    undone: list[str] = []
    cancelled = asyncio.Event()

    async def ok(ctx: StepContext) -> str:
        return "ok"

    async def undo(ctx: StepContext) -> None:
        undone.append(ctx.step)

    started = asyncio.Event()

    async def hangs(ctx: StepContext) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    b = SagaBuilder("comp")
    b.step("a", ok, undo)
    b.step("b", hangs, undo)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("comp")
        await asyncio.wait_for(started.wait(), 10)
        await engine.compensate(sid, reason="customer cancelled")
        # the hung step does not hold the rollback up: it is cancelled, and, as it may
        # have had its effect, compensated before the step it depends on
        snap = await engine.wait(sid, timeout=10)
        assert cancelled.is_set()
        with pytest.raises(SagaStateError, match="compensated"):
            await engine.compensate(sid)
    assert snap.status is SagaStatus.COMPENSATED
    assert undone == ["b", "a"]
    assert snap.steps["b"].status is StepStatus.COMPENSATED
    assert any(h.kind == "step_cancelled" and h.step == "b" for h in snap.history)
    assert any("customer cancelled" in h.message for h in snap.history)


async def test_abort_stops_without_compensation(store_url: str) -> None:
    undone: list[str] = []
    cancelled = asyncio.Event()

    async def ok(ctx: StepContext) -> str:
        return "ok"

    async def undo(ctx: StepContext) -> None:
        undone.append(ctx.step)

    started = asyncio.Event()

    async def hangs(ctx: StepContext) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    b = SagaBuilder("ab")
    b.step("a", ok, undo)
    b.step("b", hangs, undo)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("ab")
        await asyncio.wait_for(started.wait(), 10)
        snap = await engine.abort(sid, reason="fraud")
        assert snap.status is SagaStatus.ABORTED
        await asyncio.wait_for(cancelled.wait(), 5)
        with pytest.raises(SagaStateError, match="already finished"):
            await engine.abort(sid)
        with pytest.raises(SagaStateError):
            await engine.retry(sid)
    assert undone == []
    assert "fraud" in (snap.error or "")


async def test_admin_from_an_engine_that_is_not_running(store_url: str) -> None:
    """CLI-style admin: a second engine that only reads and acts on the store."""
    rec = Recorder()
    definition = order_saga(rec, fail_at="reserve")
    async with SagaEngine(store_url) as engine:
        engine.register(definition)
        sid = await engine.wait(await engine.start("order"), timeout=10)
    admin = SagaEngine(store_url)
    admin.register(definition)
    try:
        snap = await admin.get(sid.id)
        assert snap.status is SagaStatus.COMPENSATED
        with pytest.raises(SagaStateError):
            await admin.retry(sid.id)
        pending = await admin.start("order", {"queued": True})
        assert (await admin.get(pending)).status is SagaStatus.PENDING
        snap = await admin.abort(pending, reason="not needed")
        assert snap.status is SagaStatus.ABORTED
    finally:
        await admin.close()


async def test_every_attempt_is_committed_before_its_step_runs(store_url: str) -> None:
    """Write-ahead: when a step body runs, the store already records its attempt as started."""
    seen: list[tuple[str, str, int, int]] = []
    engine = SagaEngine(store_url)

    async def step(ctx: StepContext) -> str:
        st = await engine.store.get(ctx.saga_id)
        assert st is not None
        s = st.steps[ctx.step]
        attempt = s.compensation_attempts if ctx.compensation else s.attempts
        seen.append((ctx.step, s.status.value, attempt, ctx.attempt))
        if ctx.step == "c" and not ctx.compensation:
            raise NonRetryableError("no")
        return "ok"

    b = SagaBuilder("ahead")
    b.step("a", step, step)
    b.step("b", step, step)
    b.step("c", step)
    engine.register(b.build())
    async with engine:
        sids = [await engine.start("ahead") for _ in range(5)]
        for sid in sids:
            assert (await engine.wait(sid, timeout=10)).status is SagaStatus.COMPENSATED
    assert len(seen) == 5 * 5
    for name, status, stored, attempt in seen:
        assert stored == attempt, f"step {name} attempt {attempt} ran before it was recorded"
        assert status in ("running", "compensating"), (name, status)


async def test_started_sagas_are_resumed_by_the_next_engine(store_url: str) -> None:
    rec = Recorder()
    definition = order_saga(rec)
    queued = SagaEngine(store_url)
    queued.register(definition)
    ids = [await queued.start("order", {"i": i}) for i in range(5)]
    await queued.close()
    assert rec.calls == []
    async with SagaEngine(store_url) as engine:
        engine.register(definition)
        snaps = [await engine.wait(i, timeout=10) for i in ids]
    assert {s.status for s in snaps} == {SagaStatus.COMPLETED}
    assert rec.calls.count("ship") == 5


async def test_graceful_shutdown_leaves_running_step_to_next_engine(store_url: str) -> None:
    runs: list[int] = []
    first_run_started = asyncio.Event()

    async def long(ctx: StepContext) -> str:
        runs.append(ctx.attempt)
        if len(runs) == 1:
            first_run_started.set()
            await asyncio.sleep(30)
        return "done"

    b = SagaBuilder("long")
    b.step("a", long)
    definition = b.build()
    engine = SagaEngine(store_url, shutdown_grace=0.1)
    engine.register(definition)
    await engine.run()
    sid = await engine.start("long")
    await asyncio.wait_for(first_run_started.wait(), 5)
    await engine.close()
    engine2 = SagaEngine(store_url)
    engine2.register(definition)
    snap = await engine2.get(sid)
    assert snap.status is SagaStatus.RUNNING
    assert snap.steps["a"].status is StepStatus.RUNNING  # not marked done
    async with engine2:
        snap = await engine2.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPLETED
    assert snap.steps["a"].result == "done"
    assert any(h.kind == "resumed" for h in snap.history)


async def test_expired_lease_is_taken_over_and_stale_completion_refused(store_url: str) -> None:
    release_first = asyncio.Event()
    calls: list[str] = []

    async def step(ctx: StepContext) -> str:
        calls.append(ctx.idempotency_key)
        if len(calls) == 1:
            await release_first.wait()
            return "from the stuck worker"
        return "from the new worker"

    b = SagaBuilder("takeover")
    b.step("a", step)
    definition = b.build()
    stuck = SagaEngine(store_url, lease_seconds=0.3, worker_id="stuck")
    stuck.register(definition)
    await stuck.run()
    # The stuck worker stops claiming and renewing its leases, as if paused.
    stuck._tasks[1].cancel()
    stuck._tasks[2].cancel()
    sid = await stuck.start("takeover")
    while not calls:
        await asyncio.sleep(0.01)
    async with SagaEngine(store_url, lease_seconds=5, worker_id="rescuer", poll_interval=0.05) as rescuer:
        rescuer.register(definition)
        snap = await rescuer.wait(sid, timeout=10)
        assert snap.steps["a"].result == "from the new worker"
        release_first.set()
        await asyncio.sleep(0.2)
    await stuck.close()
    reader = SagaEngine(store_url)
    try:
        final = await reader.get(sid)
    finally:
        await reader.close()
    assert final.steps["a"].result == "from the new worker"
    assert calls == [f"{sid}:a:action"] * 2
    assert any(h.kind == "fenced" and "stuck" in h.message for h in final.history)


async def test_versioned_definitions(store_url: str) -> None:
    gate = asyncio.Event()
    ran: list[str] = []

    def make(version: int) -> Any:
        async def step(ctx: StepContext) -> int:
            ran.append(f"v{version}")
            if version == 1:
                await gate.wait()
            return version

        b = SagaBuilder("ver", version=version)
        b.step("a", step)
        return b.build()

    v1, v2 = make(1), make(2)
    async with SagaEngine(store_url) as engine:
        engine.register(v1)
        old = await engine.start("ver")
        engine.register(v2)
        new = await engine.start("ver")
        assert (await engine.wait(new, timeout=10)).version == 2
        gate.set()
        snap = await engine.wait(old, timeout=10)
        assert snap.version == 1 and snap.steps["a"].result == 1


async def test_a_worker_claims_only_sagas_whose_definition_it_has(store_url: str) -> None:
    def make(version: int) -> Any:
        async def step(ctx: StepContext) -> int:
            return version

        b = SagaBuilder("ver", version=version)
        b.step("a", step)
        return b.build()

    queued = SagaEngine(store_url)
    queued.register(make(1))
    sid = await queued.start("ver")
    await queued.close()
    async with SagaEngine(store_url, poll_interval=0.02) as engine:
        engine.register(make(2))
        st = await engine.store.get(sid)
        assert st is not None
        revision = st.revision
        # It claims and runs sagas of v2 meanwhile ...
        done = await engine.wait(await engine.start("ver"), timeout=10)
        assert done.status is SagaStatus.COMPLETED
        for _ in range(10):
            await asyncio.sleep(engine.poll_interval)
        # ... and never takes the v1 saga: no claim, no parking, nothing delayed for 30 s.
        st = await engine.store.get(sid)
        assert st is not None and st.revision == revision
        assert st.status is SagaStatus.PENDING
        assert not any(h.kind == "parked" for h in (await engine.get(sid)).history)
    async with SagaEngine(store_url) as engine:
        engine.register(make(1))
        snap = await engine.wait(sid, timeout=10)  # a worker that has v1 runs it at once
    assert snap.status is SagaStatus.COMPLETED and snap.steps["a"].result == 1


async def test_a_process_without_definitions_never_claims(store_url: str) -> None:
    b = SagaBuilder("api_only")
    b.step("a", lambda ctx: 1)
    queued = SagaEngine(store_url)
    queued.register(b.build())
    sid = await queued.start("api_only")
    await queued.close()
    engine = SagaEngine(store_url, poll_interval=0.02)
    claims = 0
    claim = engine.store.claim

    async def counting_claim(*args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return await claim(*args, **kwargs)

    engine.store.claim = counting_claim  # type: ignore[method-assign]
    async with engine:
        for _ in range(10):
            await asyncio.sleep(engine.poll_interval)
        st = await engine.store.get(sid)
    assert claims == 0
    assert st is not None and st.status is SagaStatus.PENDING and st.revision == 0


async def test_deadline_compensates(store_url: str) -> None:
    undone: list[str] = []

    async def ok(ctx: StepContext) -> str:
        return "ok"

    async def undo(ctx: StepContext) -> None:
        undone.append(ctx.step)

    async def slow(ctx: StepContext) -> None:
        raise ConnectionError("still busy")

    b = SagaBuilder("deadline", deadline=0.3)
    b.step("a", ok, undo)
    b.step("b", slow, retry=RetryPolicy(max_attempts=1000, initial_delay=0.05, max_delay=0.05))
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        snap = await engine.wait(await engine.start("deadline"), timeout=10)
    assert snap.status is SagaStatus.COMPENSATED
    assert "deadline" in (snap.error or "")
    assert undone == ["a"]


async def test_steps_after_a_pivot_retry_by_their_policy_then_wait_for_an_operator(store_url: str) -> None:
    attempts = 0

    async def ok(ctx: StepContext) -> str:
        return "ok"

    async def undo(ctx: StepContext) -> None:
        raise AssertionError("must not compensate after the pivot")

    async def flaky(ctx: StepContext) -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("carrier offline")
        return "shipped"

    b = SagaBuilder("pivot")
    b.step("reserve", ok, undo)
    b.step("charge", ok, pivot=True)
    b.step("ship", flaky, retry=RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.02))
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("pivot")
        snap = await engine.wait(sid, timeout=10)
        assert snap.status is SagaStatus.FAILED  # no rollback past the pivot: an operator decides
        assert attempts == 2
        assert snap.error is not None and "cannot be rolled back" in snap.error
        await engine.retry(sid, reason="carrier back")
        snap = await engine.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPLETED
    assert attempts == 3


async def test_store_that_is_not_a_sagakit_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes\n")
    engine = SagaEngine(f"sqlite:///{path}")
    with pytest.raises(NotASagaStore, match="left untouched"):
        await engine.get("x")
    assert path.read_text() == "these are my notes\n"
    assert not (tmp_path / "notes.db-wal").exists()


async def test_store_beside_application_tables(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
        conn.execute("INSERT INTO orders VALUES ('o-1')")
    rec = Recorder()
    async with SagaEngine(f"sqlite:///{path}") as engine:
        engine.register(order_saga(rec))
        await engine.wait(await engine.start("order"), timeout=10)
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert conn.execute("SELECT id FROM orders").fetchall() == [("o-1",)]
    assert {"orders", "sagakit_sagas", "sagakit_history", "sagakit_outbox", "sagakit_inbox"} <= tables


async def test_fork_reruns_from_a_step_with_earlier_results(store_url: str) -> None:
    ship_ok = False
    seen: list[Any] = []

    async def reserve(ctx: StepContext) -> dict[str, str]:
        return {"reservation": ctx.saga_id}

    async def charge(ctx: StepContext) -> str:
        seen.append(ctx.results["reserve"])
        return "charged"

    async def ship(ctx: StepContext) -> str:
        if not ship_ok:
            raise NonRetryableError("carrier down")
        return "shipped"

    b = SagaBuilder("forky")
    b.step("reserve", reserve)
    b.step("charge", charge)
    b.step("ship", ship)
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        old = await engine.start("forky", {"order": 1})
        first = await engine.wait(old, timeout=10)
        assert first.status is SagaStatus.COMPENSATED
        with pytest.raises(SagaStateError, match="no step 'nope'"):
            await engine.fork(old, "nope")
        ship_ok = True
        new = await engine.fork(old, "charge", reason="carrier is back", actor="bob")
        snap = await engine.wait(new, timeout=10)
        old_snap = await engine.get(old)
    assert snap.status is SagaStatus.COMPLETED
    assert snap.steps["reserve"].status is StepStatus.SKIPPED
    assert snap.steps["reserve"].result == {"reservation": old}
    assert seen[-1] == {"reservation": old}
    assert snap.data == {"order": 1}
    assert any(h.kind == "fork" and old in h.message and "bob" in h.message for h in snap.history)
    assert any(h.kind == "fork" and new in h.message for h in old_snap.history)


async def test_a_retried_attempt_runs_once_when_commits_are_slow(tmp_path: Path) -> None:
    """A retry timer must not fire locally while the saga's lease is being released."""
    import collections

    from sagakit.stores.sqlite import SQLiteStore

    class SlowStore(SQLiteStore):
        async def commit(self, writes: Any) -> Any:
            await asyncio.sleep(0.03)
            return await super().commit(writes)

    runs: collections.Counter[tuple[str, int]] = collections.Counter()

    async def ok(ctx: StepContext) -> None:
        return None

    async def flaky(ctx: StepContext) -> None:
        runs[(ctx.saga_id, ctx.attempt)] += 1
        if ctx.attempt == 1:
            raise ConnectionError("transient")

    b = SagaBuilder("race")
    b.step("a", ok)
    b.step("b", flaky, retry=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0))
    engine = SagaEngine(SlowStore(str(tmp_path / "r.db")), poll_interval=0.005)
    engine.register(b.build())
    async with engine:
        ids = await asyncio.gather(*(engine.start("race", {}) for _ in range(20)))
        snaps = [await engine.wait(i, timeout=30) for i in ids]
    assert {s.status for s in snaps} == {SagaStatus.COMPLETED}
    assert len(runs) == 40
    assert all(n == 1 for n in runs.values()), [k for k, n in runs.items() if n > 1]


async def test_retry_after_a_failure_past_the_pivot_reruns_steps_cut_off_in_parallel(store_url: str) -> None:
    ship_ok = False
    notified: list[int] = []

    async def ok(ctx: StepContext) -> str:
        return "ok"

    async def ship(ctx: StepContext) -> str:
        if not ship_ok:
            raise NonRetryableError("no carrier")
        return "shipped"

    async def notify(ctx: StepContext) -> str:
        notified.append(ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.sleep(30)  # still running when "ship" fails
        return "sent"

    b = SagaBuilder("pivot_parallel")
    b.step("charge", ok, pivot=True)
    b.step("ship", ship, after=["charge"])
    b.step("notify", notify, after=["charge"])
    async with SagaEngine(store_url) as engine:
        engine.register(b.build())
        sid = await engine.start("pivot_parallel")
        snap = await engine.wait(sid, timeout=10)
        assert snap.status is SagaStatus.FAILED
        ship_ok = True
        await engine.retry(sid, reason="carrier found")
        snap = await engine.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPLETED
    assert snap.steps["notify"].result == "sent"
    assert snap.steps["notify"].attempts == 2 and notified[-1] == 2


async def test_close_stops_an_idle_worker_whatever_it_was_awaiting() -> None:
    """close() cancels the claim loop; no await inside it may swallow that cancellation.

    The store's ``wait_for_work`` returns at once, so the idle claim loop spins through
    every await it has (claim, next wake, the wait for work or a poke, the clean-up of
    that wait); closing at many different moments lands the cancellation in each of them.
    A loop that swallowed it went on polling and close() never returned.
    """
    from sagakit.stores.memory import MemoryStore

    class ListeningStore(MemoryStore):
        async def wait_for_work(self, timeout: float) -> bool:
            return False

    rec = Recorder()
    for i in range(60):
        engine = SagaEngine(ListeningStore(), poll_interval=0.001)
        engine.register(order_saga(rec))
        await engine.run()
        for _ in range(i % 7):
            await asyncio.sleep(0)
        await asyncio.wait_for(engine.close(), 5)
