"""Saga definitions the worker processes of the scale tests run.

Every step records, in PostgreSQL tables beside the store's (same schema),
when each execution started and ended and which process ran it, and its side
effect once per idempotency key. ``SCALE_DSN`` (with ``?schema=``) says where.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncpg

from sagakit import NonRetryableError, RetryPolicy, SagaBuilder, StepContext

_pool: asyncpg.Pool | None = None
_lock = asyncio.Lock()


def _dsn() -> tuple[str, str]:
    url = os.environ["SCALE_DSN"]
    base, _, query = url.partition("?schema=")
    return base, query


async def pool() -> asyncpg.Pool:
    global _pool
    async with _lock:
        if _pool is None:
            dsn, schema = _dsn()
            _pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8, server_settings={"search_path": schema})
    return _pool


async def setup_tables(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS executions (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, pid INTEGER NOT NULL, "
        "started DOUBLE PRECISION NOT NULL, ended DOUBLE PRECISION)"
    )
    await conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, saga TEXT NOT NULL)")


async def _effect(ctx: StepContext) -> dict[str, Any]:
    p = await pool()
    key = ctx.idempotency_key
    started = time.time()
    row_id = await p.fetchval(
        "INSERT INTO executions (key, pid, started) VALUES ($1, $2, $3) RETURNING id",
        key,
        os.getpid(),
        started,
    )
    await asyncio.sleep(float(os.environ.get("SCALE_STEP_SECONDS", "0.005")))
    await p.execute("INSERT INTO effects (key, saga) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", key, ctx.saga_id)
    await p.execute("UPDATE executions SET ended=$1 WHERE id=$2", time.time(), row_id)
    if not ctx.compensation and ctx.data.get("fail_at") == ctx.step:
        raise NonRetryableError(f"{ctx.step} refused")
    return {"key": key}


retry = RetryPolicy(max_attempts=20, initial_delay=0.05, max_delay=1.0)
b = SagaBuilder("scale")
b.step("reserve", _effect, _effect, retry=retry, compensation_retry=retry)
b.step("charge", _effect, _effect, retry=retry, compensation_retry=retry)
b.step("ship", _effect, _effect, retry=retry, compensation_retry=retry)
definition = b.build()
