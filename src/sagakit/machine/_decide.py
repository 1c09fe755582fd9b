"""The machine's rules: ``new_saga`` and ``decide``, pure functions over the types of ``_types``."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from .._definition import SagaDefinition, StepAction, StepDefinition
from .._status import SagaStatus, StepStatus
from ._types import (
    KEEP,
    Abort,
    Begin,
    CancelAttempt,
    Compensate,
    Decision,
    Effect,
    Event,
    HistoryEntry,
    Reply,
    Resume,
    Retry,
    RunStep,
    SagaState,
    Skip,
    StepFailed,
    StepState,
    StepSucceeded,
    Timer,
)

__all__ = ["ROLLBACK", "attempt_timeout", "decide", "new_saga", "step_results"]

_S = StepStatus
# HistoryEntry((at, kind, message, step, attempt)) and RunStep((...)) without the
# named tuples' generated __new__: a Python call less per entry on the hot path.
_entry = functools.partial(tuple.__new__, HistoryEntry)
_run = functools.partial(tuple.__new__, RunStep)
_DONE = (_S.COMPLETED, _S.SKIPPED)
_ACTIVE_SAGA = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)
# Key of SagaState.meta holding a rollback that waits for a running pivot step's outcome.
ROLLBACK = "rollback_requested"


# ---------------------------------------------------------------- entry points


def new_saga(
    definition: SagaDefinition,
    saga_id: str,
    data: Any,
    now: float,
    *,
    correlation_id: str | None = None,
    idempotency_key: str | None = None,
    begin: bool = True,
    preset: Mapping[str, Any] | None = None,
    origin: str | None = None,
) -> Decision:
    """Create a saga's initial state; with *begin*, its root steps are dispatched at once.

    *preset* maps step names to results the new saga starts with (a fork): those
    steps are ``SKIPPED`` with the given result, and *origin* says where it came from.
    """
    st = SagaState(
        id=saga_id,
        name=definition.name,
        version=definition.version,
        status=SagaStatus.PENDING,
        data=data,
        steps={s.name: StepState() for s in definition.steps},
        created_at=now,
        updated_at=now,
        correlation_id=correlation_id,
        idempotency_key=idempotency_key,
        deadline_at=now + definition.deadline if definition.deadline else None,
    )
    hist = [HistoryEntry(now, "created", f"saga {definition.name} v{definition.version} created")]
    for name, result in (preset or {}).items():
        s = st.steps[name]
        s.status = _S.SKIPPED
        s.result = result
        s.finished_at = now
        hist.append(HistoryEntry(now, "forked", f"step {name!r} result copied from {origin or 'a fork'}", name))
    fx: list[Effect] = []
    if begin:
        _begin(definition, st, now, fx, hist)
    st.wake_at = _wake(definition, st)
    return Decision(st, fx, hist)


def decide(definition: SagaDefinition | None, state: SagaState, event: Event, now: float) -> Decision:
    """Apply *event* to *state* at time *now*; the input state is never modified.

    The new state shares the step states it does not change with *state*.
    *definition* is None for a saga whose definition version is not
    registered: only ``Abort`` and ``Skip`` apply then (they need no code).
    A rejected event leaves the state as it was; the decision's history then
    holds the refusal and its reason.
    """
    if definition is None:
        return _decide_parked(state, event, now)
    st = _fork(state)
    fx: list[Effect] = []
    hist: list[HistoryEntry] = []
    stale = False
    rejected: str | None = None

    match event:
        case StepSucceeded() | StepFailed():
            stale = not _on_completion(definition, st, event, now, fx, hist)
        case Reply():
            matched = _match_reply(definition, st, event, now, hist)
            if isinstance(matched, str):
                if hist:  # a stale reply: refused, and recorded as such
                    return Decision(state, [], hist, rejected=matched, stale=True)
                rejected = matched
            else:
                _on_completion(definition, st, matched, now, fx, hist)
        case Timer():
            _on_timer(definition, st, now, fx, hist)
        case Resume():
            _on_resume(definition, st, now, fx, hist)
        case Begin():
            if st.status is SagaStatus.PENDING:
                _begin(definition, st, now, fx, hist)
        case Retry():
            rejected = _on_retry(st, event, now, hist)
        case Skip():
            rejected = _on_skip(definition, st, event, now, hist)
            if rejected is None and ROLLBACK in st.meta and event.step in definition.pivots:
                # An operator settled the pivot a rollback waited for: as if it completed.
                _refuse_rollback(definition, st, event.step, now, fx, hist)
        case Compensate():
            rejected = _on_compensate(definition, st, event, now, fx, hist)
        case Abort():
            rejected = _on_abort(definition, st, event, now, fx, hist)

    if rejected is not None:
        return _refused(state, event, rejected, now)
    if not stale:
        _advance(definition, st, now, fx, hist)
    st.wake_at = _wake(definition, st)
    st.updated_at = now
    st._shared = None
    return Decision(st, fx, hist, None, stale)


def _decide_parked(state: SagaState, event: Event, now: float) -> Decision:
    """``decide`` without the saga's definition: abort and skip, which need no step code."""
    st = _fork(state)
    fx: list[Effect] = []
    hist: list[HistoryEntry] = []
    rejected: str | None
    match event:
        case Abort():
            rejected = _on_abort(None, st, event, now, fx, hist)
        case Skip():
            rejected = _on_skip(None, st, event, now, hist)
        case _ if state.status.terminal and state.status is not SagaStatus.FAILED:
            rejected = f"saga is {state.status.value}: it has already finished"
        case _:
            rejected = (
                f"definition {state.name} v{state.version} is not registered here: "
                "only abort and skip are possible until a worker that has it runs the saga"
            )
    if rejected is not None:
        return _refused(state, event, rejected, now)
    st.wake_at = _wake(None, st)
    st.updated_at = now
    st._shared = None
    return Decision(st, fx, hist)


