"""Resource limits end to end: on the suite's database (SQLite or PostgreSQL), and across PostgreSQL workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sagakit import (
    DefinitionError,
    NonRetryableError,
    Resource,
    RetryPolicy,
    SagaBuilder,
    SagaEngine,
    SagaStatus,
    StepContext,
    StepStatus,
    send,
)
from sagakit.prometheus import PrometheusObserver
from sagakit.stores.memory import MemoryStore
from tests.limits.sagas import PAYMENTS, limited_payment

ROOT = Path(__file__).resolve().parent.parent
ONCE = RetryPolicy(max_attempts=1)


async def poll(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    """Await *check()* until it returns something truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def usage(engine: SagaEngine, name: str = "payments") -> tuple[int, int]:
    """(permits in use, attempts waiting) of resource *name*, as the store sees them."""
    for r in await engine.resources():
        if r.name == name:
            return r.in_use, r.waiting
    return 0, 0


async def test_no_more_calls_run_at_once_than_the_limit_and_the_waiting_ones_show_it(store_url: str) -> None:
    running = 0
    most = 0
    gate = asyncio.Event()

    async def charge(ctx: StepContext) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1

    b = SagaBuilder("pay")
    b.step("charge", charge, resource="payments")
    async with SagaEngine(store_url, resources=[Resource("payments", concurrency=2)]) as engine:
        engine.register(b.build())
        ids = [await engine.start("pay", {"i": i}) for i in range(6)]
        assert await poll("the store to show 2 permits in use and 4 waiting", lambda: _is(usage(engine), (2, 4)))
        # A granted attempt starts once the transition recording its grant is committed: soon after.
        assert await poll("both granted attempts to be running", lambda: _now(running == 2))
        busy = PrometheusObserver(CollectorRegistry())
        await busy.refresh(engine)
        assert busy.registry.get_sample_value("sagakit_resource_permits_in_use", {"resource": "payments"}) == 2
        assert busy.registry.get_sample_value("sagakit_resource_waiting", {"resource": "payments"}) == 4
        waiting = [s for s in [await engine.get(i) for i in ids] if s.steps["charge"].waiting_for == "payments"]
        assert len(waiting) == 4
        snap = await engine.get(waiting[0].id)
        assert snap.status is SagaStatus.RUNNING
        assert snap.steps["charge"].status is StepStatus.RUNNING  # its attempt is under way: waiting for a permit
        kinds = [h.kind for h in snap.history]
        assert "resource_waiting" in kinds and "step_started" not in kinds
        gate.set()
        done = [await engine.wait(i, timeout=15) for i in ids]
        assert {s.status for s in done} == {SagaStatus.COMPLETED}
        assert all(s.steps["charge"].waiting_for is None for s in done)
        kinds = [h.kind for h in done[-1].history]
        assert kinds.index("resource_waiting") < kinds.index("resource_acquired") < kinds.index("step_started")
        assert await poll("every permit to be back", lambda: _is(usage(engine), (0, 0)))
        metrics = PrometheusObserver(CollectorRegistry())
        await metrics.refresh(engine)
        gauge = metrics.registry.get_sample_value
        assert gauge("sagakit_resource_permits_in_use", {"resource": "payments"}) == 0
        assert gauge("sagakit_resource_waiting", {"resource": "payments"}) == 0
    assert most == 2


async def _now(value: bool) -> bool:
    return value


async def _is(got: Awaitable[Any], want: Any) -> bool:
    return bool(await got == want)


