"""Many worker processes on one PostgreSQL database: SIGKILL, SIGSTOP, the server lost for a while.

The machine's server serves more than this suite: an outage is a proxy between
the workers and it, cut and restored, and a server restart happens on a private
cluster the test makes for itself (tests/pgcluster.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from sagakit import SagaEngine, SagaStatus, StepStatus
from tests import pgcluster
from tests.conftest import PG_DSN, pg_available, require_service
from tests.proxy import ProxyThread

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def schema() -> Iterator[str]:
    require_service(pg_available())
    name = f"scale_{uuid.uuid4().hex[:10]}"
    yield name
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


class Workers:
    """Worker processes running tests.scale.sagas."""

    def __init__(self, url: str, lease: float, step_seconds: float = 0.005, logs: Path | None = None) -> None:
        self.logs = logs or Path(os.environ.get("TMPDIR", "/tmp"))
        self.url = url
        self.lease = lease
        self.step_seconds = step_seconds
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "SCALE_DSN": self.url, "SCALE_STEP_SECONDS": str(self.step_seconds),
               "PYTHONPATH": str(ROOT)}  # fmt: skip
        with open(self.log(name), "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sagakit", "worker", "tests.scale.sagas", "--store", self.url,
                 "--lease", str(self.lease), "--concurrency", "32", "--worker-id", name, "--grace", "2"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log,
            )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # "ready", then nothing more on stdout
        assert "ready" in line, (line, self.log(name).read_text())
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> Path:
        """Where a worker's log goes: a file, so a full pipe can never block the worker."""
        return self.logs / f"worker-{name}-{os.getpid()}.log"

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


async def _prepare(url: str) -> None:
    import asyncpg

    from tests.scale.sagas import setup_tables

    base, _, schema = url.partition("?schema=")
    engine = SagaEngine(url)
    await engine.count()  # creates the schema and sagakit's tables
    await engine.close()
    conn = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        await setup_tables(conn)
    finally:
        await conn.close()


async def _wait_all(engine: SagaEngine, n: int, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        done = sum([await engine.count(status=s) for s in SagaStatus if s.terminal])
        if done >= n:
            break
        assert time.monotonic() < deadline, f"only {done} of {n} sagas finished"
        await asyncio.sleep(0.5)
    return await engine.list(limit=n + 10)


async def _executions(url: str) -> tuple[list[tuple[str, int, float, float | None]], set[str]]:
    import asyncpg

    base, _, schema = url.partition("?schema=")
    conn = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        rows = await conn.fetch("SELECT key, pid, started, ended FROM executions")
        effects = {r["key"] for r in await conn.fetch("SELECT key FROM effects")}
    finally:
        await conn.close()
    return [(r["key"], r["pid"], r["started"], r["ended"]) for r in rows], effects


def _assert_no_overlap(rows: list[tuple[str, int, float, float | None]], killed: dict[int, float]) -> None:
    by_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for key, pid, started, ended in rows:
        end = ended if ended is not None else killed.get(pid, float("inf"))
        by_key[key].append((started, end))
    for key, spans in by_key.items():
        spans.sort()
        for (_, end1), (start2, _) in zip(spans, spans[1:], strict=False):
            assert start2 >= end1, f"two workers ran {key} at once: {spans}"


async def test_three_workers_one_killed_every_saga_finishes(schema: str) -> None:
    url = f"{PG_DSN}?schema={schema}"
    await _prepare(url)
    n = 2000
    rng = random.Random(7)
    fails = {i: rng.choice([None, None, None, "reserve", "charge", "ship"]) for i in range(n)}
    producer = SagaEngine(url)
    from tests.scale.sagas import definition

    producer.register(definition)
    ids = [await producer.start("scale", {"i": i, "fail_at": fails[i]}, idempotency_key=f"s-{i}")
           for i in range(n)]  # fmt: skip
    workers = Workers(url, lease=2.0)
    killed: dict[int, float] = {}
    try:
        for name in ("w1", "w2", "w3"):
            workers.start(name)
        while await producer.count(status=SagaStatus.COMPLETED) < n // 6:
            await asyncio.sleep(0.2)
        victim = workers.procs["w2"]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed[victim.pid] = time.time()
        snaps = await _wait_all(producer, n, timeout=240)
    finally:
        workers.stop_all()
    rows, effects = await _executions(url)
    await producer.close()

    assert len(snaps) == n and {s.id for s in snaps} == set(ids)  # none lost, none duplicated
    by_id = {s.id: s for s in snaps}
    expected_effects: set[str] = set()
    for i, sid in enumerate(ids):
        snap = by_id[sid]
        fail_at = fails[i]
        assert snap.status is (SagaStatus.COMPENSATED if fail_at else SagaStatus.COMPLETED), snap
        order = ["reserve", "charge", "ship"]
        ran = order if fail_at is None else order[: order.index(fail_at) + 1]
        expected_effects.update(f"{sid}:{step}:action" for step in ran)
        if fail_at:
            for step in order[: order.index(fail_at)]:
                assert snap.steps[step].status is StepStatus.COMPENSATED
                expected_effects.add(f"{sid}:{step}:compensation")
            if snap.steps[fail_at].uncertain:
                # Its first attempt was cut off by the kill: it may have had its effect (here
                # it had), so the rollback undoes it too.
                assert snap.steps[fail_at].status is StepStatus.COMPENSATED
                expected_effects.add(f"{sid}:{fail_at}:compensation")
    assert effects == expected_effects  # every compensation ran, by key, exactly once
    _assert_no_overlap(rows, killed)
    assert any(pid == victim.pid for _, pid, _, _ in rows), "the killed worker ran nothing"


async def test_paused_worker_cannot_commit_stale_results(schema: str) -> None:
    url = f"{PG_DSN}?schema={schema}"
    await _prepare(url)
    from tests.scale.sagas import definition

    workers = Workers(url, lease=1.0, step_seconds=2.5)
    engine = SagaEngine(url)
    engine.register(definition)
    try:
        workers.start("a")
        workers.start("b")
        sid = await engine.start("scale", {"fail_at": None})
        holder = None
        for _ in range(100):
            st = await engine.store.get(sid)
            assert st is not None
            if st.steps["reserve"].token:
                holder = await _lease_owner(url, sid)
                if holder:
                    break
            await asyncio.sleep(0.05)
        assert holder in ("a", "b")
        paused = workers.procs[holder]
        paused.send_signal(signal.SIGSTOP)
        await asyncio.sleep(4.0)  # past the lease: the other worker takes over
        paused.send_signal(signal.SIGCONT)
        snap = await engine.wait(sid, timeout=60)
        await asyncio.sleep(1.0)
        snap = await engine.get(sid)
    finally:
        workers.stop_all()
        await engine.close()
    assert snap.status is SagaStatus.COMPLETED
    fenced = [h for h in snap.history if h.kind == "fenced"]
    assert fenced and holder in fenced[0].message
    other = "b" if holder == "a" else "a"
    assert await _lease_owner(url, sid) in (None, other)


async def _lease_owner(url: str, sid: str) -> str | None:
    import asyncpg

    base, _, schema = url.partition("?schema=")
    conn = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        return await conn.fetchval("SELECT lease_owner FROM sagakit_sagas WHERE id=$1", sid)
    finally:
        await conn.close()


def _via(url: str, port: int) -> str:
    """*url* with its host and port replaced by 127.0.0.1:*port*."""
    parts = urlsplit(url)
    user, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user}{at}127.0.0.1:{port}"))