def _refused(state: SagaState, event: Event, reason: str, now: float) -> Decision:
    what = type(event).__name__.lower()
    actor = getattr(event, "actor", None)
    by = f" (by {actor})" if actor else ""
    step = getattr(event, "step", None)
    entry = HistoryEntry(now, "refused", f"{what}{by} refused: {reason}", step if isinstance(step, str) else None)
    return Decision(state, [], [entry], rejected=reason)


def _fork(state: SagaState) -> SagaState:
    """A new state with *state*'s fields; its steps are *state*'s until ``_own`` copies one."""
    st = state.with_steps(dict(state.steps))
    st._shared = state.steps
    return st


def _own(st: SagaState, name: str) -> StepState:
    """Step *name* of *st*, ready to change: copied first while *st* still shares it with its origin.

    Every change to a step state in this module goes through here.
    """
    s = st.steps[name]
    shared = st._shared
    if shared is not None and shared.get(name) is s:
        s = s.copy()
        st.steps[name] = s
    return s


# ---------------------------------------------------------------- event handlers


def _begin(defn: SagaDefinition, st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]) -> None:
    st.status = SagaStatus.RUNNING
    hist.append(_entry((now, "started", "saga started", None, None)))
    _advance(defn, st, now, fx, hist)


def _on_completion(
    defn: SagaDefinition,
    st: SagaState,
    ev: StepSucceeded | StepFailed,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> bool:
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
        hist.append(_entry((now, "step_completed", f"step {name!r} completed", name, s.attempts)))
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
                )
            )
            return
        s.status = _S.FAILED
        s.finished_at = now
        if deferred:
            why = "not retried: a rollback waits for the pivot step"
        else:
            why = "not retryable" if not ev.retryable else f"after {s.attempts} attempts"
        hist.append(HistoryEntry(now, "step_failed", f"step {name!r} failed ({why}): {ev.error}", name, s.attempts))
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
        if not isinstance(action, StepAction) or ev.type_name not in action.reply_types:
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
            return StepFailed(name, s.token, f"invalid reply {ev.type_name}: {e}", False)
        if read.failure is not None:
            return StepFailed(name, s.token, read.failure, False)
        return StepSucceeded(name, s.token, read.result, read.size, st.data if compensating else read.data)
    where = f"step {ev.step!r}" if ev.step else "any step"
    if ev.token is not None and ev.step is not None and ev.step in st.steps:
        reason = (
            f"stale reply {ev.type_name} for step {ev.step!r} (token {ev.token}): no step waits for it now "
            f"(the step is {st.steps[ev.step].status.value})"
        )
        hist.append(HistoryEntry(now, "stale_rejected", f"{reason}; not applied", ev.step))
        return reason
    return f"saga {st.id} ({st.status.value}) has no {where} waiting for {ev.type_name}"