async def test_every_end_of_an_attempt_gives_its_permit_back(store_url: str) -> None:
    """With one permit, a permit kept by any ended attempt would leave the last saga waiting forever."""
    calls: dict[str, int] = {}
    hold = asyncio.Event()
    holding = asyncio.Event()

    async def charge(ctx: StepContext) -> str:
        kind = ctx.data["kind"]
        calls[kind] = calls.get(kind, 0) + 1
        if kind == "flaky" and ctx.attempt == 1:
            raise ConnectionError("provider hiccup")
        if kind == "fatal":
            raise NonRetryableError("card declined")
        if kind == "slow":
            await asyncio.sleep(30)  # cut off by its timeout
        if kind == "hold":
            holding.set()
            await hold.wait()
        return kind

    async def refund(ctx: StepContext) -> None:
        calls["refund"] = calls.get("refund", 0) + 1

    b = SagaBuilder("pay")
    b.step("charge", charge, refund, resource="payments", timeout=0.2,
           retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0))  # fmt: skip
    b.step("ship", lambda ctx: None, after=["charge"])
    async with SagaEngine(store_url, resources=[Resource("payments", concurrency=1)]) as engine:
        engine.register(b.build())
        flaky = await engine.start("pay", {"kind": "flaky"})  # fails, waits again for a permit, succeeds
        assert (await engine.wait(flaky, timeout=15)).status is SagaStatus.COMPLETED
        fatal = await engine.start("pay", {"kind": "fatal"})  # fails for good: no compensation of a failure
        assert (await engine.wait(fatal, timeout=15)).status is SagaStatus.COMPENSATED
        slow = await engine.start("pay", {"kind": "slow"})  # times out twice, then is compensated (uncertain)
        assert (await engine.wait(slow, timeout=15)).status is SagaStatus.COMPENSATED

        holder = await engine.start("pay", {"kind": "hold"})
        await poll("the holder to run", lambda: asyncio.sleep(0, holding.is_set()))
        queued = await engine.start("pay", {"kind": "queued"})
        await poll("the second saga to wait", lambda: _waiting(engine, queued))
        aborted = await engine.abort(queued, reason="customer left")  # it stops waiting
        assert aborted.status is SagaStatus.ABORTED
        compensated = await engine.compensate(holder, reason="fraud check")  # the running call is cancelled
        assert compensated.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)
        assert (await engine.wait(holder, timeout=15)).status is SagaStatus.COMPENSATED

        last = await engine.start("pay", {"kind": "last"})
        assert (await engine.wait(last, timeout=15)).status is SagaStatus.COMPLETED
        assert await poll("every permit to be back", lambda: _is(usage(engine), (0, 0)))

        flaky_snap = await engine.get(flaky)
        assert [h.kind for h in flaky_snap.history].count("resource_waiting") == 2  # a retry waits again
        queued_snap = await engine.get(queued)
        assert "resource_wait_ended" in [h.kind for h in queued_snap.history]
        assert queued_snap.steps["charge"].attempts == 0  # it never started
        assert calls.get("queued") is None
    assert calls["flaky"] == 2 and calls["fatal"] == 1 and calls["slow"] == 2 and calls["last"] == 1
    assert calls["refund"] == 2  # the timed-out call and the cancelled one may have charged


async def _waiting(engine: SagaEngine, sid: str) -> bool:
    return (await engine.get(sid)).steps["charge"].waiting_for == "payments"


async def test_skip_of_a_step_waiting_for_a_permit(store_url: str) -> None:
    gate = asyncio.Event()

    async def charge(ctx: StepContext) -> str:
        await gate.wait()
        return "charged"

    b = SagaBuilder("pay")
    b.step("charge", charge, resource="payments")
    async with SagaEngine(store_url, resources=[Resource("payments", concurrency=1)]) as engine:
        engine.register(b.build())
        first = await engine.start("pay")
        second = await engine.start("pay")
        await poll("the second saga to wait", lambda: _waiting(engine, second))
        await engine.skip(second, "charge", result="paid by voucher")  # not started: it may be skipped
        snap = await engine.wait(second, timeout=15)
        assert snap.status is SagaStatus.COMPLETED and snap.steps["charge"].result == "paid by voucher"
        gate.set()
        assert (await engine.wait(first, timeout=15)).status is SagaStatus.COMPLETED
        assert await poll("every permit to be back", lambda: _is(usage(engine), (0, 0)))


