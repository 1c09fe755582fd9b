"""The store protocol: what the runtime needs from a database, and nothing more.

A store keeps one row per saga (the machine's SagaState plus lease columns),
an append-only history, and the outbox and inbox tables of message steps;
for participants (``sagakit.participant``), the commands they handled and
their replies.
Every method is a coroutine; a store whose driver blocks runs it on threads
of its own. Implementations: ``sagakit.stores.memory``, ``sagakit.stores.sqlite``.

Leases and fencing: a worker *claims* a due saga by setting the lease owner
and expiry and bumping the revision. Every later write names the revision it
expects; a write whose saga has moved on (another worker claimed it) is
refused, never applied. The ``wake_at`` column is when somebody must look at
the saga: the machine's next timer for a saga nobody holds, the lease expiry
for a held one (so a dead worker's sagas become due), NULL once finished.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import orjson

from ._backends import Backend, backend_from_url
from ._errors import StoreError
from ._resources import PermitGrant, PermitKey, Resource, ResourceUsage
from ._status import SagaStatus
from .machine import HistoryEntry, SagaState

__all__ = [
    "PRUNABLE",
    "PRUNED_BY_DEFAULT",
    "UNFINISHED",
    "DeadLetter",
    "Handling",
    "Lease",
    "LockAnswer",
    "LockEntry",
    "OutboxMessage",
    "OutboxRecord",
    "Pruned",
    "SagaQuery",
    "Schedule",
    "Store",
    "WorkerInfo",
    "Write",
    "data_text",
    "prune",
    "prune_statuses",
    "store_from_url",
]


@dataclass(slots=True)
class OutboxMessage:
    """A message to publish once the transition that produced it has committed."""

    id: str
    saga_id: str
    destination: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """A committed message waiting to be published, as claimed by a relay."""

    id: str
    saga_id: str
    destination: str
    payload: bytes
    headers: dict[str, str]
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A received message that reached no saga, with the reason."""

    message_id: str
    received_at: float
    saga_id: str | None
    type_name: str
    body: str
    reason: str


@dataclass(frozen=True, slots=True)
class Schedule:
    """A recurring start: a saga *name* with *data*, once per period of the cron expression.

    ``next_at`` is the start time of the next period due (seconds since the
    epoch, UTC); ``last_at`` and ``last_saga`` the last period started and
    its saga.
    """

    key: str
    name: str
    version: int | None
    data: Any
    cron: str
    next_at: float
    created_at: float
    last_at: float | None = None
    last_saga: str | None = None


@dataclass(slots=True)
class Handling:
    """One command in a participant's hands, inside a transaction of the store's database.

    ``Store.handling`` opens the transaction and claims the command in it; the
    participant runs its handler only when ``handled`` is False, sets ``reply``,
    and the store records it in the same transaction when the block ends. An
    error in the block rolls everything back: the command counts as not handled.

    Attributes:
        handled: the command was handled before (that transaction committed).
        reply: the reply recorded then (None: it had none); the participant sets
            it for a command it handles now.
        connection: the driver connection the transaction is open on, for the
            handler's own writes (``sqlite3.Connection`` on SQLite, an asyncpg
            connection on PostgreSQL); None for the in-memory store.
    """

    handled: bool
    reply: str | None = None
    connection: Any = None