def _fail_past_pivot(
    st: SagaState,
    name: str,
    pivot: str,
    error: str | None,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> None:
    """A step failed for good after the pivot: the saga stops for an operator (retry, skip, abort).

    Other attempts in flight are stopped; they run again if the operator retries.
    """
    st.status = SagaStatus.FAILED
    st.error = (
        f"step {name!r} failed after pivot step {pivot!r} completed: {error}; "
        "the saga cannot be rolled back: retry or skip the step"
    )
    hist.append(HistoryEntry(now, "failed", st.error, name))
    for n, was in st.steps.items():
        if was.token:
            fx.append(CancelAttempt(n, was.status is _S.COMPENSATING, was.token, "the saga failed"))
            s = _own(st, n)
            s.status = _S.PENDING
            s.token = 0
            s.wake_at = None
            hist.append(
                HistoryEntry(now, "step_cancelled", f"step {n!r} attempt {s.attempts} stopped: the saga failed", n)
            )


def _refuse_rollback(
    defn: SagaDefinition, st: SagaState, pivot: str, now: float, fx: list[Effect], hist: list[HistoryEntry]
) -> None:
    """The pivot a rollback waited for completed: the saga goes forward, the request is refused."""
    reason = st.meta[ROLLBACK]
    _clear_rollback(st)
    hist.append(
        HistoryEntry(
            now,
            "rollback_refused",
            f"rollback refused: pivot step {pivot!r} completed, so the saga can no longer be rolled back "
            f"(the request: {reason}); it goes forward",
            pivot,
        )
    )
    failed = [n for n in defn.order if st.steps[n].status is _S.FAILED]
    if failed:
        _fail_past_pivot(st, failed[0], pivot, st.steps[failed[0]].error, now, fx, hist)


def _clear_rollback(st: SagaState) -> None:
    st.meta = {k: v for k, v in st.meta.items() if k != ROLLBACK}


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
        hist.append(_entry((now, "compensation_completed", f"step {name!r} compensated", name, n)))
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
        )
    )


def _on_timer(defn: SagaDefinition, st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]) -> None:
    # Reply deadlines of message steps (local attempts are timed by the runtime).
    for name in defn.order:
        s = st.steps[name]
        if s.token and s.wake_at is not None and s.wake_at <= now:
            s = _own(st, name)
            sdef = defn.by_name[name]
            comp = s.status is _S.COMPENSATING
            timeout = attempt_timeout(sdef, comp)
            # A command went out and no answer came: it may have been carried out.
            ev = StepFailed(name, s.token, f"timed out after {timeout}s waiting for the reply", True, sdef.effectful)
            s.token = 0
            if comp:
                _compensation_done(sdef, st, s, ev, now, hist)
            else:
                _action_done(defn, sdef, st, s, ev, now, fx, hist)


