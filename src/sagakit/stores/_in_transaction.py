"""Storing a new saga through the application's own connection, inside the transaction it has open.

The saga's row and its first history row are written with the application's
connection, so they commit or roll back with the application's own writes.
Nothing is leased: a worker claims the saga once it is committed and due. On
PostgreSQL the transaction also sends the store's ``NOTIFY``, which the
server delivers at commit (and drops on rollback), so an idle worker claims
it at once; on SQLite a worker finds it on its next look for due work.

Connections accepted: ``sqlite3.Connection``; an asyncpg connection; a
SQLAlchemy ``Connection`` or ``Session`` and their asyncio forms
``AsyncConnection`` and ``AsyncSession`` (SQLAlchemy is imported only when
one is passed). Driver errors are converted here to ``StoreError``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._errors import StoreError
from .._store import Write
from ._codec import dumps, encode_data, encode_history, encode_steps

__all__ = ["Target", "WritesInTransaction", "is_async", "write_async", "write_sync"]

_KINDS = (
    "a sqlite3.Connection, an asyncpg connection, or a SQLAlchemy Connection, Session, AsyncConnection or AsyncSession"
)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a store keeps its sagas, as the application's connection must address them."""

    dialect: str  # "sqlite" or "postgresql"
    store: str  # the store, for messages (its URL without password)
    schema: str | None = None  # PostgreSQL: the schema of the sagakit tables
    channel: str | None = None  # PostgreSQL: the channel workers LISTEN on
    path: str | None = None  # SQLite: the database file
    database: str | None = None  # PostgreSQL: the store's database, when its URL names it


@dataclass(frozen=True, slots=True)
class _Sql:
    insert: str
    history: str
    find: str
    notify: str


def _statements(t: Target, param: Callable[[int], str]) -> _Sql:
    table = f'"{t.schema}".sagakit_' if t.schema else "sagakit_"
    cols = (
        "id, name, version, status, data, steps, created_at, updated_at, correlation_id, "
        "idempotency_key, wake_at, deadline_at, error, seq, revision, meta, lease_owner, lease_expires"
    )
    return _Sql(
        insert=f"INSERT INTO {table}sagas ({cols}) VALUES ({', '.join(param(i) for i in range(1, 19))}) "
        "ON CONFLICT DO NOTHING",
        history=f"INSERT INTO {table}history (saga_id, revision, part, entries) "
        f"VALUES ({param(1)}, {param(2)}, {param(3)}, {param(4)})",
        find=f"SELECT id FROM {table}sagas WHERE name={param(1)} AND idempotency_key={param(2)}",
        notify=f"SELECT pg_notify({param(1)}, {param(2)})",
    )


def _rows(w: Write) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    st = w.state
    saga = (
        st.id, st.name, st.version, st.status.value, encode_data(w), encode_steps(st.steps),
        st.created_at, st.updated_at, st.correlation_id, st.idempotency_key, w.wake_at,
        st.deadline_at, st.error, st.seq, st.revision, dumps(st.meta) if st.meta else None,
        None, None,
    )  # fmt: skip
    return saga, (st.id, st.revision, 0, encode_history(w.history))


# ------------------------------------------------------------ what the connection is


def _module(connection: Any) -> str:
    return type(connection).__module__ or ""


def is_async(connection: Any) -> bool:
    """Whether *connection* is used with ``await`` (asyncpg, SQLAlchemy's asyncio forms).

    Raises:
        TypeError: not a connection sagakit can write in.
    """
    if isinstance(connection, sqlite3.Connection):
        return False
    module = _module(connection)
    if module.startswith("asyncpg"):
        return True
    if module.startswith("sqlalchemy"):
        return module.startswith("sqlalchemy.ext.asyncio")
    raise TypeError(f"connection= takes {_KINDS}; got {type(connection).__module__}.{type(connection).__qualname__}")


def _sqlalchemy_dialect(connection: Any) -> str:
    # Sessions, scoped ones too (Flask-SQLAlchemy's db.session), know their bind; connections their dialect.
    get_bind = getattr(connection, "get_bind", None)
    bind = get_bind() if get_bind is not None else connection
    return str(bind.dialect.name)


def _check_dialect(t: Target, found: str, connection: Any) -> None:
    if found != t.dialect:
        raise TypeError(
            f"connection= is a {found} connection ({type(connection).__qualname__}) but the engine's store "
            f"{t.store} is {t.dialect}: the saga must be written in the store's own database"
        )


def _check_file(t: Target, files: list[Any]) -> None:
    """A SQLite connection must be on the store's file (``PRAGMA database_list`` rows: seq, name, file)."""
    main = next((row[2] for row in files if row[1] == "main"), "")
    if t.path is None or t.path == ":memory:" or not main:
        raise StoreError(f"the store {t.store} is in memory: no other connection can write in it; use a SQLite file")
    if os.path.realpath(main) != os.path.realpath(t.path):
        raise StoreError(
            f"connection= is on {main}, but the engine's store is {t.path}: the saga must be written "
            "in the store's own database file"
        )


def _check_database(t: Target, current: Any) -> None:
    if t.database and current != t.database:
        raise StoreError(
            f"connection= is on the database {current!r}, but the engine's store {t.store} is on "
            f"{t.database!r}: the saga must be written in the store's own database"
        )


def _failed(t: Target, e: Exception) -> StoreError:
    return StoreError(
        f"cannot store the saga through the application's connection in {t.store}: "
        f"{type(e).__name__}: {e} (are sagakit's tables there? open the engine on this database once "
        "to create them; your transaction may need a rollback now)"
    )


# ------------------------------------------------------------ writing


