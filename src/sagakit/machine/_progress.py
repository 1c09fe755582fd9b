"""How a saga moves: dispatching what is ready, rolling back, cancelling, timers, pivots.

Shared by the event handlers (``_completions``, ``_operators``) and ``decide``; every
change to a step state goes through ``_own``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from .._definition import SagaDefinition, StepAction, StepDefinition
from .._status import SagaStatus, StepStatus
from ._children import aborting_wake, dispatch_child
from ._items import items_to_undo, read_items, start_items, stop_items
from ._locks import HOLD, abandon_wait, lock_gate, step_ready
from ._locks import wake as lock_wake
from ._types import (
    CHILDREN,
    HELD_EVENTS,
    LOCKS,
    ROLLBACK,
    START_AT,
    AcquirePermit,
    CancelAttempt,
    Effect,
    HistoryEntry,
    ReleasePermit,
    RunStep,
    SagaState,
    StepState,
)

_S = StepStatus
# HistoryEntry((at, kind, message, step, attempt, traceback)) and RunStep((...)) without the
# named tuples' generated __new__: a Python call less per entry on the hot path.
_entry = functools.partial(tuple.__new__, HistoryEntry)
_run = functools.partial(tuple.__new__, RunStep)
_DONE = (_S.COMPLETED, _S.SKIPPED)
_ACTIVE_SAGA = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)


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


def _begin(defn: SagaDefinition, st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]) -> None:
    st.status = SagaStatus.RUNNING
    hist.append(_entry((now, "started", "saga started", None, None, None)))
    _advance(defn, st, now, fx, hist)


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
    if st.meta and LOCKS in st.meta:
        abandon_wait(st, now, fx, hist)
    if defn.choreography is not None and HELD_EVENTS in st.meta:
        _settle_held(defn, st, now, hist)
    for name in defn.order:
        s = st.steps[name]
        if s.status is _S.RUNNING and s.token:
            _cancel(defn, st, name, now, f"the saga is rolled back ({reason})", fx, hist)
        elif s.items is not None and s.status is _S.RUNNING:
            _stop_for_each(st, name, now, f"the saga is rolled back ({reason})", fx, hist)
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


def _stop_for_each(
    st: SagaState, name: str, now: float, reason: str, fx: list[Effect], hist: list[HistoryEntry]
) -> None:
    """A running for-each step is rolled back: its items in flight are cancelled, and the step has failed."""
    s = _own(st, name)
    stop_items(s, name, now, reason, fx, hist)
    s.status = _S.FAILED
    s.finished_at = now
    s.error = f"cancelled: {reason}"
    hist.append(HistoryEntry(now, "step_failed", f"step {name!r} stopped: {reason}", name, s.attempts))


def _settle_held(defn: SagaDefinition, st: SagaState, now: float, hist: list[HistoryEntry]) -> None:
    """A choreographed saga rolls back: the stages whose events came before their turn happened after all.

    Their turn will never come now, but their effect is real: they count as
    passed, so that the rollback compensates them. A held failure event has
    nothing left to fail and is dropped (recorded).
    """
    spec = defn.choreography
    assert spec is not None
    held: dict[str, Any] = st.meta.get(HELD_EVENTS) or {}
    st.meta = {k: v for k, v in st.meta.items() if k != HELD_EVENTS}
    for stage, e in held.items():
        type_name = e["type_name"]
        # A held stage is pending, or waits since this very decision (its kept event not yet applied).
        if type_name in spec.failures or st.steps[stage].status not in (_S.PENDING, _S.RUNNING, _S.FAILED):
            hist.append(
                HistoryEntry(
                    now,
                    "observed_dropped",
                    f"{type_name}, kept for stage {stage!r}, is not applied: the saga rolls back",
                    stage,
                )
            )
            continue
        why = _observed_late(defn, st, stage, type_name, e["payload"], now, hist)
        if why is not None:
            hist.append(HistoryEntry(now, "refused", why, stage))


def _observed_late(
    defn: SagaDefinition,
    st: SagaState,
    stage: str,
    type_name: str,
    payload: Mapping[str, Any],
    now: float,
    hist: list[HistoryEntry],
) -> str | None:
    """A stage's event observed while its saga rolls back: the stage is passed, so it is compensated too.

    Returns why the event cannot be applied (it does not validate), or None.
    """
    action = defn.by_name[stage].action
    if not isinstance(action, StepAction):
        return f"stage {stage!r} observes no event"
    try:
        read = action.read_reply(type_name, payload, st.data, defn.state_model, True)
    except Exception as e:  # the event does not validate, or a user's merge hook raised
        return f"event {type_name} for stage {stage!r} is invalid: {e}"
    s = _own(st, stage)
    s.status = _S.COMPLETED
    s.result = read.result
    s.error = None
    s.token = 0
    s.wake_at = None
    s.finished_at = now
    if s.started_at is None:
        s.started_at = now
    if read.data is not None and read.size <= defn.max_payload_bytes:
        st.data = read.data
    hist.append(
        HistoryEntry(
            now,
            "observed_late",
            f"event {type_name} observed for stage {stage!r} while the saga rolls back: "
            "the stage happened, so it is compensated too",
            stage,
        )
    )
    return None


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
    if s.waiting_for is not None and not s.resumed:
        _stop_waiting(st, s, name, comp, now, reason, hist)
        return
    s.waiting_for = None  # a resumed attempt that waited again: it ran before, it may have had its effect
    s.resumed = False
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


def _stop_waiting(
    st: SagaState, s: StepState, name: str, comp: bool, now: float, reason: str, hist: list[HistoryEntry]
) -> None:
    """An attempt that waited for a permit ends before it started: it had no effect, and counts for nothing."""
    resource = s.waiting_for
    s.waiting_for = None
    s.wake_at = None
    note = f"{reason}; it had not started"
    if comp:
        s.compensation_attempts -= 1
        s.status = _S.COMPENSATION_FAILED
        s.error = f"cancelled: {reason}"
        s.finished_at = now
    else:
        s.attempts -= 1
        # It is where it was before this attempt: never run, or failed by its last attempt.
        s.status = _S.FAILED if s.attempts else _S.PENDING
        if s.attempts:
            s.finished_at = now
        else:
            s.started_at = None
    what = "compensation of step" if comp else "step"
    hist.append(
        HistoryEntry(
            now, "resource_wait_ended", f"{what} {name!r} stopped waiting for resource {resource!r}: {note}", name
        )
    )


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
    children = st.meta.get(CHILDREN) or {}
    for n, was in st.steps.items():
        if was.token and n not in children:  # a child saga runs on: its end is taken as it comes
            fx.append(CancelAttempt(n, was.status is _S.COMPENSATING, was.token, "the saga failed"))
            s = _own(st, n)
            s.status = _S.PENDING
            s.token = 0
            s.wake_at = None
            s.waiting_for = None
            s.resumed = False
            hist.append(
                HistoryEntry(now, "step_cancelled", f"step {n!r} attempt {s.attempts} stopped: the saga failed", n)
            )
        elif was.items is not None and was.status is _S.RUNNING:
            s = _own(st, n)
            stop_items(s, n, now, "the saga failed", fx, hist, again=True)
            s.status = _S.PENDING


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


def _orphans_pending(st: SagaState) -> None:
    """Steps left running when the saga failed past its pivot run again when it goes on.

    The saga's end stopped their attempts (or the worker that ran them is gone
    and, the saga being finished, nobody resumed them): without this they would
    hold the saga RUNNING with nothing that can ever complete them.
    """
    children = st.meta.get(CHILDREN) or {}
    for n, was in st.steps.items():
        if was.status is _S.RUNNING and not (was.token and n in children):  # a child saga runs on
            s = _own(st, n)
            s.status = _S.PENDING
            s.token = 0
            s.wake_at = None
            s.waiting_for = None
            s.resumed = False


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
            if defn.locks is not None:
                gate = lock_gate(defn, st, now, fx, hist)
                if gate is HOLD:
                    return  # nothing runs before the saga holds its keys
                if isinstance(gate, str):
                    _rollback(defn, st, now, gate, fx, hist)
            if st.status is SagaStatus.RUNNING:
                if defn.for_each and _read_due_items(defn, st, now, fx, hist):
                    pass  # an item list could not be read: the step failed, and the saga rolls back (or stops)
                else:
                    _forward(defn, st, now, fx, hist)
                    return
    if st.status is SagaStatus.COMPENSATING:
        if defn.locks is not None and lock_gate(defn, st, now, fx, hist) is HOLD:
            return  # a retried rollback takes the saga's keys again first
        busy = False
        for name in reversed(defn.order):
            s = steps[name]
            status = s.status
            if status is _S.RUNNING:
                busy = True
            elif status is _S.COMPENSATING:
                if s.token or not (
                    (s.wake_at is None or s.wake_at <= now)
                    and _dispatch(defn.by_name[name], st, s, True, now, fx, hist)
                ):
                    busy = True
            elif status is _S.COMPLETED or status is _S.FAILED:
                sdef = defn.by_name[name]
                if _to_undo(sdef, s) and not _blocked(defn, st, name):
                    s = _own(st, name)
                    s.status = _S.COMPENSATING
                    s.compensation_attempts = 0
                    if not _dispatch(sdef, st, s, True, now, fx, hist):
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
                hist.append(_entry((now, "compensated", "saga compensated", None, None, None)))


def _read_due_items(
    defn: SagaDefinition, st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]
) -> bool:
    """Read the item lists of the for-each steps about to be dispatched, before anything else is.

    A step over no items completes here. True if a list could not be read:
    the step has failed, and the saga rolls back (or stops, past its pivot)
    before any other step starts.
    """
    steps = st.steps
    for name in defn.for_each:
        s = steps[name]
        if s.status is not _S.PENDING or s.items is not None or (s.wake_at is not None and s.wake_at > now):
            continue
        sdef = defn.by_name[name]
        if any(steps[d].status not in _DONE for d in sdef.after):
            continue
        read = read_items(sdef, st.data, step_results(st))
        s = _own(st, name)
        if read == []:
            # Over no items: complete at once, so that the for-each steps after it (later in
            # defn.for_each, which is in dependency order) are read before anything is dispatched.
            s.items = []
            s.status = _S.COMPLETED
            s.attempts += 1
            s.result = []
            s.error = None
            s.started_at = s.started_at or now
            s.finished_at = now
            hist.append(HistoryEntry(now, "step_started", f"for-each step {name!r} over 0 items", name, s.attempts))
            hist.append(_entry((now, "step_completed", f"step {name!r} completed", name, s.attempts, None)))
            continue
        if isinstance(read, list):
            s.items = read
            continue
        s.status = _S.FAILED
        s.attempts += 1
        s.error = read
        s.started_at = s.started_at or now
        s.finished_at = now
        hist.append(HistoryEntry(now, "step_failed", f"step {name!r} failed (not retryable): {read}", name, s.attempts))
        _for_each_failed(defn, st, name, now, fx, hist)
        return True
    return False


def _for_each_failed(
    defn: SagaDefinition, st: SagaState, name: str, now: float, fx: list[Effect], hist: list[HistoryEntry]
) -> None:
    error = st.steps[name].error
    past = _past_pivot_name(defn, st)
    if past is not None:
        _fail_past_pivot(st, name, past, error, now, fx, hist)
    else:
        _rollback(defn, st, now, f"step {name!r} failed: {error}", fx, hist)


def _forward(defn: SagaDefinition, st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]) -> None:
    """Dispatch the steps whose dependencies are done; the saga completes when every step is."""
    steps = st.steps
    all_done = True
    settled = False
    unlockable: tuple[str, str] | None = None
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
                if sdef.locks is not None:
                    ready = step_ready(defn, st, sdef, now, fx, hist)
                    if ready is not True:
                        if isinstance(ready, str):
                            unlockable = (name, ready)
                            break
                        continue
                if _dispatch(sdef, st, s, False, now, fx, hist):
                    settled = True  # a for-each step over no items completed: go on from it
                    break
    if unlockable is not None:
        fail_unlocked(defn, st, [unlockable[0]], unlockable[1], now, fx, hist)
        if st.status is SagaStatus.COMPENSATING:
            _advance(defn, st, now, fx, hist)
        return
    if all_done:
        st.status = SagaStatus.COMPLETED
        st.error = None
        hist.append(_entry((now, "completed", "saga completed", None, None, None)))
    elif settled:
        _advance(defn, st, now, fx, hist)  # the steps after it may be ready now


def fail_unlocked(
    defn: SagaDefinition,
    st: SagaState,
    names: list[str],
    error: str,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> None:
    """Steps that could not take their locks fail (never attempted, so never compensated); the saga rolls back."""
    for name in names:
        s = _own(st, name)
        s.status = _S.FAILED
        s.error = error
        s.wake_at = None
        s.finished_at = now
        hist.append(HistoryEntry(now, "step_failed", f"step {name!r} failed: {error}", name, s.attempts))
    if st.status is not SagaStatus.RUNNING or ROLLBACK in st.meta:
        return
    past = _past_pivot_name(defn, st)
    if past is not None:
        _fail_past_pivot(st, names[0], past, error, now, fx, hist)
    else:
        _rollback(defn, st, now, f"step {names[0]!r} failed: {error}", fx, hist)


def _to_undo(sdef: StepDefinition, s: StepState) -> bool:
    """Whether a rollback compensates the step: it completed, or it may have had its effect."""
    if sdef.compensation is None:
        return False
    if sdef.for_each is not None:
        return items_to_undo(sdef, s)
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
) -> bool:
    """Dispatch an attempt of the step; True only for a for-each step that ended at once."""
    s = _own(st, sdef.name)
    if sdef.for_each is not None:
        return start_items(sdef, st, s, compensation, now, fx, hist)
    st.seq += 1
    s.token = st.seq
    if compensation:
        s.compensation_attempts += 1
        attempt = s.compensation_attempts
        if sdef.resource is not None and sdef.compensation_local:
            _wait_for_permit(sdef, s, True, attempt, now, fx, hist)
            return False
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
                    None,
                )
            )
        )
    else:
        s.status = _S.RUNNING
        s.attempts += 1
        attempt = s.attempts
        if attempt == 1:
            s.started_at = now
        if sdef.resource is not None and sdef.local:
            _wait_for_permit(sdef, s, False, attempt, now, fx, hist)
            return False
        timeout = sdef.attempt_timeouts[0]
        local = sdef.local
        hist.append(_entry((now, "step_started", f"step {sdef.name!r} attempt {attempt}", sdef.name, attempt, None)))
    # Local attempts are timed by the runtime; a message step waits for its
    # reply until this deadline, which survives restarts with the saga row.
    s.wake_at = now + timeout if (timeout is not None and not local) else None
    if not local and sdef.child:
        eff = dispatch_child(sdef, st, s, compensation, now)
        kind, what = (
            ("child_rollback", "asks child saga {} to roll back")
            if compensation
            else ("child_started", "starts child saga {}")
        )
        hist.append(HistoryEntry(now, kind, f"step {sdef.name!r} {what.format(eff.child_id)}", sdef.name, attempt))
        fx.append(eff)
        return False
    fx.append(_run((sdef.name, compensation, attempt, s.token, timeout, None)))
    return False


def _wait_for_permit(
    sdef: StepDefinition,
    s: StepState,
    compensation: bool,
    attempt: int,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> None:
    """The attempt with *s*'s token waits for a permit of its step's resource; PermitGranted starts it."""
    resource = sdef.resource
    assert resource is not None
    s.waiting_for = resource
    s.wake_at = None
    what = "compensation of step" if compensation else "step"
    hist.append(
        HistoryEntry(
            now,
            "resource_waiting",
            f"{what} {sdef.name!r} attempt {attempt} waits for resource {resource!r}",
            sdef.name,
            attempt,
        )
    )
    fx.append(AcquirePermit(sdef.name, compensation, attempt, s.token, resource))


def _started(
    sdef: StepDefinition,
    st: SagaState,
    s: StepState,
    compensation: bool,
    attempt: int,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> None:
    """The attempt starts now: recorded, and a RunStep for it."""
    if compensation:
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
                    None,
                )
            )
        )
    else:
        timeout = sdef.attempt_timeouts[0]
        local = sdef.local
        hist.append(_entry((now, "step_started", f"step {sdef.name!r} attempt {attempt}", sdef.name, attempt, None)))
    # Local attempts are timed by the runtime; a message step waits for its
    # reply until this deadline, which survives restarts with the saga row.
    s.wake_at = now + timeout if (timeout is not None and not local) else None
    fx.append(_run((sdef.name, compensation, attempt, s.token, timeout, None)))


def _release_permits(defn: SagaDefinition, before: SagaState, st: SagaState, fx: list[Effect]) -> None:
    """Every attempt that ended in this transition gives back its permit (held or waited for).

    Whatever ended it (an outcome, a cancellation, a timeout, a skip, an abort,
    a resume that runs it again): its token is no longer the step's.
    """
    for name in defn.resource_steps:
        old = before.steps[name]
        token = old.token
        if token and st.steps[name].token != token:
            sdef = defn.by_name[name]
            if sdef.compensation_local if old.status is _S.COMPENSATING else sdef.local:
                fx.append(ReleasePermit(name, token, sdef.resource))  # type: ignore[arg-type]
    # A permit asked for and given up within this transition (a resumed attempt the deadline
    # cancels at once, say) is not asked for at all.
    steps = st.steps
    if any(type(e) is AcquirePermit and steps[e.step].token != e.token for e in fx):
        fx[:] = [e for e in fx if type(e) is not AcquirePermit or steps[e.step].token == e.token]


def attempt_timeout(sdef: StepDefinition, compensation: bool) -> float | None:
    """Seconds one attempt may take: the step's timeout, or a message action's reply timeout."""
    return sdef.attempt_timeouts[compensation]


def _not_yet(st: SagaState, now: float) -> bool:
    """A scheduled saga whose start time has not come: it stays PENDING."""
    start_at = st.meta.get(START_AT) if st.meta else None
    return isinstance(start_at, int | float) and start_at > now


def _wake(defn: SagaDefinition | None, st: SagaState) -> float | None:
    status = st.status
    if status is SagaStatus.PENDING:
        start_at = st.meta.get(START_AT)
        return start_at if isinstance(start_at, int | float) else st.created_at
    if status not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        return aborting_wake(st) if status is SagaStatus.ABORTED and st.meta else None
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
    if st.meta and LOCKS in st.meta:
        w = lock_wake(st)
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