def _on_resume(defn: SagaDefinition, st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]) -> None:
    if st.status is SagaStatus.PENDING:
        _begin(defn, st, now, fx, hist)
        return
    for name in defn.order:
        s = st.steps[name]
        if not s.token:
            continue
        sdef = defn.by_name[name]
        comp = s.status is _S.COMPENSATING
        if sdef.compensation_local if comp else sdef.local:
            s = _own(st, name)
            st.seq += 1
            s.token = st.seq
            if not comp:
                s.uncertain = True  # the worker that ran it may have got as far as its effect
            attempt = s.compensation_attempts if comp else s.attempts
            what = "compensation of step" if comp else "step"
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


def _on_retry(st: SagaState, ev: Retry, now: float, hist: list[HistoryEntry]) -> str | None:
    who = _who(ev.actor, ev.reason)
    if st.status is SagaStatus.FAILED:
        comp_failed = [n for n, s in st.steps.items() if s.status is _S.COMPENSATION_FAILED]
        if comp_failed:
            for n in comp_failed:
                s = _own(st, n)
                s.status = _S.COMPENSATING
                s.compensation_attempts = 0
                s.wake_at = now
            st.status = SagaStatus.COMPENSATING
            st.error = None
            hist.append(HistoryEntry(now, "retry", f"retry of compensation of {comp_failed} {who}"))
            return None
        failed = [n for n, s in st.steps.items() if s.status is _S.FAILED]
        if failed:
            for n in failed:
                s = _own(st, n)
                s.status = _S.PENDING
                s.attempts = 0
                s.wake_at = None
            _orphans_pending(st)
            st.status = SagaStatus.RUNNING
            st.error = None
            hist.append(HistoryEntry(now, "retry", f"retry of steps {failed} {who}"))
            return None
        return "the saga is failed but no step or compensation failed: nothing to retry"
    if st.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        waiting = [n for n, s in st.steps.items() if not s.token and s.wake_at is not None]
        if waiting:
            for n in waiting:
                _own(st, n).wake_at = now
            hist.append(HistoryEntry(now, "retry", f"retry of waiting steps {waiting} now {who}"))
            return None
        return f"saga is {st.status.value} and no step is waiting for a retry: nothing to retry"
    return f"saga is {st.status.value}: only a failed saga or a waiting step can be retried"


def _orphans_pending(st: SagaState) -> None:
    """Steps left running when the saga failed past its pivot run again when it goes on.

    The saga's end stopped their attempts (or the worker that ran them is gone
    and, the saga being finished, nobody resumed them): without this they would
    hold the saga RUNNING with nothing that can ever complete them.
    """
    for n, was in st.steps.items():
        if was.status is _S.RUNNING:
            s = _own(st, n)
            s.status = _S.PENDING
            s.token = 0
            s.wake_at = None


def _on_skip(defn: SagaDefinition | None, st: SagaState, ev: Skip, now: float, hist: list[HistoryEntry]) -> str | None:
    s = st.steps.get(ev.step)
    if s is None:
        return f"saga {st.name} has no step {ev.step!r} (steps: {', '.join(st.steps)})"
    if st.status not in (*_ACTIVE_SAGA, SagaStatus.FAILED):
        return f"saga is {st.status.value}: steps of a finished saga cannot be skipped"
    if s.status in (_S.COMPLETED, _S.COMPENSATED, _S.SKIPPED):
        return f"step {ev.step!r} is {s.status.value}: only a waiting or failed step can be skipped"
    if s.token:
        comp = s.status is _S.COMPENSATING
        sdef = None if defn is None else defn.by_name[ev.step]
        # A message step waiting for its reply may be skipped (its late reply is
        # then stale); a function that is running may not: it could still act.
        executing = sdef is None or (sdef.compensation_local if comp else sdef.local)
        if executing:
            what = "its compensation" if comp else "an attempt"
            return (
                f"step {ev.step!r} is executing ({what} is in flight): skip is refused while it runs; "
                "wait for the attempt to end, or compensate or abort the saga, which cancel it"
            )
    was = s.status
    s = _own(st, ev.step)
    s.status = _S.SKIPPED
    s.token = 0
    s.wake_at = None
    s.finished_at = now
    if was in (_S.COMPENSATING, _S.COMPENSATION_FAILED):
        note = "compensation marked resolved"
    else:
        s.result = ev.result
        note = "result given by the operator"
    hist.append(
        HistoryEntry(
            now,
            "skip",
            f"step {ev.step!r} ({was.value}) skipped, {note} {_who(ev.actor, ev.reason)}",
            ev.step,
        )
    )
    if st.status is SagaStatus.FAILED:
        compensating = (
            any(x.status is _S.COMPENSATION_FAILED for x in st.steps.values())
            or any(x.status is _S.COMPENSATED for x in st.steps.values())
            or was in (_S.COMPENSATING, _S.COMPENSATION_FAILED)
        )
        still_failed = [n for n, x in st.steps.items() if x.status is _S.FAILED]
        if compensating or not still_failed:
            st.status = SagaStatus.COMPENSATING if compensating else SagaStatus.RUNNING
            st.error = None
            if not compensating:
                _orphans_pending(st)
        else:
            # Another step failed after the pivot too: running again would
            # leave the saga RUNNING with nothing it can run.
            n = still_failed[0]
            st.error = (
                f"step {n!r} failed after the pivot step completed: {st.steps[n].error}; "
                "the saga cannot be rolled back: retry or skip the step"
            )
    return None


