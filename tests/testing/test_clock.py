"""The virtual clock: idle time skipped, thread work in real time, manual advance, and the engine's timers on it."""

from __future__ import annotations

import asyncio
import time

import pytest

from sagakit import RetryPolicy, SagaBuilder, SagaStatus, StepStatus
from sagakit.testing import SagaTestEnv, VirtualClock, run_to_end


async def test_an_idle_loop_skips_to_its_next_timer() -> None:
    async with VirtualClock() as clock:
        loop = asyncio.get_running_loop()
        t0, wall0 = loop.time(), clock.time()
        fired: list[float] = []
        loop.call_later(7200, lambda: fired.append(loop.time()))
        await asyncio.sleep(3600)
        assert not fired
        await asyncio.sleep(3600)
        assert fired and fired[0] - t0 >= 7200
        assert loop.time() - t0 >= 7200
        assert clock.time() - wall0 >= 7200
        assert clock.skipped >= 7200 - 1


async def test_time_is_not_skipped_while_a_thread_works() -> None:
    async with VirtualClock() as clock:
        loop = asyncio.get_running_loop()
        order: list[str] = []

        def work() -> None:
            time.sleep(0.2)
            order.append("thread")

        async def timer() -> None:
            await asyncio.sleep(1000)
            order.append("timer")

        await asyncio.gather(loop.run_in_executor(None, work), timer())
        # Had time skipped while the thread slept, the 1000 s timer would have fired first.
        assert order == ["thread", "timer"]
        assert clock.skipped > 990


async def test_timers_set_before_the_clock_keep_their_real_deadlines() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    runner = loop.call_later(30, fired.append, "runner timeout")  # set before: real time
    async with VirtualClock() as clock:
        loop.call_later(40, fired.append, "virtual")
        await asyncio.sleep(3600)
        assert fired == ["virtual"]
        assert clock.skipped >= 3600 - 1
    assert fired == ["virtual"]
    assert runner.when() - loop.time() > 20  # still about 30 s of real time away
    runner.cancel()


async def test_manual_clock_moves_only_by_advance() -> None:
    async with VirtualClock(auto_skip=False) as clock:
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        loop.call_later(50, fired.append, "50")
        loop.call_later(100, fired.append, "100")
        await asyncio.sleep(0.05)  # real time passes, virtual follows it only
        assert fired == []
        await clock.advance(60)
        assert fired == ["50"]
        await clock.advance(60)
        assert fired == ["50", "100"]
        with pytest.raises(ValueError, match="seconds >= 0"):
            await clock.advance(-1)


async def test_uninstall_gives_back_the_real_clock_and_keeps_remaining_delays() -> None:
    loop = asyncio.get_running_loop()
    clock = VirtualClock()
    clock.install()
    with pytest.raises(RuntimeError, match="installed already"):
        clock.install()
    await asyncio.sleep(5000)
    handle = loop.call_later(0.01, lambda: None)
    clock.uninstall()
    assert "time" not in vars(loop) and VirtualClock.of(loop) is None
    # Due 0.01 s from now on the real clock again, not 5000 s ahead of it.
    assert handle.when() - loop.time() < 1.0
    handle.cancel()


def step_failing_until(n: int, calls: list[tuple[int, float]], clock: VirtualClock):
    async def step(ctx) -> dict:
        calls.append((ctx.attempt, clock.time()))
        if ctx.attempt < n:
            raise RuntimeError(f"attempt {ctx.attempt} fails")
        return {"attempt": ctx.attempt}

    return step


async def test_retry_back_off_of_hours_runs_on_virtual_time(saga_env: SagaTestEnv) -> None:
    calls: list[tuple[int, float]] = []
    b = SagaBuilder("backoff")
    b.step(
        "flaky",
        step_failing_until(3, calls, saga_env.clock),
        retry=RetryPolicy(max_attempts=3, initial_delay=3600, multiplier=2, max_delay=86400, jitter=0),
    )
    engine = await saga_env.start_engine(b.build())
    snap = await run_to_end(engine, "backoff", {})
    assert snap.status is SagaStatus.COMPLETED
    assert [a for a, _ in calls] == [1, 2, 3]
    gaps = [later - earlier for (_, earlier), (_, later) in zip(calls, calls[1:])]
    assert gaps[0] >= 3600 and gaps[1] >= 7200
    assert gaps[0] < 3600 + 60 and gaps[1] < 7200 + 60  # fired when due, not long after


async def test_attempt_timeout_and_saga_deadline_fire_on_virtual_time(saga_env: SagaTestEnv) -> None:
    async def hangs(ctx) -> None:
        await asyncio.sleep(10**6)

    released: list[str] = []

    async def release(ctx) -> None:
        released.append(ctx.step)

    async def quick(ctx) -> str:
        return "ok"

    b = SagaBuilder("timeouts")
    b.step("reserve", quick, release)
    b.step("slow", hangs, timeout=600, retry=RetryPolicy(max_attempts=2, initial_delay=60, max_delay=60))
    b2 = SagaBuilder("deadline", deadline=1800)
    b2.step("reserve", quick, release)
    b2.step("slow", hangs, retry=RetryPolicy(max_attempts=1))
    engine = await saga_env.start_engine(b.build(), b2.build())
    started = saga_env.clock.time()
    snap = await run_to_end(engine, "timeouts", {})
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["slow"].attempts == 2
    assert "timed out after 600" in (snap.steps["slow"].error or "")
    assert saga_env.clock.time() - started >= 2 * 600 + 60 * 0.9  # two timeouts and a back-off (with jitter)
    snap = await run_to_end(engine, "deadline", {})
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["reserve"].status is StepStatus.COMPENSATED
    assert snap.updated_at - snap.created_at >= 1800
    assert released == ["reserve", "reserve"]


@pytest.mark.saga_store("sqlite")
async def test_sqlite_engine_on_virtual_time(saga_env: SagaTestEnv) -> None:
    calls: list[tuple[int, float]] = []
    b = SagaBuilder("backoff")
    b.step("flaky", step_failing_until(2, calls, saga_env.clock), retry=RetryPolicy(initial_delay=900, max_delay=900))
    engine = await saga_env.start_engine(b.build())
    assert engine.store.__class__.__name__ == "SQLiteStore"
    snap = await run_to_end(engine, "backoff", {})
    assert snap.status is SagaStatus.COMPLETED
    assert calls[1][1] - calls[0][1] >= 900 * 0.9


async def test_run_to_end_times_out_with_where_the_saga_stands(saga_env: SagaTestEnv) -> None:
    async def hangs(ctx) -> None:
        await asyncio.Event().wait()

    b = SagaBuilder("stuck")
    b.step("wait", hangs)
    engine = await saga_env.start_engine(b.build())
    with pytest.raises(TimeoutError, match=r"still running after 86400s \(steps: wait=running"):
        await run_to_end(engine, "stuck", {}, timeout=86400)


async def test_one_clock_per_loop() -> None:
    async with SagaTestEnv():
        with pytest.raises(RuntimeError, match="has a patched clock already"):
            VirtualClock().install()


def test_env_refuses_an_unknown_store_kind() -> None:
    with pytest.raises(ValueError, match="store must be one of 'memory', 'sqlite', got 'postgres'"):
        SagaTestEnv("postgres")