async def test_the_rate_lets_no_more_start_per_period(tmp_path: Path) -> None:
    """On the engine's clock (SQLite): two per hour start, the third waits until the hour has passed."""
    offset = [0.0]
    started: list[int] = []

    async def charge(ctx: StepContext) -> None:
        started.append(ctx.data["i"])

    b = SagaBuilder("pay")
    b.step("charge", charge, resource="payments")
    engine = SagaEngine(
        f"sqlite:///{tmp_path}/sagas.db",
        resources=[Resource("payments", rate=2, per=3600.0)],
        clock=lambda: time.time() + offset[0],
    )
    async with engine:
        engine.register(b.build())
        ids = [await engine.start("pay", {"i": i}) for i in range(5)]
        await poll("two to start and three to wait", lambda: _is(usage(engine), (0, 3)))
        assert len(started) == 2
        rate = [r for r in await engine.resources() if r.name == "payments"][0]
        assert (rate.rate, rate.per, rate.recent) == (2, 3600.0, 2)
        offset[0] += 3600.0  # the hour passes: two more may start
        await poll("two more to start", lambda: asyncio.sleep(0, len(started) == 4))
        assert (await usage(engine)) == (0, 1)
        offset[0] += 3600.0
        for sid in ids:
            assert (await engine.wait(sid, timeout=15)).status is SagaStatus.COMPLETED
    assert sorted(started) == [0, 1, 2, 3, 4]


async def test_the_rate_holds_on_the_suite_database(store_url: str) -> None:
    """On PostgreSQL the rate is measured on the database's clock; the store never shows more than it allows."""
    per = 0.4

    async def charge(ctx: StepContext) -> None:
        return None

    b = SagaBuilder("pay")
    b.step("charge", charge, resource="payments")
    async with SagaEngine(store_url, resources=[Resource("payments", rate=3, per=per)]) as engine:
        engine.register(b.build())
        ids = [await engine.start("pay", {"i": i}) for i in range(7)]
        seen = 0

        async def all_done() -> bool:
            nonlocal seen
            for r in await engine.resources():
                assert r.recent <= 3, r
                seen = max(seen, r.recent)
            snaps = [await engine.get(i) for i in ids]
            return all(s.status is SagaStatus.COMPLETED for s in snaps)

        await poll("every saga to complete", all_done)
        snaps = [await engine.get(i) for i in ids]
        got = sorted(h.at for s in snaps for h in s.history if h.kind == "resource_acquired")
    assert len(got) == 7 and seen >= 1
    # Seven at three per window: the last permit came at least two windows after the first.
    assert got[-1] - got[0] >= 2 * per - 0.2


async def test_limits_are_declared_and_checked_with_clear_errors() -> None:
    b = SagaBuilder("pay")
    b.step("charge", lambda ctx: None, resource="payments")
    d = b.build()
    engine = SagaEngine("memory://")
    engine.register(d)  # an engine that only starts and reads sagas needs no limits
    with pytest.raises(DefinitionError, match=r"step 'charge' of saga 'pay' names resource 'payments'.*no limit"):
        await engine.run()  # one that runs them does
    engine.resource("payments", concurrency=5)
    async with engine:
        pass
    late = SagaBuilder("late")
    late.step("x", lambda ctx: None, resource="shipping")
    async with engine:
        with pytest.raises(DefinitionError, match="names resource 'shipping'"):
            engine.register(late.build())  # registered while running: checked at once
    with pytest.raises(DefinitionError, match="already declared with other limits"):
        engine.resource("payments", concurrency=6)

    other = SagaBuilder("refunds")
    other.resource("payments", concurrency=9)
    other.step("refund", lambda ctx: None, resource="payments")
    with pytest.raises(DefinitionError, match="declares resource 'payments'"):
        engine.register(other.build())

    class Charge:
        pass

    with pytest.raises(DefinitionError, match="message action"):
        msg = SagaBuilder("msg")
        msg.step("charge", send(_Cmd, success=_Done), resource="payments")
        msg.build()
    with pytest.raises(DefinitionError, match="resource must be the name"):
        bad = SagaBuilder("bad")
        bad.step("x", lambda ctx: None, resource=Charge)  # type: ignore[arg-type]
        bad.build()


@dataclass
class _Cmd:
    n: int = 0


@dataclass
class _Done:
    n: int = 0


