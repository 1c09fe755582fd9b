"""``start(..., connection=...)``: the saga is written in the application's transaction; it exists iff that commits.

Per connection kind: sqlite3, SQLAlchemy Connection and Session (SQLite),
asyncpg, SQLAlchemy AsyncConnection and AsyncSession (PostgreSQL). Each rolls
back (no saga, no order row) and commits (the order row and a saga that a
running engine then runs to its end).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sagakit import SagaBuilder, SagaClient, SagaEngine, SagaNotFound, SagaStatus, StepContext, StoreError
from tests.conftest import PG_DSN

sqlalchemy = pytest.importorskip("sqlalchemy")
from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine  # noqa: E402
from sqlalchemy.orm import Session, scoped_session, sessionmaker  # noqa: E402


async def ship(ctx: StepContext) -> dict[str, Any]:
    return {"shipped": ctx.data["order_id"]}


_b = SagaBuilder("order")
_b.step("ship", ship)
ORDER = _b.build()


class Rollback(Exception):
    """Raised inside a transaction block to roll it back."""


# ------------------------------------------------------------ SQLite


def sqlite_path(tmp_path: Path) -> tuple[str, str]:
    path = str(tmp_path / "app.db")
    return path, f"sqlite:///{path}"


async def _engine_with_orders(url: str, path: str) -> SagaEngine:
    engine = SagaEngine(url, poll_interval=0.05)
    engine.register(ORDER)
    await engine.run()  # creates sagakit's tables beside the application's
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)")
    return engine


def _orders(path: str) -> list[str]:
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT id FROM orders ORDER BY id")]


async def _assert_absent(engine: SagaEngine, sid: str) -> None:
    with pytest.raises(SagaNotFound):
        await engine.get(sid)
    assert await engine.count() == 0


async def test_sqlite3_connection(tmp_path: Path) -> None:
    path, url = sqlite_path(tmp_path)
    engine = await _engine_with_orders(url, path)
    try:
        db = sqlite3.connect(path)
        db.execute("INSERT INTO orders VALUES ('o-1')")
        sid = await engine.start("order", {"order_id": "o-1"}, connection=db)
        db.rollback()
        await _assert_absent(engine, sid)
        assert _orders(path) == []

        db.execute("INSERT INTO orders VALUES ('o-2')")
        sid = await engine.start("order", {"order_id": "o-2"}, connection=db, idempotency_key="o-2")
        # The same key in the same transaction: the same saga.
        assert await engine.start("order", {"order_id": "o-2"}, connection=db, idempotency_key="o-2") == sid
        db.commit()
        snap = await engine.wait(sid, timeout=20)
        db.close()
    finally:
        await engine.close()
    assert snap.status is SagaStatus.COMPLETED and snap.steps["ship"].result == {"shipped": "o-2"}
    assert _orders(path) == ["o-2"]


@pytest.mark.parametrize("kind", ["connection", "session", "scoped_session"])
async def test_sqlalchemy_connection_and_session_on_sqlite(tmp_path: Path, kind: str) -> None:
    path, url = sqlite_path(tmp_path)
    engine = await _engine_with_orders(url, path)
    sa = sqlalchemy.create_engine(f"sqlite:///{path}")
    # A scoped session (Flask-SQLAlchemy's db.session) is a proxy, not a Session.
    scoped = scoped_session(sessionmaker(sa))

    @contextmanager
    def open_() -> Iterator[Any]:
        if kind == "scoped_session":
            yield scoped
            scoped.remove()
            return
        with sa.connect() if kind == "connection" else Session(sa) as conn:
            yield conn

    try:
        with open_() as conn:
            conn.execute(text("INSERT INTO orders VALUES ('o-1')"))
            sid = await engine.start("order", {"order_id": "o-1"}, connection=conn)
            conn.rollback()
        await _assert_absent(engine, sid)
        with open_() as conn:
            conn.execute(text("INSERT INTO orders VALUES ('o-2')"))
            sid = await engine.start("order", {"order_id": "o-2"}, connection=conn)
            conn.commit()
        snap = await engine.wait(sid, timeout=20)
    finally:
        sa.dispose()
        await engine.close()
    assert snap.status is SagaStatus.COMPLETED
    assert _orders(path) == ["o-2"]


async def test_the_sync_client_writes_in_the_callers_transaction_from_a_plain_thread(tmp_path: Path) -> None:
    path, url = sqlite_path(tmp_path)
    engine = await _engine_with_orders(url, path)
    ids: dict[str, str] = {}

    def view() -> None:  # what a Django or Flask view does: no event loop here
        with SagaClient(url, [ORDER]) as client:
            db = sqlite3.connect(path)
            db.execute("INSERT INTO orders VALUES ('o-1')")
            ids["rolled_back"] = client.start("order", {"order_id": "o-1"}, connection=db)
            db.rollback()
            with db:  # commits at the end of the block
                db.execute("INSERT INTO orders VALUES ('o-2')")
                ids["committed"] = client.start("order", {"order_id": "o-2"}, connection=db)
            db.close()

    try:
        thread = threading.Thread(target=view)
        thread.start()
        await asyncio.to_thread(thread.join, 30)
        snap = await engine.wait(ids["committed"], timeout=20)
        with pytest.raises(SagaNotFound):
            await engine.get(ids["rolled_back"])
    finally:
        await engine.close()
    assert snap.status is SagaStatus.COMPLETED
    assert _orders(path) == ["o-2"]


async def test_connections_that_cannot_hold_the_saga_are_refused(tmp_path: Path) -> None:
    path, url = sqlite_path(tmp_path)
    engine = await _engine_with_orders(url, path)
    try:
        other = sqlite3.connect(str(tmp_path / "other.db"))
        with pytest.raises(StoreError, match="the saga must be written in the store's own database file"):
            await engine.start("order", {"order_id": "x"}, connection=other)
        other.close()
        auto = sqlite3.connect(path, isolation_level=None)
        with pytest.raises(StoreError, match="autocommit mode"):
            await engine.start("order", {"order_id": "x"}, connection=auto)
        auto.close()
        with pytest.raises(TypeError, match="connection= takes a sqlite3.Connection"):
            await engine.start("order", {"order_id": "x"}, connection=object())
        assert await engine.count() == 0
    finally:
        await engine.close()
    memory = SagaEngine("memory://")
    memory.register(ORDER)
    with pytest.raises(TypeError, match="cannot write a saga in the application's transaction"):
        await memory.start("order", {"order_id": "x"}, connection=sqlite3.connect(":memory:"))


# ------------------------------------------------------------ PostgreSQL


@asynccontextmanager
async def pg_engine(pg_url: str) -> AsyncIterator[tuple[SagaEngine, str]]:
    """A running engine on the test's schema, with an orders table there; it is woken only by NOTIFY.

    Its poll interval is far longer than the test waits, so a saga committed
    by the application runs in time only if the commit's notification wakes it.
    """
    schema = parse_qs(urlsplit(pg_url).query)["schema"][0]
    engine = SagaEngine(pg_url, poll_interval=60.0)
    engine.register(ORDER)
    async with engine:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'CREATE TABLE "{schema}".orders (id TEXT PRIMARY KEY)')
        finally:
            await conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while engine.store._listener is None:  # type: ignore[attr-defined]  # the first LISTEN is under way
            assert loop.time() < deadline, "the engine never listened for work"
            await asyncio.sleep(0.02)
        yield engine, schema


async def _pg_orders(schema: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        return [r[0] for r in await conn.fetch(f'SELECT id FROM "{schema}".orders ORDER BY id')]
    finally:
        await conn.close()


async def test_asyncpg_connection(pg_url: str) -> None:
    import asyncpg

    async with pg_engine(pg_url) as (engine, schema):
        conn = await asyncpg.connect(PG_DSN)  # the application's connection: its own search_path
        try:
            with pytest.raises(StoreError, match="no transaction open"):
                await engine.start("order", {"order_id": "x"}, connection=conn)
            other = await asyncpg.connect(PG_DSN.rsplit("/", 1)[0] + "/postgres")  # another database
            try:
                async with other.transaction():
                    with pytest.raises(StoreError, match="is on the database 'postgres'"):
                        await engine.start("order", {"order_id": "x"}, connection=other)
            finally:
                await other.close()
            sid = ""
            with pytest.raises(Rollback):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO \"{schema}\".orders VALUES ('o-1')")
                    sid = await engine.start("order", {"order_id": "o-1"}, connection=conn)
                    raise Rollback
            await _assert_absent(engine, sid)
            async with conn.transaction():
                await conn.execute(f"INSERT INTO \"{schema}\".orders VALUES ('o-2')")
                sid = await engine.start("order", {"order_id": "o-2"}, connection=conn)
                await asyncio.sleep(0.3)  # uncommitted: no worker can see it yet
                assert await engine.count() == 0
            snap = await engine.wait(sid, timeout=15)
        finally:
            await conn.close()
        assert snap.status is SagaStatus.COMPLETED
        assert await _pg_orders(schema) == ["o-2"]


@pytest.mark.parametrize("kind", ["async_connection", "async_session"])
async def test_sqlalchemy_async_connection_and_session_on_postgres(pg_url: str, kind: str) -> None:
    sa = create_async_engine(PG_DSN.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with pg_engine(pg_url) as (engine, schema):

            def open_() -> Any:
                return sa.connect() if kind == "async_connection" else AsyncSession(sa)

            async with open_() as conn:
                await conn.execute(text(f"INSERT INTO \"{schema}\".orders VALUES ('o-1')"))
                sid = await engine.start("order", {"order_id": "o-1"}, connection=conn)
                await conn.rollback()
            await _assert_absent(engine, sid)
            async with open_() as conn:
                sid = await engine.start("order", {"order_id": "o-2"}, connection=conn)  # before the app's write
                await conn.execute(text(f"INSERT INTO \"{schema}\".orders VALUES ('o-2')"))
                await conn.commit()
            snap = await engine.wait(sid, timeout=15)
            assert snap.status is SagaStatus.COMPLETED
            assert await _pg_orders(schema) == ["o-2"]
    finally:
        await sa.dispose()


async def test_a_postgres_connection_for_a_sqlite_store_is_refused(tmp_path: Path, pg_url: str) -> None:
    import asyncpg

    path, url = sqlite_path(tmp_path)
    engine = SagaEngine(url)
    engine.register(ORDER)
    conn = await asyncpg.connect(PG_DSN)
    try:
        async with conn.transaction():
            with pytest.raises(TypeError, match="is a postgresql connection .* but the engine's store .* is sqlite"):
                await engine.start("order", {"order_id": "x"}, connection=conn)
    finally:
        await conn.close()
