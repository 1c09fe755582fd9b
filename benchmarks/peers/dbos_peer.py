"""DBOS running the benchmark workloads: a saga as a durable workflow of durable steps.

Runs in its own virtual environment (``benchmarks/.venvs/dbos``: ``dbos`` and
``pysqlite3-binary`` from PyPI), never in sagakit's. A saga is a DBOS
workflow whose steps are ``@DBOS.step()`` coroutines; a failing step raises,
and the workflow catches it and runs the compensation steps of the completed
steps in reverse order (the saga pattern as DBOS documents it). The fan-out
of workload D is ``asyncio.gather`` over eight steps.

In-process mode (``--workers 0``): one process launches DBOS and starts N
workflows, at most ``--in-flight`` unfinished at once. Worker mode
(``--workers K``, PostgreSQL): N workflows are enqueued on a DBOS queue
first, then K worker processes are started (each with ``worker_concurrency``
= ``--in-flight``), and the clock runs from their start until every workflow
has ended.

DBOS on SQLite needs SQLite >= 3.42; the ``pysqlite3`` module (a recent SQLite
built in) stands in for the stdlib ``sqlite3`` before SQLAlchemy is imported.
Both stores get the settings sagakit's get: SQLite in WAL mode with
``synchronous=NORMAL``; PostgreSQL as the server is configured. The executor
thread pool is capped (``max_executor_threads``), as DBOS needs to stay stable
past a few thousand workflows.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import _common as common

if "--store" in sys.argv and sys.argv[sys.argv.index("--store") + 1] == "sqlite":
    import pysqlite3  # a recent SQLite: DBOS needs >= 3.42

    sys.modules["sqlite3"] = pysqlite3
    sys.modules["sqlite3.dbapi2"] = pysqlite3.dbapi2

import sqlalchemy as sa
from dbos import DBOS

MAX_EXECUTOR_THREADS = 64
QUEUE = "bench"


class Declined(Exception):
    """The failing step of workload B."""


# ---------------------------------------------------------------- write transactions (SQLite)

_tx = {"writes": 0, "dirty": set()}


def _count_writes() -> None:
    """Count committed transactions that wrote, on every engine (SQLite; PostgreSQL uses xids)."""

    @sa.event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def _mark(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        head = statement.lstrip()[:6].upper()
        if head in ("INSERT", "UPDATE", "DELETE"):
            _tx["dirty"].add(id(conn.connection.dbapi_connection))

    @sa.event.listens_for(sa.engine.Engine, "commit")
    def _commit(conn: Any) -> None:
        key = id(conn.connection.dbapi_connection)
        if key in _tx["dirty"]:
            _tx["dirty"].discard(key)
            _tx["writes"] += 1


def _sqlite_pragmas() -> None:
    @sa.event.listens_for(sa.engine.Engine, "connect")
    def _pragmas(dbapi_conn: Any, record: Any) -> None:
        if type(dbapi_conn).__module__.startswith(("pysqlite3", "sqlite3")):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()


# ---------------------------------------------------------------- the workflows

CALLS = [0]


def _make_step(label: str, fail: bool) -> Any:
    async def step(i: int) -> None:
        CALLS[0] += 1
        if fail:
            raise Declined(f"{label} declined")

    step.__name__ = step.__qualname__ = label
    return DBOS.step(name=label)(step)


def _make_workflow(spec: common.Spec) -> Any:
    actions = {s: _make_step(f"{spec.key}_{s}", s == spec.fail) for s in spec.steps}
    comps = {s: _make_step(f"{spec.key}_comp_{s}", False) for s in spec.steps}

    async def saga(i: int) -> str:
        done: list[str] = []
        try:
            for stage in spec.stages:
                if len(stage) == 1:
                    await actions[stage[0]](i)
                else:
                    await asyncio.gather(*(actions[s](i) for s in stage))
                done.extend(stage)
        except Declined:
            for s in reversed(done):
                await comps[s](i)
            return "compensated"
        return "completed"

    saga.__name__ = saga.__qualname__ = f"saga_{spec.key}"
    return DBOS.workflow(name=f"saga_{spec.key}")(saga)


WORKFLOWS = {k: _make_workflow(spec) for k, spec in common.WORKLOADS.items()}


def _config(args: Any, name: str = "bench") -> dict[str, Any]:
    url = f"sqlite:///{args.db}" if args.store == "sqlite" else args.db.replace("postgresql://", "postgresql://", 1)
    cfg: dict[str, Any] = {
        "name": name,
        "system_database_url": url,
        "max_executor_threads": MAX_EXECUTOR_THREADS,
        "log_level": "WARNING",
    }
    if args.schema:
        cfg["dbos_system_schema"] = args.schema
    return cfg


def _pg_connect(args: Any) -> Any:
    import psycopg

    return psycopg.connect(args.db, autocommit=True)


def _decode(out: str | None) -> Any:
    """A workflow's output as DBOS stores it (pickled, base64)."""
    if out is None:
        return None
    try:
        return pickle.loads(base64.b64decode(out))
    except Exception:
        return out


