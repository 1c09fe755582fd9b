"""Choreographed sagas: declare a flow of participants' events, and sagakit tracks it.

In a choreography no orchestrator sends commands: each service reacts to
another's event and publishes its own. ``choreography(...)`` declares such a
flow as the events it is made of, and builds an ordinary ``SagaDefinition``
whose steps (the *stages*) each wait for one event and send nothing. An
engine that has it registered observes the events with its own consumer
group, keeps one saga per correlation id, with its status, history and
timeline, and on a failure publishes the compensating commands of the stages
passed, in reverse order, through its outbox.

Example::

    flow = (
        choreography("order_flow", deadline=3600)
        .starts_on(OrderPlaced, correlate=lambda e: e.order_id, compensate=CancelOrder)
        .then(StockReserved, compensate=send(ReleaseStock, success=StockReleased))
        .then(PaymentCaptured, failure=PaymentDeclined)
        .then(OrderShipped)
        .fails_on(OrderCancelled)
        .build()
    )
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from ._definition import (
    ChoreographySpec,
    SagaDefinition,
    StepAction,
    StepDefinition,
    _check_correlation,
    _message_type_problem,
    build_definition,
    is_message_type,
)
from ._errors import DefinitionError
from ._messages import Merge, WaitFor, message_type_name, send
from ._policy import RetryPolicy

__all__ = ["Choreography", "choreography"]

_ONCE = RetryPolicy(max_attempts=1)
_DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=10, initial_delay=0.1, max_delay=60.0)
Compensation = type | StepAction | Callable[..., Any] | None


def choreography(
    name: str,
    version: int = 1,
    *,
    deadline: float | None = None,
    before_start: Literal["keep", "refuse"] = "keep",
    description: str | None = None,
) -> Choreography:
    """Declare a choreographed saga: ``.starts_on(...)``, then ``.then(...)`` per stage, then ``.build()``.

    Args:
        name: the saga's name, as for ``SagaBuilder``.
        version: the definition's version.
        deadline: seconds the whole flow may take; a flow still unfinished then
            is rolled back (the stages passed are compensated).
        before_start: what becomes of an event of the flow that comes before
            its start event: ``"keep"`` opens the saga and keeps the event for
            its turn (the events of one flow may overtake each other);
            ``"refuse"`` dead-letters it with the reason (when its event types
            are published outside this flow too).
        description: shown with the definition.
    """
    return Choreography(name, version, deadline=deadline, before_start=before_start, description=description)


class Choreography:
    """Builds a choreographed saga's definition from the events of its flow. Made by ``choreography()``."""

    def __init__(
        self,
        name: str,
        version: int = 1,
        *,
        deadline: float | None = None,
        before_start: Literal["keep", "refuse"] = "keep",
        description: str | None = None,
    ) -> None:
        if before_start not in ("keep", "refuse"):
            raise DefinitionError(
                f"choreography {name!r}: before_start must be 'keep' or 'refuse', got {before_start!r}"
            )
        self.name = name
        self.version = version
        self.deadline = deadline
        self.before_start = before_start
        self.description = description
        self._stages: list[tuple[StepDefinition, type, tuple[type, ...], Callable[[Any], Any] | None]] = []
        self._correlate: Callable[[Any], Any] | None = None
        self._flow_failures: list[tuple[type, Callable[[Any], Any] | None]] = []

    def starts_on(
        self,
        event: type,
        *,
        correlate: Callable[[Any], Any],
        name: str | None = None,
        compensate: Compensation = None,
        compensation_retry: RetryPolicy | None = None,
    ) -> Choreography:
        """The event that starts the flow: its first stage.

        Args:
            event: the event type (a pydantic model or dataclass).
            correlate: ``event -> correlation id``: the business key that ties the
                flow's events together (one saga per id). Every event of the flow
                is read with it unless its stage gives its own.
            name: the stage's name (default: the event class's name).
            compensate: what undoes the stage on rollback: ``send(Cmd,
                success=Done)`` (the saga waits for ``Done``), a command class
                (sent, built from the saga's data, and not waited for), or a
                function of the ``StepContext``.
            compensation_retry: the compensation's retry policy.
        """
        if self._stages:
            raise DefinitionError(
                f"choreography {self.name!r}: starts_on() must come first and once; "
                f"the flow already starts on {self._stages[0][1].__qualname__}"
            )
        _check_correlation(f"choreography {self.name!r}: starts_on({_label(event)}): correlate", correlate)
        self._correlate = correlate
        self._add(event, name, None, (), compensate, compensation_retry, None, None, None)
        return self

    def then(
        self,
        event: type,
        *,
        name: str | None = None,
        after: str | Sequence[str] | None = None,
        failure: type | Sequence[type] | None = None,
        compensate: Compensation = None,
        compensation_retry: RetryPolicy | None = None,
        timeout: float | None = None,
        correlate: Callable[[Any], Any] | None = None,
        merge: Merge | None = None,
    ) -> Choreography:
        """The next stage: the flow has passed it when *event* is observed.

        Args:
            event: the event a participant publishes when it has done its part.
            name: the stage's name (default: the event class's name).
            after: the stage(s) it follows (default: the stage declared before);
                stages after the same stage may pass in any order.
            failure: the event type(s) with which the participant says it could
                not do its part: the saga then compensates the stages passed,
                in reverse order.
            compensate: what undoes the stage (see ``starts_on``).
            compensation_retry: the compensation's retry policy.
            timeout: seconds the stage may wait once its turn has come; then
                the saga is rolled back.
            correlate: ``event -> correlation id`` for this stage's events, when
                they carry the key under another name.
            merge: ``(data, event) -> data`` instead of merging the event's
                fields into the saga's data.
        """
        if not self._stages:
            raise DefinitionError(
                f"choreography {self.name!r}: then({_label(event)}) before starts_on(): "
                "declare the event that starts the flow first"
            )
        if correlate is not None:
            _check_correlation(f"choreography {self.name!r}: then({_label(event)}): correlate", correlate)
        if failure is None:
            failures: tuple[type, ...] = ()
        elif isinstance(failure, list | tuple):
            failures = tuple(failure)
        else:
            failures = (failure,)  # type: ignore[assignment]
        self._add(event, name, after, failures, compensate, compensation_retry, timeout, correlate, merge)
        return self

    def fails_on(self, *events: type, correlate: Callable[[Any], Any] | None = None) -> Choreography:
        """Events that fail the whole flow at once, whatever stage it is at (an order cancelled).

        The saga compensates the stages passed so far, in reverse order. Stages
        that had not passed are not compensated, unless their event arrives
        while the saga is rolling back.
        """
        if not events:
            raise DefinitionError(f"choreography {self.name!r}: fails_on() needs at least one event type")
        for e in events:
            if correlate is not None:
                _check_correlation(f"choreography {self.name!r}: fails_on({_label(e)}): correlate", correlate)
            self._flow_failures.append((e, correlate))
        return self

    def _add(
        self,
        event: type,
        name: str | None,
        after: str | Sequence[str] | None,
        failures: tuple[type, ...],
        compensate: Compensation,
        compensation_retry: RetryPolicy | None,
        timeout: float | None,
        correlate: Callable[[Any], Any] | None,
        merge: Merge | None,
    ) -> None:
        if not is_message_type(event):
            raise _message_type_problem(f"choreography {self.name!r}: stage event", event, "e.g. OrderPlaced")
        stage = name if name is not None else event.__name__
        if after is None:
            deps: tuple[str, ...] = (self._stages[-1][0].name,) if self._stages else ()
        elif isinstance(after, str):
            deps = (after,)
        else:
            deps = tuple(after)
        if self._stages and not deps:
            raise DefinitionError(
                f"choreography {self.name!r}: stage {stage!r} must follow another stage (after=[] is only "
                "for the start)"
            )
        if isinstance(compensate, type):
            if not is_message_type(compensate):
                raise _message_type_problem(
                    f"choreography {self.name!r}: stage {stage!r}: compensate", compensate, "e.g. ReleaseStock"
                )
            compensate = send(compensate)
        step = StepDefinition(
            name=stage,
            action=WaitFor(event=event, failure=failures, reply_timeout=timeout, merge=merge),
            compensation=compensate,
            after=deps,
            retry=_ONCE,
            compensation_retry=compensation_retry or _DEFAULT_COMPENSATION_RETRY,
        )
        self._stages.append((step, event, failures, correlate))

    def build(self) -> SagaDefinition:
        """Validate the flow and return its definition, to register with a ``SagaEngine``.

        Raises:
            DefinitionError: naming the stage and the problem (no start, an event
                observed twice, a bad compensation, timeout or dependency).
        """
        if not self._stages or self._correlate is None:
            raise DefinitionError(
                f"choreography {self.name!r} has no stages: start it with "
                ".starts_on(Event, correlate=lambda e: e.order_id)"
            )
        default = self._correlate
        stages: dict[str, str] = {}
        failures: set[str] = set()
        events: dict[str, tuple[type, Callable[[Any], Any]]] = {}
        where: dict[str, str] = {}

        def add(cls: type, role: str, stage: str | None, correlate: Callable[[Any], Any] | None) -> str:
            if not is_message_type(cls):
                raise _message_type_problem(f"choreography {self.name!r}: {role}", cls, "an event type")
            wire = message_type_name(cls)
            if wire in where:
                raise DefinitionError(
                    f"choreography {self.name!r}: {cls.__qualname__} (wire name {wire!r}) is both {where[wire]} "
                    f"and {role}: an event can mean one thing in a flow"
                )
            where[wire] = role
            events[wire] = (cls, correlate or default)
            if stage is not None:
                stages[wire] = stage
            return wire

        for step, event, fails, correlate in self._stages:
            add(event, f"the event of stage {step.name!r}", step.name, correlate)
            for f in fails:
                failures.add(add(f, f"a failure of stage {step.name!r}", step.name, correlate))
        flow_failures = frozenset(add(e, "a failure of the flow", None, c) for e, c in self._flow_failures)
        spec = ChoreographySpec(
            stages=stages,
            failures=frozenset(failures),
            flow_failures=flow_failures,
            events=events,
            correlate=default,
            start=message_type_name(self._stages[0][1]),
            keep_before_start=self.before_start == "keep",
        )
        return build_definition(
            self.name,
            self.version,
            [s for s, *_ in self._stages],
            deadline=self.deadline,
            description=self.description,
            choreography=spec,
        )


def _label(event: object) -> str:
    return event.__qualname__ if isinstance(event, type) else repr(event)
