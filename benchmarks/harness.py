"""The benchmark harness: sagas/s on SQLite beside raw ``sqlite3``, on PostgreSQL with worker processes beside DBOS.

Run it as ``sagakit bench`` from a checkout, or ``python -m benchmarks.harness``.

Workloads (``WORKLOADS``): A, N sagas of 3 async no-op steps, each with a
compensation (happy path); B, the same with the third step failing with a
``NonRetryableError``, so steps 2 and 1 are compensated; C, 10 sequential
no-op steps; D, a fan-out of 8 parallel no-op steps and a join step.

**SQLite** (the default store): sagas are started through the public API with
at most ``in_flight`` of them unfinished at once; each run gets a fresh SQLite
file (WAL, ``synchronous=NORMAL``, the store's defaults). The baseline,
measured in the same process right before and right after each sagakit run,
does with the stdlib ``sqlite3`` module what a naive durable orchestrator
would: one transaction per saga transition on a table of the same shape (A:
insert, then three updates; B: insert, then five updates), same pragmas,
nothing else. The ratio sagakit/raw is the figure to compare across machines;
absolute rates vary with the machine and its load.

**PostgreSQL** (``--store postgresql://…``): each run gets its own schema.
With ``--workers K`` (K >= 1) the N sagas are first stored as PENDING by an
engine that is not running (``start`` only stores them), then K
``sagakit worker`` processes are started, and the time runs from their start
until the last saga's terminal transition (its ``updated_at``). With
``--workers 0`` the engine runs in this process, as on SQLite. DBOS runs the
same workload on the same database in the same run when its virtual
environment exists (``benchmarks/.venvs/dbos``, made by
``python benchmarks/run.py --setup``).

Store write transactions are counted by wrapping the store's write methods
(commit, claim, renew, release, history appends); in worker processes the
wrapping is switched on by the ``SAGAKIT_BENCH_COUNTS`` environment variable,
and each worker writes its counts to that file when it exits.

The code here measures and reports; it asserts nothing about speed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import os
import platform
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import click
import orjson
from rich.table import Table

from sagakit._context import StepContext
from sagakit._definition import SagaBuilder, SagaDefinition
from sagakit._engine import SagaEngine
from sagakit._errors import NonRetryableError, StoreError
from sagakit._status import SagaStatus
from sagakit._store import SagaQuery, Write
from sagakit.cli._render import EXIT_FAILED, EXIT_STORE, console, echo_json, fail
from sagakit.stores._codec import decode_history
from sagakit.stores.postgres import PostgresStore
from sagakit.stores.sqlite import SQLiteStore

__all__ = [
    "WORKER_DEFINITIONS",
    "WORKLOADS",
    "BenchError",
    "Counters",
    "RunResult",
    "Workload",
    "bench_command",
    "commands",
    "definition",
    "instrument",
    "run_benchmark",
    "run_one",
    "run_raw",
    "run_sagakit",
    "run_workers",
    "step_latencies",
]

TERMINAL = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.ABORTED)
COUNTS_ENV = "SAGAKIT_BENCH_COUNTS"
ROOT = Path(__file__).resolve().parent.parent  # the repository: benchmarks/ is importable from it


class BenchError(Exception):
    """A benchmark run did not end as its workload expects."""


# ---------------------------------------------------------------- workloads


@dataclass(frozen=True, slots=True)
class Workload:
    """What one benchmark workload runs and how its sagas must end."""

    key: str
    description: str
    stages: tuple[tuple[str, ...], ...]  # step names by stage; the steps of one stage run in parallel
    fail: str | None  # the step that fails (non-retryably), or None
    expected: SagaStatus

    @property
    def steps(self) -> list[str]:
        return [s for stage in self.stages for s in stage]

    @property
    def step_runs(self) -> int:
        """Step functions called per saga: the actions, and the compensations of completed steps."""
        if self.fail is None:
            return len(self.steps)
        done = self.steps.index(self.fail)
        return 2 * done + 1

    @property
    def transitions(self) -> int:
        """Durable transitions of one saga in the raw baseline: created, then one per step function."""
        return 1 + self.step_runs

    def raw_states(self) -> list[tuple[str, str]]:
        """(saga status, steps JSON) after each transition of one saga: the raw baseline's rows."""
        steps = dict.fromkeys(self.steps, "pending")
        states = [("running", dict(steps))]
        done: list[str] = []
        for name in self.steps:
            if name == self.fail:
                steps[name] = "failed"
                states.append(("compensating", dict(steps)))
                break
            steps[name] = "completed"
            done.append(name)
            states.append(("running", dict(steps)))
        for name in reversed(done if self.fail else []):
            steps[name] = "compensated"
            states.append(("compensating", dict(steps)))
        states[-1] = (self.expected.value, states[-1][1])
        return [(status, orjson.dumps(s).decode()) for status, s in states]


def _chain(*names: str) -> tuple[tuple[str, ...], ...]:
    return tuple((n,) for n in names)


WORKLOADS = {
    "A": Workload("A", "3 no-op steps, happy path", _chain("step1", "step2", "step3"), None, SagaStatus.COMPLETED),
    "B": Workload(
        "B",
        "step 3 fails, steps 2 and 1 compensated",
        _chain("step1", "step2", "step3"),
        "step3",
        SagaStatus.COMPENSATED,
    ),
    "C": Workload("C", "10 sequential steps", _chain(*(f"step{i}" for i in range(1, 11))), None, SagaStatus.COMPLETED),
    "D": Workload(
        "D",
        "fan-out of 8 parallel steps, then a join",
        (tuple(f"part{i}" for i in range(1, 9)), ("join",)),
        None,
        SagaStatus.COMPLETED,
    ),
}


