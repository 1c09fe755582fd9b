"""The speed targets, each measured against its baseline in one run: interleaved rounds, median ratio (min-max).

    python benchmarks/speed.py --quick                 # small sizes, 1 round: a smoke test (a few minutes)
    python benchmarks/speed.py                         # full sizes, 3 rounds
    python benchmarks/speed.py --rounds 5 --json benchmarks/results/speed-mine.json
    python benchmarks/speed.py --only chain,sqlite     # some groups of rows only
    python benchmarks/speed.py --size chain=5000 --size resume=20000   # other sizes

Every figure is a process of its own (the same code as the other benchmarks:
``raw_chain.py``, ``resume.py``, ``peers/raw_peer.py``, and the sagakit
runner here, ``--one``), on a fresh SQLite file, PostgreSQL schema or broker
prefix. Within a round each row's sagakit measurement and its baseline run
back to back (which goes first alternates by round), so a change of machine
speed during the run affects both; the ratio is taken per round and the
median over rounds is reported with its min-max. Prints the table and writes
every measurement as JSON (``benchmarks/results/speed-{quick,full}.json``
unless ``--json``).

Rows (sagakit figure ÷ baseline figure, target):

- ``chain <broker>``: chains of 3 request/reply round trips per second,
  sagakit's 3-step ``send()`` saga (SQLite store, participant in another
  process) ÷ raw client code (no store), NATS, Redis, RabbitMQ, Kafka (a
  private Tansu); 50 in flight. Target ≥ 0.5.
- ``resume``: N sagas waiting on ``wait_for`` resumed by N ``engine.notify``
  (sagas/s) ÷ the same number waiting on timers resumed by the clock; and
  resumed by N events published on the in-memory broker (matched by
  correlation id) ÷ timers. Target ≥ 8,000 sagas/s and ≥ 1/1.5.
- ``sqlite A ÷ raw batched`` / ``÷ raw 1 txn``: workload A (3 no-op steps),
  50 in flight, ÷ raw ``sqlite3`` writes of the same transitions, 50 sagas per
  commit / one transaction per transition. Targets ≥ 0.5 / ≥ 1.5.
- ``pg A ÷ raw batched, 1 / 8 connections``: sagakit with ``pool_size=1``
  and 50 in flight ÷ raw asyncpg batches on 1 connection; ``pool_size=8``
  and 400 in flight ÷ 8 connections, 8 batches at once. Targets ≥ 0.9 / ≥ 0.6.
- ``latency p50``: one saga at a time, from ``engine.start`` to its terminal
  commit; the baseline is raw's 4 commits of one saga. Targets on sagakit's
  figure: ≤ 0.3 ms (SQLite), ≤ 2.0 ms (PostgreSQL).
- ``sqlite A 100 KB ÷ 1 KB``: workload A with 100 KB of saga data ÷ with
  1 KB. Target ≥ 0.4.
- ``B ÷ A time per saga``: workload B (step 3 fails, 2 and 1 compensated)
  ÷ A, time per saga, SQLite. Target ≤ 1.3.

This measures and reports; it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"

SIZES: dict[str, dict[str, int]] = {
    "quick": {"chain": 300, "resume": 500, "store": 500, "pg": 500, "latency": 100, "payload": 300, "rounds": 1},
    "full": {"chain": 2000, "resume": 10_000, "store": 5000, "pg": 5000, "latency": 500, "payload": 2000, "rounds": 3},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- sagakit on a store, one process (--one)


async def sagakit_store(
    workload: str, n: int, in_flight: int, store_url: str, payload: int, directory: str
) -> dict[str, Any]:
    """Workload *workload* on a fresh store; *in_flight* 1 also gives each saga's start-to-end time."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.harness import WORKLOADS, Counters, definition, instrument
    from sagakit import SagaEngine
    from sagakit.stores.postgres import PostgresStore
    from sagakit.stores.sqlite import SQLiteStore

    w = WORKLOADS[workload]
    store: Any
    if store_url == "sqlite":
        store = SQLiteStore(os.path.join(directory, "sagakit.db"))
    else:
        store = PostgresStore.from_url(store_url)
    counters = Counters()
    instrument(store, counters)
    progressed = counters.progressed = asyncio.Event()
    calls = [0]
    defn = definition(w, calls)
    engine = SagaEngine(store)
    engine.register(defn)
    pad = "x" * max(0, payload - 16)

    def data(i: int) -> dict[str, Any]:
        return {"i": i, "pad": pad} if payload else {"i": i}

    async def one_at_a_time(count: int) -> list[float]:
        out = []
        for i in range(count):
            before = counters.finished
            t0 = time.perf_counter()
            await engine.start(defn.name, data(i))
            while counters.finished == before:
                progressed.clear()
                await asyncio.wait_for(progressed.wait(), 60)
            out.append(time.perf_counter() - t0)
        return out

    latencies: list[float] = []
    try:
        async with engine:
            if in_flight == 1:
                await one_at_a_time(5)  # warm-up, not counted
                cpu0 = _cpu()
                begin = time.perf_counter()
                latencies = await one_at_a_time(n)
            else:
                cpu0 = _cpu()
                begin = time.perf_counter()
                started = 0
                while counters.finished < n:
                    room = min(in_flight - (started - counters.finished), n - started)
                    if room > 0:
                        await asyncio.gather(*(engine.start(defn.name, data(started + i)) for i in range(room)))
                        started += room
                        continue
                    progressed.clear()
                    await asyncio.wait_for(progressed.wait(), 120)
            seconds = time.perf_counter() - begin
            cpu = _cpu() - cpu0
            done = await engine.count(w.expected, defn.name)
            expected = n + (5 if in_flight == 1 else 0)
            if done != expected:
                raise RuntimeError(f"{done} of {expected} sagas are {w.expected.value}")
    finally:
        if isinstance(store, PostgresStore) and store.schema:
            import asyncpg

            conn = await asyncpg.connect(store_url.split("?", 1)[0])
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
            finally:
                await conn.close()
    return {
        "seconds": seconds,
        "sagas_per_s": n / seconds,
        "saga_ms_p50": 1000 * statistics.median(latencies) if latencies else None,
        "cpu_ms_per_saga": 1000 * cpu / n,
        "write_tx_per_saga": counters.transactions / n,
        "commits": counters.commits,
        "workload": workload,
        "n": n,
        "in_flight": in_flight,
        "payload_bytes": payload,
        "pool_size": getattr(store, "pool_size", None),
        "store": "sqlite" if store_url == "sqlite" else "postgresql",
    }


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------- measurements, each its own process


