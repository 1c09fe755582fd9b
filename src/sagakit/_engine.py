"""SagaEngine: the public face of the runtime, the only part of sagakit that does I/O.

``SagaEngine`` claims due sagas from the store under a lease, feeds events to
the pure state machine, commits the resulting transitions of many sagas in one
transaction (group commit) and executes their effects; the machinery lives in
``_runtime.py``. This module holds the lifecycle (``async with engine``), the
API for starting, reading and waiting for sagas, and the operator actions.

A saga is *held* by an engine while it has attempts in flight or transitions
waiting to commit; its lease is renewed in the background. When a transition
leaves nothing to do here the lease is released in the same write, with the
row's wake time set to the machine's next timer, and any worker (this one
included) claims it again when that time comes.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime
import inspect
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from typing import Any

import orjson

from ._context import StepContext
from ._cron import parse_cron
from ._definition import SagaDefinition
from ._errors import (
    DefinitionError,
    PayloadTooLarge,
    SagaBusy,
    SagaNotFound,
    SagaStateError,
    StoreError,
    UnknownSagaType,
)
from ._json import NOT_PLAIN, encode, model_type, plain_copy, to_json
from ._messages import message_type_name, to_payload, validate_state
from ._observe import Observer
from ._resources import Resource, ResourceUsage
from ._runtime._base import Batcher, Held, Pending, Slots
from ._runtime.attempts import Attempts
from ._runtime.children import Children
from ._runtime.commit import Committer
from ._runtime.leases import Leases
from ._runtime.locks import Locks
from ._runtime.messaging import Messaging
from ._runtime.permits import PERMIT_TASK, Permits
from ._runtime.requests import Requests, encode_admin
from ._runtime.retention import Retention
from ._runtime.schedules import Schedules
from ._runtime.timers import Timers
from ._snapshot import SagaSnapshot
from ._status import SagaStatus
from ._store import DeadLetter, LockEntry, SagaQuery, Schedule, Store, Write, store_from_url
from ._transport import Transport, transport_from_url
from .machine import (
    Abort,
    AcquireLocks,
    AcquirePermit,
    CancelAttempt,
    Compensate,
    Decision,
    Event,
    HistoryEntry,
    ReleaseLocks,
    ReleasePermit,
    Reply,
    Resume,
    Retry,
    RunStep,
    SagaState,
    Skip,
    decide,
    new_saga,
)

__all__ = ["SagaEngine"]

log = logging.getLogger("sagakit")
# Saga data up to this many bytes of JSON is parsed back rather than copied (parsing small
# data costs less than walking it).
_PARSE_BELOW = 4096

# Saga ids need uniqueness, not secrecy: a generator seeded from the OS is
# ~100x cheaper per id than reading the OS's random source each time.
_ids = random.Random(os.urandom(32))


def _item_function(fn: Callable[..., Any], is_async: bool) -> Callable[[StepContext], Any]:
    """A for-each step's ``fn(item, ctx)`` as the runtime calls step functions: with the context alone."""
    if is_async:

        async def run_item_async(ctx: StepContext) -> Any:
            return await fn(ctx.item, ctx)

        return run_item_async

    def run_item(ctx: StepContext) -> Any:
        return fn(ctx.item, ctx)

    return run_item


def _new_saga_id() -> str:
    """32 hex digits: milliseconds since the epoch (48 bits), then 80 random bits.

    Ids in creation order keep the stores' indexes on the saga id append-mostly:
    a batch of new sagas touches a few index pages instead of one page per saga.
    """
    return f"{int(time.time() * 1000) & 0xFFFFFFFFFFFF:012x}{_ids.getrandbits(80):020x}"