def definition(w: Workload, calls: list[int]) -> SagaDefinition:
    """The saga of workload *w*; every step function called adds one to ``calls[0]``."""

    async def noop(ctx: StepContext) -> None:
        calls[0] += 1

    async def decline(ctx: StepContext) -> None:
        calls[0] += 1
        raise NonRetryableError("declined")

    b = SagaBuilder(f"bench_{w.key.lower()}")
    before: tuple[str, ...] = ()
    for stage in w.stages:
        for name in stage:
            b.step(name, decline if name == w.fail else noop, noop, after=list(before))
        before = stage
    return b.build()


# The workers of `sagakit bench --workers K` run these: `sagakit worker benchmarks.harness:WORKER_DEFINITIONS`.
WORKER_DEFINITIONS = [definition(w, [0]) for w in WORKLOADS.values()]


# ---------------------------------------------------------------- counting the store's work


@dataclass(slots=True)
class Counters:
    """A store's write transactions, the saga rows its commits wrote, and claim timings.

    ``finished`` counts committed transitions into a terminal status and
    ``progressed`` is set after each commit that had some: the benchmark learns
    that sagas ended without polling the store.
    """

    transactions: int = 0
    commits: int = 0
    writes: int = 0
    finished: int = 0
    claims: int = 0
    claim_seconds: list[float] = field(default_factory=list)  # claims that returned sagas
    commit_seconds: list[float] = field(default_factory=list)
    next_wakes: int = 0  # reads of the earliest wake time (the claim loop's look for due work)
    progressed: asyncio.Event | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions,
            "commits": self.commits,
            "writes": self.writes,
            "finished": self.finished,
            "claims": self.claims,
            "claim_seconds": self.claim_seconds[-2000:],
            "commit_seconds": self.commit_seconds[-2000:],
            "next_wakes": self.next_wakes,
        }


_WRITE_METHODS = ("renew", "release", "append_history", "claim_saga")


def _wrappers(counters: Counters, get: Callable[[str], Callable[..., Awaitable[Any]]]) -> dict[str, Any]:
    """Counting versions of a store's write methods; *get* returns the original by name."""
    commit_orig = get("commit")
    claim_orig = get("claim")

    async def commit(*args: Any) -> list[str | None]:
        writes: Sequence[Write] = args[-1]
        counters.transactions += 1
        counters.commits += 1
        counters.writes += len(writes)
        begin = time.perf_counter()
        results: list[str | None] = await commit_orig(*args)
        counters.commit_seconds.append(time.perf_counter() - begin)
        ended = sum(1 for w, r in zip(writes, results, strict=True) if r == w.state.id and w.state.status.terminal)
        if ended:
            counters.finished += ended
            if counters.progressed is not None:
                counters.progressed.set()
        return results

    async def claim(*args: Any) -> Any:
        counters.transactions += 1
        counters.claims += 1
        begin = time.perf_counter()
        states = await claim_orig(*args)
        if states:
            counters.claim_seconds.append(time.perf_counter() - begin)
        return states

    next_wake_orig = get("next_wake")

    async def next_wake(*args: Any) -> Any:
        counters.next_wakes += 1
        return await next_wake_orig(*args)

    out: dict[str, Any] = {"commit": commit, "claim": claim, "next_wake": next_wake}
    for name in _WRITE_METHODS:
        orig = get(name)

        def counted(orig: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def method(*args: Any) -> Any:
                counters.transactions += 1
                return await orig(*args)

            return method

        out[name] = counted(orig)
    return out


def instrument(store: SQLiteStore | PostgresStore, counters: Counters) -> None:
    """Count *store*'s write transactions in *counters* (wraps its class's methods on the instance).

    Instrumenting a store again replaces the earlier counters.
    """
    cls = type(store)
    for name, fn in _wrappers(counters, lambda name: types.MethodType(getattr(cls, name), store)).items():
        setattr(store, name, fn)


def _count_in_this_worker(path: str) -> None:
    """In a ``sagakit worker`` process: count every store's writes; write the counts at exit."""
    counters = Counters()
    for cls in (SQLiteStore, PostgresStore):
        originals = {name: getattr(cls, name) for name in ("commit", "claim", "next_wake", *_WRITE_METHODS)}
        for name, fn in _wrappers(counters, originals.__getitem__).items():
            setattr(cls, name, fn)

    def dump() -> None:
        with open(path, "w") as f:
            json.dump(counters.as_dict(), f)

    atexit.register(dump)


if os.environ.get(COUNTS_ENV):
    _count_in_this_worker(os.environ[COUNTS_ENV])


# ---------------------------------------------------------------- stores


def _pg_url(url: str, schema: str) -> tuple[str, str]:
    """(store URL with ``schema``, plain server URL without sagakit's parameters)."""
    parts = urlsplit(url)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("schema", "pool_size")]
    plain = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(params), ""))
    ours = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode([*params, ("schema", schema)]), ""))
    return ours, plain


def is_postgres(url: str) -> bool:
    return url.split(":", 1)[0].lower().split("+", 1)[0] in ("postgresql", "postgres")


async def _drop_schema(store: PostgresStore) -> None:
    pool = store._pool
    if pool is not None and store.schema:
        await pool.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')


_HISTORY_SQL = "SELECT saga_id, entries FROM sagakit_history"
_STEP_ENDS = frozenset({"step_completed", "step_failed", "compensation_completed"})


def _step_ends(rows: Iterable[Sequence[Any]]) -> list[tuple[str, float, str, str]]:
    """(saga id, time, kind, step) of every step end in history rows (saga id, entries)."""
    out = []
    for saga_id, entries in rows:
        for h in decode_history([(entries,)]):
            if h.kind in _STEP_ENDS and h.step is not None:
                out.append((saga_id, float(h.at), h.kind, h.step))
    return out