@dataclass(slots=True)
class Write:
    """One saga transition to commit.

    ``state.revision`` is the revision after the write; ``expected_revision``
    the one the row must still have (ignored for an insert). ``owner`` and
    ``lease_expires`` are the lease after the write (None releases it);
    ``lease_seconds``, when given, is how long it lasts from the commit, which
    a store whose database has a clock of its own measures there instead.
    """

    state: SagaState
    expected_revision: int
    history: list[HistoryEntry]
    wake_at: float | None
    owner: str | None = None
    lease_expires: float | None = None
    insert: bool = False
    data_changed: bool = True
    outbox: list[OutboxMessage] = field(default_factory=list)
    inbox: list[str] = field(default_factory=list)
    lease_seconds: float | None = None
    # The JSON text of state.data, when the runtime has it at hand (a new saga's input): the
    # store writes it as it is instead of encoding the data again.
    data_json: str | None = None
    # Semantic locks (machine ReleaseLocks): keys of the saga to release in this write, or all
    # of them; both only when the write applies. lock_wait: the saga waits for locks and the
    # write releases it: it is made due now if its acquisition is no longer queued (granted
    # meanwhile), so that the grant is not lost behind the write's own wake time.
    unlock: tuple[str, ...] = ()
    unlock_all: bool = False
    lock_wait: bool = False

    @property
    def locks(self) -> bool:
        """Whether the write touches semantic locks (the store then takes its lock table)."""
        return self.unlock_all or bool(self.unlock) or self.lock_wait


@dataclass(frozen=True, slots=True)
class LockAnswer:
    """The store's answer to ``acquire_locks``.

    ``outcome``: ``granted`` (every key is the saga's), ``waiting`` (queued; the
    store wakes the saga when they are), ``refused`` (``reason`` is ``taken``,
    ``timeout`` or ``deadlock``; the saga left the queues) or ``stale`` (the saga
    is gone, finished, or no longer waits for these keys: nothing changed).
    ``blockers``: ``(key, saga id)`` for each key not granted, the saga holding
    it or first in line for it. ``released``: the saga's lease was given up.
    """

    outcome: str
    reason: str = ""
    blockers: tuple[tuple[str, str], ...] = ()
    released: bool = False


@dataclass(frozen=True, slots=True)
class LockEntry:
    """One saga's claim on one key: held, or queued (the lower ``ticket``, the earlier in line)."""

    key: str
    saga_id: str
    held: bool
    ticket: int
    since: float
    saga_name: str | None = None


