"""Chaos on PostgreSQL: three workers killed, frozen and one of them 30 s ahead, an operator compensating.

Three worker processes (``tests/chaos/worker.py``) run sagas of four steps
(``reserve``, ``charge``, ``pack`` with compensations, ``ship`` without; every
5th saga fails non-retryably at ``ship`` and compensates, every 4th fails
``charge`` twice and retries it after a back-off) on a schema of
their own in the local server's ``test`` database, with a 2 s lease. The
parent starts the sagas at a steady pace while it:

- SIGKILLs a random worker now and then and starts a new one (new worker id)
  in its place;
- SIGSTOPs a random worker for 3-5 s (longer than the lease), then SIGCONTs it;
- runs one worker slot with its clock 30 s ahead. With libfaketime installed
  (Debian: ``apt-get install -y faketime``) the worker's whole process runs
  under ``LD_PRELOAD=libfaketimeMT.so.1 FAKETIME=+30s``: ``time.time()``,
  ``datetime.now()`` and every thread's wall clock are shifted. libfaketime
  shifts ``time.monotonic()`` as well by default (it then reads like the
  shifted epoch, at the normal rate); the test sets
  ``FAKETIME_DONT_FAKE_MONOTONIC=1`` so monotonic time, and so asyncio's loop
  clock and every ``asyncio.sleep``, stays real and only the wall clock is
  wrong, as with a badly synchronised host. Without libfaketime the worker gets
  ``SagaEngine(clock=lambda: time.time() + 30)`` instead (the engine's clock
  only; the step bodies' own clock is right). ``SAGAKIT_CHAOS_SKEW`` =
  ``auto`` (default: faketime when installed), ``faketime`` or ``hook`` chooses;
  each worker reports its clock minus the database's at start, and the test
  checks the skew took (the figures name the way used: ``.ci/run`` does not
  install faketime, so a fresh CI machine uses the hook);
- has an operator (an engine that is not running) ``compensate`` ~5 % of the
  sagas at random moments; ``SagaStateError`` (finished, or nothing left to
  undo) counts as refused, ``SagaBusy`` is retried once 2 s later.

Every step and compensation applies its effect as one row of ``effects`` (same
schema) inside ``sagakit.stores.postgres.fenced``, recording in the same
statement whether its worker held the saga's lease at that moment on the
database's clock (``lease_valid``). At the end (workers restored, waiting
until every saga is terminal or a deadline passes) it prints a figure block
and asserts: no saga lost, none stuck, no effect applied by a worker without
a valid lease, no COMPENSATED saga with an action effect that was not undone,
no COMPLETED saga with a missing action effect or an applied compensation,
each saga in the status its fate calls for. Executions per idempotency key
above one are at-least-once and only printed.

Each effect without a lease would be put down to a cause: ``lost mid-step,
frozen`` (the attempt began with the lease and its worker was SIGSTOPped
before the effect: the fence must refuse it), ``lost mid-step, not frozen``,
``begun without, frozen just before`` and ``begun without, not frozen``
(``started_valid``/``started_at`` record the same check at the start of the
attempt). Effects the fence stopped (``fenced_off``: the lease was lost, or
the server closed a frozen worker's open transaction) are counted by error,
to show the fence had work to do. When sagas are stuck, the first
three are printed with their row (lease and wake time against the database's
clock) and history, and every live worker is sent SIGUSR1 and writes what it
holds (state, attempts in flight, timers, free slots, its asyncio tasks) to
its log, which the test prints.

Runs:

    # short form (CI): 200 sagas, ~20 s of chaos, 25-60 s in all
    python -m pytest tests/chaos -s
    # full form: 2,000 sagas, ~80 s of chaos, a few minutes
    SAGAKIT_CHAOS_SAGAS=2000 python -m pytest tests/chaos -s

``SAGAKIT_CHAOS_SECONDS`` overrides the length of the chaos window,
``SAGAKIT_CHAOS_SEED`` the random seed (printed with the figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sagakit import SagaBusy, SagaEngine, SagaStateError, SagaStatus
from tests.conftest import PG_DSN, pg_available, require_service

ROOT = Path(__file__).resolve().parent.parent.parent
SAGAS = int(os.environ.get("SAGAKIT_CHAOS_SAGAS", "200"))
CHAOS_SECONDS = float(os.environ.get("SAGAKIT_CHAOS_SECONDS", str(max(20.0, SAGAS * 0.04))))
RECOVERY_DEADLINE = max(35.0, SAGAS * 0.05)  # after the last chaos event, for every saga to end
SEED = int(os.environ.get("SAGAKIT_CHAOS_SEED", str(random.randrange(1 << 30))))
LEASE = 2.0
SKEW = 30.0
WORKERS = 3
SKEWED_SLOT = 2
OPERATOR_SHARE = 0.05

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.timeout(int(CHAOS_SECONDS + RECOVERY_DEADLINE + 35)),  # 90 s in the short form
]

STEPS_WITH_COMPENSATION = ("reserve", "charge", "pack")


def _faketime_lib() -> str | None:
    for pattern in ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/libfaketimeMT.so.1"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def _skew_mode() -> str:
    mode = os.environ.get("SAGAKIT_CHAOS_SKEW", "auto")
    if mode == "auto":
        return "faketime" if _faketime_lib() else "hook"
    if mode not in ("faketime", "hook"):
        raise pytest.UsageError(f"SAGAKIT_CHAOS_SKEW must be auto, faketime or hook, got {mode!r}")
    if mode == "faketime" and not _faketime_lib():
        pytest.fail("SAGAKIT_CHAOS_SKEW=faketime but libfaketime is not installed (apt-get install -y faketime)")
    return mode


@pytest.fixture
def schema() -> Iterator[str]:
    require_service(pg_available())
    name = f"chaos_{uuid.uuid4().hex[:10]}"
    yield name
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@dataclass
class Worker:
    slot: int
    worker_id: str
    proc: subprocess.Popen[bytes]
    skew: float = 0.0
    frozen: bool = False


@dataclass
class Figures:
    kills: int = 0
    freezes: int = 0
    restarts: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    op_requested: int = 0
    op_applied: int = 0
    op_refused: int = 0
    op_busy: int = 0
    op_busy_twice: int = 0
    op_errors: list[str] = field(default_factory=list)
    op_refusals: Counter[str] = field(default_factory=Counter)
    last_chaos: float = 0.0  # monotonic
    frozen: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # worker -> (SIGSTOP, SIGCONT), epoch


class Workers:
    """The worker processes: started, killed, frozen, restored; every one reaped by ``close``."""

    def __init__(self, url: str, logs: Path, skew_mode: str) -> None:
        self.url = url
        self.logs = logs
        self.skew_mode = skew_mode
        self.slots: dict[int, Worker] = {}
        self.all: list[subprocess.Popen[bytes]] = []
        self.generation = 0

    async def start(self, slot: int) -> Worker:
        self.generation += 1
        skewed = slot == SKEWED_SLOT
        worker_id = f"w{slot}-{self.generation}" + ("-skew" if skewed else "")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
        args = [sys.executable, "-m", "tests.chaos.worker", self.url, worker_id, str(LEASE)]
        if skewed and self.skew_mode == "faketime":
            lib = _faketime_lib()
            assert lib is not None
            env.update(LD_PRELOAD=lib, FAKETIME=f"+{int(SKEW)}s", FAKETIME_DONT_FAKE_MONOTONIC="1")
        elif skewed:
            args.append(str(SKEW))
        with open(self.logs / f"{worker_id}.log", "wb") as log:
            proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log)
        self.all.append(proc)
        assert proc.stdout is not None
        try:
            line = (await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 45)).decode()
        except TimeoutError:
            line = ""
        if not line.startswith("ready"):
            pytest.fail(f"worker {worker_id} did not start: {line!r}\n{(self.logs / f'{worker_id}.log').read_text()}")
        skew = float(line.split("skew=")[1])
        want = SKEW if skewed else 0.0
        assert abs(skew - want) < 3.0, f"worker {worker_id}: clock {skew:+.1f} s off the database's, wanted {want:+.0f}"
        w = Worker(slot, worker_id, proc, skew)
        self.slots[slot] = w
        return w

    async def kill_and_replace(self, slot: int) -> None:
        w = self.slots[slot]
        w.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(w.proc.wait, 10)
        await self.start(slot)

    def freeze(self, w: Worker, fig: Figures) -> None:
        os.kill(w.proc.pid, signal.SIGSTOP)
        w.frozen = True
        fig.frozen.setdefault(w.worker_id, []).append((time.time(), float("inf")))

    def thaw(self, w: Worker, fig: Figures) -> None:
        if w.frozen:
            os.kill(w.proc.pid, signal.SIGCONT)
            w.frozen = False
            stopped, _ = fig.frozen[w.worker_id][-1]
            fig.frozen[w.worker_id][-1] = (stopped, time.time())
            fig.last_chaos = time.monotonic()

    async def restore(self, fig: Figures) -> None:
        """SIGCONT every frozen worker; start a new one in place of any that died on its own."""
        for slot, w in list(self.slots.items()):
            self.thaw(w, fig)
            if w.proc.poll() is not None:
                fig.unexpected_exits.append(f"{w.worker_id} exited {w.proc.returncode}")
                await self.start(slot)
                fig.last_chaos = time.monotonic()

    def close(self) -> None:
        for proc in self.all:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGKILL)
        for proc in self.all:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.stdout is not None:
                proc.stdout.close()


async def _prepare(url: str) -> None:
    import asyncpg

    from tests.chaos.worker import TABLES, split_url

    engine = SagaEngine(url)
    await engine.count()  # creates the schema and sagakit's tables
    await engine.close()
    base, schema = split_url(url)
    conn = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        for sql in TABLES:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _statuses(conn: object) -> Counter[str]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM sagakit_sagas GROUP BY status")  # type: ignore[attr-defined]
    return Counter({r["status"]: r["n"] for r in rows})


TERMINAL = {s.value for s in SagaStatus if s.terminal}


async def _describe(conn: object, engine: SagaEngine, sid: str) -> str:
    """A stuck saga, for the report: its lease and wake time against the database's clock, steps, history."""
    row = await conn.fetchrow(  # type: ignore[attr-defined]
        "SELECT status, lease_owner, lease_expires - extract(epoch FROM clock_timestamp())::float8 AS lease_left, "
        "wake_at - extract(epoch FROM clock_timestamp())::float8 AS wake_in, revision, "
        "left(steps::text, 700) AS steps FROM sagakit_sagas WHERE id = $1",
        sid,
    )
    snap = await engine.get(sid)
    steps = ", ".join(f"{n} {s.status.value}/{s.attempts}" for n, s in snap.steps.items())
    history = "\n    ".join(f"{h.kind}: {h.message}" for h in snap.history[-8:])
    return f"chaos: stuck {sid}: {dict(row)}; steps {steps}\n    {history}"


