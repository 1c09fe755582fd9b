"""Child sagas, the parent's side and the child's: ids, the effects a child step asks for, outcomes.

A child step's attempt is the child saga itself. Dispatching it asks the
runtime to start the child (``StartChild``) under an id derived from the
parent, the step and the attempt's token, so that a re-run after a crash
finds the same child instead of starting another. The child's end comes back
as a ``ChildOutcome``: from the child itself when it ends (``NotifyParent``),
or from the parent's own look at it, every ``check_every`` seconds and when
the parent is resumed. Rolling the step back is the child's rollback
(``CompensateChild``); aborting the parent aborts the child (``AbortChild``),
and the aborted parent stays due, asking again, until the child has ended.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .._child import ChildSaga
from .._definition import SagaDefinition, StepDefinition
from .._status import SagaStatus, StepStatus
from ._types import (
    ABORTING,
    CHILDREN,
    PARENT,
    AbortChild,
    ChildOutcome,
    CompensateChild,
    Effect,
    NotifyParent,
    SagaState,
    StartChild,
    StepFailed,
    StepState,
    StepSucceeded,
)

__all__ = ["child_id", "child_outcome", "parent_of"]

_S = StepStatus
DEFAULT_CHECK_EVERY = 30.0
ALL_CHILDREN = CHILDREN + "_all"


def child_id(parent_id: str, step: str, token: int) -> str:
    """The id of the child saga that attempt *token* of step *step* of saga *parent_id* starts (32 hex digits)."""
    return hashlib.sha256(f"{parent_id}\x00{step}\x00{token}".encode()).hexdigest()[:32]


def parent_of(st: SagaState) -> tuple[str, str] | None:
    """The parent saga's id and step of a child saga, or None for a saga that is nobody's child."""
    p = st.meta.get(PARENT) if st.meta else None
    if isinstance(p, dict) and isinstance(p.get("id"), str) and isinstance(p.get("step"), str):
        return p["id"], p["step"]
    return None


def child_outcome(child: SagaState, step: str) -> ChildOutcome:
    """What the end of *child* (a terminal child saga) means to step *step* of its parent."""
    status = child.status
    if status is SagaStatus.COMPLETED:
        results = {n: s.result for n, s in child.steps.items() if s.status in (_S.COMPLETED, _S.SKIPPED)}
        result: Any = {"saga_id": child.id, "data": child.data, "results": results}
    else:
        result = {"saga_id": child.id, "status": status.value, "error": child.error}
    return ChildOutcome(step, child.id, status.value, result)


def current_child(st: SagaState, step: str) -> str | None:
    """The child saga the last attempt of *step* started."""
    children = st.meta.get(CHILDREN) if st.meta else None
    return children.get(step) if isinstance(children, dict) else None


def dispatch_child(
    sdef: StepDefinition, st: SagaState, s: StepState, compensation: bool, now: float
) -> StartChild | CompensateChild:
    """The effect of a child step's attempt just dispatched (*s* is the step's own, changed state).

    An action attempt names its child and records it in the saga's meta; a
    compensation rolls back the child the last action attempt started.
    """
    action = sdef.action
    assert isinstance(action, ChildSaga)
    s.wake_at = now + action.check_every
    if compensation:
        cid = current_child(st, sdef.name) or child_id(st.id, sdef.name, s.token)
        return CompensateChild(
            sdef.name,
            s.token,
            cid,
            action.name,
            action.version,
            _rollback_reason(st),
        )
    cid = child_id(st.id, sdef.name, s.token)
    children = st.meta.get(CHILDREN)
    every = st.meta.get(ALL_CHILDREN)
    st.meta = {
        **st.meta,
        CHILDREN: {**(children if isinstance(children, dict) else {}), sdef.name: cid},
        ALL_CHILDREN: [*(every if isinstance(every, list) else []), {"step": sdef.name, "id": cid}],
    }
    return StartChild(sdef.name, s.token, cid, action.name, action.version)


def _rollback_reason(st: SagaState) -> str:
    return f"its parent saga {st.id} is rolled back" + (f" ({st.error})" if st.error else "")


def recheck(sdef: StepDefinition, st: SagaState, s: StepState, now: float) -> Effect:
    """The effect that looks at the child of a waiting child step again (timer, resume); *s* is owned."""
    action = sdef.action
    assert isinstance(action, ChildSaga)
    s.wake_at = now + action.check_every
    cid = current_child(st, sdef.name) or child_id(st.id, sdef.name, s.token)
    if s.status is _S.COMPENSATING:
        return CompensateChild(sdef.name, s.token, cid, action.name, action.version, _rollback_reason(st))
    return StartChild(sdef.name, s.token, cid, action.name, action.version)


def abort_children(defn: SagaDefinition | None, st: SagaState, reason: str, now: float, fx: list[Effect]) -> None:
    """Abort the children of the child steps with an attempt in flight (read from meta: no definition needed).

    The aborted saga remembers them (``ABORTING``) and stays due until each has
    reported its end, telling them again every ``check_every`` seconds.
    """
    children = st.meta.get(CHILDREN) if st.meta else None
    if not isinstance(children, dict):
        return
    running: dict[str, str] = {}
    every = DEFAULT_CHECK_EVERY
    for step, cid in children.items():
        s = st.steps.get(step)
        if s is not None and s.token and isinstance(cid, str):
            running[cid] = step
            fx.append(AbortChild(step, cid, reason))
            action = defn.by_name[step].action if defn is not None and step in defn.by_name else None
            if isinstance(action, ChildSaga):
                every = min(every, action.check_every)
    if running:
        st.meta = {**st.meta, ABORTING: {"wake": now + every, "every": every, "reason": reason, "children": running}}


def abort_again(st: SagaState, now: float, fx: list[Effect]) -> None:
    """An aborted saga whose children have not all reported their end tells them again (timer, resume)."""
    aborting = st.meta.get(ABORTING) if st.meta else None
    if not isinstance(aborting, dict):
        return
    for cid, step in aborting["children"].items():
        fx.append(AbortChild(step, cid, aborting["reason"]))
    st.meta = {**st.meta, ABORTING: {**aborting, "wake": now + aborting["every"]}}


def child_ended_after_abort(st: SagaState, ev: ChildOutcome) -> bool:
    """Take the end of a child an aborted saga told to abort: it no longer waits for it. False if it is not one."""
    aborting = st.meta.get(ABORTING) if st.meta else None
    if not isinstance(aborting, dict) or ev.child_id not in aborting["children"] or ev.status is None:
        return False
    left = {k: v for k, v in aborting["children"].items() if k != ev.child_id}
    if left:
        st.meta = {**st.meta, ABORTING: {**aborting, "children": left}}
    else:
        st.meta = {k: v for k, v in st.meta.items() if k != ABORTING}
    return True


def aborting_wake(st: SagaState) -> float | None:
    """When an aborted saga tells its children to abort again; None once they have all ended."""
    aborting = st.meta.get(ABORTING) if st.meta else None
    return aborting["wake"] if isinstance(aborting, dict) else None


def completion_of(st: SagaState, s: StepState, ev: ChildOutcome) -> StepSucceeded | StepFailed | str | None:
    """What a child's outcome does to its step: a completion of the current attempt, None (ask again), or why not.

    A string is the reason the outcome is stale (no attempt waits for it). None
    means a completed child while its step compensates: the rollback request is
    made again (the child finished before it could take it).
    """
    cid = current_child(st, ev.step)
    if not s.token or cid != ev.child_id:
        what = "no attempt of it waits for a child" if not s.token else f"its current child is {cid}"
        return f"outcome of child saga {ev.child_id} for step {ev.step!r} ({ev.status or ev.error}): {what}"
    name = ev.step
    detail = ev.result.get("error") if isinstance(ev.result, dict) else None
    why = f": {detail}" if detail else ""
    if s.status is _S.COMPENSATING:
        if ev.error is not None:
            return StepFailed(name, s.token, ev.error, False)
        match ev.status:
            case "compensated":
                return StepSucceeded(name, s.token)
            case "completed":
                return None
            case "aborted":
                return StepFailed(
                    name,
                    s.token,
                    f"child saga {cid} was aborted{why}: its effects stand; undo them and skip this compensation",
                    False,
                )
            case _:
                return StepFailed(
                    name,
                    s.token,
                    f"child saga {cid} is {ev.status}{why}: resolve it (retry or skip there), then retry this saga",
                    False,
                )
    if ev.error is not None:
        return StepFailed(name, s.token, ev.error, False)
    match ev.status:
        case "completed":
            return StepSucceeded(name, s.token, ev.result, ev.size)
        case "failed":
            # Its compensation gave up: what it did may stand, so a rollback asks it again.
            return StepFailed(name, s.token, f"child saga {cid} failed{why}", False, True)
        case _:
            return StepFailed(name, s.token, f"child saga {cid} was {ev.status}{why}", False)


def notify_parent(before: SagaState, st: SagaState, fx: list[Effect]) -> None:
    """A child saga that has just ended tells its parent (called only when *st* is terminal and changed status)."""
    if st.status is before.status:
        return
    parent = parent_of(st)
    if parent is not None:
        fx.append(NotifyParent(parent[0], child_outcome(st, parent[1])))