def _on_compensate(
    defn: SagaDefinition, st: SagaState, ev: Compensate, now: float, fx: list[Effect], hist: list[HistoryEntry]
) -> str | None:
    if st.status not in (SagaStatus.PENDING, SagaStatus.RUNNING):
        return f"saga is {st.status.value}: only a pending or running saga can be compensated"
    pivot = _past_pivot_name(defn, st)
    if pivot is not None:
        return f"pivot step {pivot!r} has completed: the saga can no longer be rolled back"
    if ROLLBACK in st.meta:
        return f"a rollback is already requested ({st.meta[ROLLBACK]}) and waits for the running pivot step"
    reason = f"compensation requested {_who(ev.actor, ev.reason)}"
    _rollback(defn, st, now, reason, fx, hist, kind="compensate")
    return None


def _on_abort(
    defn: SagaDefinition | None,
    st: SagaState,
    ev: Abort,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> str | None:
    if st.status not in (*_ACTIVE_SAGA, SagaStatus.FAILED):
        return f"saga is {st.status.value}: it has already finished"
    st.status = SagaStatus.ABORTED
    st.error = f"aborted {_who(ev.actor, ev.reason)}"
    hist.append(HistoryEntry(now, "abort", st.error))
    if ROLLBACK in st.meta:
        _clear_rollback(st)
    for n, s in st.steps.items():
        if s.token:
            _cancel(defn, st, n, now, "the saga was aborted", fx, hist)
        elif s.wake_at is not None:
            _own(st, n).wake_at = None
    return None


# ---------------------------------------------------------------- progress


def _cancel(
    defn: SagaDefinition | None,
    st: SagaState,
    name: str,
    now: float,
    reason: str,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> None:
    """End the attempt in flight of step *name* now; it may have had its effect."""
    s = _own(st, name)
    comp = s.status is _S.COMPENSATING
    fx.append(CancelAttempt(name, comp, s.token, reason))
    s.token = 0
    s.wake_at = None
    s.finished_at = now
    s.error = f"cancelled: {reason}"
    if comp:
        s.status = _S.COMPENSATION_FAILED
        hist.append(
            HistoryEntry(
                now,
                "compensation_cancelled",
                f"compensation of step {name!r} attempt {s.compensation_attempts} cancelled: {reason}",
                name,
                s.compensation_attempts,
            )
        )
        return
    s.status = _S.FAILED
    effectful = True if defn is None else defn.by_name[name].effectful
    if effectful:
        s.uncertain = True
    note = "; it may have had its effect" if effectful else ""
    hist.append(
        HistoryEntry(
            now, "step_cancelled", f"step {name!r} attempt {s.attempts} cancelled: {reason}{note}", name, s.attempts
        )
    )


def _rollback(
    defn: SagaDefinition,
    st: SagaState,
    now: float,
    reason: str,
    fx: list[Effect],
    hist: list[HistoryEntry],
    kind: str = "compensating",
) -> None:
    """Start compensating: attempts in flight are cancelled, steps waiting for a retry will not run.

    While a pivot step runs, the rollback waits for its outcome instead.
    """
    pivot = _running_pivot(defn, st)
    if pivot is not None:
        st.meta = {**st.meta, ROLLBACK: reason}
        for name, s in st.steps.items():
            if s.status is _S.PENDING and s.wake_at is not None:
                _own(st, name).wake_at = None  # no retry while the rollback waits
        hist.append(
            HistoryEntry(
                now,
                "rollback_deferred",
                f"rollback requested ({reason}): it waits for the outcome of pivot step {pivot!r}, which is running",
                pivot,
            )
        )
        return
    st.status = SagaStatus.COMPENSATING
    st.error = reason
    hist.append(HistoryEntry(now, kind, f"compensation started: {reason}"))
    for name in defn.order:
        s = st.steps[name]
        if s.status is _S.RUNNING and s.token:
            _cancel(defn, st, name, now, f"the saga is rolled back ({reason})", fx, hist)
        elif s.status is _S.PENDING and s.attempts:
            # It failed before and waits for its next attempt, which will not come.
            s = _own(st, name)
            s.status = _S.FAILED
            s.wake_at = None
            s.finished_at = now
            hist.append(
                HistoryEntry(
                    now,
                    "step_failed",
                    f"step {name!r} failed: {s.error} (not retried: the saga is rolled back)",
                    name,
                    s.attempts,
                )
            )


def _advance(defn: SagaDefinition, st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]) -> None:
    steps = st.steps
    if st.status is SagaStatus.RUNNING:
        if ROLLBACK in st.meta:
            return  # nothing new starts while a rollback waits for the pivot
        if st.deadline_at is not None and now >= st.deadline_at and _past_pivot_name(defn, st) is None:
            _rollback(defn, st, now, f"deadline of {defn.deadline}s exceeded", fx, hist)
            if st.status is SagaStatus.RUNNING:
                return
        else:
            all_done = True
            for name in defn.order:
                s = steps[name]
                if s.status in _DONE:
                    continue
                all_done = False
                if s.status is _S.PENDING and (s.wake_at is None or s.wake_at <= now):
                    sdef = defn.by_name[name]
                    for d in sdef.after:
                        if steps[d].status not in _DONE:
                            break
                    else:
                        _dispatch(sdef, st, s, False, now, fx, hist)
            if all_done:
                st.status = SagaStatus.COMPLETED
                st.error = None
                hist.append(_entry((now, "completed", "saga completed", None, None)))
            return
    if st.status is SagaStatus.COMPENSATING:
        busy = False
        for name in reversed(defn.order):
            s = steps[name]
            status = s.status
            if status is _S.RUNNING:
                busy = True
            elif status is _S.COMPENSATING:
                if s.token:
                    busy = True
                else:
                    if s.wake_at is None or s.wake_at <= now:
                        _dispatch(defn.by_name[name], st, s, True, now, fx, hist)
                    busy = True
            elif status is _S.COMPLETED or status is _S.FAILED:
                sdef = defn.by_name[name]
                if _to_undo(sdef, s) and not _blocked(defn, st, name):
                    s = _own(st, name)
                    s.status = _S.COMPENSATING
                    s.compensation_attempts = 0
                    _dispatch(sdef, st, s, True, now, fx, hist)
                    busy = True
        if not busy:
            gave_up = [n for n, s in steps.items() if s.status is _S.COMPENSATION_FAILED]
            if gave_up:
                st.status = SagaStatus.FAILED
                first = steps[gave_up[0]]
                st.error = f"compensation of step {gave_up[0]!r} gave up: {first.error}"
                hist.append(HistoryEntry(now, "failed", st.error, gave_up[0]))
            else:
                st.status = SagaStatus.COMPENSATED
                hist.append(_entry((now, "compensated", "saga compensated", None, None)))


def _to_undo(sdef: StepDefinition, s: StepState) -> bool:
    """Whether a rollback compensates the step: it completed, or it may have had its effect."""
    if sdef.compensation is None:
        return False
    if s.status is _S.COMPLETED:
        return True
    return s.status is _S.FAILED and s.attempts > 0 and (s.uncertain or sdef.compensate_failed)


def _blocked(defn: SagaDefinition, st: SagaState, name: str) -> bool:
    """A step is compensated only after every step that depends on it is settled."""
    steps = st.steps
    for d in defn.descendants[name]:
        s = steps[d]
        if s.status in (_S.RUNNING, _S.COMPENSATING, _S.COMPENSATION_FAILED):
            return True
        if (s.status is _S.COMPLETED or s.status is _S.FAILED) and _to_undo(defn.by_name[d], s):
            return True
    return False


def _dispatch(
    sdef: StepDefinition,
    st: SagaState,
    s: StepState,
    compensation: bool,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> None:
    s = _own(st, sdef.name)
    st.seq += 1
    s.token = st.seq
    if compensation:
        s.compensation_attempts += 1
        attempt = s.compensation_attempts
        timeout = sdef.attempt_timeouts[1]
        local = sdef.compensation_local
        hist.append(
            _entry(
                (
                    now,
                    "compensation_started",
                    f"compensation of step {sdef.name!r} attempt {attempt}",
                    sdef.name,
                    attempt,
                )
            )
        )
    else:
        s.status = _S.RUNNING
        s.attempts += 1
        attempt = s.attempts
        timeout = sdef.attempt_timeouts[0]
        local = sdef.local
        if attempt == 1:
            s.started_at = now
        hist.append(_entry((now, "step_started", f"step {sdef.name!r} attempt {attempt}", sdef.name, attempt)))
    # Local attempts are timed by the runtime; a message step waits for its
    # reply until this deadline, which survives restarts with the saga row.
    s.wake_at = now + timeout if (timeout is not None and not local) else None
    fx.append(_run((sdef.name, compensation, attempt, s.token, timeout)))


def attempt_timeout(sdef: StepDefinition, compensation: bool) -> float | None:
    """Seconds one attempt may take: the step's timeout, or a message action's reply timeout."""
    return sdef.attempt_timeouts[compensation]


def _wake(defn: SagaDefinition | None, st: SagaState) -> float | None:
    status = st.status
    if status is SagaStatus.PENDING:
        return st.created_at
    if status not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        return None
    # Past the pivot, or with a rollback already waiting for it, the deadline
    # no longer applies; keeping it would leave the saga due forever once passed.
    wake = st.deadline_at
    if wake is not None and (
        status is not SagaStatus.RUNNING or ROLLBACK in st.meta or (defn is not None and _past_pivot(defn, st))
    ):
        wake = None
    for s in st.steps.values():
        w = s.wake_at
        if w is not None and (wake is None or w < wake):
            wake = w
    return wake


def _past_pivot_name(defn: SagaDefinition, st: SagaState) -> str | None:
    for name in defn.pivots:
        if st.steps[name].status in _DONE:
            return name
    return None


def _past_pivot(defn: SagaDefinition, st: SagaState) -> bool:
    return _past_pivot_name(defn, st) is not None


def _running_pivot(defn: SagaDefinition, st: SagaState) -> str | None:
    for name in defn.pivots:
        s = st.steps[name]
        if s.status is _S.RUNNING and s.token:
            return name
    return None


def _who(actor: str, reason: str) -> str:
    return f"by {actor}" + (f": {reason}" if reason else "")


def step_results(st: SagaState) -> Mapping[str, Any]:
    """Results of the steps that completed or were skipped, by step name."""
    return {n: s.result for n, s in st.steps.items() if s.status in _DONE}