async def _history_rows(store: SQLiteStore | PostgresStore) -> list[tuple[str, float, str, str]]:
    if isinstance(store, PostgresStore):
        return _step_ends(await store._pool.fetch(_HISTORY_SQL))
    conn = sqlite3.connect(store.path)
    try:
        return _step_ends(conn.execute(_HISTORY_SQL))
    finally:
        conn.close()


def step_latencies(w: Workload, rows: Sequence[tuple[str, float, str, str]]) -> list[float]:
    """Step-to-step latencies in seconds, from history rows (saga id, time, kind, step).

    A saga's steps of one parallel stage count as one, ending with the last of
    them; compensations are stages of their own after the actions. A latency
    is the time between two consecutive stage ends of one saga: how long after
    one step ended the next one did (its no-op run included).
    """
    stage = {s: i for i, st in enumerate(w.stages) for s in st}
    ends: dict[str, dict[tuple[int, int], float]] = {}
    for sid, at, kind, step in rows:
        if step not in stage:
            continue
        k = (1, -stage[step]) if kind == "compensation_completed" else (0, stage[step])
        saga = ends.setdefault(sid, {})
        if at > saga.get(k, float("-inf")):
            saga[k] = at
    gaps: list[float] = []
    for saga in ends.values():
        times = [saga[k] for k in sorted(saga)]
        gaps.extend(b - a for a, b in itertools.pairwise(times))
    return gaps


