"""A saga's timeline, read from its history: attempts with their duration and error, admin actions.

The history is the audit trail the state machine writes; this module only
reads it. Attempts pair ``step_started`` (``compensation_started``) with the
entry that ended them (a failed one with its traceback, when the history kept
one); admin entries (retry, skip, compensate, abort, fork) carry who did it and
why, as ``by ACTOR: REASON``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._snapshot import SagaSnapshot
from .._status import StepStatus
from ..machine import HistoryEntry

__all__ = ["AdminAction", "Attempt", "ObservedEvent", "Timeline", "build_timeline"]

# What a choreographed saga records of the participants' events it observed (see sagakit.choreography).
OBSERVED_KINDS = {
    "observed": "observed",
    "observed_early": "kept for its turn",
    "observed_late": "observed while rolling back",
    "observed_dropped": "not applied",
}
ADMIN_KINDS = frozenset({"retry", "skip", "compensate", "abort", "fork"})
_WHO = re.compile(r" by (?P<actor>.+?)(?:: (?P<reason>.*))?$", re.DOTALL)
# Phrases before the "by ACTOR" part that contain " by " themselves.
_NOTES = ("result given by the operator",)
_RETRY_IN = re.compile(r"; retry in [0-9.]+s$")
_NOT_RETRIED = re.compile(r" \(not retried: saga is \w+\)$")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a step's action or compensation.

    ``outcome``: ``running`` (no end recorded yet), ``completed``, ``failed``
    (retried later if the step was retryable), ``interrupted`` (its worker
    stopped; the attempt ran again) or ``unfinished`` (the saga moved on
    without a result: aborted, or its step skipped).
    """

    step: str
    direction: str  # "action" or "compensation"
    attempt: int
    started_at: float
    ended_at: float | None
    outcome: str
    error: str | None = None
    traceback: str | None = None  # of a failed attempt, as the history keeps it

    @property
    def duration(self) -> float | None:
        return None if self.ended_at is None else max(0.0, self.ended_at - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "direction": self.direction,
            "attempt": self.attempt,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration": self.duration,
            "outcome": self.outcome,
            "error": self.error,
            "traceback": self.traceback,
        }


@dataclass(frozen=True, slots=True)
class AdminAction:
    """An operator's action recorded in the history, with who and why."""

    at: float
    action: str
    actor: str | None
    reason: str | None
    message: str
    step: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "action": self.action,
            "actor": self.actor,
            "reason": self.reason,
            "message": self.message,
            "step": self.step,
        }


@dataclass(frozen=True, slots=True)
class ObservedEvent:
    """A participant's event a choreographed saga observed, and what it did (``what``: see OBSERVED_KINDS)."""

    at: float
    kind: str
    what: str
    stage: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, "what": self.what, "stage": self.stage, "message": self.message}