async def test_postgres_outage_mid_run(schema: str) -> None:
    """The workers lose the server for 3 s mid-run: every saga completes, every effect happens once."""
    url = f"{PG_DSN}?schema={schema}"
    await _prepare(url)
    from tests.scale.sagas import definition

    producer = SagaEngine(url)
    producer.register(definition)
    n = 400
    ids = [await producer.start("scale", {"fail_at": None}) for _ in range(n)]
    await producer.close()
    server = urlsplit(PG_DSN)
    # A thread of its own: Workers.start() blocks this loop while a worker connects through the proxy.
    proxy = ProxyThread((server.hostname or "127.0.0.1", server.port or 5432))
    workers = Workers(_via(url, proxy.port), lease=3.0, step_seconds=0.02)
    try:
        workers.start("r1")
        workers.start("r2")
        await asyncio.sleep(1.5)
        proxy.cut()  # every connection of the workers aborted, new ones refused
        try:
            await asyncio.sleep(3.0)
        finally:
            proxy.restore()
        reader = SagaEngine(url)
        try:
            snaps = await _wait_all(reader, n, timeout=180)
        finally:
            await reader.close()
    finally:
        workers.stop_all()
        proxy.close()
    assert {s.id for s in snaps} == set(ids)
    assert {s.status for s in snaps} == {SagaStatus.COMPLETED}
    rows, effects = await _executions(url)
    assert len(effects) == 3 * n
    # An attempt cut off by the outage could not record its end: check the others.
    _assert_no_overlap([r for r in rows if r[3] is not None], {})


@pytest.fixture
def private_cluster() -> Iterator[pgcluster.PrivateCluster]:
    require_service(pgcluster.missing())
    cluster = pgcluster.PrivateCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


async def test_postgres_restart_mid_run(private_cluster: pgcluster.PrivateCluster) -> None:
    """The database server is stopped and started again mid-run: every saga completes, every effect happens once."""
    url = f"{private_cluster.dsn}?schema=restart"
    await _prepare(url)
    from tests.scale.sagas import definition

    producer = SagaEngine(url)
    producer.register(definition)
    n = 300
    ids = [await producer.start("scale", {"fail_at": None}) for _ in range(n)]
    await producer.close()
    workers = Workers(url, lease=3.0, step_seconds=0.2)
    try:
        workers.start("r1")
        workers.start("r2")
        reader = SagaEngine(url)
        try:
            deadline = time.monotonic() + 60
            while (done := await reader.count(status=SagaStatus.COMPLETED)) < n // 10:
                assert time.monotonic() < deadline, "the workers made no progress"
                await asyncio.sleep(0.05)
        finally:
            await reader.close()
        assert done < n, "every saga finished before the restart: it tested nothing"
        private_cluster.stop()  # fast shutdown: every connection is closed, in-flight commits fail
        await asyncio.sleep(2.0)
        private_cluster.start()
        reader = SagaEngine(url)
        try:
            snaps = await _wait_all(reader, n, timeout=180)
        finally:
            await reader.close()
    finally:
        workers.stop_all()
    assert {s.id for s in snaps} == set(ids)
    assert {s.status for s in snaps} == {SagaStatus.COMPLETED}
    rows, effects = await _executions(url)
    assert len(effects) == 3 * n
    _assert_no_overlap([r for r in rows if r[3] is not None], {})
