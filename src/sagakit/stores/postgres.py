"""PostgreSQL store: many worker processes on one database (``pip install 'sagakit[postgres]'``).

Same schema, migrations and statements as the SQLite store (``_sql.py``),
rendered for PostgreSQL by ``DIALECT``: ``$N`` placeholders, DOUBLE PRECISION
times, BIGINT revisions, JSON kept as TEXT (the store never looks inside it,
and TEXT skips JSONB's parse and re-encode on every write).

- Claims are one statement: ``UPDATE … WHERE id = ANY(ARRAY(SELECT … ORDER BY
  wake_at LIMIT n FOR UPDATE SKIP LOCKED)) RETURNING …``. Concurrent claimers
  pass over each other's rows instead of waiting on them, and never get the
  same saga. The array form fixes the plan: the due index picks the rows and
  the primary key fetches them, however many finished sagas the table holds
  (``IN (SELECT …)`` lets the planner hash-join against a scan of the table).
- A commit is one transaction for many transitions. New sagas go in one
  ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING`` (an existing saga
  is then looked up by its idempotency key); all updates run as one statement
  over arrays, each row fenced by ``WHERE id=… AND revision=…``, ``RETURNING``
  the ids it applied (the per-write row count, in one round trip). A refused
  write returns None and writes no history, outbox or inbox rows. The arrays
  are in saga id order, so committers whose rows overlap (a lease taken over
  mid-commit) lock them in one order.
- Statements are prepared once per pooled connection and reused (asyncpg's
  statement cache, keyed by the SQL text, which ``Statements`` renders once).
- ``wait_for_work`` is an extra beside the protocol: an idle worker sleeps
  on ``LISTEN`` and is woken by the ``NOTIFY`` that a commit sends, in its
  own transaction, when it leaves a saga unleased and due within
  ``notify_within`` seconds, or that ``release`` sends. Polling stays the
  fallback: a notification is a hint, never the only way work is found.
- Driver errors (connection refused or lost, server errors) are converted at
  this boundary to ``StoreError`` naming the URL without its password.

Driver choice: asyncpg 0.32, measured against psycopg 3.3.9 (binary) on the
hot path with ``benchmarks/pg_driver_measurement.py``: the same statements,
prepared on the server, one connection each, rounds interleaved; PostgreSQL 15
on loopback with every commit flushed, 2 cores. Milliseconds, the median of
60 rounds, the range over three runs:

==========================================  ============  ===========
driver, shape of the commit                 commit (ms)   claim (ms)
==========================================  ============  ===========
asyncpg, one UPDATE per write               9.3-10.2      3.6-4.1
asyncpg, one UPDATE for all (this store)    5.1-5.4
psycopg, one UPDATE per write               11.2-11.8     3.8-4.2
psycopg, one UPDATE per write, pipelined    6.3-6.6
psycopg, one UPDATE for all                 8.5-9.2
==========================================  ============  ===========

Commit: 50 fenced updates, each checked, and 100 history rows in one
transaction. Claim: 50 due sagas among 5,000 finished ones, rows decoded.
The claim costs the same on both (the server's work dominates); on the commit
asyncpg's best is about 20 % faster than psycopg's best (its pipeline mode),
and it is already the ``postgres`` extra. That is about 0.1 ms of commit per
transition on one connection, fsync included.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._errors import LeaseLost, NotASagaStore, SagaNotFound, StoreError
from .._status import SagaStatus
from .._store import (
    Handling,
    Lease,
    LockAnswer,
    LockEntry,
    Pruned,
    SagaQuery,
    Schedule,
    WorkerInfo,
    Write,
    waits_for,
)
from ..machine import HistoryEntry, SagaState
from . import _lockplan
from ._codec import (
    COLUMNS,
    add_side_rows,
    decode_history,
    decode_row,
    dumps,
    encode_data,
    encode_history,
    encode_steps,
    loads,
)
from ._in_transaction import Target, WritesInTransaction
from ._pg_permits import PostgresPermits
from ._sql import SCHEMA_VERSION, Dialect, Statements, count_by_status_query, list_query, migrations

if TYPE_CHECKING:
    from .._context import StepContext
    from .._store import DeadLetter, OutboxRecord

__all__ = ["DIALECT", "PostgresStore", "fenced"]

DIALECT = Dialect(
    name="postgresql",
    param=lambda i: f"${i}",
    real="DOUBLE PRECISION",
    bigint="BIGINT",
    lock_rows=" FOR UPDATE SKIP LOCKED",
    in_subquery=lambda sub: f"= ANY(ARRAY({sub}))",
    cast_params=True,
    json_text=lambda p: f"(data::jsonb ->> {p})",
    json_path=lambda key: key,
    saga_lock=lambda column: f" AND pg_try_advisory_xact_lock(hashtext({column}))",
    history_entries_agg="json_agg(json_build_array(at, kind, message, step, attempt) ORDER BY idx)::text",
    of_kinds=lambda p: f"({p}::text[] IS NULL OR (name || ':' || version::text) = ANY({p}::text[]))",
    clock="EXTRACT(EPOCH FROM clock_timestamp())::float8",
    in_texts=lambda p: f"= ANY({p}::text[])",
    row_id="ctid",
    lock_locks="LOCK TABLE sagakit_locks IN SHARE ROW EXCLUSIVE MODE",
)
_ACTIVE = ("pending", "running", "compensating")
# The one statement that exists only here: every fenced update of a commit in one round
# trip, over unnest()ed arrays, one element per write (SQLite runs in-process and has no
# round trips to save). RETURNING names the writes that the revision fence let through;
# a NULL data element leaves the saga's data as it is.
_UPDATE_MANY = (
    "UPDATE sagakit_sagas AS s SET status=v.status, steps=v.steps, updated_at=v.updated_at, "
    "wake_at=v.wake_at, deadline_at=v.deadline_at, error=v.error, seq=v.seq, "
    "revision=v.revision, meta=v.meta, lease_owner=v.lease_owner, "
    "lease_expires=v.lease_expires, data=COALESCE(v.data, s.data) "
    "FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::float8[], "
    "$6::float8[], $7::float8[], $8::text[], $9::bigint[], $10::bigint[], $11::text[], "
    "$12::text[], $13::float8[], $14::text[]) AS v(id, expected, status, steps, updated_at, "
    "wake_at, deadline_at, error, seq, revision, meta, lease_owner, lease_expires, data) "
    "WHERE s.id = v.id AND s.revision = v.expected RETURNING s.id"
)
# Several new sagas of a commit in one round trip: unnest()ed arrays in the commit's
# order (WITH ORDINALITY), so of two equal idempotency keys the first still wins; RETURNING
# names the sagas stored.
_INSERT_MANY = (
    f"INSERT INTO sagakit_sagas ({', '.join(COLUMNS)}, lease_owner, lease_expires) "
    f"SELECT {', '.join(COLUMNS)}, lease_owner, lease_expires FROM unnest("
    "$1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::float8[], "
    "$8::float8[], $9::text[], $10::text[], $11::float8[], $12::float8[], $13::text[], $14::bigint[], "
    "$15::bigint[], $16::text[], $17::text[], $18::float8[]) WITH ORDINALITY "
    f"AS v({', '.join(COLUMNS)}, lease_owner, lease_expires, n) ORDER BY n "
    "ON CONFLICT DO NOTHING RETURNING id"
)
# The history rows of a commit in one statement (one execution on the server instead of one per row).
_INSERT_HISTORY_MANY = (
    "INSERT INTO sagakit_history (saga_id, revision, part, entries) "
    "SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[], $4::text[])"
)


def _one_statement_commit(clock: str | None) -> str:
    """A commit of new sagas, updates and their history as one statement (so one round trip).

    For a commit whose sagas are distinct and that has no outbox, inbox, lock or
    wake-up notification to write. A single statement is a transaction of its
    own. Each row's ``lease_seconds`` (NULL: none) sets its lease, and the wake
    time of a held saga, from the database's clock read before the writes.
    History rows are written for the sagas the statement stored or updated only.
    """
    now = clock or "NULL::float8"
    cols = ", ".join(COLUMNS)
    wake = (
        "CASE WHEN v.lease_seconds IS NOT NULL AND v.wake_at IS NOT NULL THEN c.now + v.lease_seconds "
        "ELSE v.wake_at END"
    )
    lease = "CASE WHEN v.lease_seconds IS NOT NULL THEN c.now + v.lease_seconds ELSE v.lease_expires END"
    insert_cols = ", ".join("v." + c if c != "wake_at" else wake for c in COLUMNS)
    return (
        f"WITH c AS (SELECT {now} AS now), "
        f"i AS (INSERT INTO sagakit_sagas ({cols}, lease_owner, lease_expires) "
        f"SELECT {insert_cols}, v.lease_owner, {lease} FROM unnest("
        "$1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::float8[], "
        "$8::float8[], $9::text[], $10::text[], $11::float8[], $12::float8[], $13::text[], $14::bigint[], "
        "$15::bigint[], $16::text[], $17::text[], $18::float8[], $19::float8[]) WITH ORDINALITY "
        f"AS v({cols}, lease_owner, lease_expires, lease_seconds, n) CROSS JOIN c ORDER BY v.n "
        "ON CONFLICT DO NOTHING RETURNING id), "
        "u AS (UPDATE sagakit_sagas AS s SET status=v.status, steps=v.steps, updated_at=v.updated_at, "
        f"wake_at={wake}, deadline_at=v.deadline_at, error=v.error, seq=v.seq, "
        f"revision=v.revision, meta=v.meta, lease_owner=v.lease_owner, lease_expires={lease}, "
        "data=COALESCE(v.data, s.data) "
        "FROM unnest($20::text[], $21::bigint[], $22::text[], $23::text[], $24::float8[], "
        "$25::float8[], $26::float8[], $27::text[], $28::bigint[], $29::bigint[], $30::text[], "
        "$31::text[], $32::float8[], $33::text[], $34::float8[]) AS v(id, expected, status, steps, updated_at, "
        "wake_at, deadline_at, error, seq, revision, meta, lease_owner, lease_expires, data, lease_seconds) "
        "CROSS JOIN c WHERE s.id = v.id AND s.revision = v.expected RETURNING s.id), "
        "h AS (INSERT INTO sagakit_history (saga_id, revision, part, entries) "
        "SELECT h.saga_id, h.revision, h.part, h.entries "
        "FROM unnest($35::text[], $36::bigint[], $37::int[], $38::text[]) AS h(saga_id, revision, part, entries) "
        "WHERE h.saga_id IN (SELECT id FROM i UNION ALL SELECT id FROM u)) "
        "SELECT id FROM i UNION ALL SELECT id FROM u"
    )


_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# URL query parameters that configure the store; the rest go to the driver.
_STORE_PARAMS = ("schema", "pool_size", "lease_clock")
_INSTALL_HINT = "pip install 'sagakit[postgres]'"


def _driver() -> Any:
    """The asyncpg module, imported on first use so that importing this module never needs it."""
    try:
        import asyncpg
    except ImportError as e:
        raise StoreError(
            f"the PostgreSQL store needs the asyncpg driver, which is not installed ({e}); "
            f"install it with: {_INSTALL_HINT}"
        ) from e
    return asyncpg


def safe_url(url: str) -> str:
    """*url* without its password, for messages and ``Store.url``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class PostgresStore(PostgresPermits, WritesInTransaction):
    """Sagas in a PostgreSQL database, shared by any number of workers.

    Args:
        dsn: a libpq-style URL, ``postgresql://user:password@host:port/database``.
        schema: the schema that holds sagakit's tables (created if missing);
            default: the server's ``search_path``.
        pool_size: connections this store opens at most (one worker process
            needs few: claims, the committer and reads share them).
        notify_within: a commit that leaves a saga unleased and due within
            this many seconds of its transition notifies idle workers.
        lease_clock: ``"database"`` (the default) measures lease expiries on the
            server's clock, so workers whose clocks disagree cannot take a live
            lease or hold one too long; ``"caller"`` uses the times the worker
            passes in (tests that inject time).
        connect_timeout: seconds to wait for a connection.
        command_timeout: seconds one statement may take before it fails with
            StoreError (a server that stopped answering must not hang a worker);
            None waits forever.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        pool_size: int = 8,
        notify_within: float = 1.0,
        lease_clock: str = "database",
        connect_timeout: float = 10.0,
        command_timeout: float | None = 60.0,
    ) -> None:
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise StoreError(
                f"bad schema name {schema!r}: use letters, digits and underscores, "
                "starting with a letter or underscore, at most 63 characters"
            )
        if pool_size < 1:
            raise StoreError(f"pool_size must be >= 1, got {pool_size!r}")
        if lease_clock not in ("database", "caller"):
            raise StoreError(f"lease_clock must be 'database' or 'caller', got {lease_clock!r}")
        self._pg = _driver()
        self._dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self.notify_within = notify_within
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        query = urlencode({"schema": schema}) if schema else ""
        base = urlunsplit(urlsplit(safe_url(dsn))._replace(query=query))
        self.url = base
        self.lease_clock = lease_clock
        self._sql = Statements(DIALECT, database_clock=lease_clock == "database")
        self._sql_one_statement = _one_statement_commit(DIALECT.clock if self._sql.clock is not None else None)
        one = "WHERE id=$4 AND "
        assert one in self._sql.claim_one
        # claim_one for the ids in $4. A row another transaction is writing right now is skipped
        # (reported busy, as a live lease is): waiting for it while holding the rows taken so far
        # could close a deadlock with a commit that updates the same rows in another order.
        self._claim_many = self._sql.claim_one.replace(
            one,
            "WHERE id = ANY(ARRAY(SELECT id FROM sagakit_sagas WHERE id = ANY($4::text[]) "
            "FOR UPDATE SKIP LOCKED)) AND ",
        )
        self._pool: Any = None
        self._settings = {"search_path": f'"{schema}"'} if schema else {}
        # Workers on other schemas of the same database are not woken by this one's work.
        channel = f"sagakit_work_{schema}" if schema else "sagakit_work"
        if len(channel) > 63:  # PostgreSQL's identifier limit
            channel = f"sagakit_work_{hashlib.blake2b(channel.encode(), digest_size=16).hexdigest()}"
        self._channel = channel
        self._lock_key = int.from_bytes(
            hashlib.blake2b(f"sagakit-migrate:{schema or ''}".encode(), digest_size=8).digest(),
            "big",
            signed=True,
        )
        self._listener: Any = None
        self._permit_watchers: builtins.list[Any] = []
        self._work = asyncio.Event()
        self._opening = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """``postgresql://user[:password]@host[:port]/db[?schema=NAME&pool_size=N]``.

        ``postgres://`` and ``postgresql+asyncpg://`` are accepted too; other
        query parameters (``sslmode=…``) are passed to the driver.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.split("+", 1)[0].lower()
        if scheme not in ("postgresql", "postgres"):
            raise StoreError(f"bad PostgreSQL URL {safe_url(url)!r}: use postgresql://user@host/db")
        params = parse_qsl(parts.query, keep_blank_values=True)
        ours = {k: v for k, v in params if k in _STORE_PARAMS}
        rest = [(k, v) for k, v in params if k not in _STORE_PARAMS]
        dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), ""))
        pool_size = 8
        if "pool_size" in ours:
            try:
                pool_size = int(ours["pool_size"])
            except ValueError:
                raise StoreError(f"bad pool_size {ours['pool_size']!r} in {safe_url(url)!r}: use an integer") from None
        return cls(
            dsn,
            schema=ours.get("schema") or None,
            pool_size=pool_size,
            lease_clock=ours.get("lease_clock") or "database",
        )

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    # ------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Convert driver and network errors to StoreError naming the store."""
        try:
            yield
        except (OSError, self._pg.PostgresError, self._pg.InterfaceError) as e:
            text = str(e) or type(e).__name__
            raise StoreError(f"PostgreSQL store {self.url}: {what} failed: {text}") from e

    @contextlib.asynccontextmanager
    async def _tx(self, what: str) -> AsyncIterator[Any]:
        """A pooled connection inside one transaction."""
        pool = self._open_pool()
        with self._errors(what):
            async with pool.acquire() as conn, conn.transaction():
                yield conn

    def _open_pool(self) -> Any:
        if self._pool is None:
            raise StoreError(f"store {self.url} is not open: call (or await) open() first")
        return self._pool

    async def _fetch(self, what: str, stmt: str, *args: Any) -> list[Any]:
        pool = self._open_pool()
        with self._errors(what):
            rows: list[Any] = await pool.fetch(stmt, *args)
        return rows

    async def open(self) -> None:
        """Connect, create the schema if missing, and migrate it to this sagakit's version.

        Raises:
            NotASagaStore: the schema has a ``sagakit_sagas`` table that sagakit did not make.
            StoreError: the server cannot be reached, or its schema is newer than this sagakit.
        """
        async with self._opening:  # two callers opening at once get one pool
            if self._pool is None:
                await self._open()

    async def _open(self) -> None:
        with self._errors("connecting"):
            pool = await self._pg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self.pool_size,
                server_settings=self._settings,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                # Room for every statement and list-filter variant, so none is re-prepared.
                statement_cache_size=256,
                # The store's statements leave no session state behind (no SET, LISTEN, cursor or
                # session-level advisory lock; a transaction is rolled back by the pool itself), so
                # a connection goes back to the pool without the reset query's round trip. The one
                # connection lent to user code, a participant's, is reset in handling().
                reset=_no_reset,
            )
        try:
            with self._errors("migrating the schema"):
                async with pool.acquire() as conn:
                    await self._migrate(conn)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def _schema_version(self, conn: Any) -> int:
        has_meta, has_sagas = await conn.fetchrow(
            "SELECT to_regclass('sagakit_meta') IS NOT NULL, to_regclass('sagakit_sagas') IS NOT NULL"
        )
        if not has_meta:
            if has_sagas:
                raise NotASagaStore(
                    f"{self.url} has a sagakit_sagas table but no sagakit_meta: it was not "
                    "made by sagakit and was left untouched; use another schema (?schema=NAME)"
                )
            return 0
        value = await conn.fetchval("SELECT value FROM sagakit_meta WHERE key='schema_version'")
        version = int(value) if value is not None else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.url} has sagakit schema version {version}, newer than this sagakit "
                f"supports ({SCHEMA_VERSION}); upgrade sagakit"
            )
        return version

    async def _migrate(self, conn: Any) -> None:
        # Without the lock only "current" is an answer to act on: anything else is decided
        # again under it, where no other process is midway through creating the schema.
        with contextlib.suppress(NotASagaStore):
            if await self._schema_version(conn) == SCHEMA_VERSION:
                return
        # Workers starting together: the advisory lock lets one migrate while the others
        # wait, then find the schema current. It is taken before the transaction begins:
        # a transaction begun earlier may go on reading the catalogs from the backend's
        # cache as they were when it began (to_regclass takes no lock that would refresh
        # them), and see no tables where the last holder of the lock has just made them.
        await conn.execute("SELECT pg_advisory_lock($1)", self._lock_key)
        try:
            async with conn.transaction():
                if self.schema is not None:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                version = await self._schema_version(conn)
                if version == SCHEMA_VERSION:
                    return
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS sagakit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                )
                for step in migrations(DIALECT)[version:]:
                    for stmt in step:
                        await conn.execute(stmt)
                await conn.execute(
                    "INSERT INTO sagakit_meta (key, value) VALUES ('schema_version', $1) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    str(SCHEMA_VERSION),
                )
        finally:
            # On a lost connection the server has released the lock with the session, and
            # open() discards the pool; the error that ended the migration is the one to report.
            with contextlib.suppress(OSError, self._pg.PostgresError, self._pg.InterfaceError):
                await conn.execute("SELECT pg_advisory_unlock($1)", self._lock_key)

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close(timeout=5)
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), 10)
        except (TimeoutError, OSError, self._pg.PostgresError, self._pg.InterfaceError):
            pool.terminate()

    # ------------------------------------------------------------ writes

    async def commit(self, writes: Sequence[Write]) -> list[str | None]:
        if not writes:
            return []
        if self._one_statement(writes):
            return await self._commit_one_statement(writes)
        sql = self._sql
        results: list[str | None] = [None] * len(writes)
        applied = [False] * len(writes)
        history: list[tuple[Any, ...]] = []
        outbox: list[tuple[Any, ...]] = []
        inbox: list[tuple[Any, ...]] = []
        due: float | None = None
        # Inserts first, in the given order (the first of two equal idempotency keys wins);
        # then the updates, in rounds of distinct saga ids, each round one statement.
        inserts = [i for i, w in enumerate(writes) if w.insert]
        rounds: list[list[int]] = []
        seen: dict[str, int] = {}
        for i in sorted((i for i, w in enumerate(writes) if not w.insert),
                        key=lambda i: writes[i].state.id):  # fmt: skip
            sid = writes[i].state.id
            k = seen.get(sid, 0)
            seen[sid] = k + 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(i)
        locking = any(w.locks for w in writes)
        async with self._tx("commit") as conn:
            if locking:
                # First: the lock queues, then saga rows, in every transaction that takes both.
                await conn.execute(DIALECT.lock_locks)
            leases = self._sql.clock is not None and any(w.lease_seconds is not None for w in writes)
            # A lease this commit sets runs from the database's clock, read before the writes:
            # it ends no later than it would from the moment they are applied.
            db_now: float = await conn.fetchval(self._sql.clock) if leases else 0.0
            if inserts:
                new: list[tuple[Any, ...]] = []
                for i in inserts:
                    w = writes[i]
                    st = w.state
                    new.append(
                        (st.id, st.name, st.version, st.status.value, encode_data(w),
                         encode_steps(st.steps), st.created_at, st.updated_at,
                         st.correlation_id, st.idempotency_key, _wake(w, db_now, leases), st.deadline_at,
                         st.error, st.seq, st.revision, dumps(st.meta) if st.meta else None,
                         w.owner, _lease(w, db_now, leases))
                    )  # fmt: skip
                if len(new) == 1:
                    stored = {new[0][0]} if await conn.execute(sql.insert, *new[0]) == "INSERT 0 1" else set()
                else:
                    stored = {r[0] for r in await conn.fetch(_INSERT_MANY, *zip(*new, strict=True))}
                for i in inserts:
                    st = writes[i].state
                    if st.id in stored:
                        stored.discard(st.id)  # a second write of the same new saga id was refused
                        results[i] = st.id
                        applied[i] = True
                    elif st.idempotency_key is not None:
                        results[i] = await conn.fetchval(sql.find_idempotent, st.name, st.idempotency_key)
            for batch in rounds:
                rows = []
                for i in batch:
                    w = writes[i]
                    st = w.state
                    rows.append(
                        (st.id, w.expected_revision, st.status.value, encode_steps(st.steps),
                         st.updated_at, _wake(w, db_now, leases), st.deadline_at, st.error, st.seq,
                         st.revision, dumps(st.meta) if st.meta else None, w.owner,
                         _lease(w, db_now, leases), encode_data(w) if w.data_changed else None)
                    )  # fmt: skip
                done = {r[0] for r in await conn.fetch(_UPDATE_MANY, *zip(*rows, strict=True))}
                for i in batch:
                    if writes[i].state.id in done:
                        results[i] = writes[i].state.id
                        applied[i] = True
            for i, w in enumerate(writes):
                if not applied[i]:
                    continue  # fenced, or an insert that met an existing saga: nothing else
                st = w.state
                add_side_rows(w, history, outbox, inbox)
                if self._wakes_workers(w) and (due is None or w.wake_at < due):  # type: ignore[operator]
                    due = w.wake_at
            if locking:
                woken = await self._commit_locks(conn, [w for i, w in enumerate(writes) if applied[i] and w.locks])
                if woken is not None and (due is None or woken < due):
                    due = woken
            if len(history) > 1:
                await conn.execute(_INSERT_HISTORY_MANY, *zip(*history, strict=True))
            elif history:
                await conn.execute(sql.insert_history, *history[0])
            if outbox:
                await conn.executemany(sql.insert_outbox, outbox)
            if inbox:
                await conn.executemany(sql.insert_inbox, inbox)
            if due is not None:
                await conn.execute("SELECT pg_notify($1, $2)", self._channel, repr(due))
        return results

    def _wakes_workers(self, w: Write) -> bool:
        """Whether *w* leaves its saga unleased and due within ``notify_within``: idle workers are told."""
        return w.owner is None and w.wake_at is not None and w.wake_at <= w.state.updated_at + self.notify_within

    def _one_statement(self, writes: Sequence[Write]) -> bool:
        """Whether *writes* can be committed by ``_one_statement_commit``'s statement."""
        ids = set()
        for w in writes:
            st = w.state
            if w.outbox or w.inbox or w.locks or st.id in ids:
                return False
            if self._wakes_workers(w):
                return False  # workers are told of a saga due soon: the full commit does that
            ids.add(st.id)
        return True

    async def _commit_one_statement(self, writes: Sequence[Write]) -> list[str | None]:
        database_clock = self._sql.clock is not None
        new: list[tuple[Any, ...]] = []
        rows: list[tuple[Any, ...]] = []
        history: list[tuple[Any, ...]] = []
        for w in writes:
            st = w.state
            seconds = w.lease_seconds if database_clock and w.owner is not None else None
            meta = dumps(st.meta) if st.meta else None
            if w.insert:
                new.append(
                    (st.id, st.name, st.version, st.status.value, encode_data(w),
                     encode_steps(st.steps), st.created_at, st.updated_at,
                     st.correlation_id, st.idempotency_key, w.wake_at, st.deadline_at,
                     st.error, st.seq, st.revision, meta, w.owner, w.lease_expires, seconds)
                )  # fmt: skip
            else:
                rows.append(
                    (st.id, w.expected_revision, st.status.value, encode_steps(st.steps),
                     st.updated_at, w.wake_at, st.deadline_at, st.error, st.seq,
                     st.revision, meta, w.owner, w.lease_expires,
                     encode_data(w) if w.data_changed else None, seconds)
                )  # fmt: skip
            if w.history:
                history.append((st.id, st.revision, 0, encode_history(w.history)))
        args = [
            *(list(col) for col in (zip(*new, strict=True) if new else [()] * 19)),
            *(list(col) for col in (zip(*rows, strict=True) if rows else [()] * 15)),
            *(list(col) for col in (zip(*history, strict=True) if history else [()] * 4)),
        ]
        pool = self._open_pool()
        with self._errors("commit"):
            stored = {r[0] for r in await pool.fetch(self._sql_one_statement, *args)}
        results: list[str | None] = [None] * len(writes)
        for i, w in enumerate(writes):
            st = w.state
            if st.id in stored:
                results[i] = st.id
            elif w.insert and st.idempotency_key is not None:
                rows_found = await self._fetch("commit", self._sql.find_idempotent, st.name, st.idempotency_key)
                results[i] = rows_found[0][0] if rows_found else None
        return results

    # ------------------------------------------------------------ semantic locks

    async def _lock_rows(self, conn: Any, keys: Sequence[str], sagas: Sequence[str]) -> list[_lockplan.LockRow]:
        """The lock rows connected to *keys* and *sagas* (see ``_lockplan.Component``)."""
        component = _lockplan.Component(keys, sagas)
        while True:
            k, s = component.todo()
            if not k and not s:
                return component.all()
            rows = await conn.fetch(self._sql.lock_rows, k, s)
            component.add(_lockplan.LockRow(r[0], r[1], int(r[2]), bool(r[3]), float(r[4])) for r in rows)

    async def _write_locks(self, conn: Any, plan: _lockplan.Plan, now: float, due: Sequence[str] = ()) -> bool:
        """Write *plan*; returns whether a saga was made due (granted its keys)."""
        sql = self._sql
        if plan.deleted:
            await conn.executemany(sql.lock_delete, plan.deleted)
        if plan.granted:
            await conn.executemany(sql.lock_grant, plan.granted)
        if plan.inserted:
            await conn.executemany(
                sql.lock_insert, [(r.key, r.saga_id, r.ticket, int(r.held), r.since) for r in plan.inserted]
            )
        wake = sorted(plan.woken | set(due))
        if wake:
            await conn.executemany(sql.lock_wake, [(now, sid) for sid in wake])
        return bool(wake)

    async def _commit_locks(self, conn: Any, writes: list[Write]) -> float | None:
        """In a commit's transaction: the releases of its applied writes and the grants they allow.

        Returns the wake time of the sagas made due, if any (the commit notifies idle workers).
        """
        if not writes:
            return None
        releases = [(w.state.id, None if w.unlock_all else w.unlock) for w in writes if w.unlock_all or w.unlock]
        waiting = [w.state.id for w in writes if w.lock_wait and w.owner is None]
        sagas = [sid for sid, _ in releases] + waiting
        plan, due = _lockplan.commit_plan(await self._lock_rows(conn, (), sagas), releases, waiting)
        now = max(w.state.updated_at for w in writes)
        return now if await self._write_locks(conn, plan, now, due) else None

    async def acquire_locks(
        self,
        saga_id: str,
        keys: Sequence[str],
        now: float,
        *,
        fail: bool = False,
        give_up: bool = False,
        owner: str | None = None,
        wake_at: float | None = None,
    ) -> LockAnswer:
        keys = list(keys)
        async with self._tx("acquire_locks") as conn:
            await conn.execute(DIALECT.lock_locks)
            row = await conn.fetchrow(self._sql.lock_saga, saga_id)
            if row is None or row[0] not in _ACTIVE or not waits_for(row[1] or "{}", keys):
                return LockAnswer("stale")
            rows = await self._lock_rows(conn, keys, [saga_id])
            plan, answer = _lockplan.acquire(rows, saga_id, keys, now, fail=fail, give_up=give_up)
            woke = await self._write_locks(conn, plan, now)
            released = False
            if answer.outcome == "waiting" and owner is not None and row[2] == owner:
                await conn.execute(self._sql.lock_release_lease, wake_at, saga_id, owner)
                released = True
            if woke:
                await conn.execute("SELECT pg_notify($1, $2)", self._channel, repr(now))
        return LockAnswer(answer.outcome, answer.reason, answer.blockers, released)

    async def locks(self, *, saga_id: str | None = None, limit: int = 1000) -> builtins.list[LockEntry]:
        if saga_id is None:
            rows = await self._fetch("locks", self._sql.locks, limit)
        else:
            rows = await self._fetch("locks", self._sql.locks_of, limit, saga_id)
        return [LockEntry(r[0], r[1], bool(r[2]), int(r[3]), float(r[4]), r[5]) for r in rows]

    def _target(self) -> Target:
        database = urlsplit(self.url).path.lstrip("/") or None
        return Target("postgresql", self.url, schema=self.schema, channel=self._channel, database=database)

    async def append_history(self, saga_id: str, revision: int, entries: Sequence[HistoryEntry]) -> None:
        if not entries:
            return
        async with self._tx("appending history") as conn:
            await conn.execute(self._sql.insert_history, saga_id, revision, 1, encode_history(entries))

    # ------------------------------------------------------------ leases

    async def claim(
        self, owner: str, now: float, lease_until: float, limit: int, kinds: Collection[tuple[str, int]] | None = None
    ) -> list[SagaState]:
        rows = await self._fetch(
            "claim", self._sql.claim, owner, lease_until, now, limit, lease_until - now, _kinds(kinds)
        )
        return [decode_row(r) for r in rows]

    async def claim_saga(self, saga_id: str, owner: str, now: float, lease_until: float) -> SagaState | None:
        pool = self._open_pool()
        with self._errors("claim_saga"):
            async with pool.acquire() as conn:
                row = await conn.fetchrow(self._sql.claim_one, owner, lease_until, now, saga_id, lease_until - now)
                exists = row is not None or await conn.fetchval(self._sql.exists, saga_id)
        if not exists:
            raise SagaNotFound(saga_id)
        return decode_row(row) if row is not None else None

    async def claim_sagas(
        self, saga_ids: Sequence[str], owner: str, now: float, lease_until: float
    ) -> dict[str, SagaState | None]:
        ids = sorted(set(saga_ids))
        if not ids:
            return {}
        pool = self._open_pool()
        with self._errors("claim_sagas"):
            async with pool.acquire() as conn:
                rows = await conn.fetch(self._claim_many, owner, lease_until, now, ids, lease_until - now)
                got: dict[str, SagaState | None] = {}
                for r in rows:
                    st = decode_row(r)
                    got[st.id] = st
                rest = [i for i in ids if i not in got]
                if rest:
                    for r in await conn.fetch(self._sql.existing, rest):
                        got[r[0]] = None
        return got

    async def renew(
        self, owner: str, saga_ids: Sequence[str], lease_until: float, *, now: float | None = None
    ) -> set[str]:
        lost: set[str] = set()
        if not saga_ids:
            return lost
        if now is None:
            now = time.time()
        # Each lease is renewed in a transaction of its own: holding no row while it waits for
        # the next, a renewal never closes a deadlock with a commit updating the same rows.
        pool = self._open_pool()
        with self._errors("renew"):
            async with pool.acquire() as conn:
                for sid in sorted(saga_ids):
                    status = await conn.execute(self._sql.renew, owner, lease_until, sid, now, lease_until - now)
                    if status != "UPDATE 1":
                        lost.add(sid)
        return lost

    async def release_leases(self, owner: str | None, wake_at: float) -> int:
        async with self._tx("release_leases") as conn:
            if owner is None:
                status = await conn.execute(self._sql.release_all, wake_at)
            else:
                status = await conn.execute(self._sql.release_owned, wake_at, owner)
        return int(status.split()[-1])

    async def release(self, owner: str, sagas: Sequence[tuple[str, float | None]]) -> None:
        if not sagas:
            return
        rows = sorted(((owner, wake, sid) for sid, wake in sagas), key=lambda r: r[2])
        wakes = [wake for _, wake, _ in rows if wake is not None]
        async with self._tx("release") as conn:
            await conn.executemany(self._sql.release, rows)
            if wakes:
                await conn.execute("SELECT pg_notify($1, $2)", self._channel, repr(min(wakes)))

    # ------------------------------------------------------------ waking

    async def wait_for_work(self, timeout: float) -> bool:
        """Sleep until another transaction may have made work due, or *timeout* seconds pass.

        Returns True when woken by a notification (claim now), False when the
        timeout passed. The first call starts listening and returns True at
        once, as does a call after the listening connection was lost: work
        that became due meanwhile sent no notification this store heard.
        A notification is a hint; keep polling ``next_wake`` as the fallback.

        Raises:
            StoreError: the listening connection cannot be opened.
        """
        if self._listener is None:
            await self._listen()
            return True
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            return False
        self._work.clear()
        return True

    async def _listen(self) -> None:
        self._open_pool()
        with self._errors("listening for work"):
            conn = await self._pg.connect(self._dsn, server_settings=self._settings, timeout=self.connect_timeout)
            try:
                await conn.add_listener(self._channel, self._notified)
            except BaseException:
                await conn.close()
                raise
        conn.add_termination_listener(self._listener_lost)
        self._work.clear()
        self._listener = conn

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if not self._permit_notice(payload):
            self._work.set()

    def _listener_lost(self, conn: Any) -> None:
        if self._listener is conn:
            self._listener = None
        self._work.set()
        self._permit_notice("permit:")  # releases may go unheard until it listens again

    # ------------------------------------------------------------ reads

    async def get(self, saga_id: str) -> SagaState | None:
        rows = await self._fetch("get", self._sql.get, saga_id)
        return decode_row(rows[0]) if rows else None

    async def load(self, saga_id: str) -> tuple[SagaState, list[HistoryEntry]] | None:
        """The saga and its history, read together in one consistent snapshot."""
        pool = self._open_pool()
        with self._errors("load"):
            async with (
                pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                row = await conn.fetchrow(self._sql.get, saga_id)
                if row is None:
                    return None
                history = await conn.fetch(self._sql.history, saga_id)
        return decode_row(row), decode_history(history)

    async def history(self, saga_id: str) -> list[HistoryEntry]:
        rows = await self._fetch("history", self._sql.history, saga_id)
        return decode_history(rows)

    async def list(self, query: SagaQuery) -> list[SagaState]:
        stmt, args = list_query(DIALECT, self._sql.columns, query)
        rows = await self._fetch("list", stmt, *args)
        return [decode_row(r) for r in rows]

    async def count(self, query: SagaQuery) -> int:
        stmt, args = list_query(DIALECT, self._sql.columns, query, count=True)
        rows = await self._fetch("count", stmt, *args)
        return int(rows[0][0])

    async def count_by_status(self, query: SagaQuery | None = None) -> dict[SagaStatus, int]:
        stmt, args = count_by_status_query(DIALECT, query or SagaQuery())
        rows = await self._fetch("count_by_status", stmt, *args)
        counts = dict.fromkeys(SagaStatus, 0)
        counts.update({SagaStatus(r[0]): int(r[1]) for r in rows})
        return counts

    async def next_wake(self, kinds: Collection[tuple[str, int]] | None = None) -> float | None:
        if kinds is None:
            rows = await self._fetch("next_wake", self._sql.next_wake)
        else:
            rows = await self._fetch("next_wake", self._sql.next_wake_of, _kinds(kinds))
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    # ------------------------------------------------------------ outbox, inbox, dead letters

    async def outbox_claim(
        self, owner: str, now: float, claimed_until: float, limit: int
    ) -> builtins.list[OutboxRecord]:
        from .._store import OutboxRecord

        rows = await self._fetch("outbox_claim", self._sql.outbox_claim, owner, claimed_until, now, limit)
        rows.sort(key=lambda r: (r[6], r[1], r[7], r[8]))
        return [OutboxRecord(r[0], r[1], r[2], r[3].encode(), loads(r[4]), r[5]) for r in rows]

    async def outbox_done(self, owner: str, ids: Sequence[str]) -> None:
        if ids:
            async with self._tx("outbox_done") as conn:
                await conn.executemany(self._sql.outbox_done, [(i, owner) for i in sorted(ids)])

    async def outbox_retry(self, owner: str, ids: Sequence[str], available_at: float) -> None:
        if ids:
            rows = [(i, owner, available_at) for i in sorted(ids)]
            async with self._tx("outbox_retry") as conn:
                await conn.executemany(self._sql.outbox_retry, rows)

    async def outbox_pending(self) -> int:
        rows = await self._fetch("outbox_pending", self._sql.outbox_pending)
        return int(rows[0][0])

    async def outbox_oldest(self) -> float | None:
        """When the oldest message still in the outbox was written (None: the outbox is empty)."""
        rows = await self._fetch("outbox_oldest", self._sql.outbox_oldest)
        return None if rows[0][0] is None else float(rows[0][0])

    async def inbox_seen(self, message_id: str) -> bool:
        return bool(await self._fetch("inbox_seen", self._sql.inbox_seen, message_id))

    async def correlated(self, name: str, correlation_ids: Sequence[str]) -> dict[str, str]:
        rows = await self._fetch("correlated", self._sql.correlated, list(correlation_ids), name, list(_ACTIVE))
        return {r[0]: r[1] for r in rows}  # the newest last

    async def inbox_seen_many(self, message_ids: Sequence[str]) -> set[str]:
        rows = await self._fetch("inbox_seen_many", self._sql.inbox_seen_many, list(message_ids))
        return {r[0] for r in rows}

    async def dead_letter(self, letter: DeadLetter) -> None:
        async with self._tx("dead_letter") as conn:
            await conn.execute(
                self._sql.insert_dead_letter,
                letter.message_id, letter.received_at, letter.saga_id, letter.type_name,
                letter.body, letter.reason,
            )  # fmt: skip

    async def request(self, request_id: str, saga_id: str, event: str, at: float) -> None:
        async with self._tx("request") as conn:
            await conn.execute(self._sql.insert_request, request_id, saga_id, event, at)

    async def open_requests(self) -> builtins.list[tuple[str, str, str]]:
        rows = await self._fetch("open_requests", self._sql.open_requests)
        return [(r[0], r[1], r[2]) for r in rows]

    async def answer_request(self, request_id: str, outcome: str) -> None:
        async with self._tx("answer_request") as conn:
            await conn.execute(self._sql.answer_request, request_id, outcome)

    async def request_outcome(self, request_id: str) -> str | None:
        rows = await self._fetch("request_outcome", self._sql.request_outcome, request_id)
        return rows[0][0] if rows else None

    async def withdraw_request(self, request_id: str) -> bool:
        async with self._tx("withdraw_request") as conn:
            return bool(await conn.execute(self._sql.withdraw_request, request_id) == "DELETE 1")

    async def drop_request(self, request_id: str) -> None:
        async with self._tx("drop_request") as conn:
            await conn.execute(self._sql.drop_request, request_id)

    async def worker_alive(
        self, worker_id: str, kinds: Collection[tuple[str, int]], until: float, *, now: float | None = None
    ) -> None:
        async with self._tx("worker_alive") as conn:
            await conn.execute(self._sql.upsert_worker, worker_id, dumps(_kinds(kinds)), until, now)

    async def worker_gone(self, worker_id: str) -> None:
        async with self._tx("worker_gone") as conn:
            await conn.execute(self._sql.delete_worker, worker_id)

    async def live_workers(self, now: float) -> dict[str, builtins.list[tuple[str, int]]]:
        rows = await self._fetch("live_workers", self._sql.live_workers, now)
        out: dict[str, list[tuple[str, int]]] = {}
        for worker_id, text in rows:
            kinds = []
            for key in loads(text):
                name, _, version = str(key).rpartition(":")
                kinds.append((name, int(version)))
            out[worker_id] = kinds
        return out

    async def workers(self, now: float) -> builtins.list[WorkerInfo]:
        rows = await self._fetch("workers", self._sql.workers, now)
        out = []
        for worker_id, text, alive_until, seen_at in rows:
            kinds = []
            for key in loads(text):
                name, _, version = str(key).rpartition(":")
                kinds.append((name, int(version)))
            out.append(WorkerInfo(worker_id, tuple(sorted(kinds)), alive_until, seen_at))
        return out

    async def leases(self, now: float, limit: int = 1000) -> builtins.list[Lease]:
        rows = await self._fetch("leases", self._sql.leases, now, limit)
        return [Lease(*r) for r in rows]

    async def dead_letters(self, limit: int = 100, offset: int = 0) -> builtins.list[DeadLetter]:
        from .._store import DeadLetter

        rows = await self._fetch("dead_letters", self._sql.dead_letters, limit, offset)
        return [DeadLetter(*r) for r in rows]

    async def schedule_put(self, schedule: Schedule) -> None:
        async with self._tx("schedule_put") as conn:
            await conn.execute(
                self._sql.upsert_schedule,
                schedule.key, schedule.name, schedule.version, dumps(schedule.data), schedule.cron,
                schedule.next_at, schedule.created_at,
            )  # fmt: skip

    async def schedule_remove(self, key: str) -> bool:
        async with self._tx("schedule_remove") as conn:
            return bool(await conn.execute(self._sql.delete_schedule, key) == "DELETE 1")

    async def schedules(self) -> builtins.list[Schedule]:
        return [_schedule(r) for r in await self._fetch("schedules", self._sql.schedules)]

    async def schedules_due(self, now: float, limit: int) -> builtins.list[Schedule]:
        return [_schedule(r) for r in await self._fetch("schedules_due", self._sql.schedules_due, now, limit)]

    async def schedule_advance(
        self, key: str, expected_next_at: float, next_at: float, last_at: float, last_saga: str
    ) -> bool:
        async with self._tx("schedule_advance") as conn:
            status = await conn.execute(self._sql.advance_schedule, key, expected_next_at, next_at, last_at, last_saga)
            return bool(status == "UPDATE 1")

    # ------------------------------------------------------------ retention

    async def prune_sagas(
        self,
        before: float,
        statuses: Collection[SagaStatus],
        *,
        after: tuple[float, str] | None,
        limit: int,
        dry_run: bool = False,
    ) -> tuple[Pruned, tuple[float, str] | None]:
        sql = self._sql
        wanted = [s.value for s in statuses]
        start = after or (float("-inf"), "")
        async with self._tx("pruning sagas") as conn:
            picked = await conn.fetch(sql.prune_pick, before, wanted, start[0], start[1], limit)
            if not picked:
                return Pruned(), None
            cursor = (float(picked[-1][1]), str(picked[-1][0]))
            ids = [r[0] for r in picked]
            found = await conn.fetch(sql.prune_check if dry_run else sql.prune_sagas, ids, wanted, before)
            gone = [r[0] for r in found]
            counts = []
            for delete, count in sql.prune_children.values():
                if dry_run:
                    counts.append(int(await conn.fetchval(count, gone)))
                else:
                    counts.append(int((await conn.execute(delete, gone)).rsplit(" ", 1)[-1]))
        history, inbox, outbox, _requests = counts
        return Pruned(len(gone), history, inbox, outbox), (cursor if len(picked) == limit else None)

    async def prune_dead_letters(self, before: float, *, limit: int, dry_run: bool = False) -> int:
        if dry_run:
            rows = await self._fetch("counting dead letters", self._sql.count_dead_letters, before)
            return int(rows[0][0])
        async with self._tx("pruning dead letters") as conn:
            status = await conn.execute(self._sql.prune_dead_letters, before, limit)
        return int(status.rsplit(" ", 1)[-1])

    # ------------------------------------------------------------ participants

    @contextlib.asynccontextmanager
    async def handling(self, participant: str, message_id: str, at: float) -> AsyncIterator[Handling]:
        """See ``Store.handling``. ``Handling.connection`` is a pooled asyncpg connection
        inside the transaction (the store's schema on its search path)."""
        pool = self._open_pool()
        sql = self._sql
        with self._errors("acquiring a connection for a participant"):
            conn = await pool.acquire()
        try:
            tx = conn.transaction()
            try:
                with self._errors("claiming a command"):
                    await tx.start()
                    # Waits while another transaction holds the same claim, then finds it
                    # handled (committed) or claims it (rolled back).
                    if await conn.execute(sql.insert_handled, participant, message_id, at) == "INSERT 0 1":
                        h = Handling(False, None, conn)
                    else:
                        h = Handling(True, await conn.fetchval(sql.handled_reply, participant, message_id), conn)
                yield h
                with self._errors("recording a handled command"):
                    if not h.handled:
                        await conn.execute(sql.set_handled_reply, participant, message_id, h.reply)
                    await tx.commit()
            except BaseException:
                if not conn.is_closed() and conn.is_in_transaction():
                    with contextlib.suppress(OSError, self._pg.PostgresError, self._pg.InterfaceError):
                        await tx.rollback()
                raise
        finally:
            # The handler had the session: it goes back to the pool as a new connection's (the
            # pool does not reset the store's own connections, which change no session state).
            try:
                await conn.reset()
            except (OSError, self._pg.PostgresError, self._pg.InterfaceError):
                conn.terminate()
            with contextlib.suppress(OSError, self._pg.PostgresError, self._pg.InterfaceError):
                await pool.release(conn)

    async def prune_handled(self, participant: str | None, before: float, *, limit: int) -> int:
        async with self._tx("forgetting handled commands") as conn:
            status = await conn.execute(self._sql.prune_handled, participant, before, limit)
        return int(status.rsplit(" ", 1)[-1])


async def _no_reset(conn: Any) -> None:
    """The pool's reset of a connection released by the store: nothing to undo (see ``_open``)."""


def _kinds(kinds: Collection[tuple[str, int]] | None) -> list[str] | None:
    """Definitions as the "name:version" texts that the claim statements filter on."""
    return None if kinds is None else [f"{n}:{v}" for n, v in kinds]


def _lease(w: Write, db_now: float, database_clock: bool) -> float | None:
    """The lease expiry a write stores: on the database's clock when it has one and the write says how long."""
    if database_clock and w.owner is not None and w.lease_seconds is not None:
        return db_now + w.lease_seconds
    return w.lease_expires


def _wake(w: Write, db_now: float, database_clock: bool) -> float | None:
    """The wake time a write stores: a held saga is due again when its lease ends, on the database's clock."""
    if database_clock and w.owner is not None and w.lease_seconds is not None and w.wake_at is not None:
        return db_now + w.lease_seconds
    return w.wake_at


def _schedule(r: Sequence[Any]) -> Schedule:
    return Schedule(r[0], r[1], r[2], loads(r[3]), r[4], r[5], r[6], r[7], r[8])


_FENCE = (
    "SELECT remaining, set_config('idle_in_transaction_session_timeout', "
    "greatest(1, ((remaining - $3) * 1000)::bigint)::text, true) FROM ("
    "SELECT lease_expires - extract(epoch FROM clock_timestamp()) AS remaining FROM {table} "
    "WHERE id = $1 AND lease_owner = $2 AND lease_expires > extract(epoch FROM clock_timestamp()) + $3 "
    "FOR SHARE) AS held"
)


@contextlib.asynccontextmanager
async def fenced(
    connection: Any, ctx: StepContext, *, schema: str | None = None, margin: float = 0.25
) -> AsyncIterator[Any]:
    """A transaction on *connection* whose writes commit only while the step's worker holds the lease.

    For effects written to the same PostgreSQL database as the saga store::

        async def charge(ctx: StepContext) -> None:
            async with pool.acquire() as conn, fenced(conn, ctx, schema="sagakit"):
                await conn.execute("INSERT INTO charges (key, amount) VALUES ($1, $2)", ctx.idempotency_key, 42)

    On entry the transaction share-locks the saga's row after checking, on the
    database's clock, that ``ctx.worker_id`` holds the lease for at least
    *margin* more seconds; on leaving the block it checks again, so every
    statement inside ran before the lease's end. Otherwise it raises
    ``LeaseLost`` and the transaction rolls back: nothing is written.

    While the transaction is open no other worker can take the saga over
    (claims skip locked rows; a takeover waits for the lock). Each check also
    sets the session's ``idle_in_transaction_session_timeout`` to the lease's
    remaining time less *margin*, in the same statement: a worker paused
    inside the block or before its commit (a freeze, a stop signal) has its
    session closed by the server, and its writes rolled back, before the lease
    ends. Keep the block short: the worker's own lease renewals and commits
    for this saga wait for it.

    Args:
        connection: an asyncpg connection to the store's database, outside a transaction.
        ctx: the attempt's context (``saga_id`` and ``worker_id`` are used).
        schema: the schema of the sagakit tables when it is not on the search path.
        margin: seconds of lease that must remain at each check.

    Raises:
        LeaseLost: the worker does not hold the lease (with *margin* to spare).
    """
    if ctx.worker_id is None:
        raise LeaseLost(f"saga {ctx.saga_id}: this step does not run under an engine's lease")
    table = f'"{schema}".sagakit_sagas' if schema else "sagakit_sagas"
    sql = _FENCE.format(table=table)

    async def check(when: str) -> None:
        if await connection.fetchval(sql, ctx.saga_id, ctx.worker_id, margin) is None:
            raise LeaseLost(
                f"saga {ctx.saga_id}, step {ctx.step!r}: worker {ctx.worker_id} does not hold the lease "
                f"{when} (or less than {margin:g}s of it remains); the effect was not applied"
            )

    async with connection.transaction():
        await check("at the start of the fenced block")
        yield connection
        await check("at the end of the fenced block")
