"""Committing transitions: the machine's decisions of many sagas in one transaction (group commit).

An event goes through the pure machine; the new state joins the commit queue,
merged with that saga's other pending transitions; one task commits the queue
in batches, then hands what the committed transitions asked for to the other
parts. Nothing a transition dispatched starts before it is committed.
"""

from __future__ import annotations

import asyncio
import time

from .._errors import SagaBusy
from .._messages import MessageMappingError
from .._observe import CommitInput, TransitionInput, format_traceback
from .._snapshot import SagaSnapshot
from .._status import _TERMINAL
from .._store import Write
from ..machine import (
    LOCKS,
    AcquireLocks,
    AcquirePermit,
    CancelAttempt,
    Decision,
    Event,
    HistoryEntry,
    ReleaseLocks,
    ReleasePermit,
    RunStep,
    SagaState,
    StepFailed,
    StepSucceeded,
    decide,
)
from ._base import Held, Pending, RuntimeBase, log


class Committer(RuntimeBase):
    """Carries out the machine's decisions: queues, commits, then routes their effects."""

    async def _flush(self) -> None:
        """Commit the queue now (used when no commit loop runs)."""
        while self._queue:
            await self._commit_batch()

    def _transition(
        self,
        held: Held,
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
                    st.id,
                    st.name,
                    st.version,
                    old.status,
                    st.status,
                    tuple(decision.history),
                    st.updated_at,
                    st.created_at,
                ),
            )
        held.state = st
        sid = st.id
        if held.history is not None:
            held.history.extend(decision.history)
        p = self._queue.get(sid)
        if p is not None and p.held is not held:
            # Queued for a copy of the saga this engine has let go of (it claimed the saga
            # anew): based on a revision that is gone, it could only be refused.
            del self._queue[sid]
            _refuse(p)
            p = None
        if p is None:
            p = Pending(held, old.revision, decision.history, [], insert)
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
                if type(eff) is RunStep:
                    sdef = defn[eff.step]
                    if sdef.compensation_local if eff.compensation else sdef.local:
                        p.effects.append(eff)
                    else:
                        self._message_effect(held, p, eff)
                elif isinstance(eff, CancelAttempt):
                    self._cancel_attempt(held, eff)
                elif type(eff) is ReleasePermit:
                    self._release_permit(held, eff)
                elif type(eff) is AcquirePermit:
                    p.effects.append(eff)  # waited for once the transition is committed
                elif type(eff) is ReleaseLocks:
                    # Released in the transition's own write: atomically with the saga's end.
                    if eff.keys is None:
                        p.unlock_all = True
                    elif p.unlock is None:
                        p.unlock = set(eff.keys)
                    else:
                        p.unlock.update(eff.keys)
                elif type(eff) is AcquireLocks:
                    p.acquire = eff  # asked once the transition is committed
                else:
                    # A child saga's effect (start, roll back, abort, tell the parent): after the commit.
                    if p.children is None:
                        p.children = []
                    p.children.append(eff)  # type: ignore[arg-type]
        if future is not None:
            p.futures.append(future)
        if terminal:
            for task in held.inflight.values():
                task.cancel()
            held.inflight.clear()

    def _runs_here(self, held: Held, eff: RunStep | AcquirePermit) -> bool:
        """Whether an effect keeps this worker busy with the saga (else its lease is released)."""
        if isinstance(eff, AcquirePermit):
            return True
        sdef = held.definition.by_name[eff.step]
        if sdef.compensation_local if eff.compensation else sdef.local:
            return True
        return self._messaging.fire_and_forget(held.definition, eff)

    def _message_effect(self, held: Held, p: Pending, eff: RunStep) -> None:
        """A message step's attempt: its command joins the transition's write (the outbox)."""
        try:
            msg = self._messaging.outbox_for(held.state, held.definition, eff)
        except MessageMappingError as e:
            tb = e.traceback or format_traceback(e)
            self._apply(held, StepFailed(eff.step, eff.token, str(e), retryable=False, traceback=tb))
            return
        if msg is not None:
            p.outbox.append(msg)
        p.effects.append(eff)

    def _outcome_event(self, held: Held, p: Pending, st: SagaState) -> None:
        try:
            msg = self._messaging.outcome_event(st, held.definition)
        except MessageMappingError as e:
            entry = HistoryEntry(self.clock(), "event_failed", f"the saga's outcome event was not sent: {e}")
            p.history.append(entry)
            if held.history is not None:
                held.history.append(entry)
            log.warning("sagakit: saga %s: %s", st.id, entry.message)
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
            runs_here = bool(held.inflight) or p.acquire is not None
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
            data_json = None
            if held.data_json is not None:
                if held.data_json[0] is st.data and (p.insert or p.data_changed):
                    data_json = held.data_json[1]
                held.data_json = None
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
                    data_json=data_json,
                    outbox=p.outbox,
                    inbox=p.inbox,
                    lease_seconds=self.lease_seconds if keep else None,
                    unlock=tuple(sorted(p.unlock)) if p.unlock else (),
                    unlock_all=p.unlock_all,
                    lock_wait=not keep and bool(st.meta) and _waits_for_locks(st),
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
            again: dict[str, Pending] = {}
            for sid, p in batch.items():
                p.held.committing -= 1
                newer = self._queue.get(sid)
                if newer is not None and newer.held is not p.held:
                    _refuse(p)  # the saga was claimed anew meanwhile: this copy's writes are void
                    continue
                if newer is not None:
                    p.history.extend(newer.history)
                    p.effects.extend(newer.effects)
                    p.futures.extend(newer.futures)
                    p.outbox.extend(newer.outbox)
                    p.inbox.extend(newer.inbox)
                    if newer.children:
                        p.children = [*(p.children or []), *newer.children]
                    if newer.unlock:
                        p.unlock = {*(p.unlock or ()), *newer.unlock}
                    p.unlock_all = p.unlock_all or newer.unlock_all
                    p.acquire = newer.acquire or p.acquire
                    p.state = newer.state
                    p.data_changed = p.data_changed or newer.data_changed
                p.held.queued = True
                again[sid] = p
            self._queue = {**again, **{k: v for k, v in self._queue.items() if k not in again}}
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
        proven = sent + self.lease_seconds - self._lease_margin
        for p, res in zip(batch.values(), results, strict=True):
            p.held.committing -= 1
            if not p.release and res is not None:
                p.held.lease_mono = proven
            self._after_commit(p, res, assured)

    def _after_commit(self, p: Pending, result: str | None, assured: bool = True) -> None:
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
        if p.children:
            self._child_effects(st, held.definition, p.children)
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
            if s is None or self._closing or not self._running:
                continue
            if isinstance(eff, AcquirePermit):
                if s.token == eff.token:
                    self._acquire_permit(held, eff)
                continue
            if s.token != eff.token and (eff.item is None or s.items is None or s.items[eff.item].token != eff.token):
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
        if p.acquire is not None and self._running and not self._closing:
            self._acquire_locks(held, p.acquire)

    def _record_fenced(self, sid: str, p: Pending) -> None:
        entry = HistoryEntry(
            self.clock(),
            "fenced",
            f"worker {self.worker_id} lost its lease: its transition from revision "
            f"{p.expected_revision} was refused and not applied",
        )
        self._in_background(self.store.append_history(sid, p.expected_revision, [entry]))

    def _notify(self, sid: str, held: Held, st: SagaState) -> None:
        waiters = self._waiters.get(sid)
        if not waiters:
            return
        snap = None
        if held.history is not None and held.state is st:
            snap = SagaSnapshot.from_state(st, tuple(held.history))
        for f in waiters:
            if not f.done():
                f.set_result(snap)

    def _apply(self, held: Held, event: Event, *, force: bool = False) -> None:
        decision = decide(held.definition, held.state, event, self.clock())
        if decision.rejected is not None:
            return
        if force or decision.history or decision.effects:
            self._transition(held, decision)


def _waits_for_locks(st: SagaState) -> bool:
    locks = st.meta.get(LOCKS)
    return isinstance(locks, dict) and bool(locks.get("wanted"))


def _refuse(p: Pending) -> None:
    """Drop transitions that can no longer commit; whoever waits for them learns so."""
    p.held.queued = False
    err = SagaBusy(f"saga {p.held.state.id} was claimed anew; the transition was refused")
    for f in p.futures:
        if not f.done():
            f.set_exception(err)
