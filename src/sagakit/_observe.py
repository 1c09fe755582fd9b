"""Observers: how the runtime reports what it does, for logging, tracing and metrics.

An observer gets one frozen dataclass per happening, so adding a field later
breaks nobody:

- ``on_transition(TransitionInput)``: a saga's transition (with its history entries);
- ``on_attempt(AttemptInput)``: a local step attempt ended (succeeded, failed, timed out);
- ``on_commit(CommitInput)``: a group commit (how many writes, refused, how long).

Observers run on the engine's event loop and must be quick; an observer that
raises is logged and otherwise ignored. ``LoggingObserver`` logs;
``sagakit.otel.OpenTelemetryObserver`` records spans. Both pass errors and
history lines through the masking policy (``sagakit._masking``) first: a log
line is as public as a dashboard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from ._masking import Masker
from ._status import SagaStatus
from .machine import HistoryEntry

__all__ = ["AttemptInput", "BaseObserver", "CommitInput", "LoggingObserver", "Observer", "TransitionInput"]


@dataclass(frozen=True, slots=True)
class TransitionInput:
    """A saga moved on (its new state is queued for the next group commit)."""

    saga_id: str
    saga_name: str
    version: int
    before: SagaStatus
    after: SagaStatus
    history: tuple[HistoryEntry, ...]
    at: float


@dataclass(frozen=True, slots=True)
class AttemptInput:
    """A local attempt of a step (or of its compensation) ended."""

    saga_id: str
    saga_name: str
    step: str
    attempt: int
    compensation: bool
    started: float
    ended: float
    outcome: str  # "succeeded", "failed" or "timed_out"
    error: str | None
    correlation_id: str | None


@dataclass(frozen=True, slots=True)
class CommitInput:
    """A group commit: *writes* transitions in one transaction, *refused* of them fenced."""

    writes: int
    refused: int
    started: float
    ended: float


class Observer(Protocol):
    """Receives the runtime's reports. Subclass BaseObserver to implement only some."""

    def on_transition(self, event: TransitionInput) -> None: ...

    def on_attempt(self, event: AttemptInput) -> None: ...

    def on_commit(self, event: CommitInput) -> None: ...


class BaseObserver:
    """An observer that ignores everything; override what you need."""

    def on_transition(self, event: TransitionInput) -> None:
        return None

    def on_attempt(self, event: AttemptInput) -> None:
        return None

    def on_commit(self, event: CommitInput) -> None:
        return None


class LoggingObserver(BaseObserver):
    """Logs status changes and failed attempts at INFO, everything else at DEBUG.

    Args:
        logger: where to log (default ``sagakit.events``).
        masker: the masking policy for errors and history lines (default:
            ``Masker()``; ``Masker(None)`` logs them as they are).
    """

    def __init__(self, logger: logging.Logger | None = None, *, masker: Masker | None = None) -> None:
        self.log = logger or logging.getLogger("sagakit.events")
        self.masker = Masker() if masker is None else masker

    def on_transition(self, event: TransitionInput) -> None:
        level = logging.INFO if event.before is not event.after else logging.DEBUG
        if self.log.isEnabledFor(level):
            self.log.log(
                level,
                "saga %s (%s v%d) %s -> %s: %s",
                event.saga_id, event.saga_name, event.version, event.before.value, event.after.value,
                self.masker.text("; ".join(h.message for h in event.history)),
            )  # fmt: skip

    def on_attempt(self, event: AttemptInput) -> None:
        level = logging.DEBUG if event.outcome == "succeeded" else logging.INFO
        if self.log.isEnabledFor(level):
            what = "compensation of step" if event.compensation else "step"
            self.log.log(
                level,
                "saga %s %s %r attempt %d %s in %.1f ms%s",
                event.saga_id, what, event.step, event.attempt, event.outcome,
                (event.ended - event.started) * 1000, f": {self.masker.text(event.error)}" if event.error else "",
            )  # fmt: skip

    def on_commit(self, event: CommitInput) -> None:
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug(
                "group commit of %d transitions (%d refused) in %.1f ms",
                event.writes, event.refused, (event.ended - event.started) * 1000,
            )  # fmt: skip
