"""The machine's entry points: ``new_saga`` and ``decide``, pure functions over the types of ``_types``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._definition import SagaDefinition, validate_model_data
from .._status import SagaStatus
from ._children import abort_again, child_ended_after_abort, completion_of, notify_parent, recheck
from ._choreography import _apply_held, _name_stages, _on_observed
from ._completions import _match_reply, _on_completion, _on_granted, _on_locks, _on_resume, _on_timer
from ._items import pump
from ._locks import release_at_end
from ._operators import _on_abort, _on_compensate, _on_parent_rollback, _on_retry, _on_skip
from ._progress import (
    _S,
    _advance,
    _begin,
    _fork,
    _not_yet,
    _own,
    _refuse_rollback,
    _release_permits,
    _wake,
    attempt_timeout,
    step_results,
)
from ._types import (
    CHOREOGRAPHED,
    HELD_EVENTS,
    LOCKS,
    PARENT,
    QUEUED_EVENTS,
    ROLLBACK,
    START_AT,
    STATE_VERSION,
    Abort,
    Begin,
    ChildOutcome,
    Compensate,
    Decision,
    Effect,
    Event,
    HistoryEntry,
    LocksGranted,
    LocksRefused,
    ParentRollback,
    PermitGranted,
    Reply,
    Resume,
    Retry,
    SagaState,
    Skip,
    StepFailed,
    StepState,
    StepSucceeded,
    Timer,
)

__all__ = ["ROLLBACK", "attempt_timeout", "decide", "new_saga", "step_results"]


def new_saga(
    definition: SagaDefinition,
    saga_id: str,
    data: Any,
    now: float,
    *,
    correlation_id: str | None = None,
    idempotency_key: str | None = None,
    begin: bool = True,
    start_at: float | None = None,
    preset: Mapping[str, Any] | None = None,
    origin: str | None = None,
    parent: tuple[str, str] | None = None,
) -> Decision:
    """Create a saga's initial state; with *begin*, its root steps are dispatched at once.

    *preset* maps step names to results the new saga starts with (a fork): those
    steps are ``SKIPPED`` with the given result, and *origin* says where it came from.
    With *start_at* after *now* the saga is scheduled: it stays ``PENDING``, due
    at that time, and no event begins it earlier. *parent* (the parent saga's id
    and step) makes it a child saga, which tells its parent when it ends.
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
    if definition.state_version != 1:
        st.meta = {STATE_VERSION: definition.state_version}
    if definition.choreography is not None:
        st.meta = {**st.meta, CHOREOGRAPHED: True}
    hist = [HistoryEntry(now, "created", f"saga {definition.name} v{definition.version} created")]
    if parent is not None:
        st.meta = {**st.meta, PARENT: {"id": parent[0], "step": parent[1]}}
        hist.append(HistoryEntry(now, "child", f"child saga of saga {parent[0]}, started by its step {parent[1]!r}"))
    if start_at is not None and start_at > now:
        st.meta = {**st.meta, START_AT: start_at}
        hist.append(HistoryEntry(now, "scheduled", f"saga scheduled to begin in {start_at - now:.3f}s"))
        begin = False
    for name, result in (preset or {}).items():
        s = st.steps[name]
        s.status = _S.SKIPPED
        s.result = result
        s.finished_at = now
        hist.append(HistoryEntry(now, "forked", f"step {name!r} result copied from {origin or 'a fork'}", name))
    fx: list[Effect] = []
    if begin:
        _begin(definition, st, now, fx, hist)
        if definition.choreography is not None:
            _name_stages(definition, hist)
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

    migrating = definition.state_version != 1 and st.meta.get(STATE_VERSION, 1) != definition.state_version
    if migrating and not _migrate(definition, st, now, hist):
        st.wake_at = None
        st.updated_at = now
        st._shared = None
        return Decision(st, fx, hist)

    match event:
        case StepSucceeded() | StepFailed():
            stale = not _on_completion(definition, st, event, now, fx, hist)
        case Reply() if event.step is None and definition.choreography is not None:
            rejected = _on_observed(definition, st, event, now, fx, hist)
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
            if st.status is SagaStatus.ABORTED:
                abort_again(st, now, fx)
        case PermitGranted():
            stale = not _on_granted(definition, st, event, now, fx, hist)
        case Resume():
            _on_resume(definition, st, now, fx, hist)
            _drain_queued(definition, st, now, fx, hist)
            if st.status is SagaStatus.ABORTED:
                abort_again(st, now, fx)
        case Begin():
            if st.status is SagaStatus.PENDING and not _not_yet(st, now):
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
        case ChildOutcome():
            completion = _child_completion(definition, st, event, now, fx, hist)
            if isinstance(completion, str):
                return Decision(state, [], hist, rejected=completion, stale=True)
        case ParentRollback():
            rejected = _on_parent_rollback(definition, st, event, now, fx, hist)
        case LocksGranted() | LocksRefused():
            _on_locks(definition, st, event, now, fx, hist)

    if rejected is not None:
        return _refused(state, event, rejected, now)
    if not stale:
        if definition.for_each:
            # An item's completion has pumped its own step already.
            done = event.step if isinstance(event, (StepSucceeded, StepFailed)) and event.item is not None else None
            _pump_for_each(definition, st, now, fx, hist, done)
        _advance(definition, st, now, fx, hist)
        if definition.choreography is not None:
            if HELD_EVENTS in st.meta:
                _apply_held(definition, st, now, fx, hist)
            _name_stages(definition, hist)
    if st.meta and LOCKS in st.meta and st.status.terminal:
        release_at_end(st, now, fx, hist)
    if st.meta and st.status is not state.status and st.status.terminal:
        notify_parent(state, st, fx)
    if definition.resource_steps:
        _release_permits(definition, state, st, fx)
    st.wake_at = _wake(definition, st)
    st.updated_at = now
    st._shared = None
    return Decision(st, fx, hist, None, stale)


