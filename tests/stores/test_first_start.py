"""Worker processes started together on a store that does not exist yet: each one opens it.

Every round gives five processes a new SQLite file or PostgreSQL schema and lets
them open it at one instant (a barrier), so the schema is created while the
others look at it. Each process then commits a saga of its own.

PostgreSQL rounds take turns between the two ways a store meets a new database:
a ``?schema=NAME`` that does not exist yet (the store creates it), and an empty
schema that exists already and is named by the connection's ``search_path``
(a store with no schema setting on a fresh database, whose ``public`` is empty).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagakit._store import SagaQuery, store_from_url
from tests.stores.first_start_child import run

WORKERS = 5
ROUNDS = 20
# Each test takes a few seconds: five processes started once, twenty opens each.
pytestmark = pytest.mark.timeout(60)


def open_together(urls: list[str]) -> dict[int, list[str]]:
    """Have WORKERS processes open each of *urls* at once; the errors of each round that had any."""
    ctx = multiprocessing.get_context("spawn")  # no copy of this process's threads and event loop
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=run, args=(w, urls, barrier, results), daemon=True) for w in range(WORKERS)]
    for p in procs:
        p.start()
    errors: dict[int, list[str]] = {}
    try:
        deadline = time.monotonic() + 45
        for _ in range(WORKERS * len(urls)):
            try:
                i, worker, error = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"the workers stopped reporting; exit codes {[p.exitcode for p in procs]}")
            if error is not None:
                errors.setdefault(i, []).append(f"worker {worker}: {error}")
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(10)
    assert [p.exitcode for p in procs] == [0] * WORKERS
    return errors


def assert_every_worker_opened(urls: list[str], errors: dict[int, list[str]]) -> None:
    """No round failed, and each store holds one saga of each worker."""
    failed = sum(len(es) for es in errors.values())
    report = "\n".join(f"round {i}: {e}" for i, es in sorted(errors.items()) for e in es)
    assert not errors, (
        f"{failed} of {WORKERS * len(urls)} opens failed, in {len(errors)} of {len(urls)} rounds:\n{report}"
    )

    async def count(url: str) -> int:
        store = store_from_url(url)
        await store.open()
        try:
            return await store.count(SagaQuery(name="first_start"))
        finally:
            await store.close()

    assert [asyncio.run(count(url)) for url in urls] == [WORKERS] * len(urls)


def test_processes_opening_a_new_sqlite_file_together_all_open_it(tmp_path: Path) -> None:
    urls = [f"sqlite:///{tmp_path}/round{i:02d}.db" for i in range(ROUNDS)]
    assert_every_worker_opened(urls, open_together(urls))


@pytest.fixture
def pg_schemas(pg_dsn: str) -> Iterator[list[str]]:
    """ROUNDS schema names no other test uses, the odd ones created empty; all dropped afterwards."""
    import asyncpg

    schemas = [f"t_{uuid.uuid4().hex[:16]}" for _ in range(ROUNDS)]

    async def create() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            for schema in schemas[1::2]:
                await conn.execute(f'CREATE SCHEMA "{schema}"')
        finally:
            await conn.close()

    asyncio.run(create())
    yield schemas

    async def drop() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            for schema in schemas:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.mark.postgres
def test_processes_opening_a_new_postgres_schema_together_all_open_it(pg_dsn: str, pg_schemas: list[str]) -> None:
    # search_path is not the store's parameter: the driver sets it on the connection.
    urls = [f"{pg_dsn}?{'search_path' if i % 2 else 'schema'}={s}" for i, s in enumerate(pg_schemas)]
    assert_every_worker_opened(urls, open_together(urls))
