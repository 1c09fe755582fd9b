"""The saga state machine: a pure function from (state, event, time) to (state, effects).

``decide(definition, state, event, now)`` owns every rule of sagakit's saga
semantics: which steps are ready, retry back-off, attempt timeouts of message
steps, failure -> compensation of completed steps in reverse dependency order,
compensation retries, ``FAILED`` when a compensation gives up, stale-attempt
rejection, pivot steps, the whole-saga deadline, payload limits, resource
permits (an attempt of a step that names a resource waits for one, and every
end of the attempt gives it back) and the admin commands. It performs no I/O,
reads no clock and draws no random numbers: time comes in as ``now``, ids come
in with the state, and the retry jitter is derived from the saga id. The runtime commits the returned state and history
and only then executes the effects.

The definition is an argument rather than part of the state because it is
code: a saga stores its definition's name and version, and the runtime passes
the matching definition back in.
"""

from __future__ import annotations

from ._children import child_id, child_outcome, parent_of
from ._decide import attempt_timeout, decide, new_saga, step_results
from ._types import (
    ABORTING,
    CHILDREN,
    CHOREOGRAPHED,
    FAILURE,
    HELD_EVENTS,
    KEEP,
    LOCKS,
    PARENT,
    QUEUED_EVENTS,
    START_AT,
    STATE_VERSION,
    Abort,
    AbortChild,
    AcquireLocks,
    AcquirePermit,
    Begin,
    CancelAttempt,
    ChildEffect,
    ChildOutcome,
    Compensate,
    CompensateChild,
    Decision,
    Effect,
    Event,
    HistoryEntry,
    ItemState,
    LocksGranted,
    LocksRefused,
    NotifyParent,
    ParentRollback,
    PermitGranted,
    ReleaseLocks,
    ReleasePermit,
    Reply,
    Resume,
    Retry,
    RunStep,
    SagaState,
    Skip,
    StartChild,
    StepFailed,
    StepState,
    StepSucceeded,
    Timer,
)

__all__ = [
    "ABORTING",
    "CHILDREN",
    "CHOREOGRAPHED",
    "FAILURE",
    "HELD_EVENTS",
    "KEEP",
    "LOCKS",
    "PARENT",
    "QUEUED_EVENTS",
    "START_AT",
    "STATE_VERSION",
    "Abort",
    "AbortChild",
    "AcquireLocks",
    "AcquirePermit",
    "Begin",
    "CancelAttempt",
    "ChildEffect",
    "ChildOutcome",
    "Compensate",
    "CompensateChild",
    "Decision",
    "Effect",
    "Event",
    "HistoryEntry",
    "ItemState",
    "LocksGranted",
    "LocksRefused",
    "NotifyParent",
    "ParentRollback",
    "PermitGranted",
    "ReleaseLocks",
    "ReleasePermit",
    "Reply",
    "Resume",
    "Retry",
    "RunStep",
    "SagaState",
    "Skip",
    "StartChild",
    "StepFailed",
    "StepState",
    "StepSucceeded",
    "Timer",
    "attempt_timeout",
    "child_id",
    "child_outcome",
    "decide",
    "new_saga",
    "parent_of",
    "step_results",
]
