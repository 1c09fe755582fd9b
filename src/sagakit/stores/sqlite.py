"""SQLite store: the embedded default (stdlib ``sqlite3``, WAL, ``synchronous=NORMAL``).

One dedicated thread owns the connection and takes whole batches: a group of
transitions costs one thread hop and one fsync-equivalent commit, not one per
statement.

The WAL is checkpointed (its pages copied into the database file, which is
then synced) by a thread of its own, at most every ``checkpoint_interval``
seconds while commits come in, so the writer never waits for it. SQLite's own
automatic checkpoint, run by the writer after a commit, stays as a backstop
for a WAL that reaches ``_BACKSTOP_PAGES``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import unquote

from .._errors import NotASagaStore, SagaNotFound, StoreError
from .._status import SagaStatus
from .._store import (
    DeadLetter,
    Handling,
    Lease,
    LockAnswer,
    LockEntry,
    OutboxRecord,
    Pruned,
    SagaQuery,
    Schedule,
    WorkerInfo,
    Write,
    waits_for,
)
from ..machine import HistoryEntry, SagaState
from . import _lockplan
from ._codec import add_side_rows, decode_history, decode_row, dumps, encode_data, encode_history, encode_steps, loads
from ._in_transaction import Target, WritesInTransaction
from ._permits import InProcessPermits
from ._sql import (
    INLINE_DATA,
    SCHEMA_VERSION,
    SQLITE_DATA,
    Dialect,
    Statements,
    count_by_status_query,
    list_query,
    migrations,
)
from ._thread import CallThread

__all__ = ["SQLiteStore"]

T = TypeVar("T")
_ACTIVE = ("pending", "running", "compensating")
log = logging.getLogger("sagakit")
# A commit of at most this many writes is made on the event loop's thread when the writer's is idle.
_INLINE_WRITES = 4
_BUSY_TIMEOUT_MS = 10000
# The writer checkpoints inline only when the WAL reaches this many pages (SQLite's default: 1,000).
_BACKSTOP_PAGES = 4000
DIALECT = Dialect(name="sqlite", param=lambda i: f"?{i}", data_column=SQLITE_DATA)
_HEADER = b"SQLite format 3\x00"
# A saga's data over INLINE_DATA bytes, kept apart from its row (see stores._sql.INLINE_DATA).
_PUT_DATA = "INSERT INTO sagakit_data (saga_id, data) VALUES (?1, ?2) ON CONFLICT (saga_id) DO UPDATE SET data = ?2"
_DROP_DATA = "DELETE FROM sagakit_data WHERE saga_id = ?1"


class SQLiteStore(InProcessPermits, WritesInTransaction):
    """Sagas in one SQLite file (or ``:memory:``)."""

    def __init__(self, path: str, *, synchronous: str = "NORMAL", checkpoint_interval: float | None = 0.25) -> None:
        """*checkpoint_interval*: seconds between WAL checkpoints on their own thread; None leaves
        checkpoints to SQLite (inline, on the writer, every 1,000 pages)."""
        if checkpoint_interval is not None and checkpoint_interval < 0:
            raise ValueError(f"checkpoint_interval must be >= 0 seconds or None, got {checkpoint_interval!r}")
        self.path = path
        self._engine_lock: int | None = None
        self.url = f"sqlite:///{path}"
        self.synchronous = synchronous
        self.checkpoint_interval = checkpoint_interval
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._checkpoint_busy = False  # a checkpoint is queued or running
        self._stop_checkpoints = threading.Event()
        self._sql = Statements(DIALECT)
        # Small commits on the loop's thread only when a commit waits neither for the disk nor
        # for a checkpoint (which SQLite runs inside a commit when no thread of ours does).
        self._inline = synchronous.upper() in ("NORMAL", "OFF", "0", "1") and checkpoint_interval is not None
        self._conn: sqlite3.Connection | None = None
        self._executor: CallThread | None = None  # the writer's thread
        # Reads use a second connection on a thread of their own (WAL lets them
        # run beside the writer), so looking at sagas never waits for a commit.
        self._reader: sqlite3.Connection | None = None
        self._read_executor: CallThread | None = None
        # Participants' transactions (``handling``) run on a connection of their own, one at a
        # time: the handler writes on it from the event loop's thread while the writer's
        # thread goes on committing transitions on its own connection.
        self._handler_conn: sqlite3.Connection | None = None
        self._handler_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite://`` (in memory)."""
        rest = url.split(":", 1)[1]
        if not rest.startswith("//"):
            raise StoreError(f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db")
        path = unquote(rest[2:])
        if path.startswith("/"):
            path = path[1:]
        path = path.split("?", 1)[0]
        return cls(path or ":memory:")

    # ------------------------------------------------------------ plumbing

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError(f"store {self.url} is not open")
        try:
            return await self._executor.call(fn, *args)
        except sqlite3.Error as e:  # converted at the boundary: callers see sagakit's errors only
            raise self._error(e) from e

    def _error(self, e: sqlite3.Error) -> StoreError:
        """*e* as sagakit's error, naming the store (converted at the boundary: callers see sagakit's errors)."""
        return StoreError(f"SQLite store {self.path}: {type(e).__name__}: {e}")

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self._read_executor or self._executor
        if executor is None:
            raise StoreError(f"store {self.url} is not open")
        try:
            return await executor.call(fn, *args)
        except sqlite3.Error as e:
            raise self._error(e) from e

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    @property
    def _rdb(self) -> sqlite3.Connection:
        conn = self._reader or self._conn
        assert conn is not None
        return conn

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = CallThread("sagakit-sqlite")
        try:
            await self._run(self._open)
        except BaseException:
            self._executor.shutdown()
            self._executor = None
            raise
        if self.path != ":memory:":
            self._read_executor = CallThread("sagakit-sqlite-read")
            self._reader = await self._read(self._open_reader)
            if self.checkpoint_interval is not None:
                self._stop_checkpoints.clear()
                self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sagakit-sqlite-checkpoint")
                self._checkpoint_conn = await asyncio.get_running_loop().run_in_executor(
                    self._checkpointer, self._open_reader
                )
                await self._run(self._db.execute, f"PRAGMA wal_autocheckpoint={_BACKSTOP_PAGES}")

    def _open_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA cache_size=-65536")
        return conn

    def _open(self) -> None:
        if self.path != ":memory:" and os.path.exists(self.path):
            with open(self.path, "rb") as f:
                head = f.read(16)
            if head and head != _HEADER:
                raise NotASagaStore(
                    f"{self.path} is not a SQLite database (it starts with {head[:8]!r}); "
                    "the file was left untouched. Point the store at a new file."
                )
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite database {self.path}: {e}") from e
        try:
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            version = self._schema_version(conn)
            if self.path != ":memory:":
                self._use_wal(conn)
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            # A page cache that holds the hot indexes of a large store (SQLite's default is 2 MiB).
            conn.execute("PRAGMA cache_size=-65536")
            if version < SCHEMA_VERSION:
                self._migrate(conn)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise NotASagaStore(
                f"{self.path} is not a usable SQLite database ({e}); the file was left untouched"
            ) from e
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @staticmethod
    def _use_wal(conn: sqlite3.Connection) -> None:
        """Put the file in WAL mode, waiting as long as the busy timeout for others doing the same."""
        # While other processes open a new file too, the switch can fail with SQLITE_BUSY at
        # once, without waiting out the connection's busy timeout: the wait is done here.
        deadline = time.monotonic() + 10.0
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(0.005)

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        """The sagakit schema version of the file; 0 when it has no sagakit tables yet."""
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = 0
        if "sagakit_meta" in tables:
            row = conn.execute("SELECT value FROM sagakit_meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
        elif "sagakit_sagas" in tables:
            raise NotASagaStore(
                f"{self.path} has a sagakit_sagas table but no sagakit_meta: it was not "
                "made by sagakit; the file was left untouched"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has sagakit schema version {version}, newer than this "
                f"sagakit supports ({SCHEMA_VERSION}); upgrade sagakit"
            )
        return version

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Processes opening a new file together all found it without a schema; the first
            # to get the write lock creates it, and the others find it made when they get it.
            version = self._schema_version(conn)
            if version < SCHEMA_VERSION:
                conn.execute("CREATE TABLE IF NOT EXISTS sagakit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                for step in migrations(DIALECT)[version:]:
                    for stmt in step:
                        conn.execute(stmt)
                conn.execute(
                    "INSERT INTO sagakit_meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (str(SCHEMA_VERSION),),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._engine_lock is not None:
            os.close(self._engine_lock)  # closing the descriptor releases the flock
            self._engine_lock = None
        if self._executor is None:
            return
        if self._checkpointer is not None:
            checkpointer = self._checkpointer
            self._checkpointer = None  # the writer asks for no more
            self._stop_checkpoints.set()
            conn = self._checkpoint_conn
            self._checkpoint_conn = None
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(checkpointer, conn.close)
            checkpointer.shutdown(wait=True)
        if self._handler_conn is not None:
            async with self._handler_lock:
                conn, self._handler_conn = self._handler_conn, None
                if conn is not None:
                    conn.close()
        if self._read_executor is not None:
            if self._reader is not None:
                await self._read(self._reader.close)
                self._reader = None
            self._read_executor.shutdown()
            self._read_executor = None
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown()
        self._executor = None

    # ------------------------------------------------------------ writes

    async def commit(self, writes: Sequence[Write]) -> list[str | None]:
        writer = self._executor
        if writer is not None and writer.idle and len(writes) <= _INLINE_WRITES and self._inline:
            done = self._commit_now(writes)
            if done is not None:
                return done
        return await self._run(self._commit, writes)

    def _commit_now(self, writes: Sequence[Write]) -> list[str | None] | None:
        """A small commit on the event loop's own thread, if the database is free at once; else None.

        Handing a commit to the writer's thread and its answer back costs more than a
        commit of a few transitions itself (in WAL mode with synchronous=NORMAL a commit
        writes to the WAL without waiting for the disk). The loop never waits for a lock
        here: with no busy timeout, a database another process is writing to answers
        SQLITE_BUSY at once, nothing is written, and the writer's thread does the commit.
        """
        db = self._db
        db.execute("PRAGMA busy_timeout=0")
        try:
            return self._commit(writes)
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                return None  # rolled back by _commit: the writer's thread does it, waiting its turn
            raise self._error(e) from e
        except sqlite3.Error as e:
            raise self._error(e) from e
        finally:
            db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")

    def _commit(self, writes: Sequence[Write]) -> list[str | None]:
        db = self._db
        sql = self._sql
        results: list[str | None] = []
        history: list[tuple[Any, ...]] = []
        outbox: list[tuple[Any, ...]] = []
        inbox: list[tuple[Any, ...]] = []
        locking: list[Write] = []
        execute = db.execute
        execute("BEGIN IMMEDIATE")
        try:
            for w in writes:
                st = w.state
                if w.insert:
                    data = encode_data(w)
                    apart = len(data) > INLINE_DATA
                    cur = execute(
                        sql.insert,
                        (
                            st.id, st.name, st.version, st.status.value, "" if apart else data,
                            encode_steps(st.steps), st.created_at, st.updated_at,
                            st.correlation_id, st.idempotency_key, w.wake_at, st.deadline_at,
                            st.error, st.seq, st.revision, dumps(st.meta) if st.meta else None,
                            w.owner, w.lease_expires,
                        ),
                    )  # fmt: skip
                    if cur.rowcount != 1:
                        row = execute(sql.find_idempotent, (st.name, st.idempotency_key)).fetchone()
                        results.append(row[0] if row else None)
                        continue
                    if apart:
                        execute(_PUT_DATA, (st.id, data))
                else:
                    args: tuple[Any, ...] = (
                        st.id, w.expected_revision, st.status.value, encode_steps(st.steps),
                        st.updated_at, w.wake_at, st.deadline_at, st.error, st.seq, st.revision,
                        dumps(st.meta) if st.meta else None, w.owner, w.lease_expires,
                    )  # fmt: skip
                    if w.data_changed:
                        data = encode_data(w)
                        apart = len(data) > INLINE_DATA
                        cur = execute(sql.update_with_data, (*args, "" if apart else data))
                        if cur.rowcount == 1 and apart:
                            execute(_PUT_DATA, (st.id, data))
                        elif cur.rowcount == 1:
                            execute(_DROP_DATA, (st.id,))
                    else:
                        cur = execute(sql.update, args)
                    if cur.rowcount != 1:
                        results.append(None)
                        continue
                results.append(st.id)
                add_side_rows(w, history, outbox, inbox)
                if w.unlock_all or w.unlock or w.lock_wait:
                    locking.append(w)
            if locking:
                self._commit_locks(locking)
            if history:
                db.executemany(sql.insert_history, history)
            if outbox:
                db.executemany(sql.insert_outbox, outbox)
            if inbox:
                db.executemany(sql.insert_inbox, inbox)
            execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                execute("ROLLBACK")
            raise
        self._maybe_checkpoint()
        return results

    # ------------------------------------------------------------ semantic locks

    def _lock_rows(self, keys: Sequence[str], sagas: Sequence[str]) -> list[_lockplan.LockRow]:
        """The lock rows connected to *keys* and *sagas* (see ``_lockplan.Component``)."""
        component = _lockplan.Component(keys, sagas)
        while True:
            k, s = component.todo()
            if not k and not s:
                return component.all()
            rows = self._db.execute(self._sql.lock_rows, (dumps(k), dumps(s))).fetchall()
            component.add(_lockplan.LockRow(key, sid, int(t), bool(h), float(since)) for key, sid, t, h, since in rows)

    def _write_locks(self, plan: _lockplan.Plan, now: float) -> None:
        db = self._db
        sql = self._sql
        if plan.deleted:
            db.executemany(sql.lock_delete, plan.deleted)
        if plan.granted:
            db.executemany(sql.lock_grant, plan.granted)
        if plan.inserted:
            db.executemany(sql.lock_insert, [(r.key, r.saga_id, r.ticket, int(r.held), r.since) for r in plan.inserted])
        if plan.woken:
            db.executemany(sql.lock_wake, [(now, sid) for sid in sorted(plan.woken)])

    def _commit_locks(self, writes: list[Write]) -> None:
        """In a commit's transaction: the releases of its applied writes, and the grants they allow."""
        releases = [(w.state.id, None if w.unlock_all else w.unlock) for w in writes if w.unlock_all or w.unlock]
        waiting = [w.state.id for w in writes if w.lock_wait and w.owner is None]
        sagas = [sid for sid, _ in releases] + waiting
        plan, due = _lockplan.commit_plan(self._lock_rows((), sagas), releases, waiting)
        now = max(w.state.updated_at for w in writes)
        self._write_locks(plan, now)
        if due:
            self._db.executemany(self._sql.lock_wake, [(now, sid) for sid in due])

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
        return await self._run(self._acquire_locks, saga_id, list(keys), now, fail, give_up, owner, wake_at)

    def _acquire_locks(
        self,
        saga_id: str,
        keys: list[str],
        now: float,
        fail: bool,
        give_up: bool,
        owner: str | None,
        wake_at: float | None,
    ) -> LockAnswer:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(self._sql.lock_saga, (saga_id,)).fetchone()
            if row is None or row[0] not in _ACTIVE or not waits_for(row[1] or "{}", keys):
                db.execute("COMMIT")
                return LockAnswer("stale")
            rows = self._lock_rows(keys, [saga_id])
            plan, answer = _lockplan.acquire(rows, saga_id, keys, now, fail=fail, give_up=give_up)
            self._write_locks(plan, now)
            released = False
            if answer.outcome == "waiting" and owner is not None and row[2] == owner:
                db.execute(self._sql.lock_release_lease, (wake_at, saga_id, owner))
                released = True
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return LockAnswer(answer.outcome, answer.reason, answer.blockers, released)

    async def locks(self, *, saga_id: str | None = None, limit: int = 1000) -> builtins.list[LockEntry]:
        if saga_id is None:
            rows = await self._read(self._fetchall, self._sql.locks, (limit,))
        else:
            rows = await self._read(self._fetchall, self._sql.locks_of, (limit, saga_id))
        return [LockEntry(k, sid, bool(h), int(t), float(since), name) for k, sid, h, t, since, name in rows]

    def _maybe_checkpoint(self) -> None:
        """After a commit (on the writer thread): have the checkpoint thread copy the WAL soon."""
        checkpointer = self._checkpointer
        if checkpointer is None or self._checkpoint_busy:
            return
        self._checkpoint_busy = True
        try:
            checkpointer.submit(self._checkpoint)
        except RuntimeError:  # shut down meanwhile (close)
            self._checkpoint_busy = False

    def _checkpoint(self) -> None:
        """Copy the WAL's committed pages into the database file (PASSIVE: writers and readers go on).

        Starts an interval after the commit that asked for it; pages committed meanwhile are
        copied by another pass an interval later, and so on until none is left. A WAL copied to
        its end starts again from its beginning at the next commit.
        """
        interval = self.checkpoint_interval or 0.0
        try:
            while not self._stop_checkpoints.wait(interval):
                conn = self._checkpoint_conn
                if conn is None:
                    return
                row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if row is None or row[1] <= row[2]:  # (busy, pages in the WAL, pages copied)
                    return
        except sqlite3.Error as e:
            log.warning("sagakit: WAL checkpoint of %s failed: %s", self.path, e)
        finally:
            self._checkpoint_busy = False

    def _target(self) -> Target:
        return Target("sqlite", self.url, path=self.path)

    async def append_history(self, saga_id: str, revision: int, entries: Sequence[HistoryEntry]) -> None:
        if entries:
            rows = [(saga_id, revision, 1, encode_history(entries))]
            await self._run(self._executemany_tx, self._sql.insert_history, rows)

    def _executemany_tx(self, stmt: str, rows: list[tuple[Any, ...]]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(stmt, rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------ leases

    async def claim(
        self, owner: str, now: float, lease_until: float, limit: int, kinds: Collection[tuple[str, int]] | None = None
    ) -> list[SagaState]:
        return await self._run(self._claim, owner, now, lease_until, limit, _kinds_json(kinds))

    def _claim(self, owner: str, now: float, lease_until: float, limit: int, kinds: str | None) -> list[SagaState]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(self._sql.claim, (owner, lease_until, now, limit, lease_until - now, kinds)).fetchall()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return [decode_row(r) for r in rows]

    async def claim_saga(self, saga_id: str, owner: str, now: float, lease_until: float) -> SagaState | None:
        return await self._run(self._claim_saga, saga_id, owner, now, lease_until)

    def _claim_saga(self, saga_id: str, owner: str, now: float, lease_until: float) -> SagaState | None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(self._sql.claim_one, (owner, lease_until, now, saga_id, lease_until - now)).fetchone()
            exists = row is not None or db.execute(self._sql.exists, (saga_id,)).fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if not exists:
            raise SagaNotFound(saga_id)
        return decode_row(row) if row is not None else None

    async def claim_sagas(
        self, saga_ids: Sequence[str], owner: str, now: float, lease_until: float
    ) -> dict[str, SagaState | None]:
        return await self._run(self._claim_sagas, sorted(set(saga_ids)), owner, now, lease_until)

    def _claim_sagas(
        self, saga_ids: list[str], owner: str, now: float, lease_until: float
    ) -> dict[str, SagaState | None]:
        db = self._db
        got: dict[str, SagaState | None] = {}
        db.execute("BEGIN IMMEDIATE")
        try:
            for sid in saga_ids:
                row = db.execute(self._sql.claim_one, (owner, lease_until, now, sid, lease_until - now)).fetchone()
                if row is not None:
                    got[sid] = decode_row(row)
                elif db.execute(self._sql.exists, (sid,)).fetchone():
                    got[sid] = None
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return got

    async def renew(
        self, owner: str, saga_ids: Sequence[str], lease_until: float, *, now: float | None = None
    ) -> set[str]:
        return await self._run(self._renew, owner, list(saga_ids), lease_until, lease_until if now is None else now)

    def _renew(self, owner: str, saga_ids: list[str], lease_until: float, now: float) -> set[str]:
        db = self._db
        lost: set[str] = set()
        db.execute("BEGIN IMMEDIATE")
        try:
            for sid in saga_ids:
                if db.execute(self._sql.renew, (owner, lease_until, sid, now, lease_until - now)).rowcount != 1:
                    lost.add(sid)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return lost

    async def release_leases(self, owner: str | None, wake_at: float) -> int:
        if owner is None:
            return await self._run(self._rowcount_tx, self._sql.release_all, (wake_at,))
        return await self._run(self._rowcount_tx, self._sql.release_owned, (wake_at, owner))

    async def engine_lock(self) -> bool:
        """Join the running engines of this file; True if none ran before (this one is alone).

        Every running engine holds a shared ``flock`` on ``PATH.engine-lock`` until
        ``close()`` or the end of its process, however it ends. An engine that gets
        the lock exclusively first knows no other engine runs: leases left in the
        file belong to engines that are gone. It keeps the exclusive lock until
        ``engine_lock_shared()`` lets others join.
        """
        if self.path == ":memory:" or self._engine_lock is not None:
            return False
        import fcntl

        fd = os.open(f"{self.path}.engine-lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._engine_lock = fd
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                pass
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # other engines run: join them
                return False
            except OSError:
                await asyncio.sleep(0.01)  # an engine is starting alone: a moment

    def engine_lock_shared(self) -> None:
        """Let other engines join (after ``engine_lock()`` returned True)."""
        if self._engine_lock is not None:
            import fcntl

            fcntl.flock(self._engine_lock, fcntl.LOCK_SH)

    async def release(self, owner: str, sagas: Sequence[tuple[str, float | None]]) -> None:
        rows = [(owner, wake, sid) for sid, wake in sagas]
        await self._run(self._executemany_tx, self._sql.release, rows)

    # ------------------------------------------------------------ reads

    async def get(self, saga_id: str) -> SagaState | None:
        return await self._read(self._get, saga_id)

    def _get(self, saga_id: str) -> SagaState | None:
        row = self._rdb.execute(self._sql.get, (saga_id,)).fetchone()
        return decode_row(row) if row else None

    async def load(self, saga_id: str) -> tuple[SagaState, list[HistoryEntry]] | None:
        """The saga and its history, read together in one consistent snapshot."""
        return await self._read(self._load, saga_id)

    def _load(self, saga_id: str) -> tuple[SagaState, list[HistoryEntry]] | None:
        db = self._rdb
        db.execute("BEGIN")
        try:
            row = db.execute(self._sql.get, (saga_id,)).fetchone()
            if row is None:
                return None
            history = db.execute(self._sql.history, (saga_id,)).fetchall()
        finally:
            db.execute("COMMIT")
        return decode_row(row), decode_history(history)

    async def history(self, saga_id: str) -> list[HistoryEntry]:
        rows = await self._read(self._fetchall, self._sql.history, (saga_id,))
        return decode_history(rows)

    def _fetchall(self, stmt: str, args: Sequence[Any]) -> list[Any]:
        return self._rdb.execute(stmt, args).fetchall()

    async def list(self, query: SagaQuery) -> list[SagaState]:
        stmt, args = list_query(DIALECT, self._sql.columns, query)
        rows = await self._read(self._fetchall, stmt, args)
        return [decode_row(r) for r in rows]

    async def count(self, query: SagaQuery) -> int:
        stmt, args = list_query(DIALECT, self._sql.columns, query, count=True)
        rows = await self._read(self._fetchall, stmt, args)
        return int(rows[0][0])

    async def count_by_status(self, query: SagaQuery | None = None) -> dict[SagaStatus, int]:
        stmt, args = count_by_status_query(DIALECT, query or SagaQuery())
        rows = await self._read(self._fetchall, stmt, args)
        counts = dict.fromkeys(SagaStatus, 0)
        counts.update({SagaStatus(r[0]): int(r[1]) for r in rows})
        return counts

    async def next_wake(self, kinds: Collection[tuple[str, int]] | None = None) -> float | None:
        if kinds is None:
            rows = await self._read(self._fetchall, self._sql.next_wake, ())
        else:
            rows = await self._read(self._fetchall, self._sql.next_wake_of, (_kinds_json(kinds),))
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    # ------------------------------------------------------------ outbox, inbox, dead letters

    async def outbox_claim(
        self, owner: str, now: float, claimed_until: float, limit: int
    ) -> builtins.list[OutboxRecord]:
        return await self._run(self._outbox_claim, owner, now, claimed_until, limit)

    def _outbox_claim(self, owner: str, now: float, claimed_until: float, limit: int) -> builtins.list[OutboxRecord]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(self._sql.outbox_claim, (owner, claimed_until, now, limit)).fetchall()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        rows.sort(key=lambda r: (r[6], r[1], r[7], r[8]))
        return [OutboxRecord(r[0], r[1], r[2], r[3].encode(), loads(r[4]), r[5]) for r in rows]

    async def outbox_done(self, owner: str, ids: Sequence[str]) -> None:
        await self._run(self._executemany_tx, self._sql.outbox_done, [(i, owner) for i in ids])

    async def outbox_retry(self, owner: str, ids: Sequence[str], available_at: float) -> None:
        rows = [(i, owner, available_at) for i in ids]
        await self._run(self._executemany_tx, self._sql.outbox_retry, rows)

    async def outbox_pending(self) -> int:
        rows = await self._read(self._fetchall, self._sql.outbox_pending, ())
        return int(rows[0][0])

    async def outbox_oldest(self) -> float | None:
        """When the oldest message still in the outbox was written (None: the outbox is empty)."""
        rows = await self._read(self._fetchall, self._sql.outbox_oldest, ())
        return None if rows[0][0] is None else float(rows[0][0])

    async def inbox_seen(self, message_id: str) -> bool:
        rows = await self._read(self._fetchall, self._sql.inbox_seen, (message_id,))
        return bool(rows)

    async def correlated(self, name: str, correlation_ids: Sequence[str]) -> dict[str, str]:
        args = (dumps(list(correlation_ids)), name, dumps(_ACTIVE))
        rows = await self._read(self._fetchall, self._sql.correlated, args)
        return {r[0]: r[1] for r in rows}  # the newest last

    async def inbox_seen_many(self, message_ids: Sequence[str]) -> set[str]:
        rows = await self._read(self._fetchall, self._sql.inbox_seen_many, (dumps(list(message_ids)),))
        return {r[0] for r in rows}

    async def dead_letter(self, letter: DeadLetter) -> None:
        row = (
            letter.message_id, letter.received_at, letter.saga_id, letter.type_name,
            letter.body, letter.reason,
        )  # fmt: skip
        await self._run(self._executemany_tx, self._sql.insert_dead_letter, [row])

    async def request(self, request_id: str, saga_id: str, event: str, at: float) -> None:
        await self._run(self._executemany_tx, self._sql.insert_request, [(request_id, saga_id, event, at)])

    async def open_requests(self) -> builtins.list[tuple[str, str, str]]:
        rows = await self._read(self._fetchall, self._sql.open_requests, ())
        return [(r[0], r[1], r[2]) for r in rows]

    async def answer_request(self, request_id: str, outcome: str) -> None:
        await self._run(self._executemany_tx, self._sql.answer_request, [(request_id, outcome)])

    async def request_outcome(self, request_id: str) -> str | None:
        rows = await self._read(self._fetchall, self._sql.request_outcome, (request_id,))
        return rows[0][0] if rows else None

    async def withdraw_request(self, request_id: str) -> bool:
        return await self._run(self._rowcount_tx, self._sql.withdraw_request, (request_id,)) == 1

    async def drop_request(self, request_id: str) -> None:
        await self._run(self._executemany_tx, self._sql.drop_request, [(request_id,)])

    def _rowcount_tx(self, stmt: str, args: tuple[Any, ...]) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            n = db.execute(stmt, args).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return n

    async def worker_alive(
        self, worker_id: str, kinds: Collection[tuple[str, int]], until: float, *, now: float | None = None
    ) -> None:
        row = (worker_id, _kinds_json(kinds), until, now)
        await self._run(self._executemany_tx, self._sql.upsert_worker, [row])

    async def worker_gone(self, worker_id: str) -> None:
        await self._run(self._executemany_tx, self._sql.delete_worker, [(worker_id,)])

    async def live_workers(self, now: float) -> dict[str, builtins.list[tuple[str, int]]]:
        rows = await self._read(self._fetchall, self._sql.live_workers, (now,))
        return {r[0]: _kinds_from(r[1]) for r in rows}

    async def workers(self, now: float) -> builtins.list[WorkerInfo]:
        rows = await self._read(self._fetchall, self._sql.workers, (now,))
        return [WorkerInfo(r[0], tuple(sorted(_kinds_from(r[1]))), r[2], r[3]) for r in rows]

    async def leases(self, now: float, limit: int = 1000) -> builtins.list[Lease]:
        rows = await self._read(self._fetchall, self._sql.leases, (now, limit))
        return [Lease(*r) for r in rows]

    async def dead_letters(self, limit: int = 100, offset: int = 0) -> builtins.list[DeadLetter]:
        rows = await self._read(self._fetchall, self._sql.dead_letters, (limit, offset))
        return [DeadLetter(*r) for r in rows]

    async def schedule_put(self, schedule: Schedule) -> None:
        row = (
            schedule.key, schedule.name, schedule.version, dumps(schedule.data), schedule.cron,
            schedule.next_at, schedule.created_at,
        )  # fmt: skip
        await self._run(self._executemany_tx, self._sql.upsert_schedule, [row])

    async def schedule_remove(self, key: str) -> bool:
        return await self._run(self._rowcount_tx, self._sql.delete_schedule, (key,)) == 1

    async def schedules(self) -> builtins.list[Schedule]:
        rows = await self._read(self._fetchall, self._sql.schedules, ())
        return [_schedule(r) for r in rows]

    async def schedules_due(self, now: float, limit: int) -> builtins.list[Schedule]:
        rows = await self._read(self._fetchall, self._sql.schedules_due, (now, limit))
        return [_schedule(r) for r in rows]

    async def schedule_advance(
        self, key: str, expected_next_at: float, next_at: float, last_at: float, last_saga: str
    ) -> bool:
        args = (key, expected_next_at, next_at, last_at, last_saga)
        return await self._run(self._rowcount_tx, self._sql.advance_schedule, args) == 1

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
        wanted = dumps([s.value for s in statuses])
        return await self._run(self._prune_sagas, before, wanted, after or (float("-inf"), ""), limit, dry_run)

    def _prune_sagas(
        self, before: float, statuses: str, after: tuple[float, str], limit: int, dry_run: bool
    ) -> tuple[Pruned, tuple[float, str] | None]:
        sql = self._sql
        db = self._db
        # One write transaction per batch: workers' commits wait for at most one batch.
        db.execute("BEGIN IMMEDIATE")
        try:
            picked = db.execute(sql.prune_pick, (before, statuses, after[0], after[1], limit)).fetchall()
            if not picked:
                db.execute("COMMIT")
                return Pruned(), None
            cursor = (float(picked[-1][1]), str(picked[-1][0]))
            ids = dumps([r[0] for r in picked])
            if dry_run:
                gone = db.execute(sql.prune_check, (ids, statuses, before)).fetchall()
            else:
                gone = db.execute(sql.prune_sagas, (ids, statuses, before)).fetchall()
            gone_ids = dumps([r[0] for r in gone])
            counts = []
            for delete, count in sql.prune_children.values():
                if dry_run:
                    counts.append(int(db.execute(count, (gone_ids,)).fetchone()[0]))
                else:
                    counts.append(db.execute(delete, (gone_ids,)).rowcount)
            db.execute("ROLLBACK" if dry_run else "COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        history, inbox, outbox, _requests = counts
        return Pruned(len(gone), history, inbox, outbox), (cursor if len(picked) == limit else None)

    async def prune_dead_letters(self, before: float, *, limit: int, dry_run: bool = False) -> int:
        if dry_run:
            rows = await self._read(self._fetchall, self._sql.count_dead_letters, (before,))
            return int(rows[0][0])
        return await self._run(self._rowcount_tx, self._sql.prune_dead_letters, (before, limit))

    # ------------------------------------------------------------ participants

    @contextlib.asynccontextmanager
    async def handling(self, participant: str, message_id: str, at: float) -> AsyncIterator[Handling]:
        """See ``Store.handling``. ``Handling.connection`` is a ``sqlite3.Connection`` (autocommit
        mode, inside ``BEGIN IMMEDIATE``); one command is handled at a time per store."""
        if self._executor is None:
            raise StoreError(f"store {self.url} is not open: call (or await) open() first")
        if self.path == ":memory:":
            raise StoreError(
                "a participant's store must be a SQLite file (sqlite:///path.db), not an in-memory database; "
                "use memory:// for a participant that keeps its record in the process"
            )
        sql = self._sql
        async with self._handler_lock:
            conn = self._handler_conn
            if conn is None:
                conn = self._handler_conn = await asyncio.to_thread(self._open_handler_conn)
            try:
                with self._handler_errors("starting a participant's transaction"):
                    # Waits (in a thread, not on the event loop) while another process writes.
                    await _to_thread_to_the_end(conn.execute, "BEGIN IMMEDIATE")
                with self._handler_errors("claiming a command"):
                    if conn.execute(sql.insert_handled, (participant, message_id, at)).rowcount == 1:
                        h = Handling(False, None, conn)
                    else:
                        row = conn.execute(sql.handled_reply, (participant, message_id)).fetchone()
                        h = Handling(True, row[0] if row else None, conn)
                yield h
                with self._handler_errors("recording a handled command"):
                    if not h.handled:
                        conn.execute(sql.set_handled_reply, (participant, message_id, h.reply))
                    await _to_thread_to_the_end(conn.execute, "COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _open_handler_conn(self) -> sqlite3.Connection:
        with self._handler_errors("opening a participant's connection"):
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    @contextlib.contextmanager
    def _handler_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise StoreError(f"SQLite store {self.path}: {what} failed: {e}") from e

    async def prune_handled(self, participant: str | None, before: float, *, limit: int) -> int:
        return await self._run(self._rowcount_tx, self._sql.prune_handled, (participant, before, limit))


async def _to_thread_to_the_end(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread; a caller cancelled meanwhile still waits for it to end.

    So that a statement started on a connection (BEGIN, COMMIT) has finished when the
    caller, cancelled, looks at the connection's state to roll back.
    """
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        raise


def _kinds_json(kinds: Collection[tuple[str, int]] | None) -> str | None:
    """Definitions as the JSON list of "name:version" texts that the claim statements filter on."""
    return None if kinds is None else dumps([f"{n}:{v}" for n, v in kinds])


def _kinds_from(text: str) -> list[tuple[str, int]]:
    """The definitions of a worker row (the inverse of ``_kinds_json``)."""
    out = []
    for key in loads(text):
        name, _, version = str(key).rpartition(":")
        out.append((name, int(version)))
    return out


def _schedule(r: Sequence[Any]) -> Schedule:
    return Schedule(r[0], r[1], r[2], loads(r[3]), r[4], r[5], r[6], r[7], r[8])
