"""What the runtime and the world report: attempts that ended, replies and events, timers, restarts."""

from __future__ import annotations

from collections.abc import Mapping

from .._definition import SagaDefinition, StepAction, StepDefinition
from .._status import SagaStatus
from . import _locks
from ._children import recheck
from ._items import has_inflight, pump, resume_items, stop_items
from ._progress import (
    _S,
    _begin,
    _clear_rollback,
    _entry,
    _fail_past_pivot,
    _not_yet,
    _own,
    _past_pivot_name,
    _refuse_rollback,
    _rollback,
    _running_pivot,
    _started,
    _wait_for_permit,
    attempt_timeout,
    fail_unlocked,
)
from ._types import (
    FAILURE,
    KEEP,
    LOCKS,
    ROLLBACK,
    Effect,
    HistoryEntry,
    LocksGranted,
    LocksRefused,
    PermitGranted,
    ReleasePermit,
    Reply,
    RunStep,
    SagaState,
    StepFailed,
    StepState,
    StepSucceeded,
)


def _on_completion(
    defn: SagaDefinition,
    st: SagaState,
    ev: StepSucceeded | StepFailed,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> bool:
    if ev.item is not None:
        return _on_item(defn, st, ev, ev.item, now, fx, hist)
    s = st.steps.get(ev.step)
    if s is None or s.token == 0 or s.token != ev.token:
        current = "none" if s is None or s.token == 0 else str(s.token)
        hist.append(
            HistoryEntry(
                now,
                "stale_rejected",
                f"completion of step {ev.step!r} with token {ev.token} rejected: "
                f"current token is {current} (the attempt is no longer current)",
                ev.step,
            )
        )
        return False
    sdef = defn.by_name[ev.step]
    compensating = s.status is _S.COMPENSATING
    s = _own(st, ev.step)
    s.token = 0
    if isinstance(ev, StepSucceeded) and ev.data is not KEEP and ev.size <= defn.max_payload_bytes:
        st.data = ev.data
    # Only an action's result is kept (and later shown to other steps); a
    # compensation's result is discarded, so its size cannot undo an undo.
    if not compensating and isinstance(ev, StepSucceeded) and ev.size > defn.max_payload_bytes:
        # The action ran to its end: its effect happened though its result is refused.
        ev = StepFailed(
            ev.step,
            ev.token,
            f"result of step {ev.step!r} is {ev.size} bytes, over the limit of "
            f"{defn.max_payload_bytes} bytes (max_payload_bytes)",
            False,
            True,
        )
    if compensating:
        _compensation_done(sdef, st, s, ev, now, hist)
    else:
        _action_done(defn, sdef, st, s, ev, now, fx, hist)
    return True


def _action_done(
    defn: SagaDefinition,
    sdef: StepDefinition,
    st: SagaState,
    s: StepState,
    ev: StepSucceeded | StepFailed,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> None:
    name = sdef.name
    if isinstance(ev, StepSucceeded):
        s.status = _S.COMPLETED
        s.result = ev.result
        s.error = None
        s.finished_at = now
        s.wake_at = None
        hist.append(_entry((now, "step_completed", f"step {name!r} completed", name, s.attempts, None)))
        if sdef.pivot and ROLLBACK in st.meta:
            _refuse_rollback(defn, st, name, now, fx, hist)
        return
    s.error = ev.error
    s.wake_at = None
    if ev.uncertain and not s.uncertain:
        s.uncertain = True
    if st.status is SagaStatus.RUNNING:
        # While a rollback waits for the pivot, nothing is retried; the pivot's
        # failure, whatever it is, lets the rollback go ahead.
        deferred = ROLLBACK in st.meta
        if ev.retryable and s.attempts < sdef.retry.max_attempts and not deferred:
            delay = sdef.retry.delay(s.attempts, f"{st.id}:{name}")
            s.status = _S.PENDING
            s.wake_at = now + delay
            hist.append(
                HistoryEntry(
                    now,
                    "step_failed",
                    f"step {name!r} attempt {s.attempts} failed: {ev.error}; retry in {delay:.3f}s",
                    name,
                    s.attempts,
                    ev.traceback,
                )
            )
            return
        s.status = _S.FAILED
        s.finished_at = now
        if deferred:
            why = "not retried: a rollback waits for the pivot step"
        else:
            why = "not retryable" if not ev.retryable else f"after {s.attempts} attempts"
        hist.append(
            HistoryEntry(
                now, "step_failed", f"step {name!r} failed ({why}): {ev.error}", name, s.attempts, ev.traceback
            )
        )
        if deferred:
            if sdef.pivot:
                reason = st.meta[ROLLBACK]
                _clear_rollback(st)
                _rollback(defn, st, now, reason, fx, hist)
            return
        past = _past_pivot_name(defn, st)
        if past is not None:
            _fail_past_pivot(st, name, past, ev.error, now, fx, hist)
        else:
            _rollback(defn, st, now, f"step {name!r} failed: {ev.error}", fx, hist)
        return
    # The saga is failed past its pivot: an attempt still in flight then has
    # failed; it is not retried until an operator says so.
    s.status = _S.FAILED
    s.finished_at = now
    hist.append(
        HistoryEntry(
            now,
            "step_failed",
            f"step {name!r} failed: {ev.error} (not retried: saga is {st.status.value})",
            name,
            s.attempts,
            ev.traceback,
        )
    )


def _on_item(
    defn: SagaDefinition,
    st: SagaState,
    ev: StepSucceeded | StepFailed,
    i: int,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> bool:
    """An attempt of item *i* of a for-each step ended."""
    name = ev.step
    s = st.steps.get(name)
    items = None if s is None else s.items
    if items is None or not 0 <= i < len(items) or items[i].token == 0 or items[i].token != ev.token:
        current = "none" if items is None or not 0 <= i < len(items) or not items[i].token else str(items[i].token)
        hist.append(
            HistoryEntry(
                now,
                "stale_rejected",
                f"completion of step {name!r} item {i} with token {ev.token} rejected: "
                f"current token is {current} (the attempt is no longer current)",
                name,
            )
        )
        return False
    sdef = defn.by_name[name]
    s = _own(st, name)
    items = s.items
    assert items is not None
    it = items[i]
    if it.status is _S.COMPENSATING:
        n = it.compensation_attempts
        if isinstance(ev, StepSucceeded):
            items[i] = it._replace(status=_S.COMPENSATED, token=0, error=None, wake_at=None)
            hist.append(_entry((now, "item_compensated", f"step {name!r} item {i} compensated", name, n, None)))
        else:
            policy = sdef.compensation_retry
            if ev.retryable and n < policy.max_attempts:
                delay = policy.delay(n, f"{st.id}:{name}:{it.key}:compensation")
                items[i] = it._replace(token=0, error=ev.error, wake_at=now + delay)
                message = (
                    f"compensation of step {name!r} item {i} attempt {n} failed: {ev.error}; retry in {delay:.3f}s"
                )
            else:
                items[i] = it._replace(status=_S.COMPENSATION_FAILED, token=0, error=ev.error, wake_at=None)
                why = "not retryable" if not ev.retryable else f"after {n} attempts"
                message = f"compensation of step {name!r} item {i} gave up ({why}): {ev.error}"
            hist.append(HistoryEntry(now, "item_compensation_failed", message, name, n, ev.traceback))
        pump(sdef, st, s, now, fx, hist)
        return True
    if isinstance(ev, StepSucceeded):
        if ev.size > defn.max_payload_bytes:
            # The action ran to its end: its effect happened though its result is refused.
            ev = StepFailed(
                name,
                ev.token,
                f"result of step {name!r} item {i} is {ev.size} bytes, over the limit of "
                f"{defn.max_payload_bytes} bytes (max_payload_bytes)",
                False,
                True,
                None,
                i,
            )
        else:
            if ev.data is not KEEP:
                st.data = ev.data
            items[i] = it._replace(status=_S.COMPLETED, token=0, result=ev.result, error=None, wake_at=None)
            hist.append(_entry((now, "item_completed", f"step {name!r} item {i} completed", name, it.attempts, None)))
            pump(sdef, st, s, now, fx, hist)
            return True
    uncertain = it.uncertain or ev.uncertain
    deferred = ROLLBACK in st.meta
    if st.status is SagaStatus.RUNNING and ev.retryable and it.attempts < sdef.retry.max_attempts and not deferred:
        delay = sdef.retry.delay(it.attempts, f"{st.id}:{name}:{it.key}")
        items[i] = it._replace(status=_S.PENDING, token=0, error=ev.error, wake_at=now + delay, uncertain=uncertain)
        hist.append(
            HistoryEntry(
                now,
                "item_failed",
                f"step {name!r} item {i} attempt {it.attempts} failed: {ev.error}; retry in {delay:.3f}s",
                name,
                it.attempts,
                ev.traceback,
            )
        )
        pump(sdef, st, s, now, fx, hist)
        return True
    items[i] = it._replace(status=_S.FAILED, token=0, error=ev.error, wake_at=None, uncertain=uncertain)
    if deferred:
        why = "not retried: a rollback waits for the pivot step"
    else:
        why = "not retryable" if not ev.retryable else f"after {it.attempts} attempts"
    hist.append(
        HistoryEntry(
            now, "item_failed", f"step {name!r} item {i} failed ({why}): {ev.error}", name, it.attempts, ev.traceback
        )
    )
    # The item failed for good, and with it the step: the other items stop.
    error = f"item {i} (key {it.key!r}) failed: {ev.error}"
    stop_items(s, name, now, f"item {i} of the step failed", fx, hist)
    s.status = _S.FAILED
    s.error = error
    s.finished_at = now
    hist.append(HistoryEntry(now, "step_failed", f"step {name!r} failed: {error}", name, s.attempts))
    if st.status is not SagaStatus.RUNNING or deferred:
        return True
    past = _past_pivot_name(defn, st)
    if past is not None:
        _fail_past_pivot(st, name, past, error, now, fx, hist)
    else:
        _rollback(defn, st, now, f"step {name!r} failed: {error}", fx, hist)
    return True


def _compensation_done(
    sdef: StepDefinition,
    st: SagaState,
    s: StepState,
    ev: StepSucceeded | StepFailed,
    now: float,
    hist: list[HistoryEntry],
) -> None:
    name = sdef.name
    n = s.compensation_attempts
    if isinstance(ev, StepSucceeded):
        s.status = _S.COMPENSATED
        s.error = None
        s.wake_at = None
        s.finished_at = now
        hist.append(_entry((now, "compensation_completed", f"step {name!r} compensated", name, n, None)))
        return
    s.error = ev.error
    policy = sdef.compensation_retry
    if ev.retryable and n < policy.max_attempts:
        delay = policy.delay(n, f"{st.id}:{name}:compensation")
        s.wake_at = now + delay
        hist.append(
            HistoryEntry(
                now,
                "compensation_failed",
                f"compensation of step {name!r} attempt {n} failed: {ev.error}; retry in {delay:.3f}s",
                name,
                n,
                ev.traceback,
            )
        )
        return
    s.status = _S.COMPENSATION_FAILED
    s.wake_at = None
    s.finished_at = now
    why = "not retryable" if not ev.retryable else f"after {n} attempts"
    hist.append(
        HistoryEntry(
            now,
            "compensation_failed",
            f"compensation of step {name!r} gave up ({why}): {ev.error}",
            name,
            n,
            ev.traceback,
        )
    )


def _match_reply(
    defn: SagaDefinition, st: SagaState, ev: Reply, now: float, hist: list[HistoryEntry]
) -> StepSucceeded | StepFailed | str:
    """The completion a reply makes of the step that waits for it, or why it applies to none.

    A reply for an attempt that is no longer current (its token is not the
    step's) is stale: the reason comes back with a ``stale_rejected`` entry.
    """
    for name in defn.order:
        sdef = defn.by_name[name]
        if ev.step is not None and ev.step != name:
            continue
        s = st.steps[name]
        if not s.token:
            continue
        compensating = s.status is _S.COMPENSATING
        action = sdef.compensation if compensating else sdef.action
        if not isinstance(action, StepAction) or not action.expects(ev.type_name):
            continue
        if ev.token is not None and ev.token != s.token:
            reason = (
                f"stale reply {ev.type_name} for step {name!r}: token {ev.token}, "
                f"the step's current attempt has token {s.token}"
            )
            hist.append(HistoryEntry(now, "stale_rejected", f"{reason}; not applied", name))
            return reason
        try:
            read = action.read_reply(ev.type_name, ev.payload, st.data, defn.state_model, not compensating)
        except Exception as e:  # a user's merge hook or the state model refused it
            # The traceback of the hook that raised, formatted where it ran (the message layer).
            tb = getattr(e, "traceback", None)
            return StepFailed(name, s.token, f"invalid reply {ev.type_name}: {e}", False, False, tb)
        if read.failure is not None:
            # The failing event (or fault) is kept for the compensations and the saga's failure event.
            st.meta = {
                **st.meta,
                FAILURE: {"step": name, "event": ev.type_name, "payload": read.result, "fault": read.fault},
            }
            if read.fault:
                # The participant's handler raised: the command may be half carried out, and
                # trying again may help, so the step's retry policy applies and a rollback
                # compensates it.
                # The handler's traceback, as the participant sent it, goes with the failure.
                tb = read.result.get("traceback") if isinstance(read.result, Mapping) else None
                tb = tb if isinstance(tb, str) and tb else None
                hist.append(HistoryEntry(now, "fault", f"step {name!r}: {read.failure}", name, s.attempts))
                return StepFailed(name, s.token, read.failure, True, True, tb)
            return StepFailed(name, s.token, read.failure, False)
        return StepSucceeded(name, s.token, read.result, read.size, st.data if compensating else read.data)
    undeclared = _undeclared(defn, st, ev)
    if undeclared is not None:
        return undeclared
    where = f"step {ev.step!r}" if ev.step else "any step"
    if ev.token is not None and ev.step is not None and ev.step in st.steps:
        reason = (
            f"stale reply {ev.type_name} for step {ev.step!r} (token {ev.token}): no step waits for it now "
            f"(the step is {st.steps[ev.step].status.value})"
        )
        hist.append(HistoryEntry(now, "stale_rejected", f"{reason}; not applied", ev.step))
        return reason
    return f"saga {st.id} ({st.status.value}) has no {where} waiting for {ev.type_name}"


def _undeclared(defn: SagaDefinition, st: SagaState, ev: Reply) -> str | None:
    """Why an event no waiting step declares is not applied, naming the saga, the step(s) and the event.

    It neither completes nor fails a step (the definition gives it no meaning);
    the step goes on waiting for the events it declares, or its reply timeout.
    None when the event is addressed to an attempt that is not current (stale).
    """
    waiting: list[str] = []
    for name in defn.order:
        s = st.steps[name]
        if not s.token or (ev.step is not None and ev.step != name):
            continue
        if ev.token is not None and ev.token != s.token:
            return None
        action = defn.by_name[name].compensation if s.status is _S.COMPENSATING else defn.by_name[name].action
        if isinstance(action, StepAction) and action.reply_types:
            what = "compensation of step" if s.status is _S.COMPENSATING else "step"
            waiting.append(f"{what} {name!r} waits for {', '.join(sorted(action.reply_types))}")
    if not waiting:
        return None
    return (
        f"saga {st.id} ({defn.name}): {ev.type_name} is not an event the waiting step declares "
        f"({'; '.join(waiting)}); not applied"
    )


def _on_timer(defn: SagaDefinition, st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]) -> None:
    # Reply deadlines of message steps (local attempts are timed by the runtime).
    for name in defn.order:
        s = st.steps[name]
        if s.token and s.wake_at is not None and s.wake_at <= now:
            s = _own(st, name)
            sdef = defn.by_name[name]
            if sdef.child:
                # No reply deadline: the time to look at the child saga again.
                fx.append(recheck(sdef, st, s, now))
                continue
            comp = s.status is _S.COMPENSATING
            timeout = attempt_timeout(sdef, comp)
            # A command went out and no answer came: it may have been carried out.
            ev = StepFailed(name, s.token, f"timed out after {timeout}s waiting for the reply", True, sdef.effectful)
            s.token = 0
            if comp:
                _compensation_done(sdef, st, s, ev, now, hist)
            else:
                _action_done(defn, sdef, st, s, ev, now, fx, hist)
    if st.meta and LOCKS in st.meta:
        _locks.on_timer(defn, st, now, fx)


def _on_locks(
    defn: SagaDefinition,
    st: SagaState,
    ev: LocksGranted | LocksRefused,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> None:
    """The store's answer to the saga's acquisition; an answer to an acquisition it no longer waits for is ignored."""
    if st.status.terminal:
        return
    if isinstance(ev, LocksGranted):
        _locks.granted(st, ev.keys, now, hist)
        return
    out = _locks.refused(defn, st, ev.keys, ev.reason, ev.blockers, now, hist)
    if out is None:
        return
    error, waited = out
    steps = [n for n in waited if st.steps[n].status is _S.PENDING]  # not skipped meanwhile
    if waited:
        if steps:
            fail_unlocked(defn, st, steps, error, now, fx, hist)
    elif st.status is SagaStatus.RUNNING and _past_pivot_name(defn, st) is None:
        _rollback(defn, st, now, error, fx, hist, kind="lock_refused")
    else:
        # A retried saga could not take its keys back, and past its pivot (or while compensating)
        # it cannot be rolled back: it stops for an operator again.
        what = "compensation" if st.status is SagaStatus.COMPENSATING else "the saga"
        st.status = SagaStatus.FAILED
        st.error = f"{what} cannot go on without the saga's locks: {error}"
        hist.append(HistoryEntry(now, "failed", st.error))


def _on_resume(defn: SagaDefinition, st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]) -> None:
    if st.status is SagaStatus.PENDING:
        if not _not_yet(st, now):
            _begin(defn, st, now, fx, hist)
        return
    for name in defn.for_each:
        if has_inflight(st.steps[name]):
            resume_items(defn.by_name[name], st, _own(st, name), now, fx, hist)
    for name in defn.order:
        s = st.steps[name]
        if not s.token:
            continue
        sdef = defn.by_name[name]
        comp = s.status is _S.COMPENSATING
        if sdef.child:
            # The child saga lives on by itself: look at it (start it, should the worker that
            # was to have died first), under the same attempt.
            fx.append(recheck(sdef, st, _own(st, name), now))
        elif sdef.compensation_local if comp else sdef.local:
            s = _own(st, name)
            st.seq += 1
            s.token = st.seq
            attempt = s.compensation_attempts if comp else s.attempts
            what = "compensation of step" if comp else "step"
            if sdef.resource is not None:
                # Its permit went with the worker (or comes back when the worker's hold runs out):
                # the attempt waits for a new one. One that was still waiting never ran.
                if s.waiting_for is None:
                    s.resumed = True
                    if not comp:
                        s.uncertain = True
                hist.append(
                    HistoryEntry(
                        now, "resumed", f"{what} {name!r} attempt {attempt}: its worker stopped", name, attempt
                    )
                )
                _wait_for_permit(sdef, s, comp, attempt, now, fx, hist)
                continue
            if not comp:
                s.uncertain = True  # the worker that ran it may have got as far as its effect
            hist.append(
                HistoryEntry(
                    now,
                    "resumed",
                    f"{what} {name!r} attempt {attempt} runs again: its worker stopped before reporting",
                    name,
                    attempt,
                )
            )
            fx.append(
                RunStep(
                    name,
                    comp,
                    attempt,
                    s.token,
                    sdef.compensation_timeout if comp else sdef.timeout,
                )
            )
    _on_timer(defn, st, now, fx, hist)
    if st.meta and LOCKS in st.meta:
        _locks.on_resume(defn, st, fx)


def _on_granted(
    defn: SagaDefinition, st: SagaState, ev: PermitGranted, now: float, fx: list[Effect], hist: list[HistoryEntry]
) -> bool:
    """A permit came for an attempt waiting for it: the attempt starts. False (stale) when it no longer waits."""
    s = st.steps.get(ev.step)
    if s is not None and s.token and s.token == ev.token and s.waiting_for is None:
        return False  # a grant told twice: the attempt it started holds the permit
    if s is None or not s.token or s.token != ev.token or s.waiting_for != ev.resource:
        # The attempt ended while it waited (cancelled, skipped, aborted): the permit goes back.
        fx.append(ReleasePermit(ev.step, ev.token, ev.resource))
        hist.append(
            HistoryEntry(
                now,
                "stale_rejected",
                f"permit of resource {ev.resource!r} for step {ev.step!r} (token {ev.token}) is not needed: "
                "the attempt is no longer waiting; it is given back",
                ev.step,
            )
        )
        return False
    if (
        s.status is _S.RUNNING
        and st.status is SagaStatus.RUNNING
        and ROLLBACK not in st.meta
        and st.deadline_at is not None
        and now >= st.deadline_at
        and _past_pivot_name(defn, st) is None
        and _running_pivot(defn, st) is None
    ):
        return True  # the deadline has passed: the rollback that follows ends the wait, nothing starts
    s = _own(st, ev.step)
    s.waiting_for = None
    s.resumed = False
    comp = s.status is _S.COMPENSATING
    attempt = s.compensation_attempts if comp else s.attempts
    sdef = defn.by_name[ev.step]
    hist.append(
        HistoryEntry(
            now, "resource_acquired", f"step {ev.step!r} got a permit of resource {ev.resource!r}", ev.step, attempt
        )
    )
    _started(sdef, st, s, comp, attempt, now, fx, hist)
    return True
