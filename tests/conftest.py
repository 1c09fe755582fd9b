"""Shared fixtures.

``SAGAKIT_TEST_DB`` selects the database of the engine tests for the whole
suite: ``sqlite`` (default; each test gets its own file) or ``postgres``
(each test gets its own schema in the local server's ``test`` database).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_DSN = os.environ.get("SAGAKIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pg_available() -> str | None:
    """None when the PostgreSQL server answers, else the reason it does not."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install 'sagakit[postgres]')"
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return None
    except OSError as e:
        return f"PostgreSQL at 127.0.0.1:5432 is not reachable: {e}"


def require_service(reason: str | None) -> None:
    """Skip locally, fail under CI, when a service a test needs is missing."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"service missing under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def store_url(tmp_path: os.PathLike[str]) -> Iterator[str]:
    """A fresh store URL for one test, on the database SAGAKIT_TEST_DB selects."""
    kind = os.environ.get("SAGAKIT_TEST_DB", "sqlite")
    if kind == "sqlite":
        yield f"sqlite:///{os.fspath(tmp_path)}/sagas.db"
        return
    if kind != "postgres":
        raise pytest.UsageError(f"SAGAKIT_TEST_DB must be sqlite or postgres, got {kind!r}")
    require_service(pg_available())
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{PG_DSN}?schema={schema}"
    import asyncio

    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())