async def test_steps_without_a_resource_ask_the_store_for_nothing_new() -> None:
    class Counting(MemoryStore):
        permit_calls = 0

        async def permits_acquire(self, *a: Any, **k: Any) -> Any:
            Counting.permit_calls += 1
            return await super().permits_acquire(*a, **k)

        async def permits_release(self, *a: Any, **k: Any) -> Any:
            Counting.permit_calls += 1
            return await super().permits_release(*a, **k)

        async def permits_renew(self, *a: Any, **k: Any) -> Any:
            Counting.permit_calls += 1
            return await super().permits_renew(*a, **k)

    plain = SagaBuilder("plain")
    plain.step("a", lambda ctx: None)
    plain.step("b", lambda ctx: None)
    limited = SagaBuilder("limited")
    limited.step("a", lambda ctx: None, resource="payments")
    store = Counting()
    async with SagaEngine(store, resources=[PAYMENTS], lease_seconds=0.3) as engine:
        engine.register(plain.build(), limited.build())
        for _ in range(5):
            assert (await engine.wait(await engine.start("plain"), timeout=10)).status is SagaStatus.COMPLETED
        await asyncio.sleep(0.2)  # the lease renewal has had its turn
        assert Counting.permit_calls == 0
        assert (await engine.wait(await engine.start("limited"), timeout=10)).status is SagaStatus.COMPLETED
        assert Counting.permit_calls > 0


# ---------------------------------------------------------------- across worker processes (PostgreSQL)


def _start_worker(url: str, schema: str, *extra: str, hang: Path | None = None) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        **({"LIMIT_HANG": str(hang)} if hang else {}),
        "PYTHONPATH": os.pathsep.join(sys.path),
        "LIMIT_PROBE_DSN": url.split("?", 1)[0],
        "LIMIT_PROBE_SCHEMA": schema,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagakit", "worker", "tests.limits.sagas", "--store", url, "--grace", "0.5", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "ready" in line, line + (proc.stderr.read() if proc.stderr else "")
    return proc


async def test_the_limit_holds_across_worker_processes(pg_url: str) -> None:
    import asyncpg

    schema = pg_url.rsplit("schema=", 1)[1]
    api = SagaEngine(pg_url)  # an API process: it only starts sagas
    api.register(limited_payment)
    ids = [await api.start("limited_payment", {"i": i}) for i in range(24)]  # creates the schema too
    conn = await asyncpg.connect(pg_url.split("?", 1)[0], server_settings={"search_path": f'"{schema}"'})
    try:
        await conn.execute("CREATE TABLE limit_probe (active INT NOT NULL, peak INT NOT NULL, calls INT NOT NULL)")
        await conn.execute("INSERT INTO limit_probe VALUES (0, 0, 0)")
        await conn.execute("CREATE TABLE limit_calls (pid INT NOT NULL)")
        # Each worker holds at most 8 sagas (twice its concurrency), waiting ones included: all three take part.
        workers = [_start_worker(pg_url, schema, "--worker-id", f"w{n}", "--concurrency", "4") for n in range(3)]
        try:

            async def finished() -> bool:
                snaps = [await api.get(i) for i in ids]
                for s in snaps:
                    assert s.status not in (SagaStatus.FAILED, SagaStatus.COMPENSATED), s.error
                return all(s.status is SagaStatus.COMPLETED for s in snaps)

            await poll("every saga to complete", finished, timeout=60)
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                out, err = w.communicate(timeout=30)
                assert w.returncode == 0, out + err
        active, peak, calls = await conn.fetchrow("SELECT active, peak, calls FROM limit_probe")
        ran_on = {r[0] for r in await conn.fetch("SELECT DISTINCT pid FROM limit_calls")}
        holders = await conn.fetch("SELECT DISTINCT holder FROM sagakit_permits")
    finally:
        await conn.close()
        await api.close()
    assert calls == 24 and active == 0
    assert peak == PAYMENTS.concurrency, f"at most {PAYMENTS.concurrency} calls at once across 3 workers, saw {peak}"
    assert len(ran_on) >= 2, "the calls ran in more than one worker process"
    assert holders == []  # the stopped workers gave every permit back


