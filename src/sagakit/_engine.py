"""The runtime: the only part of sagakit that does I/O.

``SagaEngine`` claims due sagas from the store under a lease, feeds events to
the pure state machine, commits the resulting transitions of many sagas in one
transaction (group commit) and, only once a transition is committed, executes
its effects: step attempts run as asyncio tasks (plain ``def`` steps on a
bounded thread pool), each under its timeout.

A saga is *held* by this engine while it has attempts in flight or
transitions waiting to commit; its lease is renewed in the background. When a
transition leaves nothing in flight the lease is released in the same write,
with the row's wake time set to the machine's next timer, and any worker
(this one included) claims it again when that time comes.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from ._context import StepContext
from ._definition import SagaDefinition
from ._errors import (
    NonRetryableError,
    PayloadTooLarge,
    SagaBusy,
    SagaNotFound,
    SagaStateError,
    StoreError,
    UnknownSagaType,
)
from ._messages import MessageMappingError, validate_state
from ._messaging import Messaging
from ._snapshot import SagaSnapshot
from ._status import SagaStatus
from ._store import DeadLetter, OutboxMessage, SagaQuery, Store, Write, store_from_url
from ._transport import Transport, transport_from_url
from .machine import (
    Abort,
    Compensate,
    Decision,
    Event,
    HistoryEntry,
    Resume,
    Retry,
    RunStep,
    SagaState,
    Skip,
    StepFailed,
    StepSucceeded,
    Timer,
    decide,
    new_saga,
    step_results,
)

__all__ = ["SagaEngine"]

log = logging.getLogger("sagakit")

_PARK_SECONDS = 30.0
# Saga ids need uniqueness, not secrecy: a generator seeded from the OS is
# ~100x cheaper per id than reading the OS's random source each time.
_ids = random.Random(os.urandom(32))


@dataclass(slots=True)
class _Held:
    """A saga this engine holds the lease of."""

    state: SagaState
    definition: SagaDefinition
    inflight: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    durable: bool = False  # the saga's row exists in the store
    # The whole history, for a saga this engine started and held since: lets
    # wait() answer without reading the store. None when part of it is elsewhere.
    history: list[HistoryEntry] | None = None
    queued: bool = False  # a transition waits in the commit queue
    committing: int = 0  # transitions in the batch being committed
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Pending:
    """Transitions of one saga waiting for the next group commit, merged."""

    held: _Held
    expected_revision: int
    history: list[HistoryEntry]
    effects: list[RunStep]
    insert: bool = False
    data_changed: bool = False
    futures: list[asyncio.Future[str]] = field(default_factory=list)
    state: SagaState | None = None
    release: bool = False
    outbox: list[OutboxMessage] = field(default_factory=list)
    inbox: list[str] = field(default_factory=list)


class SagaEngine:
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

    Use it as an async context manager: entering starts the workers and
    resumes unfinished sagas; leaving shuts down gracefully.
    """

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
    ) -> None:
        if isinstance(store, str):
            store = store_from_url(store)
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
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
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self._threads = threads
        self._definitions: dict[tuple[str, int], SagaDefinition] = {}
        self._latest: dict[str, SagaDefinition] = {}
        self._fns: dict[tuple[str, int, str, bool], tuple[Callable[..., Any], bool]] = {}
        self._held: dict[str, _Held] = {}
        self._queue: dict[str, _Pending] = {}
        self._waiters: dict[str, list[asyncio.Future[SagaSnapshot | None]]] = {}
        self._opened = False
        self._running = False
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Future[Any]] = set()
        self._work_waiter: asyncio.Future[Any] | None = None
        self._queue_ready: asyncio.Event | None = None
        self._poke: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ definitions

    def register(self, *definitions: SagaDefinition) -> None:
        """Register definitions; several versions of one saga may be registered at once."""
        for d in definitions:
            if not isinstance(d, SagaDefinition):
                raise TypeError(f"register() takes SagaDefinition objects, got {d!r}")
            self._definitions[d.key] = d
            self._messaging.register(d)
            latest = self._latest.get(d.name)
            if latest is None or d.version >= latest.version:
                self._latest[d.name] = d
            for s in d.steps:
                for comp, fn in ((False, s.action), (True, s.compensation)):
                    if fn is not None and callable(fn):
                        self._fns[(d.name, d.version, s.name, comp)] = (
                            fn,
                            inspect.iscoroutinefunction(fn),
                        )

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
        await self._ensure_open()
        self._closing = False
        self._slots = asyncio.Semaphore(self.concurrency)
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="sagakit-step")
        self._running = True
        self._tasks = [
            asyncio.create_task(self._commit_loop(), name="sagakit-commit"),
            asyncio.create_task(self._claim_loop(), name="sagakit-claim"),
            asyncio.create_task(self._renew_loop(), name="sagakit-renew"),
        ]
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
            claim, renew = self._tasks[1], self._tasks[2]
            for t in (claim, renew):
                t.cancel()
            await asyncio.gather(claim, renew, return_exceptions=True)
            if self._work_waiter is not None:
                self._work_waiter.cancel()
                await asyncio.gather(self._work_waiter, return_exceptions=True)
                self._work_waiter = None
            inflight = [t for h in self._held.values() for t in h.inflight.values()]
            if inflight:
                _, late = await asyncio.wait(inflight, timeout=self.shutdown_grace)
                for t in late:
                    t.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            self._running = False
            self._kick()
            await asyncio.gather(self._tasks[0], return_exceptions=True)
            self._tasks = []
            leftovers = []
            for sid, h in self._held.items():
                if h.timer is not None:
                    h.timer.cancel()
                orphaned = any(s.token for s in h.state.steps.values())
                leftovers.append((sid, self.clock() if orphaned else h.state.wake_at))
            self._held.clear()
            if leftovers:
                with contextlib.suppress(Exception):
                    await self.store.release(self.worker_id, leftovers)
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
    ) -> str:
        """Start a saga and return its id once it is durably stored.

        The same *idempotency_key* for the same saga name returns the id of the
        saga it started first, which is not started again.

        Raises:
            UnknownSagaType: *name* (or *version*) is not registered; nothing is stored.
            PayloadTooLarge: *data* is over the definition's ``max_payload_bytes``.
            TypeError: *data* cannot be stored as JSON.
        """
        defn = self._definition(name, version)
        try:
            blob = orjson.dumps(data)
        except TypeError as e:
            raise TypeError(f"data of saga {name!r} is not JSON-serialisable: {e}") from None
        if len(blob) > defn.max_payload_bytes:
            raise PayloadTooLarge(
                f"data of saga {name!r} is {len(blob)} bytes, over the limit of "
                f"{defn.max_payload_bytes} bytes (max_payload_bytes of the definition)"
            )
        data = orjson.loads(blob)
        if defn.state_model is not None:
            data = validate_state(defn.state_model, data if isinstance(data, dict) else {})
        await self._ensure_open()
        now = self.clock()
        saga_id = f"{_ids.getrandbits(128):032x}"
        decision = new_saga(
            defn,
            saga_id,
            data,
            now,
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
            begin=self._running and not self._closing,
        )
        return await self._insert(defn, decision)

    async def _insert(self, defn: SagaDefinition, decision: Decision) -> str:
        """Store a new saga; a running engine holds it and starts its first steps once stored."""
        if not self._running or self._closing:
            st = decision.state
            res = await self.store.commit([Write(st, 0, decision.history, st.wake_at, insert=True)])
            result: str | None = res[0]
            assert result is not None
            return result
        saga_id = decision.state.id
        held = _Held(decision.state, defn, history=[])
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
        """
        return await self._messaging.publish(event, destination=destination)

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
            delay = 0.5 if remaining is None else min(remaining, 0.5)
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
        try:
            result = orjson.loads(orjson.dumps(result))
        except TypeError as e:
            raise TypeError(f"skip result for step {step!r} is not JSON-serialisable: {e}") from None
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
        try:
            new_data = orjson.loads(orjson.dumps(new_data))
        except TypeError as e:
            raise TypeError(f"fork data is not JSON-serialisable: {e}") from None
        new_id = f"{_ids.getrandbits(128):032x}"
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

    # ------------------------------------------------------------ admin plumbing

    async def _admin(self, saga_id: str, event: Event) -> SagaSnapshot:
        rejected = await self._act(saga_id, lambda held: event)
        if rejected is not None:
            raise SagaStateError(saga_id, rejected)
        return await self.get(saga_id)

    async def _act(
        self,
        saga_id: str,
        make: Callable[[_Held], Event | str],
        *,
        inbox: str | None = None,
        busy_timeout: float = 5.0,
    ) -> str | None:
        """Apply the event *make* derives from the saga, claiming the saga if nobody holds it.

        Returns once the transition is committed, or with the reason the event
        was not applied (*make* returned a reason, or the machine rejected it).

        Raises:
            SagaNotFound: no such saga.
            SagaBusy: another worker kept the saga for *busy_timeout* seconds.
        """
        await self._ensure_open()
        loop = self._loop_()
        give_up = loop.time() + busy_timeout
        while True:
            held = self._held.get(saga_id)
            claimed = False
            if held is None:
                now = self.clock()
                st = await self.store.claim_saga(saga_id, self.worker_id, now, now + self.lease_seconds)
                if st is None:
                    if loop.time() > give_up:
                        raise SagaBusy(
                            f"saga {saga_id} is held by another worker; try again when its current step finishes"
                        )
                    await asyncio.sleep(0.05)
                    continue
                held = self._held.get(saga_id)
                if held is None:
                    defn = self._definitions.get((st.name, st.version))
                    if defn is None:
                        await self.store.release(self.worker_id, [(saga_id, self.clock())])
                        raise UnknownSagaType(
                            f"saga {saga_id} runs {st.name} v{st.version}, which is not registered with this engine"
                        )
                    held = _Held(st, defn, durable=True)
                    self._held[saga_id] = held
                    claimed = True
            made = make(held)
            if isinstance(made, str):
                rejected: str | None = made
            else:
                decision = decide(held.definition, held.state, made, self.clock())
                rejected = decision.rejected
            if rejected is not None:
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

    async def _flush(self) -> None:
        """Commit the queue now (used when no commit loop runs)."""
        while self._queue:
            await self._commit_batch()

    # ------------------------------------------------------------ transitions

    def _loop_(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def _kick(self) -> None:
        if self._queue_ready is not None:
            self._queue_ready.set()

    def _transition(
        self,
        held: _Held,
        decision: Decision,
        *,
        insert: bool = False,
        future: asyncio.Future[str] | None = None,
        inbox: str | None = None,
    ) -> None:
        old = held.state
        st = decision.state
        st.revision = old.revision + 1
        held.state = st
        sid = st.id
        if held.history is not None:
            held.history.extend(decision.history)
        p = self._queue.get(sid)
        if p is None:
            p = _Pending(held, old.revision, decision.history, [], insert=insert)
            p.data_changed = insert or st.data is not old.data
            self._queue[sid] = p
            held.queued = True
            if len(self._queue) == 1:
                self._kick()
        else:
            p.history.extend(decision.history)
            p.data_changed = p.data_changed or st.data is not old.data
        p.state = st
        if inbox is not None:
            p.inbox.append(inbox)
        if st.status.terminal and not old.status.terminal:
            self._outcome_event(held, p, st)
        if decision.effects:
            if held.durable and self._running and not self._closing:
                # Local attempts start without waiting for this transition to commit:
                # should the process die first, the last committed state still shows
                # the previous attempt running and it runs again with the same
                # idempotency key - the at-least-once contract holds either way. A
                # saga's first attempts wait for its row, so no side effect can ever
                # happen for a saga the store does not know.
                defn = held.definition.by_name
                for eff in decision.effects:
                    sdef = defn[eff.step]
                    if sdef.compensation_local if eff.compensation else sdef.local:
                        self._dispatch(held, eff)
                    else:
                        self._message_effect(held, p, eff)
            else:
                defn = held.definition.by_name
                for eff in decision.effects:
                    sdef = defn[eff.step]
                    if sdef.compensation_local if eff.compensation else sdef.local:
                        p.effects.append(eff)
                    else:
                        self._message_effect(held, p, eff)
        if future is not None:
            p.futures.append(future)
        if st.status.terminal:
            for task in held.inflight.values():
                task.cancel()
            held.inflight.clear()

    def _runs_here(self, held: _Held, eff: RunStep) -> bool:
        """Whether an effect keeps this worker busy with the saga (else its lease is released)."""
        sdef = held.definition.by_name[eff.step]
        if sdef.compensation_local if eff.compensation else sdef.local:
            return True
        return self._messaging.fire_and_forget(held.definition, eff)

    def _message_effect(self, held: _Held, p: _Pending, eff: RunStep) -> None:
        """A message step's attempt: its command joins the transition's write (the outbox)."""
        try:
            msg = self._messaging.outbox_for(held.state, held.definition, eff)
        except MessageMappingError as e:
            self._apply(held, StepFailed(eff.step, eff.token, str(e), retryable=False))
            return
        if msg is not None:
            p.outbox.append(msg)
        p.effects.append(eff)

    def _outcome_event(self, held: _Held, p: _Pending, st: SagaState) -> None:
        try:
            msg = self._messaging.outcome_event(st, held.definition)
        except MessageMappingError as e:
            p.history.append(HistoryEntry(self.clock(), "event_failed", f"the saga's outcome event was not sent: {e}"))
            return
        if msg is not None:
            p.outbox.append(msg)

    async def _commit_loop(self) -> None:
        ready = self._queue_ready
        assert ready is not None
        backoff = 0.05
        while True:
            await ready.wait()
            ready.clear()
            while self._queue:
                try:
                    await self._commit_batch()
                    backoff = 0.05
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("sagakit: commit failed; retrying in %.2fs", backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            if not self._running:
                return

    async def _commit_batch(self) -> None:
        batch = self._queue
        self._queue = {}
        now = self.clock()
        lease_until = now + self.lease_seconds
        writes = []
        for p in batch.values():
            held = p.held
            held.queued = False
            held.committing += 1
            st = p.state
            assert st is not None
            runs_here = bool(held.inflight or any(self._runs_here(held, e) for e in p.effects))
            # A timer due very soon (a short retry back-off) is kept here and fired by a
            # local timer: cheaper than a release and a claim of the same saga a moment later.
            soon = st.wake_at is not None and st.wake_at - now <= self._hold_for
            keep = (runs_here or soon) and not st.status.terminal and self._running
            if self._closing and not held.inflight:
                keep = False
            p.release = not keep
            if not keep and held.timer is not None:
                # Once released, the row's wake time is the timer: a worker claims it then.
                held.timer.cancel()
                held.timer = None
            wake = lease_until if keep else st.wake_at
            if runs_here and not keep and not held.inflight and not st.status.terminal:
                # Attempts this engine will not run (it is not running: an admin CLI, or it
                # is shutting down): the saga is due now, so a worker claims it and runs them.
                wake = now
            writes.append(
                Write(
                    st,
                    p.expected_revision,
                    p.history,
                    wake,
                    owner=self.worker_id if keep else None,
                    lease_expires=lease_until if keep else None,
                    insert=p.insert,
                    data_changed=p.data_changed,
                    outbox=p.outbox,
                    inbox=p.inbox,
                )
            )
        try:
            results = await self.store.commit(writes)
        except BaseException:
            # Nothing of the batch is committed: queue it again, ahead of newer transitions.
            for sid, p in batch.items():
                p.held.committing -= 1
                newer = self._queue.get(sid)
                if newer is not None:
                    p.history.extend(newer.history)
                    p.effects.extend(newer.effects)
                    p.futures.extend(newer.futures)
                    p.outbox.extend(newer.outbox)
                    p.inbox.extend(newer.inbox)
                    p.state = newer.state
                    p.data_changed = p.data_changed or newer.data_changed
                p.held.queued = True
            self._queue = {**batch, **{k: v for k, v in self._queue.items() if k not in batch}}
            raise
        for p, res in zip(batch.values(), results, strict=True):
            p.held.committing -= 1
            self._after_commit(p, res)

    def _after_commit(self, p: _Pending, result: str | None) -> None:
        held = p.held
        st = p.state
        assert st is not None
        sid = st.id
        if result is None or result != sid:
            # Fenced (another worker took the saga) or a duplicate idempotency key.
            if self._held.get(sid) is held:
                del self._held[sid]
            for task in held.inflight.values():
                task.cancel()
            held.inflight.clear()
            if result is None and not p.insert:
                self._record_fenced(sid, p)
                err: BaseException = SagaBusy(
                    f"saga {sid} was taken over by another worker; the transition was refused"
                )
                for f in p.futures:
                    if not f.done():
                        f.set_exception(err)
            else:
                for f in p.futures:
                    if not f.done():
                        f.set_result(result or sid)
            return
        held.durable = True
        for f in p.futures:
            if not f.done():
                f.set_result(sid)
        current = held.state
        if st.status.terminal:
            self._notify(sid, held, st)
        if self._held.get(sid) is not held:
            return
        if p.outbox:
            self._messaging.poke()
        if p.release and not held.queued and not held.committing and not held.inflight:
            del self._held[sid]
            if held.timer is not None:
                held.timer.cancel()
            if self._running and st.wake_at is not None and st.wake_at <= self.clock() + self.poll_interval:
                self._poke_claimer()  # it sleeps until the earliest wake time it finds
            return
        by_name = held.definition.by_name
        for eff in p.effects:
            s = current.steps.get(eff.step)
            if s is None or s.token != eff.token or self._closing or not self._running:
                continue
            sdef = by_name[eff.step]
            if sdef.compensation_local if eff.compensation else sdef.local:
                self._dispatch(held, eff)
            elif self._messaging.fire_and_forget(held.definition, eff):
                self._apply(held, StepSucceeded(eff.step, eff.token))
        if not held.queued:
            # A newer transition is still to be committed otherwise; its commit sets the
            # timer, if it keeps the saga here at all.
            self._set_timer(held)

    def _record_fenced(self, sid: str, p: _Pending) -> None:
        entry = HistoryEntry(
            self.clock(),
            "fenced",
            f"worker {self.worker_id} lost its lease: its transition from revision "
            f"{p.expected_revision} was refused and not applied",
        )
        self._in_background(self.store.append_history(sid, p.expected_revision, [entry]))

    def _in_background(self, aw: Awaitable[Any]) -> None:
        """Run a store write that no caller waits for; close() waits for it."""
        task = asyncio.ensure_future(aw)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    def _notify(self, sid: str, held: _Held, st: SagaState) -> None:
        waiters = self._waiters.get(sid)
        if not waiters:
            return
        snap = None
        if held.history is not None and held.state is st:
            snap = SagaSnapshot.from_state(st, tuple(held.history))
        for f in waiters:
            if not f.done():
                f.set_result(snap)

    def _set_timer(self, held: _Held) -> None:
        if held.timer is not None:
            held.timer.cancel()
            held.timer = None
        wake = held.state.wake_at
        if wake is None:
            return
        loop = self._loop_()
        delay = max(0.0, wake - self.clock())
        held.timer = loop.call_later(delay, self._fire_timer, held.state.id)

    def _fire_timer(self, sid: str) -> None:
        held = self._held.get(sid)
        if held is None:
            return
        held.timer = None
        self._apply(held, Timer())

    def _apply(self, held: _Held, event: Event, *, force: bool = False) -> None:
        decision = decide(held.definition, held.state, event, self.clock())
        if decision.rejected is not None:
            return
        if force or decision.history or decision.effects:
            self._transition(held, decision)

    # ------------------------------------------------------------ steps

    def _dispatch(self, held: _Held, eff: RunStep) -> None:
        task = asyncio.create_task(self._run_step(held, eff))
        held.inflight[eff.token] = task

    async def _run_step(self, held: _Held, eff: RunStep) -> None:
        st = held.state
        defn = held.definition
        name = eff.step
        key = (defn.name, defn.version, name, eff.compensation)
        entry = self._fns.get(key)
        direction = "compensation" if eff.compensation else "action"
        event: Event
        slots = self._slots
        assert slots is not None
        try:
            if entry is None:
                raise NonRetryableError(f"step {name!r} has no local {direction}: message steps need a transport")
            fn, is_async = entry
            ctx = StepContext(
                saga_id=st.id,
                saga_name=st.name,
                step=name,
                attempt=eff.attempt,
                data=st.data,
                results=step_results(st),
                idempotency_key=f"{st.id}:{name}:{direction}",
                correlation_id=st.correlation_id,
                compensation=eff.compensation,
                result=st.steps[name].result if eff.compensation else None,
            )
            async with slots:
                if eff.timeout is None:
                    result = await self._call(fn, is_async, ctx)
                else:
                    async with asyncio.timeout(eff.timeout):
                        result = await self._call(fn, is_async, ctx)
            if result is None:
                event = StepSucceeded(name, eff.token, None, 4)
            else:
                try:
                    blob = orjson.dumps(result)
                except TypeError as e:
                    event = StepFailed(
                        name,
                        eff.token,
                        f"{direction} of step {name!r} returned a value that is not "
                        f"JSON-serialisable ({type(result).__name__}): {e}",
                        retryable=False,
                    )
                else:
                    event = StepSucceeded(name, eff.token, orjson.loads(blob), len(blob))
        except TimeoutError:
            event = StepFailed(name, eff.token, f"attempt {eff.attempt} timed out after {eff.timeout}s")
        except asyncio.CancelledError:
            held.inflight.pop(eff.token, None)
            raise
        except NonRetryableError as e:
            event = StepFailed(name, eff.token, _describe(e), retryable=False)
        except Exception as e:
            sdef = defn.by_name[name]
            policy = sdef.compensation_retry if eff.compensation else sdef.retry
            event = StepFailed(name, eff.token, _describe(e), retryable=policy.is_retryable(e))
        if held.inflight.pop(eff.token, None) is None or self._held.get(st.id) is not held:
            return  # the saga was aborted, finished or taken over meanwhile
        self._apply(held, event)

    async def _call(self, fn: Callable[..., Any], is_async: bool, ctx: StepContext) -> Any:
        if is_async:
            return await fn(ctx)
        assert self._executor is not None
        result = await self._loop_().run_in_executor(self._executor, fn, ctx)
        if inspect.isawaitable(result):
            return await result
        return result

    # ------------------------------------------------------------ claiming

    def _poke_claimer(self) -> None:
        if self._poke is not None:
            self._poke.set()

    async def _claim_loop(self) -> None:
        poke = self._poke
        assert poke is not None
        backoff = 0.05
        while True:
            poke.clear()
            try:
                claimed = await self._claim_once()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sagakit: claiming failed; retrying in %.2fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if claimed:
                await asyncio.sleep(0)
                continue
            delay = self.poll_interval
            try:
                nxt = await self.store.next_wake()
            except Exception:
                nxt = None
            if nxt is not None:
                delay = min(delay, max(0.002, nxt - self.clock()))
            await self._idle(poke, delay)

    async def _idle(self, poke: asyncio.Event, delay: float) -> None:
        """Sleep until poked, until *delay* passes, or until the store says work may be due.

        A store with ``wait_for_work`` (PostgreSQL's LISTEN/NOTIFY) wakes idle
        workers when another worker's commit makes a saga due; polling stays
        the fallback.
        """
        wait_for_work = getattr(self.store, "wait_for_work", None)
        if wait_for_work is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(poke.wait(), delay)
            return
        # The store's wait lives on across idle periods: cancelling it midway (say,
        # while it connects its listener) would leave it never listening.
        work = self._work_waiter
        if work is None or work.done():
            work = self._work_waiter = asyncio.ensure_future(wait_for_work(self.poll_interval))
        poked = asyncio.ensure_future(poke.wait())
        try:
            await asyncio.wait({poked, work}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            poked.cancel()
            with contextlib.suppress(BaseException):
                await poked
        if work.done() and not work.cancelled() and work.exception() is not None:
            log.warning("sagakit: waiting for work failed: %s", work.exception())

    async def _claim_once(self) -> bool:
        room = self.concurrency * 2 - len(self._held)
        if room <= 0:
            return False
        now = self.clock()
        limit = min(room, 256)
        states = await self.store.claim(self.worker_id, now, now + self.lease_seconds, limit)
        for st in states:
            self._adopt(st)
        return len(states) == limit

    def _adopt(self, st: SagaState) -> None:
        old = self._held.pop(st.id, None)
        if old is not None:
            for task in old.inflight.values():
                task.cancel()
        defn = self._definitions.get((st.name, st.version))
        if defn is None:
            self._park(st)
            return
        held = _Held(st, defn, durable=True)
        self._held[st.id] = held
        self._apply(held, Resume(), force=True)

    def _park(self, st: SagaState) -> None:
        """A saga whose definition version is not registered here waits for a worker that has it."""
        reason = f"parked: definition {st.name} v{st.version} is not registered in worker {self.worker_id}"
        new = st.copy()
        new.revision = st.revision + 1
        new.meta = {**st.meta, "parked": reason}
        history = [] if st.meta.get("parked") == reason else [HistoryEntry(self.clock(), "parked", reason)]
        wake = self.clock() + _PARK_SECONDS
        self._in_background(self.store.commit([Write(new, st.revision, history, wake, data_changed=False)]))

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            ids = [sid for sid, h in self._held.items() if not h.queued and not h.committing]
            if not ids:
                continue
            try:
                lost = await self.store.renew(self.worker_id, ids, self.clock() + self.lease_seconds)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sagakit: renewing leases failed")
                continue
            for sid in lost:
                held = self._held.get(sid)
                if held is not None and not held.queued and not held.committing:
                    del self._held[sid]
                    running = [
                        f"{n!r} attempt {s.compensation_attempts if s.status.value == 'compensating' else s.attempts}"
                        for n, s in held.state.steps.items()
                        if s.token and s.token in held.inflight
                    ]
                    for task in held.inflight.values():
                        task.cancel()
                    log.warning("sagakit: lease of saga %s was lost to another worker", sid)
                    if running:
                        entry = HistoryEntry(
                            self.clock(),
                            "fenced",
                            f"worker {self.worker_id} lost its lease while running {', '.join(running)}; "
                            "it stopped them and none of their results is applied",
                        )
                        self._in_background(self.store.append_history(sid, held.state.revision, [entry]))

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


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("sagakit: background store write failed", exc_info=task.exception())
