"""The machine's data: persisted saga and step state, events in, effects out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .._status import SagaStatus, StepStatus

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
]

_S = StepStatus


# ---------------------------------------------------------------- state


class _Keep:
    """Marker: leave the saga's data as it is."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()

# The key of ``SagaState.meta`` that holds the failure event (or participant fault) that last failed
# a message step: ``{"step", "event", "payload", "fault"}``, for compensations and the failure event.
FAILURE = "failure"
# The key of ``SagaState.meta`` that holds events handed to the saga by a process without its
# definition (``engine.notify``); the next worker that resumes the saga with the definition applies them.
QUEUED_EVENTS = "queued_events"
# The key of ``SagaState.meta`` that holds the shape version of the saga's data (absent: 1).
STATE_VERSION = "state_version"
# The key of ``SagaState.meta`` that holds a rollback that waits for a running pivot step's outcome.
ROLLBACK = "rollback_requested"
# The key of ``SagaState.meta`` that holds when a scheduled saga is to begin (seconds since the epoch).
START_AT = "start_at"
# The key of ``SagaState.meta`` that holds the saga's semantic locks (see ``machine._locks``):
# ``{"saga": [keys of the saga], "held": [...], "wanted": [...], "for": [steps], "since": t,
# "until": t or None, "give_up": bool, "released": bool}``.
LOCKS = "locks"
# The key of ``SagaState.meta`` that holds, in a child saga, its parent: ``{"id", "step"}``.
PARENT = "parent"
# The key of ``SagaState.meta`` that holds, in a parent saga, the child saga each child step
# started last, by step name; and ``CHILDREN + "_all"`` every child it started, oldest first.
CHILDREN = "children"
# The key of ``SagaState.meta`` that holds, in an aborted parent saga, the children it has told to
# abort and has not yet seen end: ``{"wake": time, "every": seconds, "reason": text, "children": {id: step}}``.
# Until they end it stays due, and tells them again, so that the abort survives a crash.
ABORTING = "aborting_children"
# The key of ``SagaState.meta`` that marks a choreographed saga (``sagakit.choreography``): True.
CHOREOGRAPHED = "choreographed"
# The key of ``SagaState.meta`` that holds a choreographed saga's events observed before their stage's turn:
# ``{stage: {"type_name", "payload", "at"}}``; each is applied when its stage waits.
HELD_EVENTS = "held_events"


class ItemState(NamedTuple):
    """Persisted state of one item of a for-each step; replaced (``_replace``), never changed in place.

    ``value`` is the item as the step's item list gave it, ``key`` its
    idempotency key part (the definition's ``key`` of the item, or its index).
    ``token``, ``wake_at`` and ``uncertain`` mean what they mean on a step.
    """

    value: Any
    key: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    compensation_attempts: int = 0
    token: int = 0
    result: Any = None
    error: str | None = None
    wake_at: float | None = None
    uncertain: bool = False


@dataclass(slots=True)
class StepState:
    """Persisted state of one step in one saga.

    ``token`` is non-zero while an attempt (action or compensation) is in
    flight; only a completion carrying that token is applied. ``wake_at`` is
    when a waiting step is due: the next retry, or the reply deadline of a
    message step. ``uncertain`` is set once an attempt ended without a clear
    outcome (cancelled, timed out, its result lost): the step may have had its
    effect, so a rollback compensates it even though it never completed.

    ``items`` is None except on a for-each step once its item list was read:
    the state of each item, in the list's order. The step's own ``token`` is
    then always 0 (each item attempt has its own), and its ``wake_at`` is the
    earliest time an item waits for.
    ``waiting_for`` names the resource the attempt with ``token`` waits for a
    permit of: it has not started yet, unless ``resumed`` says that it ran
    before, on a worker that stopped (it then may have had its effect).
    """

    status: StepStatus = _S.PENDING
    attempts: int = 0
    compensation_attempts: int = 0
    token: int = 0
    result: Any = None
    error: str | None = None
    wake_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    uncertain: bool = False
    items: list[ItemState] | None = None
    waiting_for: str | None = None
    resumed: bool = False

    def copy(self) -> StepState:
        return StepState(
            self.status,
            self.attempts,
            self.compensation_attempts,
            self.token,
            self.result,
            self.error,
            self.wake_at,
            self.started_at,
            self.finished_at,
            self.uncertain,
            self.items if self.items is None else list(self.items),
            self.waiting_for,
            self.resumed,
        )


