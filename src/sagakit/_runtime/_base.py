"""What the runtime's parts share: the sagas held, the commit queue, and the engine's settings.

``RuntimeBase`` declares the attributes ``SagaEngine.__init__`` sets and the
methods by which one part hands work to another; each part implements its own
(``commit``, ``attempts``, ``leases``, ``timers``, ``requests``) and none imports
another: ``SagaEngine`` combines them.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from .._definition import SagaDefinition
from .._observe import Observer, Tracer, is_tracer
from .._snapshot import SagaSnapshot
from .._store import OutboxMessage, Store
from ..machine import (
    AcquireLocks,
    AcquirePermit,
    CancelAttempt,
    ChildEffect,
    Decision,
    Event,
    HistoryEntry,
    ReleasePermit,
    RunStep,
    SagaState,
)

__all__ = ["Held", "MessageSide", "Pending", "RuntimeBase", "Slots", "log"]

log = logging.getLogger("sagakit")
K = TypeVar("K")
V = TypeVar("V")


@dataclass(slots=True)
class Held:
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
    # Until when (time.monotonic()) the lease is proven to last, less a margin: set when a
    # claim, a commit that keeps the lease, or a renewal succeeds. No attempt starts after it.
    lease_mono: float = 0.0
    # The saga's data object and its JSON text, when the text is at hand (a saga started here):
    # its first write stores the text instead of encoding the data again.
    data_json: tuple[Any, str] | None = None


class Slots:
    """How many more step attempts may run at once: a semaphore whose free path is two attribute reads.

    Take a slot with ``if slots.free and not slots.waiters: slots.free -= 1``,
    else ``await slots.wait()``; give it back with ``release()``.
    """

    __slots__ = ("free", "waiters")

    def __init__(self, n: int) -> None:
        self.free = n
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def wait(self) -> None:
        """Wait for a slot; ``release`` hands it over directly."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot, then cancelled before taking it: pass it on
            raise

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


@dataclass(slots=True)
class Pending:
    """Transitions of one saga waiting for the next group commit, merged."""

    held: Held
    expected_revision: int
    history: list[HistoryEntry]
    effects: list[RunStep | AcquirePermit]
    insert: bool = False
    data_changed: bool = False
    futures: list[asyncio.Future[str]] = field(default_factory=list)
    state: SagaState | None = None
    release: bool = False
    outbox: list[OutboxMessage] = field(default_factory=list)
    inbox: list[str] = field(default_factory=list)
    children: list[ChildEffect] | None = None  # child sagas' effects, carried out after the commit
    # Semantic locks: keys to release in the write (or all of them), and the acquisition to
    # ask the store for once it is committed.
    unlock: set[str] | None = None
    unlock_all: bool = False
    acquire: AcquireLocks | None = None


class MessageSide(Protocol):
    """What the committer asks of the message side (``messaging.Messaging``)."""

    def outbox_for(self, st: SagaState, defn: SagaDefinition, eff: RunStep) -> OutboxMessage | None: ...

    def fire_and_forget(self, defn: SagaDefinition, eff: RunStep) -> bool: ...

    def outcome_event(self, st: SagaState, defn: SagaDefinition) -> OutboxMessage | None: ...

    def poke(self) -> None: ...


class Batcher(Generic[K, V]):
    """Concurrent lookups of single keys answered by one call for all of them.

    Like a group commit: one call is in flight at a time, and the keys asked
    for meanwhile go in the next. *fetch* gets the distinct keys and returns a
    value for each it knows; a key it leaves out gets *missing*.
    """

    def __init__(self, fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]], missing: V) -> None:
        self._fetch = fetch
        self._missing = missing
        self._waiting: dict[K, list[asyncio.Future[V]]] = {}
        self._task: asyncio.Future[None] | None = None

    async def get(self, key: K) -> V:
        fut: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(fut)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return await fut

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                try:
                    got = await self._fetch(list(batch))
                except asyncio.CancelledError:
                    for futs in batch.values():
                        for f in futs:
                            f.cancel()
                    raise
                except Exception as e:
                    for futs in batch.values():
                        for f in futs:
                            if not f.done():
                                f.set_exception(e)
                    continue
                self._deliver(batch, got)
        finally:
            self._task = None

    def _deliver(self, batch: dict[K, list[asyncio.Future[V]]], got: Mapping[K, V]) -> None:
        """Answer the callers of one batch (those still waiting) with what the call found."""
        for key, futs in batch.items():
            value = got.get(key, self._missing)
            for f in futs:
                if not f.done():
                    f.set_result(value)


