"""Observers: how the runtime reports what it does, for logging, tracing and metrics.

An observer gets one frozen dataclass per happening, so adding a field later
breaks nobody:

- ``on_transition(TransitionInput)``: a saga's transition (with its history entries);
- ``on_attempt(AttemptInput)``: a local step attempt ended (succeeded, failed, timed out);
- ``on_commit(CommitInput)``: a group commit (how many writes, refused, how long).

An observer that also has the methods of ``Tracer`` is asked for a scope
around each local attempt (the step runs with it current, in its task or its
worker thread), for the headers of each command a saga sends, and for a scope
around each reply it receives.

Observers run on the engine's event loop and must be quick; an observer that
raises is logged and otherwise ignored. ``LoggingObserver`` logs;
``sagakit.otel.OpenTelemetryObserver`` records spans;
``sagakit.prometheus.PrometheusObserver`` counts. They pass errors,
tracebacks and history lines through the masking policy
(``sagakit._masking``) first: a log line is as public as a dashboard.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._masking import Masker
from ._status import SagaStatus
from ._tracebacks import MAX_TRACEBACK, format_traceback
from .machine import HistoryEntry

__all__ = [
    "MAX_TRACEBACK",
    "AttemptInput",
    "AttemptStart",
    "BaseObserver",
    "CommitInput",
    "LoggingObserver",
    "MessageInput",
    "Observer",
    "TraceScope",
    "Tracer",
    "TransitionInput",
    "format_traceback",
    "open_scope",
]


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
    created_at: float | None = None


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
    traceback: str | None = None  # of a failed attempt (bounded, as stored in the history)
    item: int | None = None  # the item's index, in a for-each step


@dataclass(frozen=True, slots=True)
class AttemptStart:
    """A local attempt of a step (or of its compensation) is about to run."""

    saga_id: str
    saga_name: str
    step: str
    attempt: int
    compensation: bool
    started: float
    correlation_id: str | None
    item: int | None = None  # the item's index, in a for-each step


@dataclass(frozen=True, slots=True)
class MessageInput:
    """A message a saga sends (a step's command) or receives (a reply, an awaited event).

    ``headers`` are the received envelope's (with the sender's ``traceparent``);
    empty for a message being sent.
    """

    type_name: str
    message_id: str
    destination: str
    saga_id: str | None
    saga_name: str | None
    step: str | None
    compensation: bool
    headers: Mapping[str, str]
    at: float


@dataclass(frozen=True, slots=True)
class CommitInput:
    """A group commit: *writes* transitions in one transaction, *refused* of them fenced."""

    writes: int
    refused: int
    started: float
    ended: float


class TraceScope(Protocol):
    """A span (or the like) a tracer has started.

    Entered around the work it covers, so that it is the current span there;
    leaving it does not end it: ``end`` does, once the outcome is known.
    """

    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...

    def end(
        self, outcome: str, *, error: str | None = None, exception: BaseException | None = None, at: float | None = None
    ) -> None: ...


class Tracer(Protocol):
    """An observer that traces: the runtime calls these besides the ``Observer`` methods."""

    def attempt_scope(self, event: AttemptStart) -> TraceScope:
        """The scope a local attempt runs in (ended with its outcome: succeeded, failed, timed_out)."""
        ...

    def send_headers(self, event: MessageInput) -> Mapping[str, str]:
        """Headers to add to a command a saga sends (a ``traceparent`` naming the send)."""
        ...

    def receive_scope(self, event: MessageInput) -> TraceScope:
        """The scope a received reply is applied in (ended with: applied, or dead_lettered and the reason)."""
        ...


class _Scopes:
    """Several tracers' scopes as one."""

    __slots__ = ("scopes",)

    def __init__(self, scopes: Sequence[TraceScope]) -> None:
        self.scopes = scopes

    def __enter__(self) -> object:
        for s in self.scopes:
            s.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for s in reversed(self.scopes):
            s.__exit__(*exc)

    def end(
        self, outcome: str, *, error: str | None = None, exception: BaseException | None = None, at: float | None = None
    ) -> None:
        for s in self.scopes:
            try:
                s.end(outcome, error=error, exception=exception, at=at)
            except Exception:
                logging.getLogger("sagakit").exception("sagakit: tracer scope %r failed to end", s)


def open_scope(tracers: Sequence[Tracer], method: str, event: AttemptStart | MessageInput) -> TraceScope | None:
    """The scope of *event* from every tracer (None if none gave one; a tracer that raises is logged and skipped)."""
    scopes = []
    for t in tracers:
        try:
            scopes.append(getattr(t, method)(event))
        except Exception:
            logging.getLogger("sagakit").exception("sagakit: tracer %r failed in %s", t, method)
    if not scopes:
        return None
    return scopes[0] if len(scopes) == 1 else _Scopes(scopes)


def is_tracer(observer: object) -> bool:
    """Whether *observer* has the methods of ``Tracer``."""
    return all(callable(getattr(observer, m, None)) for m in ("attempt_scope", "send_headers", "receive_scope"))


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


_LEVELS = {
    SagaStatus.FAILED: logging.ERROR,
    SagaStatus.COMPENSATING: logging.WARNING,
    SagaStatus.COMPENSATED: logging.WARNING,
    SagaStatus.ABORTED: logging.WARNING,
}


class LoggingObserver(BaseObserver):
    """Logs what an operator should hear of, at a level that says how urgent it is.

    - ERROR: a saga became ``FAILED``: it needs an operator (a compensation gave
      up, or a step failed past the pivot);
    - WARNING: a failed or timed-out attempt, with its traceback; a saga
      rolling back (``COMPENSATING``), ``COMPENSATED`` or ``ABORTED``;
    - INFO: other status changes; DEBUG: everything else.

    Args:
        logger: where to log (default ``sagakit.events``).
        masker: the masking policy for errors, tracebacks and history lines
            (default: ``Masker()``; ``Masker(None)`` logs them as they are).
    """

    def __init__(self, logger: logging.Logger | None = None, *, masker: Masker | None = None) -> None:
        self.log = logger or logging.getLogger("sagakit.events")
        self.masker = Masker() if masker is None else masker

    def on_transition(self, event: TransitionInput) -> None:
        level = logging.DEBUG if event.before is event.after else _LEVELS.get(event.after, logging.INFO)
        if self.log.isEnabledFor(level):
            self.log.log(
                level,
                "saga %s (%s v%d) %s -> %s: %s",
                event.saga_id, event.saga_name, event.version, event.before.value, event.after.value,
                self.masker.text("; ".join(h.message for h in event.history)),
            )  # fmt: skip

    def on_attempt(self, event: AttemptInput) -> None:
        level = logging.DEBUG if event.outcome == "succeeded" else logging.WARNING
        if self.log.isEnabledFor(level):
            what = "compensation of step" if event.compensation else "step"
            tb = f"\n{self.masker.text(event.traceback).rstrip()}" if event.traceback else ""
            self.log.log(
                level,
                "saga %s %s %r attempt %d %s in %.1f ms%s%s",
                event.saga_id, what, event.step, event.attempt, event.outcome,
                (event.ended - event.started) * 1000, f": {self.masker.text(event.error)}" if event.error else "", tb,
            )  # fmt: skip

    def on_commit(self, event: CommitInput) -> None:
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug(
                "group commit of %d transitions (%d refused) in %.1f ms",
                event.writes, event.refused, (event.ended - event.started) * 1000,
            )  # fmt: skip