def _cause(r: Mapping[str, Any], freezes: dict[str, list[tuple[float, float]]]) -> str:
    """Why an effect was applied without a lease.

    Freezes are known to the second (the parent's clock is the database's host's). An attempt begun with the
    lease whose worker was frozen (SIGSTOP) before it applied its effect cannot be stopped by any lease, only
    by a fence downstream of the step; one begun right after a freeze may have been dispatched before it.
    """

    def frozen_between(start: float, end: float) -> bool:
        return any(stop <= end and cont >= start for stop, cont in freezes.get(r["worker"], []))

    if r["started_valid"]:
        return "lost mid-step, frozen" if frozen_between(r["started_at"], r["at"]) else "lost mid-step, not frozen"
    if frozen_between(r["started_at"] - LEASE - 1.0, r["started_at"]):
        return "begun without, frozen just before"
    return "begun without, not frozen"


def _log_errors(logs: Path) -> list[str]:
    """The first lines of tracebacks and errors in the workers' logs."""
    found: list[str] = []
    for log in sorted(logs.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if ("ERROR" in line or "Error" in line) and len(found) < 8:
                found.append(f"{log.stem}: {line[:200]}")
    return found


async def test_chaos_on_postgres(schema: str, tmp_path: Path) -> None:
    import asyncpg

    from tests.chaos.worker import definition, split_url

    url = f"{PG_DSN}?schema={schema}"
    await _prepare(url)
    base, _ = split_url(url)
    skew_mode = _skew_mode()
    rng = random.Random(SEED)
    fig = Figures()
    producer = SagaEngine(url, worker_id="chaos-producer")
    producer.register(definition)
    operator = SagaEngine(url, worker_id="chaos-operator")
    operator.register(definition)
    conn = await asyncpg.connect(base, server_settings={"search_path": schema})
    workers = Workers(url, tmp_path, skew_mode)
    ids: dict[str, int] = {}  # saga id -> index
    requested: set[str] = set()
    op_tasks: list[asyncio.Task[None]] = []
    freeze_tasks: list[asyncio.Task[None]] = []
    chosen = set(rng.sample(range(SAGAS), max(1, round(SAGAS * OPERATOR_SHARE))))

    async def operate(sid: str, delay: float) -> None:
        await asyncio.sleep(delay)
        fig.op_requested += 1
        requested.add(sid)
        for attempt in (1, 2):
            try:
                await operator.compensate(sid, reason="chaos test")
                fig.op_applied += 1
                return
            except SagaStateError as e:
                fig.op_refused += 1
                fig.op_refusals[re.sub(r"[0-9a-f]{32}", "…", str(e))[:90]] += 1
                return
            except SagaBusy:
                if attempt == 1:
                    fig.op_busy += 1
                    await asyncio.sleep(2.0)
                else:
                    fig.op_busy_twice += 1
            except Exception as e:  # noqa: BLE001 - reported with the figures
                fig.op_errors.append(f"{sid}: {type(e).__name__}: {e}")
                return

    async def produce() -> None:
        window = CHAOS_SECONDS  # the last sagas are in flight at the last chaos events
        t0 = time.monotonic()
        for i in range(SAGAS):
            data = {"i": i, "fail": i % 5 == 0, "flaky": i % 4 == 1}
            sid = await producer.start("chaos", data, idempotency_key=f"c-{i}")
            ids[sid] = i
            if i in chosen:
                op_tasks.append(asyncio.create_task(operate(sid, rng.uniform(0.0, 2.5))))
            ahead = t0 + (i + 1) * window / SAGAS - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)

    async def freeze(w: Worker, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        finally:
            workers.thaw(w, fig)

    t_start = time.monotonic()
    try:
        await asyncio.gather(*(workers.start(slot) for slot in range(WORKERS)))
        producing = asyncio.create_task(produce())
        t_end = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < t_end or not producing.done():
            await asyncio.sleep(rng.uniform(0.8, 2.0))
            awake = [w for w in workers.slots.values() if not w.frozen]
            if rng.random() < 0.5:
                w = rng.choice(awake)
                await workers.kill_and_replace(w.slot)
                fig.kills += 1
                fig.last_chaos = time.monotonic()
            elif len(awake) >= 2:
                w = rng.choice(awake)
                workers.freeze(w, fig)
                fig.freezes += 1
                fig.last_chaos = time.monotonic()
                freeze_tasks.append(asyncio.create_task(freeze(w, rng.uniform(3.0, 5.0))))
            for w in list(workers.slots.values()):
                if w.proc.poll() is not None and not w.frozen:
                    fig.unexpected_exits.append(f"{w.worker_id} exited {w.proc.returncode}")
                    await workers.start(w.slot)
        await producing
        await asyncio.gather(*freeze_tasks)
        await workers.restore(fig)
        chaos_over = time.monotonic()

        # Every saga terminal, or the deadline.
        deadline = max(chaos_over, fig.last_chaos) + RECOVERY_DEADLINE
        while True:
            counts = await _statuses(conn)
            if sum(n for s, n in counts.items() if s not in TERMINAL) == 0 and sum(counts.values()) >= SAGAS:
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        all_done = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*op_tasks), 30)
        for w in workers.slots.values():
            if w.proc.poll() is not None:
                fig.unexpected_exits.append(f"{w.worker_id} exited {w.proc.returncode}")

        sagas = {r["id"]: r["status"] for r in await conn.fetch("SELECT id, status FROM sagakit_sagas")}
        for sid in [sid for sid, st in sagas.items() if st not in TERMINAL][:3]:
            print(await _describe(conn, operator, sid))
        if any(st not in TERMINAL for st in sagas.values()):
            for w in workers.slots.values():  # each live worker writes what it holds to its log
                if w.proc.poll() is None:
                    os.kill(w.proc.pid, signal.SIGUSR1)
            await asyncio.sleep(1.0)
            for w in workers.slots.values():
                dump = [ln for ln in (tmp_path / f"{w.worker_id}.log").read_text().splitlines() if "dump" in ln]
                print("\n".join(f"chaos: {ln[:400]}" for ln in dump[:40]))
        effects = await conn.fetch(
            "SELECT key, saga_id, step, direction, worker, started_valid, lease_valid, "
            "extract(epoch FROM started_at)::float8 AS started_at, extract(epoch FROM at)::float8 AS at FROM effects"
        )
        fenced_off = Counter(r["error"] for r in await conn.fetch("SELECT error FROM fenced_off"))
    finally:
        for t in (*op_tasks, *freeze_tasks):
            t.cancel()
        workers.close()
        await conn.close()
        await producer.close()
        await operator.close()

    # ---------------------------------------------------------------- figures
    missing = [sid for sid in ids if sid not in sagas]
    unfinished = [sid for sid in ids if sid in sagas and sagas[sid] not in TERMINAL]
    lost = len(missing) + len(unfinished)
    stuck = sum(1 for s in sagas.values() if s not in TERMINAL)
    applied: dict[str, set[tuple[str, str]]] = {}
    for r in effects:
        applied.setdefault(r["saga_id"], set()).add((r["step"], r["direction"]))
    without_lease = [r for r in effects if not r["lease_valid"]]
    causes = Counter(_cause(r, fig.frozen) for r in without_lease)
    started_without = sum(1 for r in without_lease if not r["started_valid"])
    not_undone = []
    completed_wrong = []
    wrong_status = []
    for sid, i in ids.items():
        status = sagas.get(sid)
        done = applied.get(sid, set())
        if status == SagaStatus.COMPENSATED.value:
            for step in STEPS_WITH_COMPENSATION:
                if (step, "action") in done and (step, "compensation") not in done:
                    not_undone.append(f"{sid}:{step}")
        elif status == SagaStatus.COMPLETED.value:
            steps = (*STEPS_WITH_COMPENSATION, "ship")
            if any((s, "action") not in done for s in steps) or any(d == "compensation" for _, d in done):
                completed_wrong.append(sid)
        if status in TERMINAL:
            if i % 5 == 0:
                expected = {SagaStatus.COMPENSATED.value}
            elif sid in requested:
                expected = {SagaStatus.COMPENSATED.value, SagaStatus.COMPLETED.value}
            else:
                expected = {SagaStatus.COMPLETED.value}
            if status not in expected:
                wrong_status.append(f"{sid} (#{i}) {status}")
    executions = len(effects)
    keys = len({r["key"] for r in effects})
    # Doubled: one step's effect (saga, step, direction) applied under two idempotency keys, so a
    # receiver that de-duplicates by key would apply it twice. Re-runs share their key.
    doubled = len({(r["saga_id"], r["step"], r["direction"], r["key"]) for r in effects}) - len(
        {(r["saga_id"], r["step"], r["direction"]) for r in effects}
    )
    skewed_effects = sum(1 for r in effects if r["worker"].endswith("-skew"))
    by_worker = Counter(r["worker"] for r in without_lease)
    status_counts = Counter(sagas.values())
    recovery = all_done - max(chaos_over, fig.last_chaos)
    print(
        f"\nchaos: sagas {len(ids)}, seed {SEED}, window {CHAOS_SECONDS:.0f} s, kills {fig.kills}, "
        f"freezes {fig.freezes}, skewed worker 1 (+{SKEW:.0f} s by {skew_mode}, {skewed_effects} effects), "
        f"operator compensations {fig.op_requested} (applied {fig.op_applied}, refused {fig.op_refused}, "
        f"busy {fig.op_busy}, busy twice {fig.op_busy_twice}, errors {len(fig.op_errors)}), "
        f"lost {lost}, stuck {stuck}, effects without lease {len(without_lease)} "
        f"(begun without one {started_without}), effects stopped by the fence {dict(fenced_off)}, "
        f"compensated with effect not undone {len(not_undone)}, "
        f"completed wrong {len(completed_wrong)}, wrong status {len(wrong_status)}, "
        f"executions/keys {executions}/{keys}, doubled {doubled}, "
        f"recovery time after last chaos event {recovery:.1f} s, "
        f"total {time.monotonic() - t_start:.0f} s"
    )
    print(f"chaos: statuses {dict(status_counts)}")
    if without_lease:
        print(f"chaos: effects without lease by cause {dict(causes)}, by worker {dict(by_worker)}")
    if fig.op_refusals:
        print(f"chaos: operator refusals {dict(fig.op_refusals.most_common(3))}")
    if fig.unexpected_exits or fig.op_errors:
        print(f"chaos: unexpected worker exits {fig.unexpected_exits}; operator errors {fig.op_errors[:5]}")
    for line in _log_errors(tmp_path):
        print(f"chaos: log: {line}")
    for cause in causes:
        examples = [r for r in without_lease if _cause(r, fig.frozen) == cause][:2]
        for r in examples:
            print(f"chaos: without lease ({cause}): {dict(r)}")

    problems = [
        lost and f"lost {lost}: {len(missing)} missing, {len(unfinished)} never terminal: {(missing + unfinished)[:5]}",
        stuck and f"stuck {stuck}",
        without_lease
        and f"effects applied without a valid lease {len(without_lease)} (begun without one {started_without}), "
        f"by cause {dict(causes)}",
        not_undone and f"COMPENSATED sagas with an action effect not undone: {len(not_undone)}: {not_undone[:5]}",
        completed_wrong and f"COMPLETED sagas missing an action or compensated: {completed_wrong[:5]}",
        wrong_status and f"sagas in the wrong status: {len(wrong_status)}: {wrong_status[:5]}",
        fig.op_errors and f"operator compensate raised: {fig.op_errors[:3]}",
        doubled and f"step effects under more than one idempotency key: {doubled}",
        fig.unexpected_exits and f"workers exited on their own: {fig.unexpected_exits}",
    ]
    problems = [p for p in problems if p]
    assert not problems, "chaos: " + "; ".join(map(str, problems))