def percentiles(gaps: Sequence[float]) -> dict[str, Any]:
    """p50 and p99 in milliseconds."""
    if not gaps:
        return {"p50_ms": None, "p99_ms": None, "samples": 0}
    xs = sorted(gaps)
    n = len(xs)
    return {"p50_ms": xs[n // 2] * 1000, "p99_ms": xs[min(n - 1, int(n * 0.99))] * 1000, "samples": n}


# ---------------------------------------------------------------- sagakit, one process


async def run_sagakit(
    w: Workload,
    n: int,
    in_flight: int,
    store: SQLiteStore | PostgresStore,
    counters: Counters,
    *,
    stall_seconds: float = 60.0,
) -> tuple[float, int]:
    """Run *n* sagas of workload *w* on *store* (instrumented with *counters*), at most *in_flight* at once.

    Returns (seconds, step functions called).

    Raises:
        BenchError: the sagas stopped making progress before all of them ended as expected.
    """
    calls = [0]
    defn = definition(w, calls)
    counters.progressed = asyncio.Event()
    engine = SagaEngine(store)
    engine.register(defn)
    async with engine:
        since = engine.clock()  # the store may hold other sagas of this name: count this run's only
        begin = time.perf_counter()
        started = 0
        while counters.finished < n:
            room = min(in_flight - (started - counters.finished), n - started)
            if room > 0:
                await asyncio.gather(*(engine.start(defn.name, {"i": started + i}) for i in range(room)))
                started += room
                continue
            counters.progressed.clear()
            try:
                await asyncio.wait_for(counters.progressed.wait(), stall_seconds)
            except TimeoutError:
                break
        seconds = time.perf_counter() - begin
        done = await engine.count(w.expected, defn.name, created_after=since)
        if done != n:
            counts = {s.value: await engine.count(s, defn.name, created_after=since) for s in SagaStatus}
            raise BenchError(
                f"workload {w.key}: {done} of {n} sagas are {w.expected.value} (none ended in "
                f"the last {stall_seconds:g} s or some ended otherwise); by status: {counts}"
            )
    return seconds, calls[0]


def _store_for(url: str, directory: str, tag: str) -> SQLiteStore | PostgresStore:
    """A fresh store: a new SQLite file in *directory*, or a new schema on the PostgreSQL server at *url*."""
    if is_postgres(url):
        schema = f"sagakit_bench_{os.getpid()}_{tag}_{uuid.uuid4().hex[:6]}"
        return PostgresStore.from_url(_pg_url(url, schema)[0])
    return SQLiteStore(os.path.join(directory, f"sagakit-{tag}.db"))


async def run_one(
    w: Workload, n: int, in_flight: int, url: str, directory: str, *, latencies: bool = True
) -> dict[str, Any]:
    """One in-process run on a fresh store: figures as a dict (the benchmark suite's unit of work)."""
    store = _store_for(url, directory, w.key)
    counters = Counters()
    instrument(store, counters)
    pg_cpu0 = _postgres_cpu() if isinstance(store, PostgresStore) else 0.0
    cpu0 = _self_cpu()
    seconds, calls = await run_sagakit(w, n, in_flight, store, counters)
    cpu = _self_cpu() - cpu0
    out: dict[str, Any] = {
        "cpu_seconds": cpu,
        "seconds": seconds,
        "step_runs": calls,
        "ok": True,
        "finished": n,
        "write_tx": counters.transactions,
        "commits": counters.commits,
        "saga_writes": counters.writes,
        "commit_ms_p50": _p50([x * 1000 for x in counters.commit_seconds]),
    }
    if isinstance(store, PostgresStore):
        out["server_cpu_seconds"] = _postgres_cpu() - pg_cpu0
    await store.open()  # the engine closed it; reopen to read the histories and clean up
    try:
        if latencies:
            out["latency"] = percentiles(step_latencies(w, await _history_rows(store)))
    finally:
        if isinstance(store, PostgresStore):
            await _drop_schema(store)
        await store.close()
    return out


# ---------------------------------------------------------------- sagakit, worker processes


def _vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a live process, MiB (0 when unknown)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _produce(defn: SagaDefinition, n: int, url: str) -> None:
    """Store *n* PENDING sagas with an engine that is not running."""
    engine = SagaEngine(url)
    engine.register(defn)
    try:
        for lo in range(0, n, 256):
            await asyncio.gather(*(engine.start(defn.name, {"i": i}) for i in range(lo, min(n, lo + 256))))
    finally:
        await engine.close()


async def _terminal(store: PostgresStore, name: str) -> tuple[int, float | None]:
    """(sagas of *name* in a terminal status, the latest ``updated_at`` among them)."""
    row = await store._pool.fetchrow(
        "SELECT count(*), max(updated_at) FROM sagakit_sagas WHERE name = $1 AND status = ANY($2::text[])",
        name,
        [s.value for s in TERMINAL],
    )
    return int(row[0]), (float(row[1]) if row[1] is not None else None)


async def run_workers(
    w: Workload,
    n: int,
    url: str,
    workers: int,
    *,
    concurrency: int = 50,
    stall_seconds: float = 60.0,
    latencies: bool = True,
) -> dict[str, Any]:
    """*n* sagas stored as PENDING, then *workers* ``sagakit worker`` processes run them.

    The time runs from the workers' start until the latest terminal
    transition (the sagas' ``updated_at``), read from the store once all have
    ended. Returns the figures as a dict.

    Raises:
        BenchError: the sagas stopped making progress before all of them ended as expected.
    """
    if not is_postgres(url):
        raise BenchError("worker processes need a PostgreSQL store (--store postgresql://…)")
    schema = f"sagakit_bench_{os.getpid()}_w{workers}_{uuid.uuid4().hex[:6]}"
    store_url, _ = _pg_url(url, schema)
    defn = definition(w, [0])
    produce_begin = time.perf_counter()
    await _produce(defn, n, store_url)
    produce_seconds = time.perf_counter() - produce_begin
    monitor = PostgresStore.from_url(store_url)
    await monitor.open()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="sagakit-bench-") as tmp:
            pg_cpu0 = _postgres_cpu()
            begin_wall = time.time()
            begin = time.perf_counter()
            procs.extend(_spawn_workers(workers, store_url, concurrency, tmp))
            ready_cpu = _watch_ready(procs)
            last, last_change = -1, time.perf_counter()
            done, end_at = 0, None
            while True:
                await asyncio.sleep(0.2)
                done, end_at = await _terminal(monitor, defn.name)
                if done >= n:
                    break
                dead = [p for p in procs if p.poll() is not None]
                if dead:
                    err = _log_tail(tmp, procs.index(dead[0]))
                    raise BenchError(f"a sagakit worker exited with status {dead[0].returncode}: {err}")
                if done != last:
                    last, last_change = done, time.perf_counter()
                elif time.perf_counter() - last_change > stall_seconds:
                    raise BenchError(f"workload {w.key}: {done} of {n} sagas ended; none in {stall_seconds:g} s")
            wall = time.perf_counter() - begin
            seconds = (end_at - begin_wall) if end_at is not None else wall
            rss = [_vm_hwm_mb(p.pid) for p in procs]
            cpu = sum(_proc_cpu(p.pid) for p in procs) - sum(ready_cpu)
            pg_cpu = _postgres_cpu() - pg_cpu0
            _stop(procs)
            counts = _read_counts(workers, tmp)
        first = await monitor._pool.fetchval(
            "SELECT min((e ->> 0)::float8) FROM sagakit_history, json_array_elements(entries::json) e "
            "WHERE e ->> 1 = 'started'"
        )
        ok = await monitor.count(SagaQuery(status=w.expected, name=defn.name))
        if ok != n:
            raise BenchError(f"workload {w.key}: {ok} of {n} sagas are {w.expected.value}")
        out: dict[str, Any] = {
            "seconds": seconds,
            "wall_seconds": wall,
            # From the first saga's start to the last one's end: without the processes' start-up.
            "processing_seconds": (end_at - float(first)) if end_at is not None and first is not None else None,
            "step_runs": n * w.step_runs,
            "ok": True,
            "finished": n,
            "write_tx": sum(c["transactions"] for c in counts) if len(counts) == workers else None,
            "producer_tx": n,
            # Storing the N PENDING sagas with engine.start() on an engine that is not running.
            "producer_seconds": produce_seconds,
            "claims": sum(c["claims"] for c in counts) if counts else None,
            "next_wakes": sum(c.get("next_wakes", 0) for c in counts) if counts else None,
            "claim_ms_p50": _p50([x * 1000 for c in counts for x in c.get("claim_seconds", [])]),
            "commit_ms_p50": _p50([x * 1000 for c in counts for x in c.get("commit_seconds", [])]),
            "worker_peak_rss_mb": round(max(rss), 1) if rss else None,
            # CPU of the workers once ready (start-up left out), and of every PostgreSQL server process
            # (approximate: other clients of the server count too).
            "worker_cpu_seconds": cpu,
            "server_cpu_seconds": pg_cpu,
        }
        if latencies:
            out["latency"] = percentiles(step_latencies(w, await _history_rows(monitor)))
        return out
    finally:
        _stop(procs)
        await _drop_schema(monitor)
        await monitor.close()


def _spawn_workers(workers: int, store_url: str, concurrency: int, tmp: str) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(workers):
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, COUNTS_ENV: os.path.join(tmp, f"worker-{i}.json"), "PYTHONPATH": path}
        cmd = [sys.executable, "-m", "sagakit", "worker", "benchmarks.harness:WORKER_DEFINITIONS",
               "--store", store_url, "--concurrency", str(concurrency), "--grace", "5"]  # fmt: skip
        with open(os.path.join(tmp, f"worker-{i}.log"), "wb") as log:
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log))
    return procs