@dataclass(frozen=True, slots=True)
class Timeline:
    """Everything that happened to one saga, in order."""

    saga_id: str
    status: str
    created_at: float
    updated_at: float
    attempts: tuple[Attempt, ...]
    admin_actions: tuple[AdminAction, ...]
    events: tuple[HistoryEntry, ...] = field(default=())
    choreographed: bool = False
    observed: tuple[ObservedEvent, ...] = field(default=())
    """A choreographed saga's observed events, in order (empty for other sagas)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "saga_id": self.saga_id,
            "status": self.status,
            "choreographed": self.choreographed,
            "observed": [o.to_dict() for o in self.observed],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "attempts": [a.to_dict() for a in self.attempts],
            "admin_actions": [a.to_dict() for a in self.admin_actions],
            "events": [
                {
                    "at": h.at,
                    "kind": h.kind,
                    "step": h.step,
                    "attempt": h.attempt,
                    "message": h.message,
                    "traceback": h.traceback,
                }
                for h in self.events
            ],
        }


@dataclass(slots=True)
class _Open:
    step: str
    direction: str
    attempt: int
    started_at: float
    index: int


def build_timeline(snap: SagaSnapshot, history: Sequence[HistoryEntry] | None = None) -> Timeline:
    """The timeline of *snap* from its history (``snap.history`` unless given)."""
    entries = tuple(snap.history if history is None else history)
    attempts: list[Attempt | None] = []
    open_: dict[tuple[str, str], _Open] = {}
    admin: list[AdminAction] = []

    def start(step: str, direction: str, attempt: int, at: float) -> None:
        earlier = open_.pop((step, direction), None)
        if earlier is not None:
            close(earlier, at, "interrupted", None)
        open_[(step, direction)] = _Open(step, direction, attempt, at, len(attempts))
        attempts.append(None)

    def close(o: _Open, at: float, outcome: str, error: str | None, tb: str | None = None) -> None:
        attempts[o.index] = Attempt(o.step, o.direction, o.attempt, o.started_at, at, outcome, error, tb)

    def finish(
        step: str | None, direction: str, at: float, outcome: str, error: str | None, tb: str | None = None
    ) -> None:
        o = open_.pop((step or "", direction), None)
        if o is not None:
            close(o, at, outcome, error, tb)

    for h in entries:
        step = h.step or ""
        kind = h.kind
        if kind == "step_started":
            start(step, "action", h.attempt or 1, h.at)
        elif kind == "compensation_started":
            start(step, "compensation", h.attempt or 1, h.at)
        elif kind == "resumed":
            direction = "compensation" if h.message.startswith("compensation") else "action"
            start(step, direction, h.attempt or 1, h.at)
        elif kind == "step_completed":
            finish(h.step, "action", h.at, "completed", None)
        elif kind == "step_failed":
            finish(h.step, "action", h.at, "failed", _error(h), h.traceback)
        elif kind == "compensation_completed":
            finish(h.step, "compensation", h.at, "completed", None)
        elif kind == "compensation_failed":
            finish(h.step, "compensation", h.at, "failed", _error(h), h.traceback)
        elif kind in ("skip", "abort"):
            # The attempts a skip or an abort cut short never report.
            for key in [k for k in open_ if kind == "abort" or k[0] == step]:
                o = open_.pop(key)
                close(o, h.at, "unfinished", None)
        if kind in ADMIN_KINDS:
            admin.append(_admin(h))

    # Attempts with no end: running if the step still is, else the saga moved on without them.
    for o in open_.values():
        s = snap.steps.get(o.step)
        busy = s is not None and s.status in (StepStatus.RUNNING, StepStatus.COMPENSATING)
        attempts[o.index] = Attempt(
            o.step, o.direction, o.attempt, o.started_at, None, "running" if busy else "unfinished"
        )
    return Timeline(
        saga_id=snap.id,
        status=snap.status.value,
        created_at=snap.created_at,
        updated_at=snap.updated_at,
        attempts=tuple(a for a in attempts if a is not None),
        admin_actions=tuple(admin),
        events=entries,
        choreographed=snap.choreographed,
        observed=tuple(
            ObservedEvent(h.at, h.kind, OBSERVED_KINDS[h.kind], h.step, h.message)
            for h in entries
            if h.kind in OBSERVED_KINDS
        ),
    )


def _error(h: HistoryEntry) -> str:
    """The error text of a failure entry, without the machine's framing."""
    text = h.message
    _, sep, rest = text.partition(": ")
    if sep:
        text = rest
    text = _RETRY_IN.sub("", text)
    return _NOT_RETRIED.sub("", text)


def _admin(h: HistoryEntry) -> AdminAction:
    text = h.message
    for note in _NOTES:
        text = text.replace(note, "")
    m = _WHO.search(text)
    actor = m.group("actor").strip() if m else None
    reason = m.group("reason") if m else None
    return AdminAction(h.at, h.kind, actor, reason or None, h.message, h.step)