@dataclass(slots=True)
class SagaState:
    """Persisted state of one saga: everything the machine needs to decide, in one row."""

    id: str
    name: str
    version: int
    status: SagaStatus
    data: Any
    steps: dict[str, StepState]
    created_at: float
    updated_at: float
    correlation_id: str | None = None
    idempotency_key: str | None = None
    wake_at: float | None = None
    deadline_at: float | None = None
    error: str | None = None
    seq: int = 0
    revision: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    # Only while decide() makes this state from an earlier one: that state's steps,
    # which this one shares until it changes them (machine._decide._own). None otherwise.
    _shared: dict[str, StepState] | None = field(default=None, init=False, repr=False, compare=False)

    def copy(self) -> SagaState:
        return self.with_steps({k: v.copy() for k, v in self.steps.items()})

    def with_steps(self, steps: dict[str, StepState]) -> SagaState:
        """A new state with this one's fields and *steps* (``copy`` gives it copies of this one's)."""
        return SagaState(
            self.id,
            self.name,
            self.version,
            self.status,
            self.data,
            steps,
            self.created_at,
            self.updated_at,
            self.correlation_id,
            self.idempotency_key,
            self.wake_at,
            self.deadline_at,
            self.error,
            self.seq,
            self.revision,
            self.meta,
        )


class HistoryEntry(NamedTuple):
    """One line of a saga's audit trail.

    The events and effects made on every transition are named tuples: immutable
    like frozen dataclasses, and several times cheaper to create on the hot path.
    ``traceback`` is the (bounded) traceback of a failed attempt, on its failure entry.
    """

    at: float
    kind: str
    message: str
    step: str | None = None
    attempt: int | None = None
    traceback: str | None = None


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Begin:
    """Start a PENDING saga."""


@dataclass(frozen=True, slots=True)
class Timer:
    """Due timers fired: retries, reply deadlines, the saga deadline."""


@dataclass(frozen=True, slots=True)
class Resume:
    """The saga was claimed by a worker: attempts left in flight by a dead worker run again."""


class StepSucceeded(NamedTuple):
    """An attempt succeeded. ``data``, unless ``KEEP``, is the saga's new data (a merged reply).

    ``item`` is the index of the item of a for-each step the attempt was for (None for other steps).
    """

    step: str
    token: int
    result: Any = None
    size: int = 0
    data: Any = KEEP
    item: int | None = None