def write_sync(t: Target, connection: Any, w: Write) -> str:
    """Store the new saga of *w* with a blocking *connection* (sqlite3, SQLAlchemy); return its id.

    With an idempotency key already used for this saga name, the existing saga's id.

    Raises:
        TypeError: *connection* is not one sagakit can write in, or is async, or on another database kind.
        StoreError: the connection has no open transaction and would commit at once, is on another
            file than the store, or the database refused the write.
    """
    saga, history = _rows(w)
    if isinstance(connection, sqlite3.Connection):
        _check_dialect(t, "sqlite", connection)
        # Python 3.12's autocommit attribute: True commits each statement; LEGACY (-1) leaves it to isolation_level.
        autocommit = getattr(connection, "autocommit", -1)
        if not connection.in_transaction and (
            autocommit is True or (autocommit not in (True, False) and connection.isolation_level is None)
        ):
            raise StoreError(
                "connection= is in autocommit mode with no transaction open: the saga would be stored "
                "whatever happens to your writes; run BEGIN first"
            )
        try:
            _check_file(t, connection.execute("PRAGMA database_list").fetchall())
            sql = _statements(t, lambda i: f"?{i}")
            if connection.execute(sql.insert, saga).rowcount != 1:
                row = connection.execute(sql.find, (w.state.name, w.state.idempotency_key)).fetchone()
                return str(row[0]) if row else _conflict(w)
            connection.execute(sql.history, history)
        except sqlite3.Error as e:
            raise _failed(t, e) from e
        return w.state.id
    if is_async(connection):
        raise TypeError(
            f"connection= is an asyncio connection ({type(connection).__qualname__}): "
            "use `await engine.start(..., connection=...)` from async code"
        )
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    _check_dialect(t, _sqlalchemy_dialect(connection), connection)
    sql = _statements(t, lambda i: f":p{i}")
    try:
        if t.dialect == "sqlite":
            _check_file(t, list(connection.execute(text("PRAGMA database_list"))))
        else:
            _check_database(t, connection.execute(text("SELECT current_database()")).scalar())
        if connection.execute(text(sql.insert), _named(saga)).rowcount != 1:
            found = connection.execute(text(sql.find), _named((w.state.name, w.state.idempotency_key))).scalar()
            return str(found) if found is not None else _conflict(w)
        connection.execute(text(sql.history), _named(history))
        if t.channel is not None and w.wake_at is not None:
            connection.execute(text(sql.notify), _named((t.channel, repr(w.wake_at))))
    except SQLAlchemyError as e:
        raise _failed(t, e) from e
    return w.state.id


async def write_async(t: Target, connection: Any, w: Write) -> str:
    """Store the new saga of *w* with *connection*, blocking or async; return its id. See ``write_sync``."""
    if not is_async(connection):
        return write_sync(t, connection, w)
    saga, history = _rows(w)
    if _module(connection).startswith("asyncpg"):
        _check_dialect(t, "postgresql", connection)
        if not connection.is_in_transaction():
            raise StoreError(
                "connection= has no transaction open: the saga would be stored whatever happens to your "
                "writes; use `async with connection.transaction():`"
            )
        sql = _statements(t, lambda i: f"${i}")
        try:
            _check_database(t, await connection.fetchval("SELECT current_database()"))
            if await connection.execute(sql.insert, *saga) != "INSERT 0 1":
                found = await connection.fetchval(sql.find, w.state.name, w.state.idempotency_key)
                return str(found) if found is not None else _conflict(w)
            await connection.execute(sql.history, *history)
            if t.channel is not None and w.wake_at is not None:
                await connection.execute(sql.notify, t.channel, repr(w.wake_at))
        except StoreError:
            raise
        except Exception as e:  # asyncpg's errors share no base class with its interface errors
            raise _failed(t, e) from e
        return w.state.id
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    _check_dialect(t, _sqlalchemy_dialect(connection), connection)
    sql = _statements(t, lambda i: f":p{i}")
    try:
        if t.dialect == "sqlite":
            _check_file(t, list(await connection.execute(text("PRAGMA database_list"))))
        else:
            _check_database(t, (await connection.execute(text("SELECT current_database()"))).scalar())
        if (await connection.execute(text(sql.insert), _named(saga))).rowcount != 1:
            found = (await connection.execute(text(sql.find), _named((w.state.name, w.state.idempotency_key)))).scalar()
            return str(found) if found is not None else _conflict(w)
        await connection.execute(text(sql.history), _named(history))
        if t.channel is not None and w.wake_at is not None:
            await connection.execute(text(sql.notify), _named((t.channel, repr(w.wake_at))))
    except SQLAlchemyError as e:
        raise _failed(t, e) from e
    return w.state.id


def _named(args: tuple[Any, ...]) -> dict[str, Any]:
    return {f"p{i}": v for i, v in enumerate(args, 1)}


def _conflict(w: Write) -> str:
    raise StoreError(f"saga id {w.state.id} is already stored (an id collision); start the saga again")


class WritesInTransaction:
    """``write_in`` and ``write_in_sync`` for a store that says where it lives (``_target``)."""

    def _target(self) -> Target:
        raise NotImplementedError

    async def write_in(self, connection: Any, write: Write) -> str:
        """Store a new saga (an insert *write*) with the application's *connection*, in its open transaction.

        The saga exists once that transaction commits, and not at all if it
        rolls back; see this module for the connections accepted. Returns the
        saga's id (an existing saga's, for a used idempotency key).
        """
        return await write_async(self._target(), connection, write)

    def write_in_sync(self, connection: Any, write: Write) -> str:
        """``write_in`` for a blocking connection (sqlite3, SQLAlchemy), from the thread that uses it."""
        return write_sync(self._target(), connection, write)