def _watch_ready(procs: Sequence[subprocess.Popen[bytes]]) -> list[float]:
    """Each worker's CPU seconds when it says it is ready (its start-up), filled in by reader threads."""
    cpu = [0.0] * len(procs)

    def watch(i: int, p: subprocess.Popen[bytes]) -> None:
        assert p.stdout is not None
        with p.stdout:  # closed at the worker's exit
            for line in p.stdout:
                if b"ready" in line and not cpu[i]:
                    cpu[i] = _proc_cpu(p.pid)

    for i, p in enumerate(procs):
        t = threading.Thread(target=watch, args=(i, p), daemon=True)
        t.start()
        _READERS.append(t)
    return cpu


_READERS: list[threading.Thread] = []


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (0 when unknown)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    return 0.0


def _postgres_cpu() -> float:
    """CPU seconds of the local PostgreSQL server: its live processes, and the exited ones (closed
    connections) through the postmaster's children's times."""
    total = 0.0
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == "postgres":
                    with open(f"/proc/{entry}/stat") as st:
                        fields = st.read().rsplit(")", 1)[1].split()
                    total += sum(int(x) for x in fields[11:15]) / _TICK
    return total


def _p50(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _log_tail(tmp: str, i: int) -> str:
    with contextlib.suppress(OSError), open(os.path.join(tmp, f"worker-{i}.log"), "rb") as f:
        return f.read()[-2000:].decode(errors="replace")
    return ""


def _read_counts(workers: int, tmp: str) -> list[dict[str, Any]]:
    """The counts each worker wrote when it exited."""
    counts = []
    for i in range(workers):
        with contextlib.suppress(OSError, ValueError), open(os.path.join(tmp, f"worker-{i}.json")) as f:
            counts.append(json.load(f))
    return counts


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    while _READERS:
        _READERS.pop().join(10)


# ---------------------------------------------------------------- raw sqlite3

_RAW_SCHEMA = """CREATE TABLE sagas (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL,
    steps TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    revision INTEGER NOT NULL)"""
_RAW_INSERT = "INSERT INTO sagas VALUES (?, ?, ?, ?, ?, ?, ?, 0)"
_RAW_UPDATE = (
    "UPDATE sagas SET status = ?, steps = ?, updated_at = ?, revision = revision + 1 WHERE id = ? AND revision = ?"
)


def run_raw(w: Workload, n: int, path: str) -> float:
    """Seconds for *n* sagas' transitions as one stdlib ``sqlite3`` transaction each."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_RAW_SCHEMA)
        states = w.raw_states()
        first, rest = states[0], states[1:]
        execute = conn.execute
        begin = time.perf_counter()
        for i in range(n):
            sid = uuid.uuid4().hex
            now = time.time()
            execute("BEGIN IMMEDIATE")
            execute(_RAW_INSERT, (sid, "raw", first[0], f'{{"i":{i}}}', first[1], now, now))
            execute("COMMIT")
            for rev, (status, steps) in enumerate(rest):
                execute("BEGIN IMMEDIATE")
                execute(_RAW_UPDATE, (status, steps, time.time(), sid, rev))
                execute("COMMIT")
        return time.perf_counter() - begin
    finally:
        conn.close()


# ---------------------------------------------------------------- runs (SQLite)


@dataclass(slots=True)
class RunResult:
    """One run of one workload: sagakit and the raw baseline, measured back to back."""

    workload: str
    n: int
    seconds: float
    step_runs: int
    raw_seconds: float
    store_transactions: int
    commits: int
    saga_writes: int  # saga rows written by commits (one row may carry several transitions)

    @property
    def sagas_per_s(self) -> float:
        return self.n / self.seconds

    @property
    def steps_per_s(self) -> float:
        return self.step_runs / self.seconds

    @property
    def raw_sagas_per_s(self) -> float:
        return self.n / self.raw_seconds

    @property
    def ratio(self) -> float:
        return self.sagas_per_s / self.raw_sagas_per_s


def run_benchmark(
    workloads: Sequence[str],
    n: int,
    runs: int,
    in_flight: int,
    *,
    directory: str | None = None,
    on_run: Callable[[int, RunResult], None] | None = None,
) -> list[RunResult]:
    """Run each workload *runs* times on SQLite; the raw baseline runs before and after each sagakit run.

    A run's raw rate is from the mean of its two raw timings.
    """
    results = []
    with tempfile.TemporaryDirectory(prefix="sagakit-bench-", dir=directory) as tmp:
        for run in range(1, runs + 1):
            for key in workloads:
                w = WORKLOADS[key]
                path = os.path.join(tmp, f"sagakit-{key}-{run}.db")
                # The raw baseline brackets the sagakit run (once before, once after),
                # so that a change of machine speed during the run affects both sides.
                raw_before = run_raw(w, n, os.path.join(tmp, f"raw-{key}-{run}-1.db"))
                store = SQLiteStore(path)
                counters = Counters()
                instrument(store, counters)
                seconds, step_runs = asyncio.run(run_sagakit(w, n, in_flight, store, counters))
                raw_after = run_raw(w, n, os.path.join(tmp, f"raw-{key}-{run}-2.db"))
                result = RunResult(
                    key, n, seconds, step_runs, (raw_before + raw_after) / 2,
                    counters.transactions, counters.commits, counters.writes,
                )  # fmt: skip
                results.append(result)
                for name in os.listdir(tmp):
                    os.remove(os.path.join(tmp, name))
                if on_run is not None:
                    on_run(run, result)
    return results


@dataclass(frozen=True, slots=True)
class Stats:
    """Median and range of one figure over the runs."""

    median: float
    min: float
    max: float
    values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        return cls(statistics.median(values), min(values), max(values), list(values))

    def show(self, fmt: str = ",.0f") -> str:
        if len(self.values) == 1:
            return format(self.median, fmt)
        return f"{self.median:{fmt}} ({self.min:{fmt}}-{self.max:{fmt}})"


def environment() -> dict[str, Any]:
    """The machine and software the figures were measured on."""
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def summarize(results: Sequence[RunResult], in_flight: int) -> dict[str, Any]:
    """Medians per workload, JSON-ready."""
    out: dict[str, Any] = {
        "store": "sqlite",
        "n": results[0].n if results else 0,
        "runs": len(results) // max(len({r.workload for r in results}), 1),
        "in_flight": in_flight,
        "environment": environment(),
        "workloads": {},
    }
    for key in dict.fromkeys(r.workload for r in results):
        rs = [r for r in results if r.workload == key]
        w = WORKLOADS[key]
        out["workloads"][key] = {
            "description": w.description,
            "sagakit": {
                "sagas_per_s": asdict(Stats.of([r.sagas_per_s for r in rs])),
                "steps_per_s": asdict(Stats.of([r.steps_per_s for r in rs])),
                "store_transactions_per_saga": statistics.median(r.store_transactions / r.n for r in rs),
                "saga_writes_per_commit": statistics.median(r.saga_writes / max(r.commits, 1) for r in rs),
            },
            "raw": {
                "sagas_per_s": asdict(Stats.of([r.raw_sagas_per_s for r in rs])),
                "transactions_per_saga": w.transitions,
            },
            "ratio": asdict(Stats.of([r.ratio for r in rs])),
        }
    return out


def _table(summary: dict[str, Any]) -> Table:
    table = Table(
        title=(
            f"sagakit bench: N={summary['n']:,} sagas per run, {summary['in_flight']} in flight, "
            f"median of {summary['runs']} run(s) (min-max); SQLite WAL, synchronous=NORMAL"
        ),
        title_justify="left",
        header_style="bold",
    )
    table.add_column("WORKLOAD")
    for name in (
        "SAGAKIT SAGAS/S",
        "STEPS/S",
        "RAW SQLITE3 SAGAS/S",
        "SAGAKIT / RAW",
        "STORE TX / SAGA",
        "SAGA WRITES / COMMIT",
    ):
        table.add_column(name, justify="right")
    for key, wl in summary["workloads"].items():
        sk, raw = wl["sagakit"], wl["raw"]
        table.add_row(
            f"{key}: {wl['description']}",
            Stats(**sk["sagas_per_s"]).show(),
            Stats(**sk["steps_per_s"]).show(),
            Stats(**raw["sagas_per_s"]).show() + f"  ({raw['transactions_per_saga']} tx/saga)",
            Stats(**wl["ratio"]).show(".2f"),
            f"{sk['store_transactions_per_saga']:.2f}",
            f"{sk['saga_writes_per_commit']:.1f}",
        )
    return table


# ---------------------------------------------------------------- PostgreSQL runs, with DBOS beside


def find_peer(name: str) -> tuple[str, str] | None:
    """(python, script) of a peer's benchmark runner in its own virtual environment, if set up.

    Looked for under ``benchmarks/`` of the current directory and of the
    repository this harness is in.
    """
    roots = [Path.cwd(), ROOT]
    for root in roots:
        python = root / "benchmarks" / ".venvs" / name / "bin" / "python"
        script = root / "benchmarks" / "peers" / f"{name}_peer.py"
        if python.exists() and script.exists():
            return str(python), str(script)
    return None


def run_peer(
    peer: tuple[str, str], w: Workload, n: int, store: str, db: str, *, workers: int = 0, in_flight: int = 50,
    schema: str | None = None, timeout: float = 1800.0,
) -> dict[str, Any]:  # fmt: skip
    """Run a peer's benchmark runner once; returns its JSON result.

    Raises:
        BenchError: the runner failed or printed no result.
    """
    python, script = peer
    cmd = [python, script, "--workload", w.key, "--n", str(n), "--store", store, "--db", db,
           "--workers", str(workers), "--in-flight", str(in_flight)]  # fmt: skip
    if schema:
        cmd += ["--schema", schema]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{Path(script).name} did not finish in {timeout:g} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"{Path(script).name} failed (status {proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    import logging

    logger = logging.getLogger("sagakit")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_postgres(
    w: Workload,
    n: int,
    runs: int,
    url: str,
    workers: Sequence[int],
    in_flight: int,
    *,
    dbos: tuple[str, str] | None,
    dbos_n: int,
    on_run: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Workload *w* on PostgreSQL per worker count, sagakit and (if given) DBOS interleaved in each run."""
    modes: dict[str, Any] = {}
    _, plain = _pg_url(url, "x")
    raw: dict[int, dict[str, list[float]]] = {k: {"sagakit": [], "spawn": [], "dbos": [], "tx": []} for k in workers}
    dbos_version = None
    with tempfile.TemporaryDirectory(prefix="sagakit-bench-") as tmp:
        for run in range(1, runs + 1):
            for k in workers:
                if k == 0:
                    r = asyncio.run(run_one(w, n, in_flight, url, tmp, latencies=False))
                else:
                    r = asyncio.run(run_workers(w, n, url, k, concurrency=in_flight, latencies=False))
                rate = n / (r.get("processing_seconds") or r["seconds"])
                raw[k]["sagakit"].append(rate)
                raw[k]["spawn"].append(n / r["seconds"])
                if r.get("write_tx") is not None:
                    raw[k]["tx"].append(r["write_tx"] / n)
                line = f"run {run}/{runs} workers {k}: sagakit {rate:,.0f} sagas/s"
                if dbos is not None:
                    schema = f"dbos_bench_{os.getpid()}_{k}_{uuid.uuid4().hex[:6]}"
                    peer = run_peer(dbos, w, dbos_n, "postgresql", plain, workers=k, in_flight=in_flight, schema=schema)
                    if not peer.get("ok"):
                        raise BenchError(f"DBOS run did not finish all workflows: {peer}")
                    dbos_version = peer.get("version")
                    drate = dbos_n / (peer.get("processing_seconds") or peer["seconds"])
                    raw[k]["dbos"].append(drate)
                    line += f", DBOS {drate:,.1f} sagas/s, ratio {rate / drate:,.1f}"
                if on_run is not None:
                    on_run(line)
    for k in workers:
        sk = raw[k]["sagakit"]
        d = raw[k]["dbos"]
        modes[str(k)] = {
            "sagakit": {
                "sagas_per_s": asdict(Stats.of(sk)),
                "sagas_per_s_from_spawn": asdict(Stats.of(raw[k]["spawn"])),
                "steps_per_s": asdict(Stats.of([x * w.step_runs for x in sk])),
                "store_transactions_per_saga": statistics.median(raw[k]["tx"]) if raw[k]["tx"] else None,
            },
            "dbos": {"sagas_per_s": asdict(Stats.of(d))} if d else None,
            "ratio": asdict(Stats.of([a / b for a, b in zip(sk, d, strict=True)])) if d else None,
        }
    scaling = {}
    if "1" in modes:
        base = raw[1]["sagakit"]
        for k in workers:
            if k > 1:
                scaling[str(k)] = asdict(Stats.of([a / b for a, b in zip(raw[k]["sagakit"], base, strict=True)]))
    return {
        "store": "postgresql",
        "workload": w.key,
        "description": w.description,
        "n": n,
        "runs": runs,
        "in_flight": in_flight,
        "environment": environment(),
        "dbos": {"n": dbos_n, "version": dbos_version} if dbos is not None else None,
        "modes": modes,
        "scaling_vs_1_worker": scaling,
    }


def _pg_table(summary: dict[str, Any]) -> Table:
    dbos = summary["dbos"]
    title = (
        f"sagakit bench on PostgreSQL: workload {summary['workload']} ({summary['description']}), "
        f"N={summary['n']:,} sagas per run, {summary['in_flight']} in flight per process, "
        f"median of {summary['runs']} run(s) (min-max). Sagas/s from the first saga's start to the last "
        "one's end; FROM SPAWN: from starting the worker processes"
    )
    if dbos:
        title += f"; {dbos['version'] or 'DBOS'} at N={dbos['n']:,}, same database, same runs"
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("WORKER PROCESSES")
    for name in (
        "SAGAKIT SAGAS/S",
        "FROM SPAWN",
        "STEPS/S",
        "STORE TX / SAGA",
        "DBOS SAGAS/S",
        "SAGAKIT / DBOS",
        "VS 1 WORKER",
    ):
        table.add_column(name, justify="right")
    for k, m in summary["modes"].items():
        sk = m["sagakit"]
        tx = sk["store_transactions_per_saga"]
        scale = summary["scaling_vs_1_worker"].get(k)
        table.add_row(
            "0 (in this process)" if k == "0" else k,
            Stats(**sk["sagas_per_s"]).show(),
            Stats(**sk["sagas_per_s_from_spawn"]).show(),
            Stats(**sk["steps_per_s"]).show(),
            "" if tx is None else f"{tx:.2f}",
            Stats(**m["dbos"]["sagas_per_s"]).show(",.1f") if m["dbos"] else "not run",
            Stats(**m["ratio"]).show(",.1f") if m["ratio"] else "",
            Stats(**scale).show(".2f") if scale else "",
        )
    return table


def _workers_option(value: tuple[str, ...]) -> list[int]:
    out: list[int] = []
    for v in value:
        for part in v.split(","):
            if not part.strip():
                continue
            try:
                k = int(part)
            except ValueError:
                raise click.BadParameter(f"{part!r} is not a number of worker processes") from None
            if k < 0 or k > 64:
                raise click.BadParameter(f"{k} worker processes: use 0 (in this process) to 64")
            if k not in out:
                out.append(k)
    return out


@click.command("bench")
@click.option(
    "--n", "n", type=click.IntRange(min=1), default=None, help="Sagas per run [SQLite: 5000, PostgreSQL: 10000]."
)
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--workload",
    type=click.Choice(["A", "B", "C", "D", "both"], case_sensitive=False),
    default=None,
    help="A: happy path; B: step 3 fails and steps 2, 1 are compensated; C: 10 sequential steps; "
    "D: 8 parallel steps and a join; both: A and B [SQLite: both, PostgreSQL: A].",
)
@click.option(
    "--in-flight",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Sagas started and not yet finished, at most (per worker process: its --concurrency).",
)
@click.option(
    "--store",
    "store_url",
    default="sqlite",
    show_default=True,
    help="sqlite (a new file per run, beside raw sqlite3) or postgresql://user@host/db (a new schema per run).",
)
@click.option(
    "--workers",
    "workers_opt",
    multiple=True,
    help="PostgreSQL: worker processes, e.g. --workers 1,2,4 (0: the engine in this process) [1,2,4].",
)
@click.option(
    "--dbos/--no-dbos",
    "with_dbos",
    default=None,
    help="PostgreSQL: run DBOS beside sagakit (needs benchmarks/.venvs/dbos) [on when it is set up].",
)
@click.option(
    "--dbos-n",
    type=click.IntRange(min=1),
    default=None,
    help="Workflows per DBOS run (DBOS runs ~50 sagas/s: 10,000 would take minutes per run) [min(N, 500)].",
)
@click.option(
    "--transport",
    "transports",
    multiple=True,
    help="Message-step round trip instead: a transport URL (memory://, nats://…, amqp://…, redis://…), "
    "repeatable; p50/p99 latency and sagas/s of a 3-step message saga over it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench_command(
    n: int | None,
    runs: int,
    workload: str | None,
    in_flight: int,
    store_url: str,
    workers_opt: tuple[str, ...],
    with_dbos: bool | None,
    dbos_n: int | None,
    transports: tuple[str, ...],
    as_json: bool,
) -> None:
    """Measure sagas/s: on SQLite beside raw sqlite3, or on PostgreSQL with worker processes beside DBOS.

    SQLite: each run starts N sagas (at most --in-flight unfinished at once) on
    a fresh SQLite file in a temporary directory and measures the time until
    all have ended; right before and right after it, the same number of sagas'
    transitions are written with the stdlib sqlite3 module, one durable
    transaction per transition (the raw rate uses the mean of the two).

    PostgreSQL (--store postgresql://…): per run and per --workers count, N
    sagas are stored as PENDING in a new schema, then that many `sagakit
    worker` processes run them; the time runs from their start until the last
    saga ended. DBOS runs the same workload on the same database in the same
    runs, as queued workflows and as many DBOS worker processes, when
    benchmarks/.venvs/dbos exists (python benchmarks/run.py --setup).

    Figures are the median of --runs runs, with min-max; ratios are the median
    of the per-run ratios.
    """
    if transports:
        _bench_transports(transports, n or 500, in_flight, None if store_url == "sqlite" else store_url, as_json)
        return
    workers = _workers_option(workers_opt)
    if is_postgres(store_url):
        _bench_postgres(n or 10_000, runs, (workload or "A").upper(), in_flight, store_url, workers or [1, 2, 4],
                        with_dbos, dbos_n, as_json)  # fmt: skip
        return
    if store_url.lower() not in ("sqlite", "sqlite://"):
        fail(f"unknown --store {store_url!r}: use sqlite or postgresql://user@host/db", EXIT_FAILED)
    if any(k != 0 for k in workers):
        fail("--workers needs a PostgreSQL store: SQLite runs in one process", EXIT_FAILED)
    n = n or 5000
    workload = workload or "both"
    keys = ["A", "B"] if workload.lower() == "both" else [workload.upper()]

    def progress(run: int, r: RunResult) -> None:
        click.echo(
            f"run {run}/{runs} workload {r.workload}: sagakit {r.sagas_per_s:,.0f} sagas/s, "
            f"raw sqlite3 {r.raw_sagas_per_s:,.0f} sagas/s, ratio {r.ratio:.2f}",
            err=True,
        )

    try:
        results = run_benchmark(keys, n, runs, in_flight, on_run=progress)
    except BenchError as e:
        fail(str(e), EXIT_FAILED)
    except (StoreError, sqlite3.Error, OSError) as e:
        fail(f"benchmark store failed: {e}", EXIT_STORE)
    summary = summarize(results, in_flight)
    if as_json:
        echo_json(summary)
        return
    out = console()
    out.print(_table(summary))
    env = summary["environment"]
    out.print(
        f"[dim]{env['cpus']} CPUs, Python {env['python']}, SQLite {env['sqlite']}, "
        f"{env['platform']}, {env['date']}[/dim]"
    )


