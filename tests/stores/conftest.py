"""Fixtures of the store suites: each test gets its own SQLite file or PostgreSQL schema.

PostgreSQL is the server that ``SAGAKIT_TEST_PG`` names (default: the local
one, ``postgresql://postgres@127.0.0.1:5432/test``). When it cannot be used
the PostgreSQL tests are skipped locally, with the reason; under CI
(``CI=true``) they fail instead, so that a CI run cannot pass by skipping them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest

PG_DSN = os.environ.get("SAGAKIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pg_problem(dsn: str = PG_DSN) -> str | None:
    """None when the PostgreSQL server answers a real login, else why it does not."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install 'sagakit[postgres]')"

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.close()

    from sagakit.stores.postgres import safe_url

    # In a thread of its own, so that the probe's event loop never meets the tests' loops.
    with ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(asyncio.run, probe()).result()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            return f"PostgreSQL at {safe_url(dsn)} is not usable: {type(e).__name__}: {e}"
    return None


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The test server's URL; skips (locally) or fails (under CI) when it is not there."""
    problem = pg_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI (CI=true): {problem}")
        pytest.skip(problem)
    return PG_DSN


@pytest.fixture
async def pg_schema(pg_dsn: str) -> AsyncIterator[str]:
    """A schema name no other test uses; the schema is dropped after the test."""
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield schema
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