class StepFailed(NamedTuple):
    """An attempt failed; ``retryable`` False skips the remaining retries.

    ``uncertain`` says the attempt may have had its effect all the same (it
    timed out, or its result could not be stored): a rollback compensates it.
    ``traceback`` (the runtime's, bounded) goes into the failure's history entry.
    ``item`` is the index of the item of a for-each step the attempt was for (None for other steps).
    """

    step: str
    token: int
    error: str
    retryable: bool = True
    uncertain: bool = False
    traceback: str | None = None
    item: int | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """An event arrived for the saga: the reply to a command, or an awaited event.

    ``step`` and ``token`` come from the envelope's headers when the sender
    copied them (a reply to a command does); an external event carries neither
    and is matched to whichever step waits for its type.
    """

    type_name: str
    payload: Mapping[str, Any]
    step: str | None = None
    token: int | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Admin: re-run a failed step or compensation, or a step waiting for its retry, now."""

    reason: str = ""
    actor: str = "operator"


@dataclass(frozen=True, slots=True)
class Skip:
    """Admin: mark a waiting or failed step SKIPPED with the given result and move on."""

    step: str
    result: Any = None
    reason: str = ""
    actor: str = "operator"


@dataclass(frozen=True, slots=True)
class Compensate:
    """Admin: start compensating a running saga now.

    Attempts in flight are cancelled; while a pivot step runs, the request
    waits for its outcome (and is refused, and recorded so, if it completes).
    """

    reason: str = ""
    actor: str = "operator"


@dataclass(frozen=True, slots=True)
class Abort:
    """Admin: stop the saga where it stands, without compensation; attempts in flight are cancelled."""

    reason: str = ""
    actor: str = "operator"


class ChildOutcome(NamedTuple):
    """A child saga of step *step* ended (*status*), or the runtime could not do what the step asked (*error*).

    ``status`` is the child's terminal status (its value), None with an *error*;
    ``result`` is what the step completes with (the child's data and results)
    or the child's error; ``size`` is the result's size in bytes as stored.
    """

    step: str
    child_id: str
    status: str | None
    result: Any = None
    size: int = 0
    error: str | None = None


class PermitGranted(NamedTuple):
    """The attempt with *token* of *step* got a permit of *resource*: it may start."""

    step: str
    token: int
    resource: str


@dataclass(frozen=True, slots=True)
class ParentRollback:
    """The parent saga *parent_id* is rolled back: this child saga rolls back too.

    A pending or running child compensates (as on ``Compensate``); a completed
    one is reopened and compensates its completed steps; one already
    compensating goes on. Refused past a pivot step, as ``Compensate`` is.
    """

    parent_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LocksGranted:
    """The store granted the saga every key of the acquisition it waits for (``AcquireLocks``)."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LocksRefused:
    """The store refused the acquisition the saga waits for, and dropped it from the queues.

    ``reason`` is ``"taken"`` (lock policy ``fail``), ``"timeout"`` (the wait
    ran out) or ``"deadlock"`` (waiting would close a cycle of sagas waiting for
    each other); ``blockers`` are ``(key, saga id)`` pairs: who holds (or is
    queued first for) each key not granted.
    """

    keys: tuple[str, ...]
    reason: str
    blockers: tuple[tuple[str, str], ...] = ()


Event = (
    Begin
    | Timer
    | Resume
    | StepSucceeded
    | StepFailed
    | Reply
    | Retry
    | Skip
    | Compensate
    | Abort
    | ChildOutcome
    | ParentRollback
    | PermitGranted
    | LocksGranted
    | LocksRefused
)


# ---------------------------------------------------------------- effects


class RunStep(NamedTuple):
    """Run one attempt of a step's action (or compensation) and report it with *token*.

    ``item`` is the index of the item of a for-each step to run it for (None for other steps).
    """

    step: str
    compensation: bool
    attempt: int
    token: int
    timeout: float | None
    item: int | None = None


class CancelAttempt(NamedTuple):
    """Stop the attempt with *token* now: a running function is cancelled (a thread is abandoned).

    The machine has already ended the attempt when it asks for this: whatever
    the attempt reports later is stale and never applied.
    """

    step: str
    compensation: bool
    token: int
    reason: str
    item: int | None = None


class StartChild(NamedTuple):
    """Make sure child saga *child_id* (definition *name*, *version*) exists, started by step *step*.

    Insert it if it does not exist (a second insert of the same id is refused,
    and runs nothing); report a ``ChildOutcome`` to the parent if it has ended.
    """

    step: str
    token: int
    child_id: str
    name: str
    version: int | None


class CompensateChild(NamedTuple):
    """Roll back child saga *child_id* (``ParentRollback``), or report its end if it has ended.

    A child that does not exist yet is stored as compensated at once, so that
    no later start can run it.
    """

    step: str
    token: int
    child_id: str
    name: str
    version: int | None
    reason: str


class AbortChild(NamedTuple):
    """Abort child saga *child_id* if it has not ended (stored as aborted if it does not exist yet)."""

    step: str
    child_id: str
    reason: str


class NotifyParent(NamedTuple):
    """Hand *outcome* (this child saga's end) to the parent saga *parent_id*."""

    parent_id: str
    outcome: ChildOutcome


ChildEffect = StartChild | CompensateChild | AbortChild | NotifyParent


class AcquirePermit(NamedTuple):
    """Get a permit of *resource* for the attempt with *token*; report ``PermitGranted`` when it is granted.

    Until then the attempt waits (its step's ``waiting_for`` names the resource).
    """

    step: str
    compensation: bool
    attempt: int
    token: int
    resource: str


class ReleasePermit(NamedTuple):
    """Give back the permit of *resource* held (or waited for) by the attempt with *token* of *step*."""

    step: str
    token: int
    resource: str


class AcquireLocks(NamedTuple):
    """Acquire *keys* (sorted, distinct) for the saga, all or none, and report the outcome.

    Carried out only after the transition that asks for it is committed, and
    asked again after a restart: the store treats keys the saga already holds
    or waits for as its own. With *fail* a key held by another saga refuses the
    acquisition at once (``LocksRefused``); otherwise the saga is queued and the
    store wakes it once every key is its own. *give_up* (the wait timed out):
    grant now if possible, else leave the queues and refuse.
    """

    keys: tuple[str, ...]
    fail: bool = False
    give_up: bool = False


class ReleaseLocks(NamedTuple):
    """Release the saga's locks on *keys* (None: all of them, held or queued for), in the transition's own write.

    Whoever waits next for a released key, and now has every key it wants, is
    granted it in the same transaction and woken.
    """

    keys: tuple[str, ...] | None = None


Effect = (
    RunStep
    | CancelAttempt
    | StartChild
    | CompensateChild
    | AbortChild
    | NotifyParent
    | AcquirePermit
    | ReleasePermit
    | AcquireLocks
    | ReleaseLocks
)


@dataclass(slots=True)
class Decision:
    """What decide() returns: the new state, what to do, and what to record.

    ``rejected`` is set (and the state unchanged) when an admin command is not
    allowed, and ``history`` then holds the refusal with its reason; ``stale``
    when a completion was refused because its attempt is no longer current
    (the refusal is still recorded in ``history``).
    """

    state: SagaState
    effects: list[Effect]
    history: list[HistoryEntry]
    rejected: str | None = None
    stale: bool = False