class SagaEngine(Committer, Attempts, Leases, Locks, Timers, Requests, Retention, Schedules, Children, Permits):
    """Runs sagas durably on a store.

    Args:
        store: a store URL (``sqlite:///sagas.db``, ``postgresql://…``,
            ``memory://``) or a store object.
        lease_seconds: how long a claim lives before another worker may take over.
        concurrency: step attempts in flight at once, at most.
        threads: size of the thread pool for plain ``def`` steps.
        poll_interval: longest sleep of an idle worker between looks for due work.
        worker_id: name of this worker in leases and history (default: host:pid:random).
        clock: source of wall-clock time in seconds (injected in tests).
        observers: objects told of every transition, attempt and commit (see ``sagakit.Observer``).
        retention: how long finished sagas are kept (a ``timedelta`` or seconds): a running
            engine deletes COMPLETED, COMPENSATED and ABORTED sagas last updated longer ago,
            with their history, inbox and outbox rows, and older dead letters, every 10
            minutes in small batches. FAILED sagas are kept for an operator. None (the
            default) keeps everything.
        resources: limits of the resources steps name with ``resource=`` (``sagakit.Resource``);
            more can be declared with ``engine.resource(...)`` or with a definition.

    Use it as an async context manager: entering starts the workers and
    resumes unfinished sagas; leaving shuts down gracefully.
    """

    _messaging: Messaging

    def __init__(
        self,
        store: str | Store = "sqlite:///sagas.db",
        *,
        transport: str | Transport | None = None,
        lease_seconds: float = 30.0,
        concurrency: int = 256,
        threads: int = 16,
        poll_interval: float = 0.5,
        shutdown_grace: float = 10.0,
        worker_id: str | None = None,
        clock: Callable[[], float] = time.time,
        observers: Iterable[Observer] = (),
        retention: timedelta | float | None = None,
        resources: Iterable[Resource] = (),
    ) -> None:
        if isinstance(store, str):
            store = store_from_url(store)
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
        if isinstance(retention, timedelta):
            retention = retention.total_seconds()
        if retention is not None and not retention > 0:
            raise ValueError(f"retention must be > 0 seconds or None (keep everything), got {retention!r}")
        self.retention = None if retention is None else float(retention)
        self._retention_every = 600.0
        self._retention_first = 30.0
        self.store: Store = store
        if isinstance(transport, str):
            transport = transport_from_url(transport)
        self.transport: Transport | None = transport
        self._messaging = Messaging(self, transport)
        self.lease_seconds = float(lease_seconds)
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self._hold_for = min(1.0, self.lease_seconds / 3)
        # A lease that may have less than this left when an attempt would start is not relied on.
        self._lease_margin = self.lease_seconds / 5
        # How often a running engine looks for operators' requests for the sagas it holds.
        self._request_poll = min(0.25, poll_interval)
        # How often wait() reads a saga that this engine does not run (another worker may finish it).
        self._wait_poll = 0.5
        self._observers = tuple(observers)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self._threads = threads
        self._definitions: dict[tuple[str, int], SagaDefinition] = {}
        self._latest: dict[str, SagaDefinition] = {}
        self._fns: dict[tuple[str, int, str, bool], tuple[Callable[..., Any], bool, Mapping[str, type]]] = {}
        self._held: dict[str, Held] = {}
        self._queue: dict[str, Pending] = {}
        self._waiters: dict[str, list[asyncio.Future[SagaSnapshot | None]]] = {}
        self._opened = False
        self._running = False
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Future[Any]] = set()
        self._work_waiter: asyncio.Future[Any] | None = None
        self._claims: Batcher[str, tuple[SagaState | None, float] | None] | None = None
        self._inbox_lookups: Batcher[str, bool] | None = None
        self._queue_ready: asyncio.Event | None = None
        self._poke: asyncio.Event | None = None
        self._slots: Slots | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resources: dict[str, Resource] = {}
        self._permit_queues = {}
        self._permits_held = {}
        self._watching_permits = False
        for r in resources:
            self.resource(r)

    # ------------------------------------------------------------ definitions

    def resource(
        self, resource: Resource | str, *, concurrency: int | None = None, rate: int | None = None, per: float = 1.0
    ) -> Resource:
        """Declare a resource limit: ``engine.resource("payments", concurrency=5, rate=50, per=1.0)``.

        Steps that name the resource (``b.step(..., resource="payments")``) wait
        for a permit before each attempt. Declare the same limits on every worker.

        Raises:
            DefinitionError: a bad value, or the resource is already declared with other limits.
        """
        if not isinstance(resource, Resource):
            resource = Resource(resource, concurrency, rate, per)
        known = self._resources.get(resource.name)
        if known is not None and known != resource:
            raise DefinitionError(
                f"resource {resource.name!r} is already declared with other limits ({known}); "
                "declare each resource once, with the same limits on every worker"
            )
        self._resources[resource.name] = resource
        return resource

    async def resources(self) -> builtins.list[ResourceUsage]:
        """Every resource permits were asked for, as the store sees it: limits, permits in use, attempts waiting."""
        await self._ensure_open()
        return await self.store.resources(self.clock())

    def register(self, *definitions: SagaDefinition) -> None:
        """Register definitions; several versions of one saga may be registered at once."""
        for d in definitions:
            if not isinstance(d, SagaDefinition):
                raise TypeError(f"register() takes SagaDefinition objects, got {d!r}")
            self._check_resources(d)
            self._messaging.register(d)  # first: it refuses a definition whose message names clash
            self._definitions[d.key] = d
            latest = self._latest.get(d.name)
            if latest is None or d.version >= latest.version:
                self._latest[d.name] = d
            # The model each step's action is annotated to return: its result is read back as one.
            types: dict[str, type] = {}
            for s in d.steps:
                # A for-each step's result is the list of its items' results, in JSON form.
                model = model_type(s.action) if callable(s.action) and s.for_each is None else None
                if model is not None:
                    types[s.name] = model
            for s in d.steps:
                for comp, fn in ((False, s.action), (True, s.compensation)):
                    if fn is not None and callable(fn):
                        is_async = inspect.iscoroutinefunction(fn)
                        self._fns[(d.name, d.version, s.name, comp)] = (
                            fn if s.for_each is None else _item_function(fn, is_async),
                            is_async,
                            types,
                        )
        if self._running and not self._closing:
            self._in_background(self._say_alive())
            self._poke_claimer()  # sagas of these definitions may be due already

    def _check_resources(self, d: SagaDefinition) -> None:
        """Declare the definition's limits; a running engine needs one for every resource its steps name.

        An engine that runs no workers (an API process, the dashboard) only
        starts and reads sagas: it needs no limits.
        """
        for r in d.resources:
            known = self._resources.get(r.name)
            if known is not None and known != r:
                raise DefinitionError(
                    f"saga {d.name!r} v{d.version} declares resource {r.name!r} as {r}, but this engine has {known}"
                )
        for r in d.resources:
            self._resources[r.name] = r
        if self._running:
            self._check_limits(d)

    def _check_limits(self, d: SagaDefinition) -> None:
        declared = set(self._resources)
        for name in d.resource_steps:
            res = d.by_name[name].resource
            if res not in declared:
                raise DefinitionError(
                    f"step {name!r} of saga {d.name!r} names resource {res!r}, which has no limit declared; "
                    f"declare it first: SagaEngine(resources=[Resource({res!r}, concurrency=...)]), "
                    f"engine.resource({res!r}, ...) or SagaBuilder.resource(...)"
                )

    async def _take_back_leases(self) -> None:
        """Resume at once what an engine that stopped left leased, when the leases are known stale.

        The only running engine on a SQLite file (it holds the file's engine lock)
        gives up every lease in it; any other engine gives up those held under its
        own worker id (a worker restarted with the same identity). Their sagas are
        due now instead of when the leases would have run out.
        """
        lock = getattr(self.store, "engine_lock", None)
        alone = lock is not None and await lock()
        try:
            n = await self.store.release_leases(None if alone else self.worker_id, self.clock())
        finally:
            if alone:
                self.store.engine_lock_shared()  # type: ignore[attr-defined]
        if n:
            log.info("sagakit: %d saga(s) left leased by a stopped engine resume now", n)

    async def _say_alive(self) -> None:
        """Tell the store this worker runs and which definitions it has (see ``Store.live_workers``)."""
        now = self.clock()
        await self.store.worker_alive(self.worker_id, list(self._definitions), now + self.lease_seconds, now=now)

    @property
    def definitions(self) -> list[SagaDefinition]:
        return list(self._definitions.values())

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> SagaEngine:
        await self.run()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _ensure_open(self) -> None:
        if not self._opened:
            try:
                await self.store.open()
            except StoreError:
                raise
            self._opened = True
            self._loop = asyncio.get_running_loop()
            self._queue_ready = asyncio.Event()
            self._poke = asyncio.Event()

    async def run(self) -> None:
        """Start the workers: committer, claimer and lease renewer."""
        if self._running:
            return
        for d in self._definitions.values():
            self._check_limits(d)  # before anything runs: a step must not wait for a limit nobody declared
        await self._ensure_open()
        self._closing = False
        self._slots = Slots(self.concurrency)
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="sagakit-step")
        self._running = True
        await self._take_back_leases()
        if self._resources:
            # A worker restarted with this id holds no permit yet: any under its name are a dead process's.
            await self.store.permits_forget(self.worker_id)
        await self._say_alive()
        watch = getattr(self.store, "watch_permits", None)
        if watch is not None and not self._watching_permits:
            watch(self._permit_freed)  # PostgreSQL: another worker gave a permit back
            self._watching_permits = True
        self._tasks = [
            asyncio.create_task(self._commit_loop(), name="sagakit-commit"),
            asyncio.create_task(self._claim_loop(), name="sagakit-claim"),
            asyncio.create_task(self._renew_loop(), name="sagakit-renew"),
            asyncio.create_task(self._requests_loop(), name="sagakit-requests"),
            asyncio.create_task(self._schedules_loop(), name="sagakit-schedules"),
        ]
        if self.retention is not None:
            self._tasks.append(asyncio.create_task(self._retention_loop(), name="sagakit-retention"))
        await self._messaging.start()

    async def close(self) -> None:
        """Shut down gracefully.

        Claiming stops; attempts in flight get ``shutdown_grace`` seconds to
        finish and their results are committed; attempts still running then are
        cancelled and stay recorded as running, so the next worker runs them
        again. Every lease is released and the store closed.
        """
        if self._running:
            await self._messaging.close()
            self._closing = True
            background = self._tasks[1:]
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if self._work_waiter is not None:
                self._work_waiter.cancel()
                await asyncio.gather(self._work_waiter, return_exceptions=True)
                self._work_waiter = None
            inflight = []
            for h in self._held.values():
                for t in h.inflight.values():
                    if t.get_name() == PERMIT_TASK:
                        t.cancel()  # waiting for a permit: it has not started, the next worker runs it
                    inflight.append(t)
            if inflight:
                _, late = await asyncio.wait(inflight, timeout=self.shutdown_grace)
                for t in late:
                    t.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            self._running = False
            await self._stop_permits()
            self._kick()
            await asyncio.gather(self._tasks[0], return_exceptions=True)
            self._tasks = []
            leftovers = []
            for sid, h in self._held.items():
                if h.timer is not None:
                    h.timer.cancel()
                orphaned = any(
                    s.token or (s.items is not None and any(it.token for it in s.items)) for s in h.state.steps.values()
                )
                leftovers.append((sid, self.clock() if orphaned else h.state.wake_at))
            self._held.clear()
            if leftovers:
                with contextlib.suppress(Exception):
                    await self.store.release(self.worker_id, leftovers)
            with contextlib.suppress(Exception):
                await self.store.worker_gone(self.worker_id)
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._opened:
            await self.store.close()
            self._opened = False

    # ------------------------------------------------------------ public API

    async def start(
        self,
        name: str,
        data: Any = None,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        version: int | None = None,
        at: float | datetime.datetime | None = None,
        delay: float | datetime.timedelta | None = None,
        connection: Any = None,
    ) -> str:
        """Start a saga and return its id once it is durably stored.

        The same *idempotency_key* for the same saga name returns the id of the
        saga it started first, which is not started again.

        With *at* (a time: seconds since the epoch, or an aware ``datetime``) or
        *delay* (seconds, or a ``timedelta``) the saga is stored now and begins
        then: it is ``PENDING`` until that time, survives restarts, and can be
        aborted meanwhile (``engine.abort``).

        *data* may be a dict, a pydantic model or a dataclass, holding
        ``Decimal``, ``datetime``, ``UUID`` and ``Enum`` values too; it is
        stored in its JSON form.

        With *connection* (the application's own ``sqlite3`` connection,
        asyncpg connection, or SQLAlchemy ``Connection``/``Session``/
        ``AsyncConnection``/``AsyncSession``, on the store's database, with a
        transaction open), the saga is written inside that transaction: it
        exists if and only if the application commits, and a worker runs it
        after the commit. The id is returned before the commit.

        Raises:
            UnknownSagaType: *name* (or *version*) is not registered; nothing is stored.
            PayloadTooLarge: *data* is over the definition's ``max_payload_bytes``.
            DataEncodingError: *data* cannot be stored as JSON faithfully (also a TypeError and a
                ValueError); names the path of the value.
            ValueError: both *at* and *delay*, a negative delay, or a naive datetime.
            StoreError: *connection* has no transaction open, or is on another database.
        """
        start_at = _start_time(at, delay, self.clock) if at is not None or delay is not None else None
        if connection is not None:
            write = self._new_write(name, data, idempotency_key, correlation_id, version, start_at)
            return str(await self._store_writes_in(connection).write_in(connection, write))
        defn = self._definition(name, version)
        data, text = self._prepared(defn, data)
        if not self._opened:
            await self._ensure_open()
        now = self.clock()
        saga_id = _new_saga_id()
        decision = new_saga(
            defn,
            saga_id,
            data,
            now,
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
            begin=self._running and not self._closing,
            start_at=start_at,
        )
        return await self._insert(defn, decision, text)

    def _prepare_data(self, defn: SagaDefinition, data: Any) -> Any:
        """*data* in its JSON form, checked against the payload limit and the definition's state model."""
        return self._prepared(defn, data)[0]

    def _prepared(self, defn: SagaDefinition, data: Any) -> tuple[Any, str | None]:
        """*data* in its JSON form (see ``_prepare_data``), and its JSON text when it is that form's exactly."""
        name = defn.name
        blob = encode(data, "data of saga {!r}", name)
        if len(blob) > defn.max_payload_bytes:
            raise PayloadTooLarge(
                f"data of saga {name!r} is {len(blob)} bytes, over the limit of "
                f"{defn.max_payload_bytes} bytes (max_payload_bytes of the definition)"
            )
        if defn.state_model is not None:
            parsed = orjson.loads(blob)
            return validate_state(defn.state_model, parsed if isinstance(parsed, dict) else {}), None
        # Large data of plain JSON values is copied rather than parsed back (a copy walks its
        # values; parsing reads every byte); the text is kept for the store, which then does
        # not encode it again.
        copied = plain_copy(data, len(blob) >> 8) if len(blob) > _PARSE_BELOW else NOT_PLAIN
        return (orjson.loads(blob) if copied is NOT_PLAIN else copied), blob.decode()

    def _new_write(
        self,
        name: str,
        data: Any,
        idempotency_key: str | None,
        correlation_id: str | None,
        version: int | None,
        start_at: float | None = None,
    ) -> Write:
        """The insert of a new saga that a worker will begin (nothing is dispatched here); no I/O."""
        defn = self._definition(name, version)
        data, text = self._prepared(defn, data)
        decision = new_saga(
            defn,
            _new_saga_id(),
            data,
            self.clock(),
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
            begin=False,
            start_at=start_at,
        )
        st = decision.state
        return Write(st, 0, decision.history, st.wake_at, insert=True, data_json=text)

    def _store_writes_in(self, connection: Any) -> Any:
        """The store, when it can write a saga with the application's *connection*."""
        if getattr(self.store, "write_in", None) is None:
            raise TypeError(
                f"the store {self.store!r} cannot write a saga in the application's transaction; "
                "use a SQLite or PostgreSQL store (or start the saga without connection=)"
            )
        return self.store

    async def _insert(self, defn: SagaDefinition, decision: Decision, data_json: str | None = None) -> str:
        """Store a new saga; a running engine holds it and starts its first steps once stored.

        A saga that does not begin now (not running here, or scheduled) is stored
        unleased, due when it is to begin. *data_json*: the JSON text of the saga's data.
        """
        if not self._running or self._closing or decision.state.status is SagaStatus.PENDING:
            st = decision.state
            write = Write(st, 0, decision.history, st.wake_at, insert=True, data_json=data_json)
            res = await self.store.commit([write])
            result: str | None = res[0]
            assert result is not None
            return result
        saga_id = decision.state.id
        held = Held(decision.state, defn, history=[])
        if data_json is not None:
            held.data_json = (decision.state.data, data_json)
        decision.state.revision = -1  # _transition bumps it to 0 for the insert
        self._held[saga_id] = held
        fut: asyncio.Future[str] = self._loop_().create_future()
        self._transition(held, decision, insert=True, future=fut)
        return await fut

    async def get(self, saga_id: str) -> SagaSnapshot:
        """The saga with its history.

        Raises:
            SagaNotFound: no such saga.
        """
        await self._ensure_open()
        found = await self.store.load(saga_id)
        if found is None:
            raise SagaNotFound(saga_id)
        st, history = found
        return SagaSnapshot.from_state(st, tuple(history))

    async def list(
        self,
        status: SagaStatus | str | None = None,
        name: str | None = None,
        correlation_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        created_after: float | None = None,
        created_before: float | None = None,
        version: int | None = None,
        updated_after: float | None = None,
        updated_before: float | None = None,
        data_equals: Mapping[str, str | int | float | bool] | None = None,
        overdue_before: float | None = None,
        statuses: Iterable[SagaStatus | str] | None = None,
    ) -> list[SagaSnapshot]:
        """Sagas matching the filters (all of them), newest first, without their history.

        ``data_equals`` is a business key (top-level data keys and their values);
        ``overdue_before`` matches unfinished sagas whose wake time passed before
        that time; ``statuses`` any of several statuses. See ``SagaQuery``.
        """
        await self._ensure_open()
        q = _query(status, name, correlation_id, limit, offset, created_after, created_before)
        q = replace(
            q,
            version=version,
            updated_after=updated_after,
            updated_before=updated_before,
            data_equals=data_equals,
            overdue_before=overdue_before,
            statuses=None if statuses is None else tuple(_status(s) for s in statuses),
        )
        return [SagaSnapshot.from_state(st) for st in await self.store.list(q)]

    async def count(
        self,
        status: SagaStatus | str | None = None,
        name: str | None = None,
        correlation_id: str | None = None,
        *,
        created_after: float | None = None,
        created_before: float | None = None,
        version: int | None = None,
        updated_after: float | None = None,
        updated_before: float | None = None,
        data_equals: Mapping[str, str | int | float | bool] | None = None,
        overdue_before: float | None = None,
        statuses: Iterable[SagaStatus | str] | None = None,
    ) -> int:
        """How many sagas match the filters (those of ``list``)."""
        await self._ensure_open()
        q = _query(status, name, correlation_id, 1, 0, created_after, created_before)
        q = replace(
            q,
            version=version,
            updated_after=updated_after,
            updated_before=updated_before,
            data_equals=data_equals,
            overdue_before=overdue_before,
            statuses=None if statuses is None else tuple(_status(s) for s in statuses),
        )
        return await self.store.count(q)

    async def publish(self, event: object, *, destination: str | None = None) -> str:
        """Publish an application event (a saga's trigger, an approval) on the transport.

        Returns the message id. Needs a transport and a running engine.

        Raises:
            TransportError: the engine has no transport, or the broker refused the message.
        """
        return await self._messaging.publish(event, destination=destination)

    async def locks(self, saga_id: str | None = None, *, limit: int = 1000) -> builtins.list[LockEntry]:
        """Semantic locks held and queued for (of one saga, or all): by key, holder first, then the queue."""
        await self._ensure_open()
        return await self.store.locks(saga_id=saga_id, limit=limit)

    async def dead_letters(self, limit: int = 100, offset: int = 0) -> builtins.list[DeadLetter]:
        """Received messages that reached no saga, with the reason, newest first."""
        await self._ensure_open()
        return await self.store.dead_letters(limit, offset)

    async def wait(self, saga_id: str, timeout: float | None = None) -> SagaSnapshot:
        """Wait until the saga reaches a terminal status and return it.

        Raises:
            SagaNotFound: no such saga.
            TimeoutError: *timeout* seconds passed first.
        """
        loop = self._loop_() if self._opened else asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        held = self._held.get(saga_id)
        # A saga this engine runs reports its end here: no need to read it first.
        local = held is not None and not held.state.status.terminal
        while True:
            if not local:
                snap = await self.get(saga_id)
                if snap.status.terminal:
                    return snap
            local = False
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                snap = await self.get(saga_id)
                if snap.status.terminal:
                    return snap
                raise TimeoutError(f"saga {saga_id} is still {snap.status.value} after {timeout}s")
            fut: asyncio.Future[SagaSnapshot | None] = loop.create_future()
            waiters = self._waiters.setdefault(saga_id, [])
            waiters.append(fut)
            # Poll now and then too: another worker may be running this saga.
            delay = self._wait_poll if remaining is None else min(remaining, self._wait_poll)
            timer = loop.call_later(delay, _resolve, fut)
            try:
                done = await fut
                if done is not None:
                    return done
            finally:
                timer.cancel()
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
                if not waiters:
                    self._waiters.pop(saga_id, None)

    async def retry(self, saga_id: str, *, reason: str = "", actor: str = "operator") -> SagaSnapshot:
        """Re-run a failed step or failed compensation, or a step waiting for its retry, now."""
        return await self._admin(saga_id, Retry(reason, actor))

    async def skip(
        self,
        saga_id: str,
        step: str,
        result: Any = None,
        *,
        reason: str = "",
        actor: str = "operator",
    ) -> SagaSnapshot:
        """Mark a waiting or failed step SKIPPED with *result* (later steps see it) and move on."""
        result = to_json(result, "skip result for step {!r}", step, root="result")
        return await self._admin(saga_id, Skip(step, result, reason, actor))

    async def fork(
        self,
        saga_id: str,
        from_step: str,
        *,
        data: Any = None,
        reason: str = "",
        actor: str = "operator",
    ) -> str:
        """Start a new saga that re-runs *saga_id* from *from_step* on; returns the new id.

        The steps *from_step* depends on keep the results they had in the old
        saga (they are ``SKIPPED`` in the new one, so never compensated there);
        everything else runs again. The new saga runs the old one's definition
        version with its data, or *data*. Both sagas' histories record the fork.

        Raises:
            SagaNotFound: no such saga.
            SagaStateError: *from_step* is unknown, or a step it depends on did not complete.
            UnknownSagaType: the old saga's definition version is not registered.
        """
        await self._ensure_open()
        old = await self.store.get(saga_id)
        if old is None:
            raise SagaNotFound(saga_id)
        defn = self._definition(old.name, old.version)
        if from_step not in defn.by_name:
            raise SagaStateError(saga_id, f"saga {old.name} has no step {from_step!r} (steps: {', '.join(defn.order)})")
        preset: dict[str, Any] = {}
        for name in defn.order:
            if name not in defn.ancestors[from_step]:
                continue
            s = old.steps[name]
            if s.status.value not in ("completed", "skipped"):
                raise SagaStateError(
                    saga_id,
                    f"step {name!r} is {s.status.value} in this saga, so there is no result to start "
                    f"step {from_step!r} from; fork from an earlier step",
                )
            preset[name] = s.result
        new_data = old.data if data is None else data
        new_data = to_json(new_data, "fork data")
        new_id = _new_saga_id()
        who = f"by {actor}" + (f": {reason}" if reason else "")
        now = self.clock()
        decision = new_saga(
            defn,
            new_id,
            new_data,
            now,
            correlation_id=old.correlation_id,
            begin=self._running and not self._closing,
            preset=preset,
            origin=f"saga {saga_id}",
        )
        decision.history.insert(1, HistoryEntry(now, "fork", f"forked from saga {saga_id} at step {from_step!r} {who}"))
        await self._insert(defn, decision)
        await self.store.append_history(
            saga_id,
            old.revision,
            [HistoryEntry(now, "fork", f"forked into saga {new_id} from step {from_step!r} {who}")],
        )
        return new_id

    async def compensate(self, saga_id: str, *, reason: str = "", actor: str = "operator") -> SagaSnapshot:
        """Start compensating a pending or running saga now."""
        return await self._admin(saga_id, Compensate(reason, actor))

    async def abort(self, saga_id: str, *, reason: str = "", actor: str = "operator") -> SagaSnapshot:
        """Stop the saga where it stands, without compensation."""
        return await self._admin(saga_id, Abort(reason, actor))

    async def notify(
        self, saga_id: str, event: object, *, step: str | None = None, message_id: str | None = None
    ) -> None:
        """Hand *event* to the saga as if it had arrived from a broker: it completes (or fails) a waiting step.

        No transport is needed. The machine matches the event to the step that
        waits for its type (or to *step*), with the same rules as a broker's
        reply: an event no step waits for is refused. With *message_id*, a
        second notify with the same id is ignored (it is recorded with the
        saga's write, as a broker message's id is).

        When this process does not have the saga's definition registered (an
        API process that only starts sagas, say), the event is stored with the
        saga and applied by the next worker that has the definition; on
        PostgreSQL that is any worker process. When a worker holds the saga
        right now, the event is left for it and applied within a fraction of a
        second.

        Raises:
            SagaNotFound: no such saga.
            SagaStateError: no step of the saga waits for this event (the reason says why).
            SagaBusy: the saga stayed held by another worker that did not answer.
            MessageMappingError: *event* is not a pydantic model or dataclass instance.
        """
        payload = to_payload(event)
        encode(payload, "event {}", type(event).__name__, root="event")  # NaN and infinities are refused, not nulled
        reply = Reply(message_type_name(type(event)), payload, step, None)
        if message_id is not None and await self._inbox_seen(message_id):
            return
        rejected = await self._act(
            saga_id, lambda held: reply, inbox=message_id, admin=reply, busy_timeout=self.lease_seconds + 5.0
        )
        if rejected is not None:
            raise SagaStateError(saga_id, rejected)

    # ------------------------------------------------------------ recurring starts

    async def schedule(
        self, name: str, data: Any = None, *, cron: str, key: str | None = None, version: int | None = None
    ) -> Schedule:
        """Start a saga *name* with *data* once per period of *cron* (UTC), from any running worker.

        *key* names the schedule (default: the saga's name); scheduling the same
        key again replaces its expression and data. The first period is the
        first time *cron* matches after now. Each period's saga has the
        idempotency key ``schedule:KEY:PERIOD``, so several workers start one.

        Raises:
            CronError: *cron* cannot be read (the message names the field).
            DataEncodingError: *data* cannot be stored as JSON faithfully (also a TypeError).
            MessageMappingError: *data* does not validate against the saga's state
                model (when the definition is registered here).
        """
        expr = parse_cron(cron)
        defn = self._definitions.get((name, version)) if version is not None else self._latest.get(name)
        data = to_json(data, "data of schedule {!r}", key or name)  # models, Decimal…: stored in JSON form
        if defn is not None and defn.state_model is not None:
            validate_state(defn.state_model, data if isinstance(data, dict) else {})
        await self._ensure_open()
        now = self.clock()
        s = Schedule(key or name, name, version, data, cron, expr.next_after(now), now)
        await self.store.schedule_put(s)
        return s

    async def unschedule(self, key: str) -> bool:
        """Stop a recurring start (sagas it started are not touched); False if there was none."""
        await self._ensure_open()
        return await self.store.schedule_remove(key)

    async def schedules(self) -> builtins.list[Schedule]:
        """Every recurring start with its next and last period, the next due first."""
        await self._ensure_open()
        return await self.store.schedules()

    async def _start_scheduled(self, s: Schedule, idempotency_key: str) -> str:
        return await self.start(s.name, s.data, idempotency_key=idempotency_key, version=s.version)

    def _runs(self, name: str, version: int | None) -> bool:
        return name in self._latest if version is None else (name, version) in self._definitions

    # ------------------------------------------------------------ admin plumbing

    async def _admin(self, saga_id: str, event: Event) -> SagaSnapshot:
        rejected = await self._act(saga_id, lambda held: event, admin=event)
        if rejected is not None:
            raise SagaStateError(saga_id, rejected)
        return await self.get(saga_id)

    async def _act(
        self,
        saga_id: str,
        make: Callable[[Held], Event | str],
        *,
        inbox: str | None = None,
        busy_timeout: float = 5.0,
        admin: Event | None = None,
    ) -> str | None:
        """Apply the event *make* derives from the saga, claiming the saga if nobody holds it.

        Returns once the transition is committed, or with the reason the event
        was not applied (*make* returned a reason, or the machine rejected it;
        a rejected *admin* command is recorded in the saga's history). An
        *admin* command also applies to a saga whose definition version is not
        registered here, as far as the machine allows without it (abort, skip).

        Raises:
            SagaNotFound: no such saga.
            SagaBusy: another worker kept the saga for *busy_timeout* seconds.
        """
        await self._ensure_open()
        loop = self._loop_()
        give_up = loop.time() + busy_timeout
        request: str | None = None  # an admin request left for the worker that holds the saga
        while True:
            held = self._held.get(saga_id)
            claimed = False
            if held is None:
                if request is not None:
                    outcome = await self.store.request_outcome(request)
                    if outcome is not None:
                        await self.store.drop_request(request)
                        return outcome or None  # applied (or refused) by the worker that holds it
                got = await self._claim_by_id(saga_id)
                if got is None:
                    # Claimed for another event for the same saga that came at the same moment.
                    await asyncio.sleep(0)
                    continue
                st, sent = got
                if st is None:
                    if admin is not None and request is None:
                        # The holder is the one that can cancel what runs: ask it. Should it be
                        # frozen or gone, its lease runs out and this engine applies the request.
                        request = uuid.uuid4().hex
                        await self.store.request(request, saga_id, encode_admin(admin), self.clock())
                        give_up = max(give_up, loop.time() + self.lease_seconds + busy_timeout)
                    if loop.time() > give_up:
                        if request is not None and not await self.store.withdraw_request(request):
                            continue  # answered just now: read the outcome
                        raise SagaBusy(
                            f"saga {saga_id} is held by another worker; try again when its current step finishes"
                        )
                    await asyncio.sleep(0.05)
                    continue
                if request is not None and not await self.store.withdraw_request(request):
                    # Answered meanwhile by the worker that held it: that outcome stands.
                    outcome = await self.store.request_outcome(request)
                    await self.store.drop_request(request)
                    await self.store.release(self.worker_id, [(saga_id, self.clock())])
                    return outcome or None
                request = None
                proven = sent + self.lease_seconds - self._lease_margin
                defn = self._definitions.get((st.name, st.version))
                if defn is None:
                    if admin is not None:
                        return await self._act_parked(st, admin)
                    await self.store.release(self.worker_id, [(saga_id, self.clock())])
                    raise UnknownSagaType(
                        f"saga {saga_id} runs {st.name} v{st.version}, which is not registered with this engine"
                    )
                if saga_id in self._held:
                    # This engine's claim loop took the saga while it was claimed here: this claim
                    # is the newer one, so that copy is stale. Take the saga over as a claim does.
                    self._adopt(st, proven)
                    held = self._held[saga_id]
                else:
                    held = Held(st, defn, durable=True, lease_mono=proven)
                    self._held[saga_id] = held
                    claimed = True
                    if st.status is not SagaStatus.PENDING:
                        # Claimed as the claim loop would have: attempts a stopped worker left in
                        # flight run again (the event below joins the same write). A saga not yet
                        # begun is left for a worker to begin.
                        self._apply(held, Resume())
            made = make(held)
            if isinstance(made, str):
                rejected: str | None = made
            else:
                decision = decide(held.definition, held.state, made, self.clock())
                rejected = decision.rejected
            if rejected is not None:
                if not isinstance(made, str) and decision.history:
                    # A refusal (or a stale reply) is recorded in the saga's history, with its reason.
                    self._in_background(self.store.append_history(saga_id, held.state.revision, decision.history))
                if claimed and not held.inflight and not held.queued and not held.committing:
                    self._held.pop(saga_id, None)
                    # The claimed row's wake time is the lease expiry; make it due now
                    # so a worker puts the machine's own timers back.
                    await self.store.release(self.worker_id, [(saga_id, self.clock())])
                return rejected
            fut = loop.create_future()
            self._transition(held, decision, future=fut, inbox=inbox)
            if not self._running:
                await self._flush()
            try:
                await fut
            except SagaBusy:
                if loop.time() > give_up:
                    raise
                continue
            return None

    async def _act_parked(self, st: SagaState, event: Event) -> str | None:
        """Apply an admin command to a claimed saga whose definition is not registered here."""
        decision = decide(None, st, event, self.clock())
        new = decision.state
        if decision.rejected is not None:
            await self.store.append_history(st.id, st.revision, decision.history)
            await self.store.release(self.worker_id, [(st.id, self.clock())])
            return decision.rejected
        new.revision = st.revision + 1
        # Released at once: due now unless finished, so a worker that has the definition goes on
        # (a finished saga is due again only while its aborted children have not ended).
        wake = new.wake_at if new.status.terminal else self.clock()
        unlock_all = any(isinstance(e, ReleaseLocks) for e in decision.effects)
        res = await self.store.commit(
            [Write(new, st.revision, decision.history, wake, data_changed=False, unlock_all=unlock_all)]
        )
        if res[0] is None:
            raise SagaBusy(f"saga {st.id} was taken over by another worker meanwhile; try again")
        children = [
            e
            for e in decision.effects
            if not isinstance(e, RunStep | CancelAttempt | AcquirePermit | ReleasePermit | AcquireLocks | ReleaseLocks)
        ]
        if children:
            self._child_effects(new, None, children)
        return None

    # ------------------------------------------------------------ lookups

    def _definition(self, name: str, version: int | None) -> SagaDefinition:
        defn = self._latest.get(name) if version is None else self._definitions.get((name, version))
        if defn is None:
            known = ", ".join(sorted(f"{n} v{v}" for n, v in self._definitions)) or "none"
            what = name if version is None else f"{name} v{version}"
            raise UnknownSagaType(
                f"no saga named {what} is registered with this engine (registered: {known}); "
                "call engine.register(definition) first"
            )
        return defn