class RuntimeBase:
    """The engine's state as the parts see it; the attributes are set by SagaEngine.__init__."""

    store: Store
    clock: Callable[[], float]
    worker_id: str
    lease_seconds: float
    poll_interval: float
    concurrency: int
    _hold_for: float
    _lease_margin: float
    _request_poll: float
    _definitions: dict[tuple[str, int], SagaDefinition]
    # (definition name, version, step, compensation?) -> (function, is it async, the model each
    # step of the definition is annotated to return, by step name)
    _fns: dict[tuple[str, int, str, bool], tuple[Callable[..., Any], bool, Mapping[str, type]]]
    _held: dict[str, Held]
    _queue: dict[str, Pending]
    _waiters: dict[str, list[asyncio.Future[SagaSnapshot | None]]]
    _messaging: MessageSide
    _running: bool
    _closing: bool
    _queue_ready: asyncio.Event | None
    _poke: asyncio.Event | None
    _slots: Slots | None
    _executor: ThreadPoolExecutor | None
    _loop: asyncio.AbstractEventLoop | None
    _background: set[asyncio.Future[Any]]
    _work_waiter: asyncio.Future[Any] | None
    # Sagas asked for by events and commands, claimed together (see Leases._claim_by_id).
    _claims: Batcher[str, tuple[SagaState | None, float] | None] | None
    _inbox_lookups: Batcher[str, bool] | None
    _observers: tuple[Observer, ...]
    _opened: bool

    @functools.cached_property
    def _tracers(self) -> tuple[Tracer, ...]:
        """The observers that trace (see ``sagakit._observe.Tracer``); empty keeps attempts untraced."""
        return tuple(o for o in self._observers if is_tracer(o))  # type: ignore[misc]

    def _report(self, method: str, event: object) -> None:
        for o in self._observers:
            try:
                getattr(o, method)(event)
            except Exception:
                log.exception("sagakit: observer %r failed in %s", o, method)

    async def _inbox_seen(self, message_id: str) -> bool:
        """Whether a message's effect is committed; lookups made together go in one store call."""
        many = getattr(self.store, "inbox_seen_many", None)
        if many is None:
            return await self.store.inbox_seen(message_id)
        if self._inbox_lookups is None:

            async def fetch(ids: list[str]) -> Mapping[str, bool]:
                return dict.fromkeys(await many(ids), True)

            self._inbox_lookups = Batcher(fetch, False)
        return await self._inbox_lookups.get(message_id)

    def _loop_(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def _kick(self) -> None:
        if self._queue_ready is not None:
            self._queue_ready.set()

    def _in_background(self, aw: Awaitable[Any]) -> None:
        """Run a store write that no caller waits for; close() waits for it."""
        task = asyncio.ensure_future(aw)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(log_failure)

    # ------------------------------------------------------------ handed from part to part

    def _transition(
        self,
        held: Held,
        decision: Decision,
        *,
        insert: bool = False,
        future: asyncio.Future[str] | None = None,
        inbox: str | None = None,
    ) -> None:
        """Queue a decision of the machine for the next group commit (``commit``)."""
        raise NotImplementedError

    def _apply(self, held: Held, event: Event, *, force: bool = False) -> None:
        """Feed an event to the machine and queue what it decides (``commit``)."""
        raise NotImplementedError

    def _dispatch(self, held: Held, eff: RunStep) -> None:
        """Start a committed attempt (``attempts``)."""
        raise NotImplementedError

    def _cancel_attempt(self, held: Held, eff: CancelAttempt) -> None:
        """Stop an attempt the machine cancelled (``attempts``)."""
        raise NotImplementedError

    def _acquire_permit(self, held: Held, eff: AcquirePermit) -> None:
        """Wait for a permit a committed transition asked for (``permits``)."""
        raise NotImplementedError

    def _release_permit(self, held: Held, eff: ReleasePermit) -> None:
        """Give back the permit of an attempt the machine ended (``permits``)."""
        raise NotImplementedError

    async def _renew_permits(self) -> None:
        """Keep this worker's resource permits alive (``permits``)."""
        raise NotImplementedError

    def _set_timer(self, held: Held) -> None:
        """Arm the saga's next timer (``timers``)."""
        raise NotImplementedError

    def _acquire_locks(self, held: Held, eff: AcquireLocks) -> None:
        """Ask the store for a committed acquisition of semantic locks (``locks``)."""
        raise NotImplementedError

    def _poke_claimer(self) -> None:
        """Wake the claim loop (``leases``)."""
        raise NotImplementedError

    async def _say_alive(self) -> None:
        """Tell the store this worker runs, and which definitions it has (the engine)."""
        raise NotImplementedError

    def _child_effects(self, parent: SagaState, definition: SagaDefinition | None, effects: list[ChildEffect]) -> None:
        """Carry out the child sagas' effects of a committed transition of *parent* (``children``)."""
        raise NotImplementedError

    async def _act(
        self,
        saga_id: str,
        make: Callable[[Held], Event | str],
        *,
        inbox: str | None = None,
        busy_timeout: float = 5.0,
        admin: Event | None = None,
    ) -> str | None:
        """Apply an event to a saga wherever it is held; the reason if it was not applied (the engine)."""
        raise NotImplementedError

    def _definition(self, name: str, version: int | None) -> SagaDefinition:
        """The registered definition *name* (newest, or *version*) (the engine)."""
        raise NotImplementedError

    def _prepare_data(self, defn: SagaDefinition, data: Any) -> Any:
        """*data* in JSON form, checked against the definition's limits and model (the engine)."""
        raise NotImplementedError

    async def _insert(self, defn: SagaDefinition, decision: Decision, data_json: str | None = None) -> str:
        """Store a new saga, begun here when this engine runs (the engine)."""
        raise NotImplementedError


def log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("sagakit: background store write failed", exc_info=task.exception())