def _run(cmd: list[str], cwd: str | None = None, timeout: float = 900) -> dict[str, Any]:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip()[-1500:] or f"exit {proc.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def m_chain(system: str, broker: str, n: int) -> dict[str, Any]:
    r = _run([sys.executable, str(HERE / "raw_chain.py"), "--system", system, "--broker", broker, "--n", str(n)])
    if "error" not in r:
        r["figure"] = r["chains_per_s"]
    return r


def m_resume(mode: str, n: int) -> dict[str, Any]:
    r = _run([sys.executable, str(HERE / "resume.py"), "--mode", mode, "--n", str(n)])
    if "error" not in r:
        r["figure"] = r["sagas_per_s"]
    return r


def m_sagakit(workload: str, store: str, n: int, *, in_flight: int = 50, payload: int = 0, pool: int = 8,
              pg: str = PG_DEFAULT) -> dict[str, Any]:  # fmt: skip
    url = "sqlite" if store == "sqlite" else f"{pg}?schema=speed_sk_{uuid.uuid4().hex[:10]}&pool_size={pool}"
    tmp = tempfile.mkdtemp(prefix="speed-sk-")
    try:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", "--workload", workload, "--store", url,
               "--n", str(n), "--in-flight", str(in_flight), "--payload", str(payload), "--dir", tmp]  # fmt: skip
        r = _run(cmd, cwd=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "error" not in r:
        r["figure"] = r["saga_ms_p50"] if in_flight == 1 else r["sagas_per_s"]
    return r


def m_raw(workload: str, store: str, mode: str, n: int, *, in_flight: int = 50, pool: int = 8,
          pg: str = PG_DEFAULT) -> dict[str, Any]:  # fmt: skip
    tmp = tempfile.mkdtemp(prefix="speed-raw-")
    db = os.path.join(tmp, "raw.db") if store == "sqlite" else pg
    cmd = [sys.executable, str(HERE / "peers" / "raw_peer.py"), "--workload", workload, "--n", str(n),
           "--store", store, "--db", db, "--mode", mode, "--in-flight", str(in_flight),
           "--pool", str(pool)]  # fmt: skip
    if store == "postgresql":
        cmd += ["--schema", f"speed_raw_{uuid.uuid4().hex[:10]}"]
    try:
        r = _run(cmd, cwd=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "error" not in r:
        r["sagas_per_s"] = n / r["seconds"]
        r["figure"] = r["saga_ms_p50"] if in_flight == 1 else r["sagas_per_s"]
    return r


# ---------------------------------------------------------------- the rows


def _quotient(s: float, b: float) -> float:
    return s / b


def _no_target(s: float, b: float, r: float) -> bool:
    return True


@dataclass(frozen=True)
class Row:
    """One line of the target table: how its two figures are measured and how the target reads."""

    key: str
    group: str
    measure: str
    unit: str
    sagakit: Callable[[dict[str, int], str], dict[str, Any]]
    baseline: Callable[[dict[str, int], str], dict[str, Any]]
    target: str
    # ratio from the two figures (default sagakit ÷ baseline)
    ratio: Callable[[float, float], float] = _quotient
    # whether the target is met, from the median figures and the median ratio
    met: Callable[[float, float, float], bool] = _no_target


def _chain_side(system: str, broker: str) -> Callable[[dict[str, int], str], dict[str, Any]]:
    return lambda z, pg: m_chain(system, broker, z["chain"])


ROWS: list[Row] = [
    *(
        Row(
            f"chain_{broker}",
            "chain",
            f"3-step send() saga ÷ raw request/reply chain, {label}",
            "chains/s",
            _chain_side("sagakit", broker),
            _chain_side("raw", broker),
            "≥ 0.5",
            met=lambda s, b, r: r >= 0.5,
        )
        for broker, label in (
            ("nats", "NATS"),
            ("redis", "Redis"),
            ("rabbitmq", "RabbitMQ"),
            ("kafka", "Kafka (Tansu)"),
        )
    ),
    Row(
        "resume",
        "resume",
        "resume of N event-waiting sagas (engine.notify) ÷ N timer-waiting",
        "sagas/s",
        lambda z, pg: m_resume("event", z["resume"]),
        lambda z, pg: m_resume("timer", z["resume"]),
        "≥ 8k/s, ≥ 0.67",
        met=lambda s, b, r: s >= 8000 and r >= 1 / 1.5,
    ),
    Row(
        "resume_broker",
        "resume",
        "resume of N event-waiting sagas (memory:// broker) ÷ N timer-waiting",
        "sagas/s",
        lambda z, pg: m_resume("broker", z["resume"]),
        lambda z, pg: m_resume("timer", z["resume"]),
        "≥ 8k/s, ≥ 0.67",
        met=lambda s, b, r: s >= 8000 and r >= 1 / 1.5,
    ),
    Row(
        "sqlite_batch",
        "sqlite",
        "SQLite A ÷ raw batched (4 writes, 50 per commit)",
        "sagas/s",
        lambda z, pg: m_sagakit("A", "sqlite", z["store"]),
        lambda z, pg: m_raw("A", "sqlite", "batch", z["store"]),
        "≥ 0.5",
        met=lambda s, b, r: r >= 0.5,
    ),
    Row(
        "sqlite_tx",
        "sqlite",
        "SQLite A ÷ raw one txn per transition",
        "sagas/s",
        lambda z, pg: m_sagakit("A", "sqlite", z["store"]),
        lambda z, pg: m_raw("A", "sqlite", "tx", z["store"]),
        "≥ 1.5",
        met=lambda s, b, r: r >= 1.5,
    ),
    Row(
        "pg_batch_1",
        "pg",
        "PostgreSQL A ÷ raw batched, 1 connection",
        "sagas/s",
        lambda z, pg: m_sagakit("A", "postgresql", z["pg"], pool=1, pg=pg),
        lambda z, pg: m_raw("A", "postgresql", "batch", z["pg"], pool=1, pg=pg),
        "≥ 0.9",
        met=lambda s, b, r: r >= 0.9,
    ),
    Row(
        "pg_batch_8",
        "pg",
        "PostgreSQL A ÷ raw batched, 8 connections",
        "sagas/s",
        lambda z, pg: m_sagakit("A", "postgresql", z["pg"], pool=8, in_flight=400, pg=pg),
        lambda z, pg: m_raw("A", "postgresql", "batch", z["pg"], pool=8, pg=pg),
        "≥ 0.6",
        met=lambda s, b, r: r >= 0.6,
    ),
    Row(
        "latency_sqlite",
        "latency",
        "latency p50, one saga at a time, SQLite (baseline: raw 4 commits)",
        "ms",
        lambda z, pg: m_sagakit("A", "sqlite", z["latency"], in_flight=1),
        lambda z, pg: m_raw("A", "sqlite", "tx", z["latency"], in_flight=1),
        "≤ 0.3 ms",
        met=lambda s, b, r: s <= 0.3,
    ),
    Row(
        "latency_pg",
        "latency",
        "latency p50, one saga at a time, PostgreSQL (baseline: raw 4 commits)",
        "ms",
        lambda z, pg: m_sagakit("A", "postgresql", z["latency"], in_flight=1, pg=pg),
        lambda z, pg: m_raw("A", "postgresql", "tx", z["latency"], in_flight=1, pg=pg),
        "≤ 2.0 ms",
        met=lambda s, b, r: s <= 2.0,
    ),
    Row(
        "payload",
        "sqlite",
        "SQLite A at 100 KB of data ÷ at 1 KB",
        "sagas/s",
        lambda z, pg: m_sagakit("A", "sqlite", z["payload"], payload=100_000),
        lambda z, pg: m_sagakit("A", "sqlite", z["payload"], payload=1000),
        "≥ 0.4",
        met=lambda s, b, r: r >= 0.4,
    ),
    Row(
        "b_over_a",
        "sqlite",
        "B ÷ A time per saga, SQLite",
        "sagas/s",
        lambda z, pg: m_sagakit("B", "sqlite", z["store"]),
        lambda z, pg: m_sagakit("A", "sqlite", z["store"]),
        "≤ 1.3",
        # time per saga: B's is 1/rate_B; the ratio B ÷ A is rate_A / rate_B
        ratio=lambda s, b: b / s,
        met=lambda s, b, r: r <= 1.3,
    ),
]
GROUPS = sorted({r.group for r in ROWS})


def run_rounds(rows: list[Row], sizes: dict[str, int], rounds: int, pg: str) -> list[dict[str, Any]]:
    """Every row's two measurements back to back, once per round; the order within a pair alternates."""
    out: list[dict[str, Any]] = []
    for rnd in range(1, rounds + 1):
        for row in rows:
            sides = [("baseline", row.baseline), ("sagakit", row.sagakit)]
            if rnd % 2 == 0:
                sides.reverse()
            got: dict[str, dict[str, Any]] = {}
            for attempt in (1, 2):
                for side, fn in sides:
                    got[side] = fn(sizes, pg)
                failed = [side for side, r in got.items() if "error" in r]
                if not failed or attempt == 2:
                    break
                # A server restarted by another job, a broker busy for a moment: the pair once more.
                log(f"round {rnd} {row.key}: {', '.join(failed)} failed; running the pair again in 5 s")
                time.sleep(5)
            s, b = got["sagakit"], got["baseline"]
            rec: dict[str, Any] = {"round": rnd, "row": row.key, "sagakit": s, "baseline": b}
            if "error" not in s and "error" not in b and s["figure"] and b["figure"]:
                rec["ratio"] = row.ratio(s["figure"], b["figure"])
                log(f"round {rnd} {row.key}: sagakit {s['figure']:,.4g} {row.unit}, baseline {b['figure']:,.4g}, "
                    f"ratio {rec['ratio']:.3f}")  # fmt: skip
            else:
                err = s.get("error") or b.get("error") or "no figure"
                rec["error"] = err
                log(f"round {rnd} {row.key}: ERROR {err.strip().splitlines()[-1][:200] if err.strip() else err}")
            out.append(rec)
    return out


def cpu_ms(r: dict[str, Any]) -> float | None:
    """CPU ms per saga (or chain) of a measurement's measuring process, all its threads."""
    for key in ("cpu_ms_per_saga", "cpu_ms_per_chain"):
        if r.get(key) is not None:
            return float(r[key])
    if r.get("cpu_seconds") is not None and r.get("n"):
        return 1000 * float(r["cpu_seconds"]) / int(r["n"])
    return None


def _median_or_none(xs: list[float | None]) -> float | None:
    known = [x for x in xs if x is not None]
    return statistics.median(known) if known else None


def summarize(rows: list[Row], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for row in rows:
        ok = [r for r in records if r["row"] == row.key and "ratio" in r]
        errors = [r["error"] for r in records if r["row"] == row.key and "error" in r]
        if not ok:
            table.append({"row": row.key, "measure": row.measure, "target": row.target, "error": errors[:1]})
            continue
        s = [r["sagakit"]["figure"] for r in ok]
        b = [r["baseline"]["figure"] for r in ok]
        ratios = [r["ratio"] for r in ok]
        sm, bm, rm = statistics.median(s), statistics.median(b), statistics.median(ratios)
        entry: dict[str, Any] = {
            "row": row.key,
            "measure": row.measure,
            "unit": row.unit,
            "sagakit": sm,
            "baseline": bm,
            "ratio_median": rm,
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "rounds": len(ok),
            "failed_rounds": len(errors),
            "target": row.target,
            "met": row.met(sm, bm, rm),
            "sagakit_cpu_ms": _median_or_none([cpu_ms(r["sagakit"]) for r in ok]),
            "baseline_cpu_ms": _median_or_none([cpu_ms(r["baseline"]) for r in ok]),
        }
        table.append(entry)
    return table


def _fmt(x: float) -> str:
    return f"{x:,.3f}" if x < 10 else f"{x:,.0f}"


def print_table(table: list[dict[str, Any]], info: dict[str, Any]) -> None:
    head = ["measure", "sagakit", "baseline", "ratio median (min-max)", "target", "met?", "CPU ms/saga (sk / base)"]
    lines = []
    for t in table:
        if "error" in t:
            err = (t["error"][0] if t["error"] else "").strip().splitlines()
            lines.append([t["measure"], "error", "", (err[-1] if err else "")[:60], t["target"], "?", ""])
            continue
        unit = t["unit"]
        lines.append(
            [
                t["measure"],
                f"{_fmt(t['sagakit'])} {unit}",
                f"{_fmt(t['baseline'])} {unit}",
                f"{t['ratio_median']:.2f} ({t['ratio_min']:.2f}-{t['ratio_max']:.2f})",
                t["target"],
                "yes" if t["met"] else "NO",
                " / ".join("-" if x is None else f"{x:.3f}" for x in (t["sagakit_cpu_ms"], t["baseline_cpu_ms"])),
            ]
        )
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines, strict=False)]
    print(f"\nspeed targets, {info['mode']} sizes, {info['rounds']} round(s), {info['machine']}")
    print("(figures: medians over the rounds; CPU: the measuring process, all threads, per saga or chain)")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for ln in lines:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(ln, widths, strict=True)) + " |")