@dataclass(frozen=True, slots=True)
class SagaQuery:
    """Filters for listing sagas, all of them combined (AND); newest first.

    ``*_after`` bounds are inclusive, ``*_before`` bounds exclusive.
    ``statuses`` matches any of several statuses (an empty tuple matches
    nothing). ``data_equals`` is a business key: top-level keys of the saga's
    data (letters, digits, ``_`` and ``-``) mapped to scalar values, compared as
    text (``data_text``). ``overdue_before`` matches unfinished sagas whose wake
    time passed before that time: nobody has looked at them since (stuck).
    ``id_prefix`` matches the sagas whose id starts with it.
    """

    status: SagaStatus | None = None
    name: str | None = None
    correlation_id: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    limit: int = 100
    offset: int = 0
    version: int | None = None
    updated_after: float | None = None
    updated_before: float | None = None
    data_equals: Mapping[str, str | int | float | bool] | None = None
    overdue_before: float | None = None
    statuses: tuple[SagaStatus, ...] | None = None
    id_prefix: str | None = None

    def __post_init__(self) -> None:
        for key, value in (self.data_equals or {}).items():
            if not isinstance(key, str) or not _DATA_KEY.fullmatch(key):
                raise ValueError(
                    f"bad business key name {key!r}: use a top-level data key of letters, digits, "
                    "'_' and '-' (at most 64 characters)"
                )
            if value is None or not isinstance(value, str | int | float | bool):
                raise ValueError(f"business key {key!r} must be a string, number or boolean, got {describe(value)}")


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A running worker as the store's registry knows it.

    ``seen_at`` is when it last said it was alive (None if it did not say when),
    ``alive_until`` when it is taken for gone unless it says so again.
    """

    worker_id: str
    definitions: tuple[tuple[str, int], ...]
    alive_until: float
    seen_at: float | None


@dataclass(frozen=True, slots=True)
class Lease:
    """A live lease: which worker holds which saga, until when."""

    saga_id: str
    name: str
    version: int
    owner: str
    expires: float


# Status of the sagas that somebody still has to look at (their wake time means something).
UNFINISHED = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)
_DATA_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Finished sagas that retention may delete. FAILED ones wait for an operator, so they
# are deleted only when asked for by name.
PRUNABLE = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.ABORTED, SagaStatus.FAILED)
PRUNED_BY_DEFAULT = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.ABORTED)


@dataclass(frozen=True, slots=True)
class Pruned:
    """Rows that pruning deleted (or, in a dry run, would delete)."""

    sagas: int = 0
    history: int = 0
    inbox: int = 0
    outbox: int = 0
    dead_letters: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(
            self.sagas + other.sagas,
            self.history + other.history,
            self.inbox + other.inbox,
            self.outbox + other.outbox,
            self.dead_letters + other.dead_letters,
        )


def prune_statuses(statuses: Collection[SagaStatus | str] | None) -> tuple[SagaStatus, ...]:
    """The statuses to prune, checked: finished ones only (None: ``PRUNED_BY_DEFAULT``).

    Raises:
        ValueError: an unknown or unfinished status.
    """
    if statuses is None:
        return PRUNED_BY_DEFAULT
    out: list[SagaStatus] = []
    for s in statuses:
        try:
            status = SagaStatus(s.lower() if isinstance(s, str) else s)
        except ValueError:
            status = None
        if status not in PRUNABLE:
            allowed = ", ".join(p.value for p in PRUNABLE)
            name = s.value if isinstance(s, SagaStatus) else s
            raise ValueError(f"cannot prune sagas with status {name!r}: only finished sagas ({allowed}) can be pruned")
        assert status is not None
        if status not in out:
            out.append(status)
    return tuple(out)


async def prune(
    store: Store,
    before: float,
    statuses: Collection[SagaStatus] | None = None,
    *,
    batch: int = 500,
    dry_run: bool = False,
) -> AsyncIterator[Pruned]:
    """Delete finished sagas last updated before *before*, then older dead letters, batch by batch.

    Yields what each batch deleted (one transaction each), so that a caller can
    report progress or yield to other work in between. A dry run deletes nothing
    and yields what would be deleted.

    Args:
        store: an open store.
        before: the cutoff, in seconds since the epoch.
        statuses: the finished statuses to prune; default ``PRUNED_BY_DEFAULT`` (FAILED is kept).
        batch: sagas (or dead letters) per transaction.
        dry_run: count only.

    Raises:
        ValueError: an unfinished status, or a batch smaller than 1.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch!r}")
    chosen = prune_statuses(statuses)
    after: tuple[float, str] | None = None
    while True:
        counts, after = await store.prune_sagas(before, chosen, after=after, limit=batch, dry_run=dry_run)
        if counts.sagas:
            yield counts
        if after is None:
            break
    while True:
        n = await store.prune_dead_letters(before, limit=batch, dry_run=dry_run)
        if n:
            yield Pruned(dead_letters=n)
        if dry_run or n < batch:
            break


