"""``sagakit bench``: sagas/s on the embedded SQLite store beside raw ``sqlite3`` transactions.

Workload A: N sagas of 3 async no-op steps, each with a compensation (happy
path). Workload B: the same with the third step failing with a
``NonRetryableError``, so steps 2 and 1 are compensated. Sagas are started
through the public API with at most ``in_flight`` of them unfinished at once;
each run gets a fresh SQLite file (WAL, ``synchronous=NORMAL``, the store's
defaults).

The baseline, measured in the same process right before and right after each
sagakit run, does with the stdlib ``sqlite3`` module what a naive durable
orchestrator would: one transaction per saga transition on a table of the
same shape (A: insert, then three updates; B: insert, then five updates),
same pragmas, nothing else. The ratio sagakit/raw is the figure to compare
across machines; absolute rates vary with the machine and its load.

The code here measures and reports; it asserts nothing about speed.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import click
import orjson
from rich.table import Table

from .._context import StepContext
from .._definition import SagaBuilder, SagaDefinition
from .._engine import SagaEngine
from .._errors import NonRetryableError, StoreError
from .._status import SagaStatus
from .._store import Write
from ..machine import HistoryEntry, SagaState
from ..stores.sqlite import SQLiteStore
from ._render import EXIT_FAILED, EXIT_STORE, console, echo_json, fail

__all__ = [
    "WORKLOADS",
    "BenchError",
    "CountingSQLiteStore",
    "RunResult",
    "Workload",
    "bench_command",
    "commands",
    "run_benchmark",
    "run_raw",
    "run_sagakit",
]


class BenchError(Exception):
    """A benchmark run did not end as its workload expects."""


@dataclass(frozen=True, slots=True)
class Workload:
    """What one benchmark workload runs and how its sagas must end."""

    key: str
    description: str
    fail_last: bool
    expected: SagaStatus
    transitions: int  # durable transitions of one saga: the raw baseline's transactions
    step_runs: int  # step functions called per saga (actions and compensations)


WORKLOADS = {
    "A": Workload("A", "3 no-op steps, happy path", False, SagaStatus.COMPLETED, 4, 3),
    "B": Workload("B", "step 3 fails, steps 2 and 1 compensated", True, SagaStatus.COMPENSATED, 6, 5),
}


class CountingSQLiteStore(SQLiteStore):
    """The SQLite store, counting its write transactions and the saga rows each commit writes.

    It also counts committed transitions into a terminal status (``finished``)
    and sets ``progressed`` after each commit that had some: the benchmark
    learns that sagas ended without polling the store.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.transactions = 0
        self.commits = 0
        self.writes = 0
        self.finished = 0
        self.progressed = asyncio.Event()

    async def commit(self, writes: Sequence[Write]) -> list[str | None]:
        self.transactions += 1
        self.commits += 1
        self.writes += len(writes)
        results = await super().commit(writes)
        ended = sum(1 for w, r in zip(writes, results, strict=True) if r == w.state.id and w.state.status.terminal)
        if ended:
            self.finished += ended
            self.progressed.set()
        return results

    async def claim(self, owner: str, now: float, lease_until: float, limit: int) -> list[SagaState]:
        self.transactions += 1
        return await super().claim(owner, now, lease_until, limit)

    async def claim_saga(self, saga_id: str, owner: str, now: float, lease_until: float) -> SagaState | None:
        self.transactions += 1
        return await super().claim_saga(saga_id, owner, now, lease_until)

    async def renew(self, owner: str, saga_ids: Sequence[str], lease_until: float) -> set[str]:
        self.transactions += 1
        return await super().renew(owner, saga_ids, lease_until)

    async def release(self, owner: str, sagas: Sequence[tuple[str, float | None]]) -> None:
        self.transactions += 1
        await super().release(owner, sagas)

    async def append_history(self, saga_id: str, revision: int, entries: Sequence[HistoryEntry]) -> None:
        self.transactions += 1
        await super().append_history(saga_id, revision, entries)


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


# ---------------------------------------------------------------- sagakit


def _definition(w: Workload, calls: list[int]) -> SagaDefinition:
    async def noop(ctx: StepContext) -> None:
        calls[0] += 1

    async def decline(ctx: StepContext) -> None:
        calls[0] += 1
        raise NonRetryableError("declined")

    b = SagaBuilder(f"bench_{w.key.lower()}")
    b.step("step1", noop, noop)
    b.step("step2", noop, noop)
    b.step("step3", decline if w.fail_last else noop, noop)
    return b.build()


