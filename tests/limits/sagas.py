"""A saga whose step calls a "payment provider" under a resource limit, for the worker processes of the tests.

The step counts the calls in flight in a row of the test's PostgreSQL schema
(``LIMIT_PROBE_DSN``, ``LIMIT_PROBE_SCHEMA``): every worker process updates the
same row, so the highest count seen is the most calls in flight at once
across all of them. With ``LIMIT_HANG`` set, a saga started with ``hang``
hangs in its call (after touching the file ``LIMIT_HANG.<i>``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sagakit import Resource, SagaBuilder, StepContext

PAYMENTS = Resource("payments", concurrency=2)
CALL_SECONDS = 0.15

_pool: Any = None


async def _probe() -> Any:
    global _pool
    if _pool is None:
        import asyncpg

        schema = os.environ["LIMIT_PROBE_SCHEMA"]
        _pool = await asyncpg.create_pool(
            os.environ["LIMIT_PROBE_DSN"], min_size=1, max_size=4, server_settings={"search_path": f'"{schema}"'}
        )
    return _pool


async def charge(ctx: StepContext) -> dict[str, int]:
    if os.environ.get("LIMIT_HANG") and ctx.data.get("hang"):
        open(os.environ["LIMIT_HANG"] + f".{ctx.data['i']}", "w").close()  # noqa: ASYNC230, SIM115
        await asyncio.sleep(3600)  # a worker that hangs holding its permit (the test kills it)
    pool = await _probe()
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE limit_probe SET active = active + 1, peak = GREATEST(peak, active + 1), calls = calls + 1"
        )
        await conn.execute("INSERT INTO limit_calls VALUES ($1)", os.getpid())
    try:
        await asyncio.sleep(CALL_SECONDS)
    finally:
        async with pool.acquire() as conn:
            await conn.execute("UPDATE limit_probe SET active = active - 1")
    return {"charged": ctx.data["i"]}


_b = SagaBuilder("limited_payment")
_b.resource(PAYMENTS)
_b.step("charge", charge, resource="payments")
limited_payment = _b.build()