def _history(args: Any, spec: common.Spec) -> tuple[dict[str, int], list[float]]:
    """Workflow outcomes and the step-to-step latencies, read from DBOS's tables."""
    schema = args.schema or "dbos"
    prefix = f"{spec.key}_"
    if args.store == "sqlite":
        import pysqlite3

        conn = pysqlite3.connect(args.db)
        q = conn.execute
        status_sql = "SELECT output FROM workflow_output"
        ops_sql = "SELECT workflow_uuid, function_name, completed_at_epoch_ms FROM operation_outputs"
    else:
        conn = _pg_connect(args)
        q = conn.execute
        status_sql = f'SELECT output FROM "{schema}".workflow_output'
        ops_sql = f'SELECT workflow_uuid, function_name, completed_at_epoch_ms FROM "{schema}".operation_outputs'
    try:
        outcomes: dict[str, int] = {}
        for (out,) in q(status_sql).fetchall():
            key = str(_decode(out))[:40]
            outcomes[key] = outcomes.get(key, 0) + 1
        by_wf: dict[str, list[tuple[str, bool, float]]] = {}
        for wf, fn, at in q(ops_sql).fetchall():
            if at is None or not fn.startswith(prefix):
                continue
            label = fn[len(prefix) :]
            comp = label.startswith("comp_")
            by_wf.setdefault(wf, []).append((label[5:] if comp else label, comp, at / 1000.0))
    finally:
        conn.close()
    gaps: list[float] = []
    for fin in by_wf.values():
        gaps.extend(common.step_gaps(spec, fin))
    return outcomes, gaps


# ---------------------------------------------------------------- in-process


async def _inprocess(args: Any, spec: common.Spec) -> dict[str, Any]:
    DBOS.launch()
    wf = WORKFLOWS[spec.key]
    sem = asyncio.Semaphore(args.in_flight)

    async def one(i: int) -> str:
        async with sem:
            return str(await wf(i))

    writes0 = _tx["writes"]
    server0 = common.postgres_cpu_seconds() if args.store == "postgresql" else 0.0
    cpu0 = common.cpu_seconds()
    begin = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(args.n)))
    seconds = time.perf_counter() - begin
    cpu = common.cpu_seconds() - cpu0
    server = common.postgres_cpu_seconds() - server0 if args.store == "postgresql" else None
    writes = _tx["writes"] - writes0
    ok = sum(1 for r in results if r == spec.expected)
    return {
        "seconds": seconds,
        "step_runs": CALLS[0],
        "ok": ok == args.n,
        "finished": ok,
        "write_tx": writes,
        "cpu_seconds": cpu,
        "server_cpu_seconds": server,
    }


# ---------------------------------------------------------------- workers (PostgreSQL)


def _worker(args: Any) -> None:
    """A DBOS worker process: dequeue and run workflows until SIGTERM."""
    DBOS(config=_config(args))  # type: ignore[arg-type]
    stop = asyncio.Event()

    async def main() -> None:
        DBOS.launch()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()

    asyncio.run(main())
    common.emit({"role": "worker", "write_tx": _tx["writes"]})
    sys.stdout.flush()
    os._exit(0)


def _enqueue_all(args: Any, spec: common.Spec) -> None:
    from dbos import DBOSClient

    client = DBOSClient(system_database_url=args.db, dbos_system_schema=args.schema or "dbos")
    try:
        engine = client._sys_db.engine
        options = {"queue_name": QUEUE, "workflow_name": f"saga_{spec.key}"}
        for lo in range(0, args.n, 500):
            with engine.begin() as conn:
                for i in range(lo, min(args.n, lo + 500)):
                    client.enqueue_in_transaction(conn, options, i)  # type: ignore[arg-type]
    finally:
        client.destroy()


