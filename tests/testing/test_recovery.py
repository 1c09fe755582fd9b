"""Crash and recover at every commit boundary; run each step twice; duplicate and reordered messages."""

from __future__ import annotations

import pytest

from sagakit import RetryPolicy, SagaBuilder, SagaStatus
from sagakit.testing import (
    SagaTestEnv,
    check_deliveries,
    check_idempotency,
    crash_at_every_commit,
    kill,
    run_to_end,
    settle,
)

from .sagas import EVENTS, ORDER, REPLIES, World, diamond, mixed


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_crash_after_every_commit_and_recover(kind: str, tmp_path) -> None:
    async def fail(ctx) -> None:
        raise RuntimeError("no stock")

    async def ok(ctx) -> str:
        return ctx.step

    async def undo(ctx) -> None:
        return None

    b = SagaBuilder("rollback")
    b.step("a", ok, undo)
    b.step("b", fail, retry=RetryPolicy(max_attempts=2, initial_delay=30, max_delay=30))
    async with SagaTestEnv(kind, directory=tmp_path) as env:
        report = await crash_at_every_commit(diamond(World()), {"order": 1}, env=env)
        rollback = await crash_at_every_commit(b.build(), {}, env=env)
    report.assert_ok()
    assert report.reference.status is SagaStatus.COMPLETED
    assert report.commits >= 3 and len(report) == report.commits - 1
    assert [r.after for r in report] == list(range(1, report.commits))
    assert all(r.status is SagaStatus.COMPLETED for r in report)
    # A crash between a step's start (committed) and its result: the step runs again.
    assert report[0].crashed and report[0].reran == ("reserve",)
    assert any(r.reran for r in report[1:])
    rollback.assert_ok()
    assert rollback.reference.status is SagaStatus.COMPENSATED
    assert all(r.status is SagaStatus.COMPENSATED for r in rollback)
    assert any("a (compensation)" in r.reran for r in rollback)
    assert "crash after commit 1: completed, ran again: reserve" in str(report)


async def test_crash_recovery_of_message_steps(saga_env: SagaTestEnv) -> None:
    report = await crash_at_every_commit(mixed(World()), ORDER, env=saga_env, replies=REPLIES, events=EVENTS)
    report.assert_ok()
    assert report.reference.status is SagaStatus.COMPLETED and len(report) >= 1


async def test_kill_leaves_the_saga_to_the_next_engine(saga_env: SagaTestEnv) -> None:
    runs: list[int] = []

    async def slow(ctx) -> None:
        runs.append(ctx.attempt)
        if len(runs) == 1:
            await saga_env.clock.advance(10**6)  # the first engine dies meanwhile

    b = SagaBuilder("killed")
    b.step("slow", slow)
    first = await saga_env.start_engine(b.build())
    saga_id = await first.start("killed", {})
    while not runs:
        await saga_env.advance(1)
    await kill(first)
    second = await saga_env.start_engine(b.build())
    snap = await settle(second, saga_id)
    assert snap.status is SagaStatus.COMPLETED
    assert len(runs) == 2  # run again by the second engine once the lease ran out


async def test_run_each_step_twice_finds_the_step_that_is_not_idempotent(saga_env: SagaTestEnv) -> None:
    world = World()
    report = await check_idempotency(
        diamond(world, reserve_idempotent=False), {}, env=saga_env, observe=lambda: dict(world.rows)
    )
    labels = [r.label for r in report]
    assert {"reserve", "charge", "notify", "ship"} <= set(labels)
    assert {"compensation of reserve", "compensation of charge", "compensation of ship"} <= set(labels)
    assert report.not_idempotent == ["reserve"]
    bad = next(r for r in report if r.label == "reserve")
    assert not bad.same_effect and bad.same_result
    with pytest.raises(AssertionError, match="reserve: NOT idempotent: its second run changed the observed state"):
        report.assert_ok()

    fine = World()
    check = await check_idempotency(diamond(fine), {}, env=saga_env, observe=lambda: dict(fine.rows))
    check.assert_ok()


async def test_a_second_run_that_raises_or_returns_another_result_is_reported(saga_env: SagaTestEnv) -> None:
    seen: set[str] = set()
    counter = iter(range(100))

    async def insert(ctx) -> None:
        if ctx.idempotency_key in seen:
            raise KeyError("duplicate key")
        seen.add(ctx.idempotency_key)

    async def number(ctx) -> int:
        return next(counter)

    b = SagaBuilder("raises")
    b.step("insert", insert)
    b.step("number", number)
    report = await check_idempotency(b.build(), {}, env=saga_env)
    by = {r.label: r for r in report}
    assert by["insert"].error == "KeyError: 'duplicate key'"
    assert not by["number"].same_result
    assert report.not_idempotent == ["insert", "number"]
    # The saga went on with the first run's outcome.
    assert report.snapshots[0].status is SagaStatus.COMPLETED


async def test_duplicate_and_reordered_messages_end_like_single_ones(saga_env: SagaTestEnv) -> None:
    report = await check_deliveries(mixed(World()), ORDER, replies=REPLIES, events=EVENTS, env=saga_env)
    report.assert_ok()
    assert [r.scenario for r in report] == [
        "every message once",
        "every reply twice, same message id",
        "every reply twice, new message id",
        "every command delivered twice",
        "replies late, in reverse order",
    ]
    assert all(r.status is SagaStatus.COMPLETED for r in report)
    assert report["every message once"].dead_letters == ()
    same = report["every reply twice, same message id"].dead_letters
    # Dropped by the inbox, or (both copies handled at once) refused as stale by the machine.
    assert len(same) == 1 and ("duplicate" in same[0] or "stale reply" in same[0])
    assert "stale reply" in report["every reply twice, new message id"].dead_letters[0]
    assert report["every command delivered twice"].commands == {"charge": 2}


async def test_deliveries_need_a_message_step(saga_env: SagaTestEnv) -> None:
    with pytest.raises(ValueError, match="saga diamond has no message step"):
        await check_deliveries(diamond(World()), {}, replies={}, env=saga_env)


async def test_run_to_end_after_a_failure_past_the_pivot(saga_env: SagaTestEnv) -> None:
    async def ok(ctx) -> None:
        return None

    async def fails(ctx) -> None:
        raise RuntimeError("carrier down")

    b = SagaBuilder("pivoted")
    b.step("charge", ok, pivot=True)
    b.step("ship", fails, retry=RetryPolicy(max_attempts=2, initial_delay=3600, max_delay=3600))
    engine = await saga_env.start_engine(b.build())
    snap = await run_to_end(engine, "pivoted", {})
    assert snap.status is SagaStatus.FAILED
    assert "cannot be rolled back" in (snap.error or "")
    assert snap.steps["ship"].attempts == 2  # its retry an hour later ran, on the virtual clock
    assert snap.steps["charge"].status.value == "completed"  # never compensated
