"""The runtime's machinery under SagaEngine: transitions, group commit, step attempts, claims, leases.

``_Runtime`` holds what the public ``SagaEngine`` (``_engine.py``) runs on:

- **transitions**: an event goes through the pure machine; the new state joins
  the commit queue, merged with that saga's other pending transitions;
- **group commit**: one task commits the queue in batches (one transaction
  each), then starts what the committed transitions asked for;
- **step attempts**: asyncio tasks (plain ``def`` steps on a bounded thread
  pool), each under its timeout; an attempt starts only once the transition
  that dispatched it is committed (write-ahead), and is cancelled when the
  machine says so;
- **claims and leases**: idle workers claim due sagas, renew the leases of the
  sagas they hold and release them when nothing runs here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._context import StepContext
from ._definition import SagaDefinition
from ._errors import NonRetryableError, SagaBusy
from ._messages import MessageMappingError
from ._messaging import Messaging
from ._observe import AttemptInput, CommitInput, Observer, TransitionInput
from ._requests import decode_admin
from ._snapshot import SagaSnapshot
from ._status import _TERMINAL
from ._store import OutboxMessage, Store, Write
from .machine import (
    KEEP,
    CancelAttempt,
    Decision,
    Event,
    HistoryEntry,
    Resume,
    RunStep,
    SagaState,
    StepFailed,
    StepSucceeded,
    Timer,
    decide,
)

__all__ = ["_Held", "_Pending", "_Runtime", "_Slots"]

log = logging.getLogger("sagakit")

_NOT_RUN = object()  # what a thread returns for an attempt cancelled before it started
# StepSucceeded((step, token, result, size, data)) without the named tuple's generated __new__.
_succeeded = functools.partial(tuple.__new__, StepSucceeded)


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


class _Slots:
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


class _Runtime:
    """The machinery of SagaEngine; its attributes are set by SagaEngine.__init__."""

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
    _fns: dict[tuple[str, int, str, bool], tuple[Callable[..., Any], bool]]
    _held: dict[str, _Held]
    _queue: dict[str, _Pending]
    _waiters: dict[str, list[asyncio.Future[SagaSnapshot | None]]]
    _messaging: Messaging
    _running: bool
    _closing: bool
    _queue_ready: asyncio.Event | None
    _poke: asyncio.Event | None
    _slots: _Slots | None
    _executor: ThreadPoolExecutor | None
    _loop: asyncio.AbstractEventLoop | None
    _background: set[asyncio.Future[Any]]
    _work_waiter: asyncio.Future[Any] | None
    _observers: tuple[Observer, ...]
    _opened: bool

    def _report(self, method: str, event: object) -> None:
        for o in self._observers:
            try:
                getattr(o, method)(event)
            except Exception:
                log.exception("sagakit: observer %r failed in %s", o, method)

    async def _flush(self) -> None:
        """Commit the queue now (used when no commit loop runs)."""
        while self._queue:
            await self._commit_batch()

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
        if self._observers:
            self._report(
                "on_transition",
                TransitionInput(
                    st.id, st.name, st.version, old.status, st.status, tuple(decision.history), st.updated_at
                ),
            )
        held.state = st
        sid = st.id
        if held.history is not None:
            held.history.extend(decision.history)
        p = self._queue.get(sid)
        if p is None:
            p = _Pending(held, old.revision, decision.history, [], insert)
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
        terminal = st.status in _TERMINAL
        if terminal and old.status not in _TERMINAL:
            self._outcome_event(held, p, st)
        if decision.effects:
            # Write-ahead: an attempt starts only once the transition that dispatched it is
            # committed (_after_commit), so the store knows of every attempt that may have had
            # an effect, whatever happens to this process. A message step's command joins the
            # same write through the outbox.
            defn = held.definition.by_name
            for eff in decision.effects:
                if isinstance(eff, CancelAttempt):
                    self._cancel_attempt(held, eff)
                    continue
                sdef = defn[eff.step]
                if sdef.compensation_local if eff.compensation else sdef.local:
                    p.effects.append(eff)
                else:
                    self._message_effect(held, p, eff)
        if future is not None:
            p.futures.append(future)
        if terminal:
            for task in held.inflight.values():
                task.cancel()
            held.inflight.clear()

    def _cancel_attempt(self, held: _Held, eff: CancelAttempt) -> None:
        """Stop a local attempt the machine has cancelled; a thread running it is abandoned."""
        task = held.inflight.pop(eff.token, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

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
            # One turn of the loop first: steps already scheduled run, and the transitions
            # they make join this batch (a claimed saga's first and last transitions then
            # go in one write instead of two).
            await asyncio.sleep(0)
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
            runs_here = bool(held.inflight)
            if not runs_here:
                for e in p.effects:
                    if self._runs_here(held, e):
                        runs_here = True
                        break
            terminal = st.status in _TERMINAL
            # A timer due very soon (a short retry back-off) is kept here and fired by a
            # local timer: cheaper than a release and a claim of the same saga a moment later.
            soon = st.wake_at is not None and st.wake_at - now <= self._hold_for
            keep = (runs_here or soon) and not terminal and self._running
            if self._closing and not held.inflight:
                keep = False
            p.release = not keep
            if not keep and held.timer is not None:
                # Once released, the row's wake time is the timer: a worker claims it then.
                held.timer.cancel()
                held.timer = None
            wake = lease_until if keep else st.wake_at
            if runs_here and not keep and not held.inflight and not terminal:
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
                    lease_seconds=self.lease_seconds if keep else None,
                )
            )
        sent = time.monotonic()
        try:
            results = await self.store.commit(writes)
            if self._observers:
                refused = sum(1 for r, p in zip(results, batch.values(), strict=True) if r is None and not p.insert)
                self._report("on_commit", CommitInput(len(writes), refused, now, self.clock()))
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
        # The leases this commit set run from no earlier than the moment it was sent (on
        # the database's clock, which runs at the rate of ours). A commit that took so long
        # that they may be nearly over proves nothing: what it dispatched is not started
        # here, and whoever holds the saga next runs it (it is recorded as running).
        assured = time.monotonic() - sent < self.lease_seconds - self._lease_margin
        if not assured:
            log.warning(
                "sagakit: a commit took %.1fs, too close to the %.1fs lease: its attempts are left to the next holder",
                time.monotonic() - sent,
                self.lease_seconds,
            )
        for p, res in zip(batch.values(), results, strict=True):
            p.held.committing -= 1
            self._after_commit(p, res, assured)

    def _after_commit(self, p: _Pending, result: str | None, assured: bool = True) -> None:
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
        if st.status in _TERMINAL:
            self._notify(sid, held, st)
        if self._held.get(sid) is not held:
            return
        if p.outbox:
            self._messaging.poke()
        if not assured and not p.release:
            # Its lease is not proven: start nothing, let go of it, and leave it to whoever
            # claims it once the lease has run out.
            del self._held[sid]
            if held.timer is not None:
                held.timer.cancel()
            for task in held.inflight.values():
                task.cancel()
            held.inflight.clear()
            return
        if p.release and not held.queued and not held.committing and not held.inflight:
            del self._held[sid]
            if held.timer is not None:
                held.timer.cancel()
            if self._running and (
                (st.wake_at is not None and st.wake_at <= self.clock() + self.poll_interval)
                or len(self._held) + 1 == self.concurrency * 2
            ):
                self._poke_claimer()  # it sleeps until the earliest wake time it finds, or until there is room
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

    def _dispatch(self, held: _Held, eff: RunStep) -> None:
        task = asyncio.create_task(self._run_attempt(held, eff))
        held.inflight[eff.token] = task

    async def _run_attempt(self, held: _Held, eff: RunStep) -> None:
        """Run one attempt and apply its outcome, unless the saga moved on meanwhile."""
        event = await self._run_step(held, eff)
        if held.inflight.pop(eff.token, None) is None or self._held.get(held.state.id) is not held:
            return  # cancelled, or the saga was aborted, finished or taken over meanwhile
        self._apply(held, event)

    async def _run_step(self, held: _Held, eff: RunStep) -> Event:
        st = held.state
        defn = held.definition
        name = eff.step
        key = (defn.name, defn.version, name, eff.compensation)
        entry = self._fns.get(key)
        direction = "compensation" if eff.compensation else "action"
        event: Event
        slots = self._slots
        assert slots is not None
        started = self.clock() if self._observers else 0.0
        try:
            if entry is None:
                raise NonRetryableError(f"step {name!r} has no local {direction}: message steps need a transport")
            fn, is_async = entry
            ctx = StepContext._of(st, name, eff.attempt, eff.compensation)
            if slots.free and not slots.waiters:
                slots.free -= 1
            else:
                await slots.wait()
            try:
                if is_async:
                    if eff.timeout is None:
                        result = await fn(ctx)
                    else:
                        async with asyncio.timeout(eff.timeout):
                            result = await fn(ctx)
                else:
                    result = await self._call_in_thread(fn, ctx, eff.timeout, functools.partial(self._late, held, eff))
            finally:
                slots.release()
            if result is None:
                event = _succeeded((name, eff.token, None, 4, KEEP))
            else:
                try:
                    blob = orjson.dumps(result)
                except TypeError as e:
                    # The function ran to its end: its effect happened, only its result is lost.
                    event = StepFailed(
                        name,
                        eff.token,
                        f"{direction} of step {name!r} returned a value that is not "
                        f"JSON-serialisable ({type(result).__name__}): {e}",
                        False,
                        True,
                    )
                else:
                    event = _succeeded((name, eff.token, orjson.loads(blob), len(blob), KEEP))
        except TimeoutError:
            # The attempt was cut off mid-way: it may have had its effect.
            event = StepFailed(name, eff.token, f"attempt {eff.attempt} timed out after {eff.timeout}s", True, True)
        except asyncio.CancelledError:
            held.inflight.pop(eff.token, None)
            raise
        except NonRetryableError as e:
            event = StepFailed(name, eff.token, _describe(e), retryable=False)
        except Exception as e:
            sdef = defn.by_name[name]
            policy = sdef.compensation_retry if eff.compensation else sdef.retry
            event = StepFailed(name, eff.token, _describe(e), retryable=policy.is_retryable(e))
        if self._observers:
            error = event.error if isinstance(event, StepFailed) else None
            outcome = "succeeded" if error is None else ("timed_out" if "timed out" in error else "failed")
            self._report(
                "on_attempt",
                AttemptInput(
                    st.id, st.name, name, eff.attempt, eff.compensation, started, self.clock(), outcome, error,
                    st.correlation_id,
                ),
            )  # fmt: skip
        return event

    async def _call_in_thread(
        self,
        fn: Callable[..., Any],
        ctx: StepContext,
        timeout: float | None,
        late: Callable[[asyncio.Future[Any]], None],
    ) -> Any:
        """Run a plain function on the thread pool; its timeout counts from when a thread starts it.

        On timeout or cancellation the thread cannot be stopped: it is abandoned,
        and *late* is told when it ends; what it returns is never applied.
        """
        executor = self._executor
        assert executor is not None
        loop = self._loop_()
        started: asyncio.Future[None] = loop.create_future()
        abandoned = False

        def run() -> Any:
            if abandoned:
                return _NOT_RUN  # cancelled while it waited for a thread: it never starts
            loop.call_soon_threadsafe(_set_done, started)
            return fn(ctx)

        done = loop.run_in_executor(executor, run)
        try:
            if timeout is None:
                result = await asyncio.shield(done)
            else:
                await asyncio.wait({started, done}, return_when=asyncio.FIRST_COMPLETED)
                async with asyncio.timeout(timeout):
                    result = await asyncio.shield(done)
        except BaseException:
            abandoned = True
            done.add_done_callback(late)
            raise
        if inspect.isawaitable(result):
            return await result
        return result

    def _late(self, held: _Held, eff: RunStep, fut: asyncio.Future[Any]) -> None:
        """An abandoned thread finished: record that its outcome came too late and is not applied."""
        if fut.cancelled() or not self._opened:
            return
        exc = fut.exception()
        if exc is None and fut.result() is _NOT_RUN:
            return
        how = f"raised {_describe(exc)}" if exc is not None else "returned"
        what = "compensation of step" if eff.compensation else "step"
        entry = HistoryEntry(
            self.clock(),
            "stale_rejected",
            f"{what} {eff.step!r} attempt {eff.attempt} {how} after it was abandoned; its result is not applied",
            eff.step,
            eff.attempt,
        )
        self._in_background(self.store.append_history(held.state.id, held.state.revision, [entry]))

    def _poke_claimer(self) -> None:
        if self._poke is not None:
            self._poke.set()

    async def _claim_loop(self) -> None:
        poke = self._poke
        assert poke is not None
        backoff = 0.05
        # close() sets _closing before it cancels this task: should a cancellation still be
        # lost (asyncio.wait_for can drop one that races its inner future, Python < 3.12),
        # the loop ends at its next turn instead of polling on with close() waiting for it.
        while not self._closing:
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
            if self._full():
                # Nothing can be taken on until a held saga is let go; its release pokes.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poke.wait(), self.poll_interval)
                continue
            delay = self.poll_interval
            try:
                nxt = await self.store.next_wake(self._definitions.keys()) if self._definitions else None
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
            # gather, not a suppressed await: should this task be cancelled (close()) while it
            # waits here, the cancellation must reach the claim loop instead of being swallowed.
            await asyncio.gather(poked, return_exceptions=True)
        if work.done() and not work.cancelled() and work.exception() is not None:
            log.warning("sagakit: waiting for work failed: %s", work.exception())

    def _full(self) -> bool:
        """Whether this engine holds as many sagas as it takes on."""
        return len(self._held) >= self.concurrency * 2

    async def _claim_once(self) -> bool:
        room = self.concurrency * 2 - len(self._held)
        if room <= 0:
            return False
        kinds = self._definitions.keys()
        if not kinds:
            return False  # a process that runs no definition never claims a saga
        now = self.clock()
        limit = min(room, 256)
        states = await self.store.claim(self.worker_id, now, now + self.lease_seconds, limit, kinds)
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
            # Claims name this engine's definitions; one unregistered meanwhile is let go.
            self._in_background(self.store.release(self.worker_id, [(st.id, self.clock())]))
            return
        held = _Held(st, defn, durable=True)
        self._held[st.id] = held
        self._apply(held, Resume(), force=True)

    async def _requests_loop(self) -> None:
        """Carry out operators' requests for sagas this engine holds (it alone can cancel what runs)."""
        while True:
            await asyncio.sleep(self._request_poll)
            if not self._held:
                continue
            try:
                requests = await self.store.open_requests()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sagakit: reading operator requests failed")
                continue
            for rid, sid, text in requests:
                held = self._held.get(sid)
                if held is None:
                    continue
                try:
                    await self._answer(rid, held, text)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("sagakit: carrying out operator request %s for saga %s failed", rid, sid)

    async def _answer(self, rid: str, held: _Held, text: str) -> None:
        try:
            event = decode_admin(text)
        except ValueError as e:
            await self.store.answer_request(rid, str(e))
            return
        decision = decide(held.definition, held.state, event, self.clock())
        if decision.rejected is not None:
            await self.store.append_history(held.state.id, held.state.revision, decision.history)
            await self.store.answer_request(rid, decision.rejected)
            return
        fut: asyncio.Future[str] = self._loop_().create_future()
        self._transition(held, decision, future=fut)
        try:
            await fut
        except SagaBusy:
            return  # fenced: the saga has a new holder, which the requester reaches by itself
        await self.store.answer_request(rid, "")

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            ids = [sid for sid, h in self._held.items() if not h.queued and not h.committing]
            if not ids:
                continue
            try:
                now = self.clock()
                lost = await self.store.renew(self.worker_id, ids, now + self.lease_seconds, now=now)
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


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("sagakit: background store write failed", exc_info=task.exception())