def _pump_for_each(
    definition: SagaDefinition,
    st: SagaState,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
    pumped: str | None,
) -> None:
    """Start the items of running for-each steps that are due (a retry's time came, a rollback was refused)."""
    for name in definition.for_each:
        s = st.steps[name]
        if s.status is _S.RUNNING and s.items is not None and name != pumped:
            pump(definition.by_name[name], st, _own(st, name), now, fx, hist)


def _child_completion(
    definition: SagaDefinition, st: SagaState, ev: ChildOutcome, now: float, fx: list[Effect], hist: list[HistoryEntry]
) -> str | None:
    """Apply a child saga's outcome to its step; the reason it is stale, if it is."""
    if st.status is SagaStatus.ABORTED and child_ended_after_abort(st, ev):
        hist.append(
            HistoryEntry(
                now, "child_ended", f"child saga {ev.child_id} of step {ev.step!r} ended: {ev.status}", ev.step
            )
        )
        return None
    s = st.steps.get(ev.step)
    sdef = definition.by_name.get(ev.step)
    if s is None or sdef is None or not sdef.child:
        reason = f"saga {st.id} has no child step {ev.step!r} (child saga {ev.child_id})"
        hist.append(HistoryEntry(now, "stale_rejected", f"{reason}; not applied", None))
        return reason
    made = completion_of(st, s, ev)
    if isinstance(made, str):
        hist.append(HistoryEntry(now, "stale_rejected", f"{made}; not applied", ev.step))
        return made
    if made is None:
        # The child completed before it took the rollback request: ask it again.
        fx.append(recheck(sdef, st, _own(st, ev.step), now))
        return None
    _on_completion(definition, st, made, now, fx, hist)
    return None


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
        case Reply() if not state.status.terminal:
            # Matching an event to a step needs the definition: kept for the worker that has it.
            queued = st.meta.get(QUEUED_EVENTS, [])
            entry = {"type_name": event.type_name, "payload": dict(event.payload), "step": event.step}
            st.meta = {**st.meta, QUEUED_EVENTS: [*queued, {**entry, "token": event.token}]}
            hist.append(
                HistoryEntry(now, "event_queued", f"event {event.type_name} kept for a worker that has the definition")
            )
            rejected = None
        case _ if state.status.terminal and state.status is not SagaStatus.FAILED:
            rejected = f"saga is {state.status.value}: it has already finished"
        case _:
            rejected = (
                f"definition {state.name} v{state.version} is not registered here: "
                "only abort and skip are possible until a worker that has it runs the saga"
            )
    if rejected is not None:
        return _refused(state, event, rejected, now)
    if st.meta and LOCKS in st.meta and st.status.terminal:
        release_at_end(st, now, fx, hist)
    if st.meta and st.status is not state.status and st.status.terminal:
        notify_parent(state, st, fx)
    st.wake_at = _wake(None, st)
    st.updated_at = now
    st._shared = None
    return Decision(st, fx, hist)