def _query(
    status: SagaStatus | str | None,
    name: str | None,
    correlation_id: str | None,
    limit: int,
    offset: int,
    created_after: float | None,
    created_before: float | None,
) -> SagaQuery:
    if status is not None:
        status = _status(status)
    if limit < 1 or offset < 0:
        raise ValueError(f"limit must be >= 1 and offset >= 0, got limit={limit}, offset={offset}")
    return SagaQuery(status, name, correlation_id, created_after, created_before, limit, offset)


def _status(status: SagaStatus | str) -> SagaStatus:
    if isinstance(status, SagaStatus):
        return status
    try:
        return SagaStatus(str(status).lower())
    except ValueError:
        allowed = ", ".join(s.value for s in SagaStatus)
        raise ValueError(f"unknown saga status {status!r}; use one of: {allowed}") from None


def _resolve(fut: asyncio.Future[SagaSnapshot | None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _start_time(
    at: float | datetime.datetime | None, delay: float | datetime.timedelta | None, clock: Callable[[], float]
) -> float:
    """When a scheduled saga begins, on the engine's clock."""
    if at is not None and delay is not None:
        raise ValueError("start(): give at= or delay=, not both")
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, datetime.timedelta) else delay
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise ValueError(f"start(): delay must be a number of seconds >= 0 or a timedelta, got {delay!r}")
        return clock() + float(seconds)
    if isinstance(at, datetime.datetime):
        if at.tzinfo is None:
            raise ValueError(f"start(): at={at!r} has no time zone; use an aware datetime (e.g. tzinfo=UTC)")
        return at.timestamp()
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise ValueError(f"start(): at must be seconds since the epoch or an aware datetime, got {at!r}")
    return float(at)
