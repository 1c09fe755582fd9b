"""``sagakit.stores.postgres.fenced``: a step's same-database effect commits only under a proven lease."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sagakit import LeaseLost, RetryPolicy, SagaBuilder, SagaEngine, SagaStatus, StepContext
from sagakit.stores.postgres import fenced

from .conftest import IN_CI

try:
    import asyncpg
except ImportError:  # pragma: no cover - the postgres extra is part of the dev install
    if IN_CI:
        raise
    pytest.skip("asyncpg is not installed: pip install 'sagakit[postgres]'", allow_module_level=True)

pytestmark = pytest.mark.postgres


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[tuple[str, str, asyncpg.Pool]]:
    """The store URL, its schema and a pool on it; the schema holds a sagakit store and an ``effects`` table."""
    base, _, schema = pg_url.partition("?schema=")
    async with SagaEngine(pg_url):  # creates the schema and the sagakit tables
        pass
    pool = await asyncpg.create_pool(base, min_size=1, max_size=4, server_settings={"search_path": schema})
    await pool.execute("CREATE TABLE effects (key TEXT PRIMARY KEY)")
    try:
        yield pg_url, schema, pool
    finally:
        await pool.close()


def _ctx(saga_id: str, worker_id: str | None) -> StepContext:
    return StepContext(
        saga_id=saga_id,
        saga_name="s",
        step="charge",
        attempt=1,
        data={},
        results={},
        idempotency_key=f"{saga_id}:charge:action",
        correlation_id=None,
        worker_id=worker_id,
    )


async def _lease(pool: asyncpg.Pool, saga_id: str, owner: str, seconds: float) -> None:
    """A saga row leased to *owner* for *seconds* on the database's clock (only the fence's columns matter)."""
    await pool.execute(
        "INSERT INTO sagakit_sagas (id, name, version, status, data, steps, created_at, updated_at, seq, revision, "
        "meta, lease_owner, lease_expires) VALUES ($1, 's', 1, 'running', '{}', '{}', 0, 0, 0, 1, '{}', $2, "
        "extract(epoch FROM clock_timestamp()) + $3)",
        saga_id,
        owner,
        seconds,
    )


async def test_an_effect_under_the_lease_commits(db: tuple[str, str, asyncpg.Pool]) -> None:
    _, schema, pool = db
    await _lease(pool, "s1", "w1", 10.0)
    async with pool.acquire() as conn, fenced(conn, _ctx("s1", "w1"), schema=schema):
        await conn.execute("INSERT INTO effects VALUES ('s1')")
    assert await pool.fetchval("SELECT count(*) FROM effects") == 1


@pytest.mark.parametrize(
    ("owner", "seconds", "worker"),
    [("other", 10.0, "w1"), ("w1", -1.0, "w1"), ("w1", 0.1, "w1"), ("w1", 10.0, None)],
    ids=["another worker holds it", "expired", "less than the margin left", "not run by an engine"],
)
async def test_without_the_lease_nothing_is_written(
    db: tuple[str, str, asyncpg.Pool], owner: str, seconds: float, worker: str | None
) -> None:
    _, schema, pool = db
    await _lease(pool, "s1", owner, seconds)
    with pytest.raises(LeaseLost, match="s1"):
        async with pool.acquire() as conn, fenced(conn, _ctx("s1", worker), schema=schema):
            await conn.execute("INSERT INTO effects VALUES ('s1')")
    assert await pool.fetchval("SELECT count(*) FROM effects") == 0


async def test_a_takeover_waits_for_an_open_fenced_block(db: tuple[str, str, asyncpg.Pool]) -> None:
    _, schema, pool = db
    await _lease(pool, "s1", "w1", 10.0)
    async with pool.acquire() as conn, fenced(conn, _ctx("s1", "w1"), schema=schema):
        await conn.execute("INSERT INTO effects VALUES ('s1')")
        async with pool.acquire() as other:
            with pytest.raises(asyncpg.LockNotAvailableError):
                async with other.transaction():
                    await other.execute("SET LOCAL lock_timeout = 200")
                    await other.execute("UPDATE sagakit_sagas SET lease_owner = 'w2' WHERE id = 's1'")
            # A claim's FOR UPDATE SKIP LOCKED passes over the row instead.
            skipped = await other.fetch("SELECT id FROM sagakit_sagas WHERE id = 's1' FOR UPDATE SKIP LOCKED")
            assert skipped == []


async def test_a_worker_paused_inside_the_block_past_its_lease_writes_nothing(
    db: tuple[str, str, asyncpg.Pool],
) -> None:
    """A pause inside the block (as a frozen process would make) outlasts the lease: the server closes the session."""
    _, schema, pool = db
    await _lease(pool, "s1", "w1", 1.0)
    conn = await pool.acquire()
    try:
        with pytest.raises((LeaseLost, asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            async with fenced(conn, _ctx("s1", "w1"), schema=schema):
                await conn.execute("INSERT INTO effects VALUES ('s1')")
                await asyncio.sleep(1.5)  # the pause: the session is idle in its transaction
    finally:
        await pool.release(conn)
    assert await pool.fetchval("SELECT count(*) FROM effects") == 0
    # The saga's row is free again: a new owner can take the lease at once.
    assert await pool.fetchval("UPDATE sagakit_sagas SET lease_owner = 'w2' WHERE id = 's1' RETURNING id") == "s1"


async def test_a_step_of_a_running_engine_is_fenced_by_its_own_lease(db: tuple[str, str, asyncpg.Pool]) -> None:
    url, schema, pool = db
    seen: list[str | None] = []

    async def charge(ctx: StepContext) -> dict[str, Any]:
        seen.append(ctx.worker_id)
        async with pool.acquire() as conn, fenced(conn, ctx, schema=schema):
            await conn.execute("INSERT INTO effects VALUES ($1)", ctx.idempotency_key)
        return {}

    b = SagaBuilder("fenced")
    b.step("charge", charge, retry=RetryPolicy(max_attempts=1))
    async with SagaEngine(url, worker_id="w-test") as engine:
        engine.register(b.build())
        sid = await engine.start("fenced", {})
        snap = await engine.wait(sid, timeout=30.0)
    assert snap.status is SagaStatus.COMPLETED
    assert seen == ["w-test"]
    assert await pool.fetchval("SELECT key FROM effects") == f"{sid}:charge:action"