def _migrate(definition: SagaDefinition, st: SagaState, now: float, hist: list[HistoryEntry]) -> bool:
    """Upcast the saga's data to the definition's state version; False (the saga is then FAILED) if it cannot be."""
    current = st.meta.get(STATE_VERSION, 1)
    target = definition.state_version
    data: Any = st.data
    problem: str | None = None
    if not isinstance(current, int) or current > target:
        problem = f"the data has state version {current!r}, newer than this definition's {target}"
    else:
        for v in range(current, target):
            upcast = definition.upcasters.get(v)
            if upcast is None:
                problem = f"no upcaster from state version {v} (the definition has {sorted(definition.upcasters)})"
                break
            try:
                data = upcast(dict(data) if isinstance(data, Mapping) else {})
            except Exception as e:  # a user's upcaster
                problem = f"the upcaster from state version {v} raised {type(e).__name__}: {e}"
                break
            if not isinstance(data, Mapping):
                problem = f"the upcaster from state version {v} returned {type(data).__name__}, not a mapping"
                break
        if problem is None and definition.state_model is not None:
            try:
                data = validate_model_data(definition.state_model, data)
            except ValueError as e:
                problem = f"the upcast data does not validate: {e}"
    if problem is not None:
        st.status = SagaStatus.FAILED
        st.error = f"state migration from version {current} to {target} failed: {problem}"
        hist.append(HistoryEntry(now, "state_migration_failed", st.error))
        return False
    st.data = dict(data)
    st.meta = {**st.meta, STATE_VERSION: target}
    hist.append(HistoryEntry(now, "state_migrated", f"saga data upcast from state version {current} to {target}"))
    return True


def _drain_queued(
    definition: SagaDefinition, st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]
) -> None:
    """Apply the events kept by a process without the definition, in the order they came."""
    queued = st.meta.get(QUEUED_EVENTS)
    if not queued:
        return
    st.meta = {k: v for k, v in st.meta.items() if k != QUEUED_EVENTS}
    for q in queued:
        ev = Reply(q["type_name"], q["payload"], q.get("step"), q.get("token"))
        if ev.step is None and definition.choreography is not None:
            why = _on_observed(definition, st, ev, now, fx, hist)
            if why is not None:
                hist.append(HistoryEntry(now, "refused", f"queued event {ev.type_name} refused: {why}"))
            continue
        matched = _match_reply(definition, st, ev, now, hist)
        if isinstance(matched, str):
            if not hist or hist[-1].kind != "stale_rejected":
                hist.append(HistoryEntry(now, "refused", f"queued event {ev.type_name} refused: {matched}", ev.step))
            continue
        _on_completion(definition, st, matched, now, fx, hist)


def _refused(state: SagaState, event: Event, reason: str, now: float) -> Decision:
    what = type(event).__name__.lower()
    actor = getattr(event, "actor", None)
    by = f" (by {actor})" if actor else ""
    step = getattr(event, "step", None)
    entry = HistoryEntry(now, "refused", f"{what}{by} refused: {reason}", step if isinstance(step, str) else None)
    return Decision(state, [], [entry], rejected=reason)
