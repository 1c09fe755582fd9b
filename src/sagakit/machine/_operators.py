"""Operators' commands: retry, skip, compensate, abort."""

from __future__ import annotations

from .._definition import SagaDefinition
from .._status import SagaStatus
from ._children import abort_children
from ._items import has_inflight, stop_items
from ._progress import (
    _ACTIVE_SAGA,
    _S,
    _cancel,
    _clear_rollback,
    _orphans_pending,
    _own,
    _past_pivot_name,
    _rollback,
    _who,
)
from ._types import (
    PARENT,
    ROLLBACK,
    Abort,
    Compensate,
    Effect,
    HistoryEntry,
    ParentRollback,
    Retry,
    SagaState,
    Skip,
)


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
                # A for-each step's items whose compensation gave up are marked again when it is dispatched.
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
                if s.items is not None:
                    # A for-each step runs again the items that did not complete.
                    s.items = [
                        it._replace(status=_S.PENDING, attempts=0, wake_at=None) if it.status is _S.FAILED else it
                        for it in s.items
                    ]
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
                s = _own(st, n)
                s.wake_at = now
                if s.items is not None:
                    s.items = [
                        it._replace(wake_at=now) if not it.token and it.wake_at is not None else it for it in s.items
                    ]
            hist.append(HistoryEntry(now, "retry", f"retry of waiting steps {waiting} now {who}"))
            return None
        return f"saga is {st.status.value} and no step is waiting for a retry: nothing to retry"
    return f"saga is {st.status.value}: only a failed saga or a waiting step can be retried"


def _on_skip(defn: SagaDefinition | None, st: SagaState, ev: Skip, now: float, hist: list[HistoryEntry]) -> str | None:
    s = st.steps.get(ev.step)
    if s is None:
        return f"saga {st.name} has no step {ev.step!r} (steps: {', '.join(st.steps)})"
    if st.status not in (*_ACTIVE_SAGA, SagaStatus.FAILED):
        return f"saga is {st.status.value}: steps of a finished saga cannot be skipped"
    if s.status in (_S.COMPLETED, _S.COMPENSATED, _S.SKIPPED):
        return f"step {ev.step!r} is {s.status.value}: only a waiting or failed step can be skipped"
    if has_inflight(s):
        return (
            f"for-each step {ev.step!r} is executing (items are in flight): skip is refused while they run; "
            "wait for them to end, or compensate or abort the saga, which cancel them"
        )
    if s.token:
        comp = s.status is _S.COMPENSATING
        sdef = None if defn is None else defn.by_name[ev.step]
        # A message step waiting for its reply may be skipped (its late reply is
        # then stale); a function that is running may not: it could still act.
        executing = sdef is None or (sdef.compensation_local if comp else sdef.local)
        if executing and s.waiting_for is None:  # one waiting for a permit has not started
            what = "its compensation" if comp else "an attempt"
            return (
                f"step {ev.step!r} is executing ({what} is in flight): skip is refused while it runs; "
                "wait for the attempt to end, or compensate or abort the saga, which cancel it"
            )
    was = s.status
    s = _own(st, ev.step)
    if s.waiting_for is not None and not s.resumed:
        # Its attempt waited for a permit and never started: it does not count.
        if was is _S.COMPENSATING:
            s.compensation_attempts -= 1
        else:
            s.attempts -= 1
            if not s.attempts:
                s.started_at = None
    s.waiting_for = None
    s.resumed = False
    s.status = _S.SKIPPED
    s.token = 0
    s.wake_at = None
    if s.items is not None:  # a for-each step's items waiting for a retry will not get it
        s.items = [it._replace(wake_at=None) if it.wake_at is not None else it for it in s.items]
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
    abort_children(defn, st, f"its parent saga {st.id} was aborted {_who(ev.actor, ev.reason)}", now, fx)
    for n, s in st.steps.items():
        if s.token:
            _cancel(defn, st, n, now, "the saga was aborted", fx, hist)
        elif s.items is not None and s.status in (_S.RUNNING, _S.COMPENSATING):
            mine = _own(st, n)
            stop_items(mine, n, now, "the saga was aborted", fx, hist)
            mine.status = _S.FAILED if mine.status is _S.RUNNING else _S.COMPENSATION_FAILED
            mine.error = "cancelled: the saga was aborted"
            mine.finished_at = now
        elif s.wake_at is not None:
            _own(st, n).wake_at = None
    return None


def _on_parent_rollback(
    defn: SagaDefinition, st: SagaState, ev: ParentRollback, now: float, fx: list[Effect], hist: list[HistoryEntry]
) -> str | None:
    """The parent rolls back: a pending or running child compensates, a completed one is reopened to."""
    parent = st.meta.get(PARENT) if st.meta else None
    if not isinstance(parent, dict) or parent.get("id") != ev.parent_id:
        return f"saga {st.id} is not a child of saga {ev.parent_id}"
    if st.status is SagaStatus.COMPENSATING or ROLLBACK in st.meta:
        return None  # already rolling back (or waiting for its pivot to): its end is reported as it comes
    if st.status not in (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPLETED):
        return f"saga is {st.status.value}: only a pending, running or completed child saga can be rolled back"
    pivot = _past_pivot_name(defn, st)
    if pivot is not None:
        return f"pivot step {pivot!r} has completed: the saga can no longer be rolled back"
    reason = ev.reason or f"its parent saga {ev.parent_id} is rolled back"
    if st.status is SagaStatus.COMPLETED:
        # Reopened: the compensation of its completed steps runs as on any rollback.
        st.status = SagaStatus.COMPENSATING
        st.error = reason
        hist.append(HistoryEntry(now, "compensating", f"completed saga reopened for compensation: {reason}"))
        return None
    _rollback(defn, st, now, reason, fx, hist, kind="compensate")
    return None
