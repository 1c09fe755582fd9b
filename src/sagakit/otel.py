"""OpenTelemetry tracing for sagakit (the ``otel`` extra): one trace per saga, one span per attempt.

The trace id of a saga is its id (both are 128 bits), so every attempt of a
saga lands in one trace whichever process ran it and however often the saga
was resumed; nothing needs to be stored for the trace to survive restarts.

- Each local attempt runs inside its span: the span is current in the step's
  task (``async def``) or worker thread (plain ``def``), so spans that
  instrumented libraries make inside a step (httpx, asyncpg, …) nest under
  it. A failed attempt's exception is recorded as a span event with its
  traceback, and the span's status says why it failed.
- A message step's command is sent from a ``send`` span (PRODUCER) whose
  context its ``traceparent`` header carries; a ``Participant`` continues the
  trace from it and sends its reply with its own span's context; the engine
  applies the reply inside a ``receive`` span (CONSUMER) that continues the
  trace from the reply. The trace shows the step from command to reply.

    from sagakit.otel import OpenTelemetryObserver
    engine = SagaEngine(url, observers=[OpenTelemetryObserver()])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"{e}. Install tracing support with: pip install 'sagakit[otel]'") from e

from ._masking import Masker
from ._observe import AttemptStart, BaseObserver, MessageInput, format_traceback
from ._trace_context import parse_traceparent, span_traceparent

__all__ = ["OpenTelemetryObserver", "saga_span_id", "saga_trace_id", "traceparent"]


def saga_trace_id(saga_id: str) -> int:
    """The trace id of a saga: its id read as a 128-bit number (hashed if it is not hex)."""
    try:
        value = int(saga_id, 16)
    except ValueError:
        value = 0
    if not 0 < value < 1 << 128:
        import hashlib

        value = int.from_bytes(hashlib.blake2b(saga_id.encode(), digest_size=16).digest(), "big") or 1
    return value


def saga_span_id(trace_id: int) -> int:
    """The id of the saga's own (unrecorded) span, the parent of its attempts' spans."""
    return (trace_id & ((1 << 64) - 1)) or 1


def traceparent(saga_id: str) -> str:
    """A W3C traceparent header naming the saga's span (for messages the saga sends)."""
    trace_id = saga_trace_id(saga_id)
    return f"00-{trace_id:032x}-{saga_span_id(trace_id):016x}-01"


def _saga_context(saga_id: str) -> Any:
    trace_id = saga_trace_id(saga_id)
    parent = SpanContext(
        trace_id=trace_id,
        span_id=saga_span_id(trace_id),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1e9)


class _Scope:
    """A started span: current while entered, ended by ``end`` (a ``sagakit.TraceScope``)."""

    __slots__ = ("masker", "span", "tokens")

    def __init__(self, span: Span, masker: Masker) -> None:
        self.span = span
        self.masker = masker
        self.tokens: list[object] = []

    def __enter__(self) -> Span:
        self.tokens.append(otel_context.attach(trace.set_span_in_context(self.span)))
        return self.span

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self.tokens.pop())  # type: ignore[arg-type]

    def end(
        self, outcome: str, *, error: str | None = None, exception: BaseException | None = None, at: float | None = None
    ) -> None:
        span = self.span
        span.set_attribute("sagakit.outcome", outcome)
        if exception is not None:
            _record_exception(span, exception, self.masker, at)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, self.masker.text(error)))
        span.end(end_time=_ns(at))


def _record_exception(span: Span, e: BaseException, masker: Masker, at: float | None) -> None:
    """An ``exception`` span event (OpenTelemetry's semantic conventions), its texts masked."""
    span.add_event(
        "exception",
        {
            "exception.type": f"{type(e).__module__}.{type(e).__qualname__}",
            "exception.message": masker.text(str(e)) or "",
            "exception.stacktrace": masker.text(format_traceback(e)) or "",
            "exception.escaped": True,
        },
        timestamp=_ns(at),
    )


class OpenTelemetryObserver(BaseObserver):
    """Traces sagas: a span per step attempt in the saga's trace, current while the step runs.

    Args:
        tracer_provider: the provider to get the tracer from (default: the global one).
        masker: the masking policy for the errors and tracebacks spans carry
            (default: ``Masker()``; ``Masker(None)`` records them as they are).
    """

    def __init__(self, tracer_provider: Any = None, *, masker: Masker | None = None) -> None:
        self.tracer = trace.get_tracer("sagakit", tracer_provider=tracer_provider)
        self.masker = Masker() if masker is None else masker

    def attempt_scope(self, event: AttemptStart) -> _Scope:
        name = f"{event.saga_name}.{event.step}" + (".compensation" if event.compensation else "")
        span = self.tracer.start_span(
            name,
            context=_saga_context(event.saga_id),
            kind=SpanKind.INTERNAL,
            start_time=_ns(event.started),
            attributes={
                "sagakit.saga_id": event.saga_id,
                "sagakit.saga_name": event.saga_name,
                "sagakit.step": event.step,
                "sagakit.attempt": event.attempt,
                "sagakit.compensation": event.compensation,
                **({"sagakit.correlation_id": event.correlation_id} if event.correlation_id else {}),
                **({"sagakit.item": event.item} if event.item is not None else {}),
            },
        )
        return _Scope(span, self.masker)

    def send_headers(self, event: MessageInput) -> Mapping[str, str]:
        saga_id = event.saga_id or ""
        name = f"{event.saga_name}.{event.step}" + (".compensation" if event.compensation else "") + " send"
        span = self.tracer.start_span(
            name,
            context=_saga_context(saga_id),
            kind=SpanKind.PRODUCER,
            start_time=_ns(event.at),
            attributes=_message_attributes(event, "send"),
        )
        header = span_traceparent(span.get_span_context())
        span.end(end_time=_ns(event.at))
        return {"traceparent": header} if header else {}

    def receive_scope(self, event: MessageInput) -> _Scope:
        parent = parse_traceparent(event.headers.get("traceparent", ""))
        if parent is not None:
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        else:
            context = _saga_context(event.saga_id) if event.saga_id else otel_context.Context()
        span = self.tracer.start_span(
            f"{event.type_name} receive",
            context=context,
            kind=SpanKind.CONSUMER,
            start_time=_ns(event.at),
            attributes=_message_attributes(event, "receive"),
        )
        return _Scope(span, self.masker)


def _message_attributes(event: MessageInput, operation: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.operation.type": operation,
        "messaging.destination.name": event.destination,
        "messaging.message.id": event.message_id,
        "sagakit.message_type": event.type_name,
    }
    if event.saga_id:
        attributes["sagakit.saga_id"] = event.saga_id
    if event.saga_name:
        attributes["sagakit.saga_name"] = event.saga_name
    if event.step:
        attributes["sagakit.step"] = event.step
        attributes["sagakit.compensation"] = event.compensation
    return attributes