def data_text(value: str | int | float | bool) -> str:
    """How a business-key value compares: a string as itself, anything else as its JSON text."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


@runtime_checkable
class Store(Protocol):
    """Durable storage of sagas. See the module docstring for lease and fencing rules.

    Optional beside the protocol: ``write_in(connection, write)`` (a coroutine) and
    ``write_in_sync(connection, write)`` store a new saga with the application's own
    database connection, inside its open transaction (``engine.start(...,
    connection=...)``); the SQLite and PostgreSQL stores have them. Also optional:
    ``claim_sagas(saga_ids, owner, now, lease_until)`` (a coroutine), ``claim_saga``
    for several sagas in one transaction, returning a dict of each existing id's
    claimed state or None (another worker's lease is live), ids of no saga left
    out; the engine claims sagas for events and commands that arrive together
    with it, and falls back to ``claim_saga`` one by one. Every store here has it.
    Likewise ``inbox_seen_many(message_ids)``: the set of those ids whose effect
    is committed (``inbox_seen`` for several at once; SQLite and PostgreSQL), and
    ``correlated(name, correlation_ids)``: for each of those correlation ids that
    has one, the id of the newest unfinished saga *name* with it (every store here).
    """

    url: str

    async def open(self) -> None:
        """Connect, create or migrate the schema. Raise NotASagaStore for a foreign file."""
        ...

    async def close(self) -> None: ...

    async def commit(self, writes: Sequence[Write]) -> list[str | None]:
        """Commit many transitions in one transaction.

        Returns, per write, the id of the saga that now holds it: the write's
        own id when applied, the existing saga's id when an insert met the same
        (name, idempotency key), or None when the revision fence refused it.
        """
        ...

    async def claim(
        self, owner: str, now: float, lease_until: float, limit: int, kinds: Collection[tuple[str, int]] | None = None
    ) -> list[SagaState]:
        """Lease up to *limit* sagas that are due and not leased by a live worker.

        *kinds* limits the claim to sagas of these (name, version) definitions
        (a worker claims only what it can run); None claims any.
        """
        ...

    async def claim_saga(self, saga_id: str, owner: str, now: float, lease_until: float) -> SagaState | None:
        """Lease one saga whatever its wake time; None while another worker's lease is live.

        Raises:
            SagaNotFound: no such saga.
        """
        ...

    async def renew(
        self, owner: str, saga_ids: Sequence[str], lease_until: float, *, now: float | None = None
    ) -> set[str]:
        """Extend this owner's leases; returns the ids whose lease is no longer held.

        *now* is the caller's time, so that the lease's length is ``lease_until - now``.
        """
        ...

    async def release(self, owner: str, sagas: Sequence[tuple[str, float | None]]) -> None:
        """Give up leases, each saga becoming due at the given time (a finished one stays NULL)."""
        ...

    async def release_leases(self, owner: str | None, wake_at: float) -> int:
        """Give up every lease of *owner* (of every worker with None), the sagas due at *wake_at*.

        For an engine that starts and knows the leases are stale: its own, after a
        restart with the same identity; or all of them, when it is the only engine on
        the store (see ``engine_lock`` of the SQLite store). Returns how many.
        """
        ...

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
        """Acquire *keys* for the saga, all or none, in one transaction (see ``sagakit.stores._lockplan``).

        Asking again for keys the saga holds or is queued for changes nothing
        but may find them granted. *fail*: refuse rather than queue; *give_up*:
        grant now or leave the queue and refuse. Stale (nothing done) unless the
        saga's stored state waits for these keys. With *owner*, a saga left
        queued has its lease (held by *owner*) released in the same transaction,
        due at *wake_at*: a grant made after that wakes it, and none is lost.
        """
        ...

    async def locks(self, *, saga_id: str | None = None, limit: int = 1000) -> builtins.list[LockEntry]:
        """Held and queued locks (of one saga, or all), by key, holders first, then in line."""
        ...

    async def get(self, saga_id: str) -> SagaState | None: ...

    async def history(self, saga_id: str) -> list[HistoryEntry]: ...

    async def load(self, saga_id: str) -> tuple[SagaState, builtins.list[HistoryEntry]] | None:
        """The saga and its history, read together (one consistent snapshot where the database allows)."""
        ...

    async def append_history(self, saga_id: str, revision: int, entries: Sequence[HistoryEntry]) -> None:
        """Record entries outside a transition (e.g. a refused write of a worker that lost its lease)."""
        ...

    async def list(self, query: SagaQuery) -> list[SagaState]: ...

    async def count(self, query: SagaQuery) -> int: ...

    async def count_by_status(self, query: SagaQuery | None = None) -> dict[SagaStatus, int]:
        """How many sagas match *query* (paging ignored), per status; every status is a key."""
        ...

    async def next_wake(self, kinds: Collection[tuple[str, int]] | None = None) -> float | None:
        """The earliest wake time of any saga (of the *kinds* definitions, if given), or None."""
        ...

    async def outbox_claim(
        self, owner: str, now: float, claimed_until: float, limit: int
    ) -> builtins.list[OutboxRecord]:
        """Claim up to *limit* committed messages to publish, oldest first (per saga in order).

        A message claimed by a relay that died is claimable again after *claimed_until*.
        """
        ...

    async def outbox_done(self, owner: str, ids: Sequence[str]) -> None:
        """Delete published messages (only those this owner still holds)."""
        ...

    async def outbox_retry(self, owner: str, ids: Sequence[str], available_at: float) -> None:
        """Unclaim messages whose publishing failed; they are due again at *available_at*."""
        ...

    async def outbox_pending(self) -> int:
        """How many messages wait to be published."""
        ...

    async def inbox_seen(self, message_id: str) -> bool:
        """True if a message with this id already had its effect committed."""
        ...

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Record a received message that reached no saga."""
        ...

    async def request(self, request_id: str, saga_id: str, event: str, at: float) -> None:
        """Leave an operator's request (an encoded admin event) for the worker that holds the saga."""
        ...

    async def open_requests(self) -> builtins.list[tuple[str, str, str]]:
        """Requests not answered yet, oldest first: (request id, saga id, event)."""
        ...

    async def answer_request(self, request_id: str, outcome: str) -> None:
        """Record a request's outcome: "" when it was applied, else why it was refused."""
        ...

    async def request_outcome(self, request_id: str) -> str | None:
        """The outcome of a request, or None while it waits (or is gone)."""
        ...

    async def withdraw_request(self, request_id: str) -> bool:
        """Delete a request nobody answered; False if it was answered meanwhile (it is kept then)."""
        ...

    async def drop_request(self, request_id: str) -> None:
        """Delete a request whatever its state."""
        ...

    async def worker_alive(
        self, worker_id: str, kinds: Collection[tuple[str, int]], until: float, *, now: float | None = None
    ) -> None:
        """Say that a worker runs sagas of these (name, version) definitions, and will say so again before *until*.

        *now* is when it says so (shown as its last heartbeat).
        """
        ...

    async def worker_gone(self, worker_id: str) -> None:
        """Forget a worker that stopped."""
        ...

    async def live_workers(self, now: float) -> dict[str, builtins.list[tuple[str, int]]]:
        """The workers alive at *now*, each with the definitions it runs."""
        ...

    async def workers(self, now: float) -> builtins.list[WorkerInfo]:
        """The workers alive at *now*, by id, with their (sorted) definitions and last heartbeat."""
        ...

    async def leases(self, now: float, limit: int = 1000) -> builtins.list[Lease]:
        """Leases live at *now* (up to *limit*), by owner, the soonest to expire first."""
        ...

    async def dead_letters(self, limit: int = 100, offset: int = 0) -> builtins.list[DeadLetter]:
        """Recorded dead letters, newest first."""
        ...

    async def schedule_put(self, schedule: Schedule) -> None:
        """Store a recurring start, replacing the one with the same key (its last start is kept)."""
        ...

    async def schedule_remove(self, key: str) -> bool:
        """Delete a recurring start; False if there was none with that key."""
        ...

    async def schedules(self) -> builtins.list[Schedule]:
        """Every recurring start, the next due first."""
        ...

    async def schedules_due(self, now: float, limit: int) -> builtins.list[Schedule]:
        """Recurring starts whose next period has begun at *now*, the longest due first."""
        ...

    async def schedule_advance(
        self, key: str, expected_next_at: float, next_at: float, last_at: float, last_saga: str
    ) -> bool:
        """Move a schedule on to its next period if it still is at *expected_next_at*; False if not."""
        ...

    async def prune_sagas(
        self,
        before: float,
        statuses: Collection[SagaStatus],
        *,
        after: tuple[float, str] | None,
        limit: int,
        dry_run: bool = False,
    ) -> tuple[Pruned, tuple[float, str] | None]:
        """Delete up to *limit* sagas of these statuses last updated before *before*, in one transaction.

        Their history, inbox, outbox and request rows go with them. A saga somebody
        holds a lease on (unless it expired before *before*) is kept. Sagas are taken
        in (created_at, id) order after the cursor *after* (None: from the start).

        Returns:
            What was deleted (a dry run: what would be), and the cursor for the next
            batch, or None when no saga is left to look at.
        """
        ...

    async def prune_dead_letters(self, before: float, *, limit: int, dry_run: bool = False) -> int:
        """Delete up to *limit* dead letters received before *before*, in one transaction.

        Returns how many were deleted; fewer than *limit* means none is left. A dry run
        deletes nothing and counts all of them.
        """
        ...

    def handling(self, participant: str, message_id: str, at: float) -> AbstractAsyncContextManager[Handling]:
        """A transaction in which *participant* handles the command *message_id* at most once.

        On entry the command is claimed: a claim of the same command elsewhere
        waits until this transaction ends, then finds it handled (or not, after
        a rollback). On a normal exit ``Handling.reply`` is recorded and the
        transaction commits, the handler's own writes on ``Handling.connection``
        with it; on an error it rolls back.

        Raises:
            StoreError: the database failed (the command is then not handled).
        """
        ...

    async def prune_handled(self, participant: str | None, before: float, *, limit: int) -> int:
        """Forget up to *limit* commands handled before *before* (by *participant*, or by any), in one transaction.

        Returns how many were forgotten; fewer than *limit* means none is left.
        """
        ...

    # Resource limits. A permit is keyed by (saga, step, token); it or its waiter lives until
    # released, or until *lease_seconds* after its holder last acquired or renewed it (so a dead
    # worker's permits come back). The memory and SQLite stores keep permits in the process;
    # PostgreSQL keeps them in sagakit_permits, on the database's clock, for every worker.

    async def permits_acquire(
        self, resource: Resource, holder: str, keys: Sequence[PermitKey], lease_seconds: float, now: float
    ) -> PermitGrant:
        """Queue *keys* (in order) as *holder*'s waiters for *resource*, and grant those its limits allow now.

        Returns the keys holding a permit (granted now or before) and, when the
        rate holds the rest back, how long until it lets the next one start.
        """
        ...

    async def permits_release(self, resource: str, keys: Sequence[PermitKey]) -> None:
        """Give back the permits (or waiting places) of *keys*; unknown keys are ignored."""
        ...

    async def permits_renew(self, holder: str, lease_seconds: float, now: float) -> None:
        """Keep *holder*'s permits and waiters for *lease_seconds* from now."""
        ...

    async def permits_forget(self, holder: str) -> None:
        """Give back every permit and waiting place of *holder* (a worker that stops)."""
        ...

    async def resources(self, now: float) -> builtins.list[ResourceUsage]:
        """Every resource permits were asked for: its limits, permits in use, attempts waiting."""
        ...


def waits_for(meta: Any, keys: Sequence[str]) -> bool:
    """Whether a saga's stored meta (a dict, or its JSON text) says it waits for *keys*."""
    if isinstance(meta, str | bytes):
        meta = orjson.loads(meta)
    locks = meta.get("locks") if isinstance(meta, dict) else None
    wanted = locks.get("wanted") if isinstance(locks, dict) else None
    return isinstance(wanted, list) and set(wanted) == set(keys)


def describe(value: Any) -> str:
    """Short repr for error messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Backends by URL scheme, imported by name only when their URL is used: the
# runtime never imports a backend module (or its driver) itself.
_BACKENDS: dict[str, Backend] = {
    "memory": ("sagakit.stores.memory", "MemoryStore", None),
    "sqlite": ("sagakit.stores.sqlite", "SQLiteStore", None),
    "postgresql": ("sagakit.stores.postgres", "PostgresStore", "postgres"),
    "postgres": ("sagakit.stores.postgres", "PostgresStore", "postgres"),
}


def store_from_url(url: str) -> Store:
    """Make (but do not open) the store for *url*.

    ``memory://``, ``sqlite:///relative.db``, ``sqlite:////absolute/path.db``,
    ``postgresql://user@host/db``.

    Raises:
        StoreError: unknown scheme, or the backend's extra is not installed.
    """
    store: Store = backend_from_url(
        url,
        _BACKENDS,
        kind="store",
        usage="memory://, sqlite:///path.db or postgresql://user@host/db",
        error=StoreError,
    )
    return store
