"""Measure asyncpg against psycopg 3 on the PostgreSQL store's hot path (not a test).

Run: ``.venv/bin/python benchmarks/pg_driver_measurement.py [DSN]`` with both
drivers installed (``pip install asyncpg 'psycopg[binary]'``). It works in a
scratch schema that it drops afterwards, and prints the median time of:

- commit: one transaction with 50 fenced saga updates (each checked for its
  row count) and 100 history rows, as ``PostgresStore.commit`` issues them;
- claim: one ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT 50)
  RETURNING …`` over 50 due sagas among 5,000 finished ones, rows decoded.

Each driver runs the same statements (``Statements`` of ``sagakit.stores._sql``
with ``$N`` placeholders; psycopg through its raw cursor, which takes them),
prepared on the server, on one connection, rounds interleaved so that drift of
a noisy machine hits both alike.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from typing import Any

import asyncpg
import psycopg

from sagakit import SagaStatus
from sagakit.machine import HistoryEntry, SagaState, StepState
from sagakit.stores._codec import decode_row, dumps, encode_history, encode_steps
from sagakit.stores._sql import Statements, migrations
from sagakit.stores.postgres import DIALECT

DSN = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/test"
N = 50
ROUNDS = 60
SQL = Statements(DIALECT)


def saga(i: int) -> SagaState:
    from sagakit import StepStatus

    return SagaState(
        id=f"s{i:05d}", name="bench", version=1, status=SagaStatus.RUNNING,
        data={"order_id": f"o-{i}", "amount": 12.5},
        steps={"a": StepState(StepStatus.COMPLETED, 1, result={"ok": True}),
               "b": StepState(StepStatus.RUNNING, 1, token=7), "c": StepState()},
        created_at=1.0, updated_at=1.0, seq=1, revision=1,
    )  # fmt: skip


def update_args(st: SagaState, expected: int) -> tuple[Any, ...]:
    return (
        st.id, expected, st.status.value, encode_steps(st.steps), st.updated_at, 5.0, None,
        None, st.seq, st.revision, None, "w1", 30.0,
    )  # fmt: skip


def history_rows(states: list[SagaState]) -> list[tuple[Any, ...]]:
    h = HistoryEntry(1.0, "step_completed", "step a completed", "a", 1)
    return [(st.id, st.revision, 0, encode_history([h, h])) for st in states]


async def setup(schema: str) -> None:
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        for stmt in migrations(DIALECT)[0]:
            await conn.execute(stmt)
        finished = []
        for i in range(5000):
            st = saga(10_000 + i)
            st.status = SagaStatus.COMPLETED
            finished.append(st)
        rows = []
        for i, st in enumerate([saga(i) for i in range(N)] + finished):
            wake = 1.0 if i < N else None
            rows.append(
                (st.id, st.name, st.version, st.status.value, dumps(st.data),
                 encode_steps(st.steps), st.created_at, st.updated_at, None, None, wake,
                 None, None, st.seq, st.revision, None, None, None)
            )  # fmt: skip
        await conn.executemany(SQL.insert, rows)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


class AsyncpgDriver:
    name = "asyncpg"

    async def open(self, schema: str) -> None:
        self.conn = await asyncpg.connect(DSN, server_settings={"search_path": f'"{schema}"'})

    async def close(self) -> None:
        await self.conn.close()

    async def commit(self, states: list[SagaState], expected: int) -> None:
        conn = self.conn
        async with conn.transaction():
            for st in states:
                status = await conn.execute(SQL.update, *update_args(st, expected))
                assert status == "UPDATE 1", status
            await conn.executemany(SQL.insert_history, history_rows(states))

    async def claim(self, now: float) -> int:
        rows = await self.conn.fetch(SQL.claim, "w1", now + 10, now, N)
        return len([decode_row(r) for r in rows])


class AsyncpgBatchDriver(AsyncpgDriver):
    """All fenced updates in one statement over unnest()ed arrays; RETURNING says which applied."""

    name = "asyncpg unnest"

    async def commit(self, states: list[SagaState], expected: int) -> None:
        conn = self.conn
        cols = list(zip(*(update_args(st, expected) for st in states), strict=True))
        async with conn.transaction():
            rows = await conn.fetch(BATCH_UPDATE, *cols)
            assert len(rows) == len(states), len(rows)
            await conn.executemany(SQL.insert_history, history_rows(states))


BATCH_UPDATE = (
    "UPDATE sagakit_sagas AS s SET status=v.status, steps=v.steps, updated_at=v.updated_at, "
    "wake_at=v.wake_at, deadline_at=v.deadline_at, error=v.error, seq=v.seq, "
    "revision=v.revision, meta=v.meta, lease_owner=v.lease_owner, lease_expires=v.lease_expires "
    "FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::float8[], $6::float8[], "
    "$7::float8[], $8::text[], $9::bigint[], $10::bigint[], $11::text[], $12::text[], "
    "$13::float8[]) AS v(id, expected, status, steps, updated_at, wake_at, deadline_at, error, "
    "seq, revision, meta, lease_owner, lease_expires) "
    "WHERE s.id = v.id AND s.revision = v.expected RETURNING s.id"
)


class PsycopgDriver:
    name = "psycopg"

    def __init__(self, pipeline: bool) -> None:
        self.pipeline = pipeline
        self.name = "psycopg pipeline" if pipeline else "psycopg"

    async def open(self, schema: str) -> None:
        self.conn = await psycopg.AsyncConnection.connect(
            DSN, autocommit=True, prepare_threshold=0, cursor_factory=psycopg.AsyncRawCursor
        )
        await self.conn.execute(f'SET search_path TO "{schema}"')

    async def close(self) -> None:
        await self.conn.close()

    async def commit(self, states: list[SagaState], expected: int) -> None:
        conn = self.conn
        async with conn.transaction():
            if self.pipeline:
                async with conn.pipeline():
                    curs = [conn.cursor() for _ in states]
                    for cur, st in zip(curs, states, strict=True):
                        await cur.execute(SQL.update, update_args(st, expected))
                    async with conn.cursor() as cur:
                        await cur.executemany(SQL.insert_history, history_rows(states))
                for cur in curs:
                    assert cur.rowcount == 1, cur.rowcount
            else:
                async with conn.cursor() as cur:
                    for st in states:
                        await cur.execute(SQL.update, update_args(st, expected))
                        assert cur.rowcount == 1, cur.rowcount
                    await cur.executemany(SQL.insert_history, history_rows(states))

    async def claim(self, now: float) -> int:
        async with self.conn.cursor() as cur:
            await cur.execute(SQL.claim, ("w1", now + 10, now, N))
            rows = await cur.fetchall()
        return len([decode_row(r) for r in rows])


class PsycopgBatchDriver(PsycopgDriver):
    """The same one-statement update as ``AsyncpgBatchDriver``, through psycopg."""

    def __init__(self) -> None:
        super().__init__(False)
        self.name = "psycopg unnest"

    async def commit(self, states: list[SagaState], expected: int) -> None:
        conn = self.conn
        cols = [list(c) for c in zip(*(update_args(st, expected) for st in states), strict=True)]
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute(BATCH_UPDATE, cols)
            assert len(await cur.fetchall()) == len(states)
            await cur.executemany(SQL.insert_history, history_rows(states))


async def main() -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    await setup(schema)
    drivers = [
        AsyncpgDriver(),
        AsyncpgBatchDriver(),
        PsycopgDriver(False),
        PsycopgDriver(True),
        PsycopgBatchDriver(),
    ]
    times: dict[str, dict[str, list[float]]] = {d.name: {"commit": [], "claim": []} for d in drivers}
    try:
        for d in drivers:
            await d.open(schema)
        states = [saga(i) for i in range(N)]
        revision = 1
        now = 100.0
        for r in range(ROUNDS + 5):
            for d in drivers:
                for st in states:
                    st.revision = revision + 1
                t0 = time.perf_counter()
                await d.commit(states, revision)
                t1 = time.perf_counter()
                revision += 1
                now += 100.0
                got = await d.claim(now)
                t2 = time.perf_counter()
                assert got == N, got
                revision += 1  # the claim bumped every revision
                if r >= 5:  # warm-up: statements prepared, caches filled
                    times[d.name]["commit"].append(t1 - t0)
                    times[d.name]["claim"].append(t2 - t1)
    finally:
        for d in drivers:
            await d.close()
        conn = await asyncpg.connect(DSN)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
    print(f"{'driver':18} {'commit 50 (ms)':>15} {'claim 50 (ms)':>14}  (median of {ROUNDS})")
    for name, t in times.items():
        c, k = statistics.median(t["commit"]) * 1e3, statistics.median(t["claim"]) * 1e3
        print(f"{name:18} {c:15.2f} {k:14.2f}")


if __name__ == "__main__":
    asyncio.run(main())