def machine() -> str:
    import platform

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load average {load}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 1 round unless --rounds")
    p.add_argument("--rounds", type=int, default=None, help="rounds [quick: 1, full: 3]")
    p.add_argument("--only", default=None, help=f"groups of rows, comma-separated: {', '.join(GROUPS)}")
    p.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="KEY=N",
        help=f"override one size ({', '.join(k for k in SIZES['full'] if k != 'rounds')}), repeatable",
    )
    p.add_argument("--pg", default=os.environ.get("SAGAKIT_BENCH_PG", PG_DEFAULT), help="PostgreSQL server URL")
    p.add_argument("--json", default=None, help="results file [benchmarks/results/speed-MODE.json]")
    # One sagakit measurement in this process (what the rows run, each in its own process).
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workload", default="A", help=argparse.SUPPRESS)
    p.add_argument("--store", default="sqlite", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=500, help=argparse.SUPPRESS)
    p.add_argument("--in-flight", type=int, default=50, help=argparse.SUPPRESS)
    p.add_argument("--payload", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        import logging

        logging.basicConfig(level=logging.ERROR)
        directory = args.dir or tempfile.mkdtemp(prefix="speed-one-")
        os.makedirs(directory, exist_ok=True)
        r = asyncio.run(sagakit_store(args.workload, args.n, args.in_flight, args.store, args.payload, directory))
        print(json.dumps(r), flush=True)
        return
    mode = "quick" if args.quick else "full"
    sizes = dict(SIZES[mode])
    for item in args.size:
        key, _, value = item.partition("=")
        if key not in sizes or key == "rounds" or not value.isdigit() or int(value) < 1:
            p.error(
                f"--size {item!r}: use KEY=N with N >= 1 and KEY one of {', '.join(k for k in sizes if k != 'rounds')}"
            )
        sizes[key] = int(value)
    rounds = args.rounds or sizes["rounds"]
    groups = set(args.only.split(",")) if args.only else set(GROUPS)
    unknown = groups - set(GROUPS)
    if unknown:
        p.error(f"unknown groups {sorted(unknown)}: use {', '.join(GROUPS)}")
    rows = [r for r in ROWS if r.group in groups]
    info: dict[str, Any] = {
        "mode": mode,
        "rounds": rounds,
        "sizes": sizes,
        "machine": machine(),
        "date": time.strftime("%F %T"),
    }
    begin = time.perf_counter()
    records = run_rounds(rows, sizes, rounds, args.pg)
    table = summarize(rows, records)
    info["seconds"] = time.perf_counter() - begin
    info["load_average_end"] = os.getloadavg()
    print_table(table, info)
    out = Path(args.json) if args.json else RESULTS / f"speed-{mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**info, "table": table, "measurements": records}, indent=1) + "\n")
    log(f"figures in {out} ({info['seconds'] / 60:.1f} minutes)")


if __name__ == "__main__":
    main()