async def run_sagakit(
    w: Workload, n: int, in_flight: int, path: str, *, stall_seconds: float = 60.0
) -> tuple[float, int, CountingSQLiteStore]:
    """Run *n* sagas of workload *w* on a new SQLite file at *path*.

    Returns (seconds, step functions called, the store with its counters).

    Raises:
        BenchError: the sagas stopped making progress before all of them ended as expected.
    """
    calls = [0]
    definition = _definition(w, calls)
    store = CountingSQLiteStore(path)
    engine = SagaEngine(store)
    engine.register(definition)
    async with engine:
        begin = time.perf_counter()
        started = 0
        while store.finished < n:
            room = min(in_flight - (started - store.finished), n - started)
            if room > 0:
                await asyncio.gather(*(engine.start(definition.name, {"i": started + i}) for i in range(room)))
                started += room
                continue
            store.progressed.clear()
            try:
                await asyncio.wait_for(store.progressed.wait(), stall_seconds)
            except TimeoutError:
                break
        seconds = time.perf_counter() - begin
        done = await engine.count(w.expected, definition.name)
        if done != n:
            counts = {s.value: await engine.count(s, definition.name) for s in SagaStatus}
            raise BenchError(
                f"workload {w.key}: {done} of {n} sagas are {w.expected.value} (none ended in "
                f"the last {stall_seconds:g} s or some ended otherwise); by status: {counts}"
            )
    return seconds, calls[0], store


# ---------------------------------------------------------------- raw sqlite3

_RAW_SCHEMA = """CREATE TABLE sagas (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL,
    steps TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    revision INTEGER NOT NULL)"""
_RAW_INSERT = "INSERT INTO sagas VALUES (?, ?, ?, ?, ?, ?, ?, 0)"
_RAW_UPDATE = (
    "UPDATE sagas SET status = ?, steps = ?, updated_at = ?, revision = revision + 1 WHERE id = ? AND revision = ?"
)


def _raw_states(w: Workload) -> list[tuple[str, str]]:
    """(saga status, steps JSON) after each transition of one saga of workload *w*."""
    steps = {"step1": "pending", "step2": "pending", "step3": "pending"}
    states = [("running", dict(steps))]
    for name in ("step1", "step2", "step3"):
        steps[name] = "failed" if w.fail_last and name == "step3" else "completed"
        states.append(("running", dict(steps)))
    if w.fail_last:
        for name in ("step2", "step1"):
            steps[name] = "compensated"
            states.append(("compensating", dict(steps)))
        states[-1] = ("compensated", states[-1][1])
    else:
        states[-1] = ("completed", states[-1][1])
    assert len(states) == w.transitions
    return [(status, orjson.dumps(s).decode()) for status, s in states]


def run_raw(w: Workload, n: int, path: str) -> float:
    """Seconds for *n* sagas' transitions as one stdlib ``sqlite3`` transaction each."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_RAW_SCHEMA)
        states = _raw_states(w)
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


# ---------------------------------------------------------------- runs


def run_benchmark(
    workloads: Sequence[str],
    n: int,
    runs: int,
    in_flight: int,
    *,
    directory: str | None = None,
    on_run: Callable[[int, RunResult], None] | None = None,
) -> list[RunResult]:
    """Run each workload *runs* times; the raw baseline runs before and after each sagakit run.

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
                seconds, step_runs, store = asyncio.run(run_sagakit(w, n, in_flight, path))
                raw_after = run_raw(w, n, os.path.join(tmp, f"raw-{key}-{run}-2.db"))
                result = RunResult(
                    key, n, seconds, step_runs, (raw_before + raw_after) / 2,
                    store.transactions, store.commits, store.writes,
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


@click.command("bench")
@click.option("--n", "n", type=click.IntRange(min=1), default=5000, show_default=True, help="Sagas per run.")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--workload",
    type=click.Choice(["A", "B", "both"], case_sensitive=False),
    default="both",
    show_default=True,
    help="A: happy path; B: step 3 fails and steps 2, 1 are compensated.",
)
@click.option(
    "--in-flight",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Sagas started and not yet finished, at most.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench_command(n: int, runs: int, workload: str, in_flight: int, as_json: bool) -> None:
    """Measure sagas/s on the embedded SQLite store beside raw sqlite3 transactions.

    Each run starts N sagas (at most --in-flight unfinished at once) on a fresh
    SQLite file in a temporary directory and measures the time until all have
    ended; right before and right after it, the same number of sagas'
    transitions are written with the stdlib sqlite3 module, one durable
    transaction per transition (the raw rate uses the mean of the two).
    Figures are the median of --runs runs, with min-max; the ratio is the
    median of the per-run ratios.
    """
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


commands: list[click.Command] = [bench_command]
