"""The raw ceiling: a saga's durable transitions written directly, with no orchestration logic at all.

Runs in its own virtual environment (``benchmarks/.venvs/raw``: ``asyncpg``
from PyPI; SQLite is the stdlib ``sqlite3``). A table of the saga table's
shape (id, name, status, data, steps as JSON, timestamps, revision) gets, per
saga, an INSERT and then one UPDATE per step function run (A: 3, B: 5, C: 10,
D: 9), each update fenced on the revision like sagakit's. Two modes:

- ``--mode tx``: one transaction per transition. SQLite: one connection,
  ``BEGIN IMMEDIATE`` … ``COMMIT`` each. PostgreSQL: an asyncpg pool of 8,
  ``--in-flight`` sagas at once, each transition its own transaction.
- ``--mode batch``: the transitions of 50 sagas per commit (group commit by
  hand): sagas go in batches of 50, and each commit carries one transition of
  each saga of the batch. PostgreSQL: up to 8 batches at once, one per pooled
  connection.

SQLite as sagakit's store has it: WAL, ``synchronous=NORMAL``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import uuid
from typing import Any

import _common as common

SCHEMA = """CREATE TABLE sagas (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL,
    steps TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    revision BIGINT NOT NULL)"""
BATCH = 50
POOL = 8  # PostgreSQL connections (--pool)
SAGA_SECONDS: list[float] = []  # tx mode: each saga's time from its insert to its last commit


def _states(spec: common.Spec) -> list[tuple[str, str]]:
    return [(status, json.dumps(steps, separators=(",", ":"))) for status, steps in spec.states()]


# ---------------------------------------------------------------- SQLite


_SQLITE_INSERT = "INSERT INTO sagas VALUES (?, ?, ?, ?, ?, ?, ?, 0)"
_SQLITE_UPDATE = "UPDATE sagas SET status=?, steps=?, updated_at=?, revision=revision+1 WHERE id=? AND revision=?"


def _sqlite_open(spec: common.Spec, path: str) -> tuple[sqlite3.Connection, tuple[str, str], list[tuple[str, str]]]:
    """A new SQLite file with the saga table (WAL, synchronous=NORMAL); the first row's state and the rest."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(SCHEMA)
    states = _states(spec)
    return conn, states[0], states[1:]


def sqlite_tx(spec: common.Spec, n: int, path: str) -> tuple[float, int]:
    conn, first, rest = _sqlite_open(spec, path)
    execute = conn.execute
    tx = 0
    begin = time.perf_counter()
    for i in range(n):
        sid = uuid.uuid4().hex
        t0 = time.perf_counter()
        now = time.time()
        execute("BEGIN IMMEDIATE")
        execute(_SQLITE_INSERT, (sid, "raw", first[0], f'{{"i":{i}}}', first[1], now, now))
        execute("COMMIT")
        tx += 1
        for rev, (status, steps) in enumerate(rest):
            execute("BEGIN IMMEDIATE")
            if execute(_SQLITE_UPDATE, (status, steps, time.time(), sid, rev)).rowcount != 1:
                raise RuntimeError("fenced update refused")
            execute("COMMIT")
            tx += 1
        SAGA_SECONDS.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - begin
    conn.close()
    return seconds, tx


def sqlite_batch(spec: common.Spec, n: int, path: str) -> tuple[float, int]:
    conn, first, rest = _sqlite_open(spec, path)
    tx = 0
    begin = time.perf_counter()
    for lo in range(0, n, BATCH):
        ids = [uuid.uuid4().hex for _ in range(lo, min(n, lo + BATCH))]
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        rows = [(sid, "raw", first[0], f'{{"i":{lo + k}}}', first[1], now, now) for k, sid in enumerate(ids)]
        conn.executemany(_SQLITE_INSERT, rows)
        conn.execute("COMMIT")
        tx += 1
        for rev, (status, steps) in enumerate(rest):
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.executemany(_SQLITE_UPDATE, [(status, steps, now, sid, rev) for sid in ids])
            if cur.rowcount != len(ids):
                raise RuntimeError("fenced update refused")
            conn.execute("COMMIT")
            tx += 1
    seconds = time.perf_counter() - begin
    conn.close()
    return seconds, tx


# ---------------------------------------------------------------- PostgreSQL


