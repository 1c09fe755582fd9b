"""Scaling curves: sagas/s and claim latency with 0, 100k and 1M finished sagas already in the store.

Runs in sagakit's environment. Per store (SQLite file; PostgreSQL schema) and
per size, a store is built once: one real saga of workload A runs through
the engine, then its saga row and its history rows are copied *size*
times with plain SQL (``INSERT … SELECT`` over a generated series), so the
store holds *size* finished sagas as sagakit writes them, with all their
indexes, in seconds rather than hours. Their ids sort before the live sagas'
(as older sagas' ids do). Then the finished sagas are put in the state that
long-finished work has in a running system: PostgreSQL's tables get
``VACUUM (FREEZE, ANALYZE)`` and a ``CHECKPOINT`` (what autovacuum and the
checkpointer do on a default server), SQLite's WAL is checkpointed into the
file. Without that, the first rounds on the largest store would pay the
one-off cost of the bulk load (setting hint bits, writing back ~1 GB of dirty
pages) inside the measured runs.

Then, in each of ``--runs`` rounds, sizes interleaved, every store is
*settled* before each measured part: PostgreSQL's saga and history tables get
``VACUUM ANALYZE`` (the servers here run with autovacuum off; a default server
would clear earlier rounds' dead rows itself) and a ``CHECKPOINT``; SQLite's
WAL is checkpointed. So no size's run pays for writing back the pages of the
part before it.

- **claim latency**: in every store, 6,000 due PENDING sagas are stored by an
  engine that is not running; then the stores take turns calling
  ``store.claim(limit=50)`` until none is left, each call timed (120 claims of
  50 per store, the sizes side by side as in an A/B pair). The claimed sagas
  are deleted after.
- **throughput**: workload A, N sagas through the engine in this process,
  50 in flight (``benchmarks.harness.run_sagakit``), as in the main matrix;
  every size twice per round, the sizes in order and then in reverse, and
  the round's figure is the mean of the two.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sagakit import SagaEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*

from benchmarks.harness import WORKLOADS, Counters, definition, instrument, run_sagakit
from sagakit.stores.postgres import PostgresStore
from sagakit.stores.sqlite import SQLiteStore

SAGA_COLS = (
    "name, version, status, data, steps, created_at, updated_at, correlation_id, idempotency_key, wake_at, "
    "deadline_at, error, seq, revision, meta, lease_owner, lease_expires"
)
HIST_COLS = "revision, part, entries"
CLAIM_SAGAS = 6000  # due sagas claimed per store per round (120 claims of 50)
CLAIM_LIMIT = 50


def _store(kind: str, where: str, tag: str) -> SQLiteStore | PostgresStore:
    if kind == "sqlite":
        return SQLiteStore(os.path.join(where, f"scaling-{tag}.db"))
    return PostgresStore.from_url(f"{where}?schema=sagakit_scaling_{os.getpid()}_{tag}")


async def _template(store: SQLiteStore | PostgresStore) -> str:
    """Run one real saga of workload A; returns its id (the row the bulk insert copies)."""
    counters = Counters()
    instrument(store, counters)
    await run_sagakit(WORKLOADS["A"], 1, 1, store, counters)
    await store.open()
    rows = await store.list(_query())
    return rows[0].id


def _query() -> Any:
    from sagakit._store import SagaQuery

    return SagaQuery(limit=1)


def _fill_sqlite(path: str, template: str, size: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # building only; the measured store runs with its own pragmas
        step = 200_000
        for lo in range(0, size, step):
            hi = min(size, lo + step)
            conn.execute("BEGIN")
            series = f"WITH RECURSIVE c(x) AS (SELECT {lo + 1} UNION ALL SELECT x + 1 FROM c WHERE x < {hi}) "
            conn.execute(
                series + f"INSERT INTO sagakit_sagas (id, {SAGA_COLS}) SELECT printf('0%031x', x), {SAGA_COLS} "
                "FROM c, (SELECT * FROM sagakit_sagas WHERE id = ?)",
                (template,),
            )
            conn.execute(
                series + f"INSERT INTO sagakit_history (saga_id, {HIST_COLS}) "
                f"SELECT printf('0%031x', x), {', '.join('h.' + c.strip() for c in HIST_COLS.split(','))} "
                "FROM c, (SELECT * FROM sagakit_history WHERE saga_id = ?) h",
                (template,),
            )
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


async def _fill_pg(store: PostgresStore, template: str, size: int) -> None:
    pool = store._pool
    step = 200_000
    hist = ", ".join("h." + c.strip() for c in HIST_COLS.split(","))
    for lo in range(0, size, step):
        hi = min(size, lo + step)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO sagakit_sagas (id, {SAGA_COLS}) SELECT '0' || lpad(to_hex(x), 31, '0'), {SAGA_COLS} "
                f"FROM generate_series({lo + 1}, {hi}) x, (SELECT * FROM sagakit_sagas WHERE id = $1) t",
                template,
            )
            await conn.execute(
                f"INSERT INTO sagakit_history (saga_id, {HIST_COLS}) SELECT '0' || lpad(to_hex(x), 31, '0'), {hist} "
                f"FROM generate_series({lo + 1}, {hi}) x, (SELECT * FROM sagakit_history WHERE saga_id = $1) h",
                template,
            )
    await pool.execute("VACUUM (FREEZE, ANALYZE) sagakit_sagas, sagakit_history")
    await pool.execute("CHECKPOINT")


async def build(kind: str, where: str, size: int) -> tuple[SQLiteStore | PostgresStore, float, int]:
    """A store holding *size* finished sagas (plus the template).

    Returns it closed, the seconds taken, and the finished sagas the store reports
    holding once built (a check that the bulk load did what it was asked).
    """
    begin = time.perf_counter()
    store = _store(kind, where, str(size))
    template = await _template(store)
    if isinstance(store, PostgresStore):
        await _fill_pg(store, template, size)
        await store.close()
    else:
        await store.close()
        await asyncio.to_thread(_fill_sqlite, store.path, template, size)
    seconds = time.perf_counter() - begin
    await store.open()
    try:
        finished = sum(n for status, n in (await store.count_by_status()).items() if status.terminal)
    finally:
        await store.close()
    return store, seconds, finished


async def claim_latencies(stores: dict[int, SQLiteStore | PostgresStore], due: int) -> dict[int, list[float]]:
    """Seconds per claim of 50 among *due* due sagas (and each store's finished ones), per size.

    The sizes take turns claim by claim (the order rotating), so that every size is
    measured under the same load from the rest of the machine, as in an A/B pair.
    """
    calls = [0]
    defn = definition(WORKLOADS["A"], calls)
    engines = {}
    for size, store in stores.items():
        await store.open()
        engine = SagaEngine(store)  # not running: start() stores PENDING sagas
        engine.register(defn)
        for lo in range(0, due, 250):
            await asyncio.gather(*(engine.start(defn.name, {"i": i}) for i in range(lo, min(due, lo + 250))))
        engines[size] = engine
    for store in stores.values():
        await _settle(store)
    owner = f"claimer-{uuid.uuid4().hex[:6]}"
    times: dict[int, list[float]] = {size: [] for size in stores}
    turn = list(stores)
    while turn:
        for size in list(turn):
            now = time.time()
            begin = time.perf_counter()
            got = await stores[size].claim(owner, now, now + 600, CLAIM_LIMIT)
            elapsed = time.perf_counter() - begin
            if got:
                times[size].append(elapsed)
            else:
                turn.remove(size)
        turn = turn[1:] + turn[:1]
    for size, store in stores.items():
        await _delete_pending(store)
        await engines[size].close()  # closes the store
    return times


async def _settle(store: SQLiteStore | PostgresStore) -> None:
    """Bring an open store to rest before a measured part, the same for every size.

    PostgreSQL: clear the dead rows of earlier rounds, as autovacuum would (a server
    with autovacuum off, as this benchmark's machines have it, would otherwise carry
    every earlier round's claimed and deleted rows in its indexes), then write the
    dirty pages out with a checkpoint. SQLite: copy the WAL into the database file.
    """
    if isinstance(store, PostgresStore):
        await store._pool.execute("VACUUM ANALYZE sagakit_sagas, sagakit_history")
        await store._pool.execute("CHECKPOINT")
        return

    def checkpoint() -> None:
        conn = sqlite3.connect(store.path, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    await asyncio.to_thread(checkpoint)


async def _delete_pending(store: SQLiteStore | PostgresStore) -> None:
    where = "saga_id IN (SELECT id FROM sagakit_sagas WHERE status = 'pending')"
    if isinstance(store, PostgresStore):
        async with store._pool.acquire() as conn, conn.transaction():
            await conn.execute(f"DELETE FROM sagakit_history WHERE {where}")
            await conn.execute("DELETE FROM sagakit_sagas WHERE status = 'pending'")
        return

    def delete() -> None:
        conn = sqlite3.connect(store.path, isolation_level=None, timeout=30)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"DELETE FROM sagakit_history WHERE {where}")
            conn.execute("DELETE FROM sagakit_sagas WHERE status = 'pending'")
            conn.execute("COMMIT")
        finally:
            conn.close()

    await asyncio.to_thread(delete)


async def throughput(store: SQLiteStore | PostgresStore, n: int) -> float:
    counters = Counters()
    instrument(store, counters)
    seconds, _ = await run_sagakit(WORKLOADS["A"], n, 50, store, counters)
    return n / seconds


async def _drop(store: SQLiteStore | PostgresStore) -> None:
    if isinstance(store, PostgresStore):
        await store.open()
        await store._pool.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
        await store.close()


async def _build_all(kind: str, where: str, sizes: list[int]) -> dict[int, tuple[Any, float, int]]:
    built = {}
    for size in sizes:
        built[size] = await build(kind, where, size)
        print(f"{kind}: built {size:,} finished sagas in {built[size][1]:.1f} s", file=sys.stderr)
    return built


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes": args.sizes, "runs": args.runs, "n": args.n, "claim_sagas": args.claim_sagas,
                           "claim_limit": CLAIM_LIMIT, "stores": {}}  # fmt: skip
    tmp = tempfile.mkdtemp(prefix="sagakit-scaling-", dir=args.dir)
    built: dict[str, dict[int, tuple[Any, float, int]]] = {}
    try:
        # The stores are built side by side (SQLite in a thread, PostgreSQL on the server); measured one at a time.
        kinds = list(args.stores)
        results = await asyncio.gather(
            *(_build_all(k, tmp if k == "sqlite" else args.pg, args.sizes) for k in kinds), return_exceptions=True
        )
        for kind, res in zip(kinds, results, strict=True):
            if isinstance(res, BaseException):
                raise res
            built[kind] = res
        for kind in kinds:
            claims: dict[int, list[float]] = {s: [] for s in args.sizes}
            counted: dict[int, list[int]] = {s: [] for s in args.sizes}
            rates: dict[int, list[float]] = {s: [] for s in args.sizes}
            for run in range(args.runs):
                lat = await claim_latencies({size: built[kind][size][0] for size in args.sizes}, args.claim_sagas)
                # Throughput: each size twice, in order and then in reverse (0, 100k, 1M, 1M, 100k, 0),
                # so that a drift of the machine's speed during the round weighs on every size alike.
                got: dict[int, list[float]] = {size: [] for size in args.sizes}
                for size in [*args.sizes, *reversed(args.sizes)]:
                    store = built[kind][size][0]
                    await store.open()
                    await _settle(store)
                    got[size].append(await throughput(store, args.n))  # the engine closes the store
                for size in args.sizes:
                    claims[size].append(statistics.median(lat[size]))
                    counted[size].append(len(lat[size]))
                    rates[size].append(statistics.mean(got[size]))
                    print(f"{kind} run {run + 1} size {size:,}: claim {claims[size][-1] * 1000:.2f} ms, "
                          f"{rates[size][-1]:,.0f} sagas/s ({', '.join(f'{r:,.0f}' for r in got[size])})",
                          file=sys.stderr)  # fmt: skip
            out["stores"][kind] = {
                str(size): {
                    "build_seconds": built[kind][size][1],
                    "finished": built[kind][size][2],
                    "claims_per_round": counted[size],
                    "claim_ms": [x * 1000 for x in claims[size]],
                    "sagas_per_s": rates[size],
                }
                for size in args.sizes
            }
    finally:
        for stores in built.values():
            for store, _, _ in stores.values():
                await _drop(store)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[0, 100_000, 1_000_000])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--n", type=int, default=2000, help="sagas per throughput run")
    p.add_argument("--stores", type=lambda s: s.split(","), default=["sqlite", "postgresql"])
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--dir", default=None, help="where the SQLite files go")
    p.add_argument("--claim-sagas", type=int, default=CLAIM_SAGAS, help="due sagas claimed per store per round")
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