def _bench_transports(urls: Sequence[str], n: int, in_flight: int, store: str | None, as_json: bool) -> None:
    """``sagakit bench --transport URL``: a 3-step message saga's round trip over each transport."""
    from sagakit._transport import TransportError

    from .transport import run_transport_bench, transport_bench_table

    results = []
    for url in urls:
        click.echo(f"transport {url}: {n} sagas, {in_flight} in flight ...", err=True)
        try:
            results.append(asyncio.run(run_transport_bench(url, n, in_flight=in_flight, store=store)))
        except TransportError as e:
            fail(f"transport {url}: {e}", EXIT_STORE)
    if as_json:
        echo_json({"transports": results})
        return
    console().print(transport_bench_table(results))


def _bench_postgres(
    n: int,
    runs: int,
    workload: str,
    in_flight: int,
    url: str,
    workers: list[int],
    with_dbos: bool | None,
    dbos_n: int | None,
    as_json: bool,
) -> None:
    if workload == "BOTH":
        fail("on PostgreSQL, name one workload: --workload A, B, C or D", EXIT_FAILED)
    dbos = find_peer("dbos") if with_dbos is not False else None
    if with_dbos and dbos is None:
        fail(
            "DBOS is not set up: run `python benchmarks/run.py --setup` in sagakit's source tree "
            "(it makes benchmarks/.venvs/dbos), or pass --no-dbos",
            EXIT_FAILED,
        )
    if dbos is None and with_dbos is None:
        click.echo("DBOS is not set up (benchmarks/.venvs/dbos): measuring sagakit alone", err=True)
    try:
        with _quiet_logs():
            summary = run_postgres(
                WORKLOADS[workload], n, runs, url, workers, in_flight, dbos=dbos, dbos_n=dbos_n or min(n, 500),
                on_run=lambda line: click.echo(line, err=True),
            )  # fmt: skip
    except BenchError as e:
        fail(str(e), EXIT_FAILED)
    except (StoreError, OSError) as e:
        fail(f"benchmark store failed: {e}", EXIT_STORE)
    if as_json:
        echo_json(summary)
        return
    out = console()
    out.print(_pg_table(summary))
    env = summary["environment"]
    out.print(f"[dim]{env['cpus']} CPUs, Python {env['python']}, {env['platform']}, {env['date']}[/dim]")


commands: list[click.Command] = [bench_command]


if __name__ == "__main__":
    bench_command()