async def _pg_setup(db: str, schema: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(db)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path = "{schema}"')
        await conn.execute(SCHEMA)
    finally:
        await conn.close()
    return await asyncpg.create_pool(db, min_size=POOL, max_size=POOL, server_settings={"search_path": schema})


async def _pg_drop(db: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(db)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


PG_INS = "INSERT INTO sagas VALUES ($1, $2, $3, $4, $5, $6, $7, 0)"
PG_UPD = "UPDATE sagas SET status=$1, steps=$2, updated_at=$3, revision=revision+1 WHERE id=$4 AND revision=$5"


async def pg_tx(spec: common.Spec, n: int, db: str, schema: str, in_flight: int) -> tuple[float, int]:
    pool = await _pg_setup(db, schema)
    states = _states(spec)
    first, rest = states[0], states[1:]
    tx = [0]
    sem = asyncio.Semaphore(in_flight)

    async def saga(i: int) -> None:
        async with sem:
            sid = uuid.uuid4().hex
            t0 = time.perf_counter()
            now = time.time()
            async with pool.acquire() as conn:  # autocommit: each statement is its own transaction
                await conn.execute(PG_INS, sid, "raw", first[0], f'{{"i":{i}}}', first[1], now, now)
            tx[0] += 1
            for rev, (status, steps) in enumerate(rest):
                async with pool.acquire() as conn:
                    if await conn.execute(PG_UPD, status, steps, time.time(), sid, rev) != "UPDATE 1":
                        raise RuntimeError("fenced update refused")
                tx[0] += 1
            SAGA_SECONDS.append(time.perf_counter() - t0)

    try:
        begin = time.perf_counter()
        await asyncio.gather(*(saga(i) for i in range(n)))
        seconds = time.perf_counter() - begin
    finally:
        await pool.close()
        await _pg_drop(db, schema)
    return seconds, tx[0]


async def pg_batch(spec: common.Spec, n: int, db: str, schema: str) -> tuple[float, int]:
    pool = await _pg_setup(db, schema)
    states = _states(spec)
    first, rest = states[0], states[1:]
    tx = [0]
    sem = asyncio.Semaphore(POOL)

    async def batch(lo: int) -> None:
        async with sem, pool.acquire() as conn:
            ids = [uuid.uuid4().hex for _ in range(lo, min(n, lo + BATCH))]
            now = time.time()
            async with conn.transaction():
                await conn.executemany(
                    PG_INS,
                    [(sid, "raw", first[0], f'{{"i":{lo + k}}}', first[1], now, now) for k, sid in enumerate(ids)],
                )
            tx[0] += 1
            for rev, (status, steps) in enumerate(rest):
                now = time.time()
                async with conn.transaction():
                    await conn.executemany(PG_UPD, [(status, steps, now, sid, rev) for sid in ids])
                tx[0] += 1

    try:
        begin = time.perf_counter()
        await asyncio.gather(*(batch(lo) for lo in range(0, n, BATCH)))
        seconds = time.perf_counter() - begin
    finally:
        await pool.close()
        await _pg_drop(db, schema)
    return seconds, tx[0]


def main() -> None:
    parser = common.arguments("raw durable writes of the benchmark workloads")
    parser.add_argument("--mode", choices=["tx", "batch"], default="tx")
    parser.add_argument("--pool", type=int, default=8, help="PostgreSQL: connections (batch: batches at once)")
    args = parser.parse_args()
    globals()["POOL"] = args.pool  # read by _pg_setup and pg_batch
    spec = common.WORKLOADS[args.workload]
    server0 = common.postgres_cpu_seconds() if args.store == "postgresql" else 0.0
    cpu0 = common.cpu_seconds()
    if args.store == "sqlite":
        run = sqlite_tx if args.mode == "tx" else sqlite_batch
        seconds, tx = run(spec, args.n, args.db)
        version = f"sqlite3 (SQLite {sqlite3.sqlite_version})"
    else:
        import asyncpg

        schema = args.schema or f"bench_raw_{os.getpid()}"
        if args.mode == "tx":
            seconds, tx = asyncio.run(pg_tx(spec, args.n, args.db, schema, args.in_flight))
        else:
            seconds, tx = asyncio.run(pg_batch(spec, args.n, args.db, schema))
        version = f"asyncpg {asyncpg.__version__}, pool of {POOL}"
    cpu = common.cpu_seconds() - cpu0  # the schema's setup and teardown included: small
    server = common.postgres_cpu_seconds() - server0 if args.store == "postgresql" else None
    common.emit(
        {
            "system": f"raw-{args.mode}",
            "version": version,
            "workload": spec.key,
            "store": args.store,
            "n": args.n,
            "workers": 0,
            "in_flight": args.in_flight,
            "seconds": seconds,
            "step_runs": spec.step_runs * args.n,
            "ok": True,
            "finished": args.n,
            "write_tx": tx,
            "cpu_seconds": cpu,
            "server_cpu_seconds": server,
            "transitions_per_saga": spec.transitions,
            "pool": POOL if args.store == "postgresql" else None,
            "saga_ms_p50": 1000 * common.median(SAGA_SECONDS) if SAGA_SECONDS else None,
        }
    )


if __name__ == "__main__":
    main()
