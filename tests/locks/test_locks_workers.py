"""Semantic locks across worker processes, on SQLite files and PostgreSQL (``store_url``).

Several ``sagakit worker`` processes run the sagas of ``tests.locks.sagas``;
every step writes to one journal, from which the tests read who ran when.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagakit import SagaEngine, SagaStatus
from tests.locks.sagas import locked, locked_fail, locked_timeout

ROOT = Path(__file__).resolve().parent.parent.parent


class Workers:
    def __init__(self, url: str, journal: Path) -> None:
        self.url = url
        self.journal = journal
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, n: int = 1) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "LOCK_JOURNAL": str(self.journal),
        }
        for _ in range(n):
            proc = subprocess.Popen(
                [sys.executable, "-m", "sagakit", "worker", "tests.locks.sagas", "--store", self.url,
                 "--lease", "2", "--grace", "0.5"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert proc.stdout is not None
            assert "ready" in proc.stdout.readline()
            self.procs.append(proc)

    def kill(self, proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        self.procs.remove(proc)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=10)
        self.procs = []

    def open(self, gate: str) -> None:
        Path(f"{self.journal}.{gate}").touch()

    def lines(self) -> list[tuple[str, int, str, str]]:
        if not self.journal.exists():
            return []
        out = []
        for line in self.journal.read_text().splitlines():
            what, n, order_id, saga_id = line.split()
            out.append((what, int(n), order_id, saga_id))
        return out


@pytest.fixture
def workers(store_url: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(store_url, tmp_path / "journal")
    try:
        yield w
    finally:
        w.stop()


async def client(url: str) -> SagaEngine:
    """An engine that only starts and reads sagas: the worker processes run them."""
    engine = SagaEngine(url)
    engine.register(locked, locked_timeout, locked_fail)
    return engine


async def until(predicate: object, what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ok = predicate() if callable(predicate) else predicate
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


def runs_per_key(lines: list[tuple[str, int, str, str]]) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for what, n, order_id, _ in lines:
        out.setdefault(order_id, []).append((what, n))
    return out


def assert_never_interleaved(lines: list[tuple[str, int, str, str]]) -> None:
    for order_id, events in runs_per_key(lines).items():
        for i in range(0, len(events), 2):
            start, end = events[i], events[i + 1] if i + 1 < len(events) else None
            assert start[0] == "start" and end == ("end", start[1]), f"sagas on order {order_id} interleaved: {events}"


async def queued(engine: SagaEngine, saga_id: str) -> bool:
    return any(e.saga_id == saga_id and not e.held for e in await engine.store.locks())


async def holds(engine: SagaEngine, saga_id: str) -> bool:
    return any(e.saga_id == saga_id and e.held for e in await engine.store.locks())


async def test_sagas_on_one_key_never_interleave_across_worker_processes(workers: Workers) -> None:
    engine = await client(workers.url)
    workers.start(3)
    ids = [await engine.start("locked", {"order_id": i % 2, "n": i}) for i in range(12)]
    done = [await engine.wait(sid, timeout=120) for sid in ids]
    assert {s.status for s in done} == {SagaStatus.COMPLETED}
    lines = workers.lines()
    assert len(lines) == 24
    assert_never_interleaved(lines)
    for snap in done:
        kinds = [h.kind for h in snap.history]
        assert kinds.index("lock_acquired") < kinds.index("step_started") < kinds.index("locks_released")
    assert await engine.store.locks() == []
    await engine.close()


async def test_waiting_sagas_get_the_key_first_come_first_served(workers: Workers) -> None:
    engine = await client(workers.url)
    workers.start(3)
    holder = await engine.start("locked", {"order_id": 1, "n": 0, "gate": "holder"})
    await until(lambda: holds(engine, holder), "the first saga holds the key")
    waiters = []
    for n in range(1, 5):
        sid = await engine.start("locked", {"order_id": 1, "n": n})
        await until(lambda sid=sid: queued(engine, sid), f"saga {n} is queued")  # type: ignore[misc]
        waiters.append(sid)
    snap = await engine.get(waiters[0])
    assert snap.status is SagaStatus.RUNNING and [h.kind for h in snap.history][-1] == "lock_waiting"
    assert all(s.attempts == 0 for s in snap.steps.values())
    workers.open("holder")
    done = [await engine.wait(sid, timeout=60) for sid in [holder, *waiters]]
    assert {s.status for s in done} == {SagaStatus.COMPLETED}
    lines = workers.lines()
    assert_never_interleaved(lines)
    assert [n for what, n, _, _ in lines if what == "start"] == [0, 1, 2, 3, 4]
    await engine.close()


async def test_a_wait_that_times_out_fails_naming_the_key_and_its_holder(workers: Workers) -> None:
    engine = await client(workers.url)
    workers.start(2)
    holder = await engine.start("locked", {"order_id": 5, "n": 0, "gate": "holder"})
    await until(lambda: holds(engine, holder), "the first saga holds the key")
    waiter = await engine.start("locked_timeout", {"order_id": 5, "n": 1})
    snap = await engine.wait(waiter, timeout=30)
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.error == f"timed out after 1.0s waiting for lock 'order:5', taken by saga {holder}"
    assert all(s.attempts == 0 for s in snap.steps.values())
    assert [e.saga_id for e in await engine.store.locks()] == [holder]  # the waiter left the queue
    workers.open("holder")
    assert (await engine.wait(holder, timeout=30)).status is SagaStatus.COMPLETED
    await engine.close()


async def test_the_fail_policy_fails_at_once_naming_the_holder(workers: Workers) -> None:
    engine = await client(workers.url)
    workers.start(2)
    holder = await engine.start("locked", {"order_id": 6, "n": 0, "gate": "holder"})
    await until(lambda: holds(engine, holder), "the first saga holds the key")
    refused = await engine.start("locked_fail", {"order_id": 6, "n": 1})
    snap = await engine.wait(refused, timeout=30)
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.error == f"could not acquire lock 'order:6', taken by saga {holder} (lock_policy 'fail')"
    other = await engine.start("locked_fail", {"order_id": 7, "n": 2})  # a free key: it runs
    assert (await engine.wait(other, timeout=30)).status is SagaStatus.COMPLETED
    workers.open("holder")
    assert (await engine.wait(holder, timeout=30)).status is SagaStatus.COMPLETED
    await engine.close()


async def test_a_dead_workers_saga_keeps_its_key_until_it_ends_on_another_worker(workers: Workers) -> None:
    engine = await client(workers.url)
    workers.start(1)
    holder = await engine.start("locked", {"order_id": 9, "n": 0, "gate": "holder"})
    await until(lambda: holds(engine, holder), "the first saga holds the key")
    await until(lambda: len(workers.lines()) == 1, "its first step runs")
    waiter = await engine.start("locked", {"order_id": 9, "n": 1})
    await until(lambda: queued(engine, waiter), "the second saga is queued")
    workers.kill(workers.procs[0])  # SIGKILL, in the middle of the holder's step
    # The saga, not the worker, holds the key: nothing changes while nobody runs it.
    entries = await engine.store.locks()
    assert [(e.saga_id, e.held) for e in entries] == [(holder, True), (waiter, False)]
    workers.open("holder")
    workers.start(2)  # another worker takes the holder over once its lease has run out, and finishes it
    done = [await engine.wait(sid, timeout=60) for sid in (holder, waiter)]
    assert {s.status for s in done} == {SagaStatus.COMPLETED}
    lines = workers.lines()
    # The holder's first step ran twice (its worker died in it); the waiter started after the holder ended.
    assert [(what, n) for what, n, _, _ in lines] == [("start", 0), ("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    assert await engine.store.locks() == []
    await engine.close()
