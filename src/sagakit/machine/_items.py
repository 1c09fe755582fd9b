"""For-each steps: the item list, its items' attempts and compensations, at most ``parallelism`` at a time.

A for-each step reads its item list once, when it is dispatched (the
definition's ``items`` hook over the saga's data and results), and keeps it
in ``StepState.items``, one ``ItemState`` per item; the step's own token stays
0 and every item attempt has its own token and reports with its index. The
step completes when every item has, with the list of their results; an item
that fails for good fails the step (the caller rolls back); a rollback stops
the items in flight (their outcome is uncertain) and compensates, in reverse
order, the items that completed or may have had their effect.

The functions here change only the step state they are given, which the
caller has made its own (``_progress._own``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .._definition import StepDefinition
from .._status import SagaStatus, StepStatus
from ._types import ROLLBACK, CancelAttempt, Effect, HistoryEntry, ItemState, RunStep, SagaState, StepState

_S = StepStatus
_entry = functools.partial(tuple.__new__, HistoryEntry)
_run = functools.partial(tuple.__new__, RunStep)
_ITEM_DONE = (_S.COMPLETED, _S.SKIPPED)


def read_items(sdef: StepDefinition, data: Any, results: Mapping[str, Any]) -> list[ItemState] | str:
    """The items of for-each step *sdef* for this saga, or why they cannot be had (the step then fails)."""
    fe = sdef.for_each
    assert fe is not None
    name = sdef.name
    try:
        raw = fe.items(data, results)
    except Exception as e:  # a user's hook
        return f"the items of for-each step {name!r} could not be read: items() raised {type(e).__name__}: {e}"
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Sequence):
        return (
            f"the items of for-each step {name!r} must be a list, but items() returned "
            f"{type(raw).__name__}: {_short(raw)}"
        )
    try:
        # Items come from the saga's data and results, which are JSON already; anything else is refused.
        values = orjson.loads(orjson.dumps(list(raw)))
    except TypeError as e:
        return f"the items of for-each step {name!r} must be JSON values (from the saga's data or results): {e}"
    keys: list[str] = []
    if fe.key is None:
        keys = [str(i) for i in range(len(values))]
    else:
        seen: dict[str, int] = {}
        for i, item in enumerate(raw):
            try:
                k = fe.key(item)
            except Exception as e:  # a user's hook
                return (
                    f"the key of item {i} of for-each step {name!r} could not be read: "
                    f"key() raised {type(e).__name__}: {e}"
                )
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                return (
                    f"the key of item {i} of for-each step {name!r} must be a string or an integer, "
                    f"got {type(k).__name__}: {_short(k)}"
                )
            ks = str(k)
            if ks in seen:
                return (
                    f"items {seen[ks]} and {i} of for-each step {name!r} have the same key {ks!r}: "
                    "each item needs its own key (its idempotency key is made from it)"
                )
            seen[ks] = i
            keys.append(ks)
    return [ItemState(v, k) for v, k in zip(values, keys, strict=True)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def start_items(
    sdef: StepDefinition,
    st: SagaState,
    s: StepState,
    compensation: bool,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> bool:
    """Dispatch for-each step *s* (its action, or its compensation); True if it ended at once (no items).

    Its items were read just before (``_progress._read_due_items``); a step
    dispatched again (after an operator's retry) keeps its items and runs the
    ones that have not completed. A compensation marks the items to undo
    first: those that completed, may have had their effect, or whose
    compensation gave up before (an operator's retry).
    """
    name = sdef.name
    if compensation:
        if s.compensation_attempts == 0:
            # The rollback begins (or an operator retries it): mark what is to be undone.
            items = s.items or []
            undo = 0
            for i, it in enumerate(items):
                if it.status is _S.COMPENSATION_FAILED or item_to_undo(sdef, it):
                    items[i] = it._replace(status=_S.COMPENSATING, compensation_attempts=0, token=0, wake_at=None)
                    undo += 1
            s.compensation_attempts = 1
            hist.append(
                HistoryEntry(
                    now, "compensation_started", f"compensation of for-each step {name!r}: {undo} item(s) to undo", name
                )
            )
        return pump(sdef, st, s, now, fx, hist)
    s.status = _S.RUNNING
    s.attempts += 1
    s.error = None
    if s.attempts == 1:
        s.started_at = now
    fe = sdef.for_each
    assert fe is not None
    # Read (and refused, if it could not be) just before the step is dispatched: _progress._read_due_items.
    assert s.items is not None, f"for-each step {name!r} dispatched before its items were read"
    if s.attempts == 1:
        hist.append(
            HistoryEntry(
                now,
                "step_started",
                f"for-each step {name!r} over {len(s.items)} item(s), at most {fe.parallelism} at a time",
                name,
                s.attempts,
            )
        )
    else:
        hist.append(HistoryEntry(now, "step_started", f"for-each step {name!r} runs again", name, s.attempts))
    return pump(sdef, st, s, now, fx, hist)


def pump(
    sdef: StepDefinition,
    st: SagaState,
    s: StepState,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> bool:
    """Start the items that are due, up to the step's parallelism; end the step when all items have.

    Returns True when the step has just ended (completed, compensated, or its
    compensation gave up). ``s.wake_at`` becomes the earliest time an item waits for.
    """
    fe = sdef.for_each
    assert fe is not None
    items = s.items
    assert items is not None
    name = sdef.name
    limit = fe.parallelism
    # One pass over the items finds those in flight and the first due ones (at most ``limit``):
    # a step with thousands of items is pumped on every one of its transitions.
    inflight = 0
    due: list[int] = []
    room = limit  # more than this many due items are never started at once
    wake: float | None = None
    if s.status is _S.COMPENSATING:
        waiting = False
        for i in range(len(items) - 1, -1, -1):  # undone in reverse order
            it = items[i]
            if it.status is not _S.COMPENSATING:
                continue
            waiting = True
            if it.token:
                inflight += 1
                continue
            w = it.wake_at
            if w is not None and w > now:
                if wake is None or w < wake:
                    wake = w
                continue
            if room:
                due.append(i)
                room -= 1
        if not waiting:
            _compensation_settled(s, name, now, hist)
            return True
        timeout = sdef.attempt_timeouts[1]
        for i in due[: max(0, limit - inflight)]:
            it = items[i]
            st.seq += 1
            n = it.compensation_attempts + 1
            items[i] = it._replace(token=st.seq, compensation_attempts=n, wake_at=None)
            message = f"compensation of step {name!r} item {i} attempt {n}"
            hist.append(_entry((now, "item_compensation_started", message, name, n, None)))
            fx.append(_run((name, True, n, st.seq, timeout, i)))
        s.wake_at = wake
        return False
    if s.status is not _S.RUNNING:
        return False
    # Nothing new starts while a rollback waits for a pivot step, or once the saga stopped.
    go = st.status is SagaStatus.RUNNING and ROLLBACK not in st.meta
    done = True
    for i, it in enumerate(items):
        status = it.status
        if status in _ITEM_DONE:
            continue
        done = False
        if it.token:
            inflight += 1
            continue
        if status is not _S.PENDING or not go:
            continue
        w = it.wake_at
        if w is not None and w > now:
            if wake is None or w < wake:
                wake = w
            continue
        if room:
            due.append(i)
            room -= 1
    if done:
        s.status = _S.COMPLETED
        s.result = [it.result for it in items]
        s.error = None
        s.wake_at = None
        s.finished_at = now
        hist.append(_entry((now, "step_completed", f"step {name!r} completed", name, s.attempts, None)))
        return True
    timeout = sdef.attempt_timeouts[0]
    for i in due[: max(0, limit - inflight)]:
        it = items[i]
        st.seq += 1
        n = it.attempts + 1
        items[i] = it._replace(status=_S.RUNNING, attempts=n, token=st.seq, wake_at=None)
        hist.append(_entry((now, "item_started", f"step {name!r} item {i} attempt {n}", name, n, None)))
        fx.append(_run((name, False, n, st.seq, timeout, i)))
    s.wake_at = wake
    return False


def _compensation_settled(s: StepState, name: str, now: float, hist: list[HistoryEntry]) -> None:
    """No item of the step waits for its compensation any more: the step is compensated, or it gave up."""
    items = s.items
    assert items is not None
    s.wake_at = None
    s.finished_at = now
    gave_up = [i for i, it in enumerate(items) if it.status is _S.COMPENSATION_FAILED]
    if not gave_up:
        s.status = _S.COMPENSATED
        s.error = None
        hist.append(_entry((now, "compensation_completed", f"step {name!r} compensated", name, None, None)))
        return
    first = items[gave_up[0]]
    s.status = _S.COMPENSATION_FAILED
    s.error = f"compensation of item {gave_up[0]} (key {first.key!r}) gave up: {first.error}"
    hist.append(
        HistoryEntry(
            now,
            "compensation_failed",
            f"compensation of step {name!r} gave up: {len(gave_up)} item(s) could not be undone (first: {s.error})",
            name,
            s.compensation_attempts,
        )
    )


def item_to_undo(sdef: StepDefinition, it: ItemState) -> bool:
    """Whether a rollback compensates the item: it completed, or it may have had its effect."""
    if it.status is _S.COMPLETED:
        return True
    return it.status is _S.FAILED and it.attempts > 0 and (it.uncertain or sdef.compensate_failed)


def items_to_undo(sdef: StepDefinition, s: StepState) -> bool:
    """Whether a rollback has anything of for-each step *s* to compensate."""
    items = s.items
    if not items or sdef.compensation is None:
        return False
    return any(item_to_undo(sdef, it) for it in items)


def stop_items(
    s: StepState,
    name: str,
    now: float,
    reason: str,
    fx: list[Effect],
    hist: list[HistoryEntry],
    *,
    effectful: bool = True,
    again: bool = False,
) -> None:
    """End the item attempts in flight of for-each step *s*: they may have had their effect.

    With *again* the items go back to PENDING, to run again if the saga goes
    on (an operator's retry after it failed past its pivot); otherwise an
    action attempt ends FAILED (and uncertain), and items waiting for a retry
    will not get it. A compensation attempt ends COMPENSATION_FAILED.
    """
    items = s.items
    if not items:
        return
    note = "; it may have had its effect" if effectful else ""
    for i, it in enumerate(items):
        if it.token:
            comp = it.status is _S.COMPENSATING
            fx.append(CancelAttempt(name, comp, it.token, reason, i))
            if comp:
                items[i] = it._replace(
                    status=_S.COMPENSATION_FAILED, token=0, wake_at=None, error=f"cancelled: {reason}"
                )
                hist.append(
                    HistoryEntry(
                        now,
                        "item_compensation_cancelled",
                        f"compensation of step {name!r} item {i} attempt {it.compensation_attempts} "
                        f"cancelled: {reason}",
                        name,
                        it.compensation_attempts,
                    )
                )
            elif again:
                items[i] = it._replace(status=_S.PENDING, token=0, wake_at=None, uncertain=it.uncertain or effectful)
                hist.append(
                    HistoryEntry(
                        now, "item_cancelled", f"step {name!r} item {i} attempt {it.attempts} stopped: {reason}", name
                    )
                )
            else:
                items[i] = it._replace(
                    status=_S.FAILED,
                    token=0,
                    wake_at=None,
                    error=f"cancelled: {reason}",
                    uncertain=it.uncertain or effectful,
                )
                hist.append(
                    HistoryEntry(
                        now,
                        "item_cancelled",
                        f"step {name!r} item {i} attempt {it.attempts} cancelled: {reason}{note}",
                        name,
                        it.attempts,
                    )
                )
        elif it.wake_at is not None:
            if again:
                items[i] = it._replace(wake_at=None)
            elif it.status is _S.PENDING:
                # It failed before and waits for its next attempt, which will not come.
                items[i] = it._replace(status=_S.FAILED, wake_at=None)
            else:
                items[i] = it._replace(wake_at=None)
    if any(it.uncertain for it in items):
        s.uncertain = True
    s.wake_at = None


def resume_items(
    sdef: StepDefinition, st: SagaState, s: StepState, now: float, fx: list[Effect], hist: list[HistoryEntry]
) -> None:
    """Run again, with new tokens, the item attempts a worker that stopped left in flight."""
    items = s.items
    assert items is not None
    name = sdef.name
    for i, it in enumerate(items):
        if not it.token:
            continue
        comp = it.status is _S.COMPENSATING
        st.seq += 1
        attempt = it.compensation_attempts if comp else it.attempts
        items[i] = it._replace(token=st.seq, uncertain=it.uncertain or not comp)
        what = "compensation of step" if comp else "step"
        hist.append(
            HistoryEntry(
                now,
                "item_resumed",
                f"{what} {name!r} item {i} attempt {attempt} runs again: its worker stopped before reporting",
                name,
                attempt,
            )
        )
        fx.append(RunStep(name, comp, attempt, st.seq, sdef.attempt_timeouts[comp], i))


def has_inflight(s: StepState) -> bool:
    items = s.items
    return items is not None and any(it.token for it in items)