async def test_a_dead_workers_permits_come_back(pg_url: str, tmp_path: Path) -> None:
    import asyncpg

    schema = pg_url.rsplit("schema=", 1)[1]
    api = SagaEngine(pg_url)
    api.register(limited_payment)
    hung = [await api.start("limited_payment", {"i": i, "hang": True}) for i in range(2)]
    conn = await asyncpg.connect(pg_url.split("?", 1)[0], server_settings={"search_path": f'"{schema}"'})
    try:
        await conn.execute("CREATE TABLE limit_probe (active INT NOT NULL, peak INT NOT NULL, calls INT NOT NULL)")
        await conn.execute("INSERT INTO limit_probe VALUES (0, 0, 0)")
        await conn.execute("CREATE TABLE limit_calls (pid INT NOT NULL)")
        marker = tmp_path / "hung"
        doomed = _start_worker(pg_url, schema, "--lease", "1.5", hang=marker)
        try:
            await poll("both permits to be held by the hung calls", lambda: asyncio.sleep(0, all(
                (tmp_path / f"hung.{i}").exists() for i in range(2))), timeout=30)  # fmt: skip
            rest = [await api.start("limited_payment", {"i": i}) for i in range(2, 6)]
            held = await conn.fetchval("SELECT count(*) FROM sagakit_permits WHERE granted = 1")
            assert held == 2
        finally:
            doomed.kill()  # SIGKILL: it gives nothing back
            doomed.communicate(timeout=30)
        survivor = _start_worker(pg_url, schema, "--lease", "1.5")
        try:

            async def finished() -> bool:
                snaps = [await api.get(i) for i in [*hung, *rest]]
                return all(s.status is SagaStatus.COMPLETED for s in snaps)

            await poll("the survivor to finish every saga", finished, timeout=60)
        finally:
            survivor.send_signal(signal.SIGTERM)
            out, err = survivor.communicate(timeout=30)
        assert survivor.returncode == 0, out + err
        active, peak, calls = await conn.fetchrow("SELECT active, peak, calls FROM limit_probe")
        left = await conn.fetchval("SELECT count(*) FROM sagakit_permits")
    finally:
        await conn.close()
        await api.close()
    assert calls == 6 and active == 0 and peak <= 2
    assert left == 0
    snap = await _history_of(pg_url, hung[0])
    assert "resumed" in snap  # the hung call's attempt waited for a permit again on the survivor


async def _history_of(url: str, sid: str) -> list[str]:
    engine = SagaEngine(url)
    try:
        return [h.kind for h in (await engine.get(sid)).history]
    finally:
        await engine.close()


async def test_a_worker_that_stops_leaves_the_waiting_attempts_to_the_next(store_url: str) -> None:
    gate = asyncio.Event()
    ran: list[int] = []

    async def charge(ctx: StepContext) -> None:
        ran.append(ctx.data["i"])
        await gate.wait()

    b = SagaBuilder("pay")
    b.step("charge", charge, resource="payments")
    limits = [Resource("payments", concurrency=1)]
    first = SagaEngine(store_url, resources=limits, shutdown_grace=0.1)
    async with first:
        first.register(b.build())
        ids = [await first.start("pay", {"i": i}) for i in range(2)]
        await poll("one to run and one to wait", lambda: _is(usage(first), (1, 1)))
    # Stopped: the running attempt was cut off after the grace, the waiting one never started.
    waiting = [s for s in [await _snapshot(store_url, i) for i in ids] if s.steps["charge"].waiting_for]
    assert len(waiting) == 1 and waiting[0].steps["charge"].attempts == 1
    gate.set()
    async with SagaEngine(store_url, resources=limits) as second:
        second.register(b.build())
        done = [await second.wait(i, timeout=15) for i in ids]
        assert {s.status for s in done} == {SagaStatus.COMPLETED}
        assert await poll("every permit to be back", lambda: _is(usage(second), (0, 0)))
    waited = waiting[0].data["i"]
    assert sorted(ran) == sorted([1 - waited, 1 - waited, waited])  # the cut-off one ran again, the other once


async def _snapshot(url: str, sid: str) -> Any:
    engine = SagaEngine(url)
    try:
        return await engine.get(sid)
    finally:
        await engine.close()