def _ended(args: Any) -> tuple[int, float | None, float | None]:
    """(workflows ended, first start and last end as Unix times)."""
    schema = args.schema or "dbos"
    with _pg_connect(args) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status IN ('SUCCESS', 'ERROR')), min(started_at_epoch_ms), "
            f"max(updated_at) FILTER (WHERE status IN ('SUCCESS', 'ERROR')) FROM \"{schema}\".workflow_status"
        ).fetchone()
        return int(row[0]), (row[1] / 1000 if row[1] else None), (row[2] / 1000 if row[2] else None)


def _read_hwm(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _workers(args: Any, spec: common.Spec) -> dict[str, Any]:
    # Launch once without workers so the schema and queue exist, then enqueue.
    DBOS(config=_config(args))  # type: ignore[arg-type]
    DBOS.launch()
    DBOS.register_queue(QUEUE, worker_concurrency=args.in_flight, polling_interval_sec=0.05)
    DBOS.destroy()
    _enqueue_all(args, spec)
    cmd = [sys.executable, os.path.abspath(__file__), "--role", "worker", *sys.argv[1:]]
    server0 = common.postgres_cpu_seconds()
    begin_wall = time.time()
    begin = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(args.workers)
    ]
    ready_cpu = [0.0] * len(procs)
    outputs: list[list[str]] = [[] for _ in procs]

    def watch(i: int, p: Any) -> None:
        with p.stdout:
            for line in p.stdout:
                outputs[i].append(line)
                if line.startswith("ready") and not ready_cpu[i]:
                    ready_cpu[i] = common.process_cpu_seconds(p.pid)

    readers = [threading.Thread(target=watch, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for t in readers:
        t.start()
    last, last_change = -1, time.perf_counter()
    ended = 0
    writes: list[int] = []
    try:
        while True:
            time.sleep(0.2)
            ended, first, last_at = _ended(args)
            t = time.perf_counter()
            if ended >= args.n:
                break
            if ended != last:
                last, last_change = ended, t
            elif t - last_change > args.stall:
                break
        wall = time.perf_counter() - begin
        rss = [_read_hwm(p.pid) for p in procs]
        cpu = sum(common.process_cpu_seconds(p.pid) for p in procs) - sum(ready_cpu)
        server = common.postgres_cpu_seconds() - server0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for i, t in enumerate(readers):
            t.join(10)
            lines = [ln for ln in outputs[i] if ln.startswith("{")]
            if lines:
                writes.append(int(json.loads(lines[-1])["write_tx"]))
    return {
        "seconds": (last_at - begin_wall) if last_at is not None else wall,
        "wall_seconds": wall,
        "processing_seconds": (last_at - first) if last_at is not None and first is not None else None,
        "step_runs": spec.step_runs * ended,
        "ok": ended >= args.n,
        "finished": ended,
        "write_tx": sum(writes) if len(writes) == len(procs) else None,
        "worker_peak_rss_mb": round(max(rss), 1) if rss else None,
        "worker_cpu_seconds": cpu,
        "server_cpu_seconds": server,
    }


def _drop_schema(args: Any) -> None:
    if args.store == "postgresql" and args.schema:
        with _pg_connect(args) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE')


def main() -> None:
    parser = common.arguments("DBOS on the benchmark workloads")
    parser.add_argument("--role", default="main", choices=["main", "worker"])
    args = parser.parse_args()
    if args.store == "sqlite":
        _sqlite_pragmas()
    _count_writes()
    if args.role == "worker":
        _worker(args)
        return
    spec = common.WORKLOADS[args.workload]
    from importlib.metadata import version

    try:
        if args.workers:
            if args.store != "postgresql":
                raise SystemExit("worker mode needs PostgreSQL")
            result = _workers(args, spec)
        else:
            DBOS(config=_config(args))  # type: ignore[arg-type]
            result = asyncio.run(_inprocess(args, spec))
            DBOS.destroy()
        outcomes, gaps = _history(args, spec)
        result.update(
            system="dbos",
            version=f"dbos {version('dbos')}",
            workload=spec.key,
            store=args.store,
            n=args.n,
            workers=args.workers,
            in_flight=args.in_flight,
            outcomes=outcomes,
            latency=common.percentiles(gaps),
            settings={"max_executor_threads": MAX_EXECUTOR_THREADS},
        )
        if args.store == "sqlite":
            import pysqlite3

            result["sqlite"] = pysqlite3.sqlite_version
        common.emit(result)
    finally:
        _drop_schema(args)
    sys.stdout.flush()
    os._exit(0)  # DBOS's background threads must not hold the exit


if __name__ == "__main__":
    main()
