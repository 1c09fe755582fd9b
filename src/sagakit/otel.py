"""OpenTelemetry tracing for sagakit (the ``otel`` extra): one trace per saga, one span per attempt.

The trace id of a saga is its id (both are 128 bits), so every attempt of a
saga lands in one trace whichever process ran it and however often the saga
was resumed; nothing needs to be stored for the trace to survive restarts.
Commands a saga sends carry a W3C ``traceparent`` header in the same trace,
so a participant that continues it joins the saga's trace across processes.

    from sagakit.otel import OpenTelemetryObserver
    engine = SagaEngine(url, observers=[OpenTelemetryObserver()])
"""

from __future__ import annotations

from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"{e}. Install tracing support with: pip install 'sagakit[otel]'") from e

from ._masking import Masker
from ._observe import AttemptInput, BaseObserver

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


class OpenTelemetryObserver(BaseObserver):
    """Records a span per step attempt in the saga's trace.

    Args:
        tracer_provider: the provider to get the tracer from (default: the global one).
        masker: the masking policy for the error a span's status carries
            (default: ``Masker()``; ``Masker(None)`` records it as it is).
    """

    def __init__(self, tracer_provider: Any = None, *, masker: Masker | None = None) -> None:
        self.tracer = trace.get_tracer("sagakit", tracer_provider=tracer_provider)
        self.masker = Masker() if masker is None else masker

    def on_attempt(self, event: AttemptInput) -> None:
        trace_id = saga_trace_id(event.saga_id)
        parent = SpanContext(
            trace_id=trace_id,
            span_id=saga_span_id(trace_id),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        ctx = trace.set_span_in_context(NonRecordingSpan(parent))
        name = f"{event.saga_name}.{event.step}" + (".compensation" if event.compensation else "")
        span = self.tracer.start_span(
            name,
            context=ctx,
            kind=SpanKind.INTERNAL,
            start_time=int(event.started * 1e9),
            attributes={
                "sagakit.saga_id": event.saga_id,
                "sagakit.saga_name": event.saga_name,
                "sagakit.step": event.step,
                "sagakit.attempt": event.attempt,
                "sagakit.compensation": event.compensation,
                "sagakit.outcome": event.outcome,
                **({"sagakit.correlation_id": event.correlation_id} if event.correlation_id else {}),
            },
        )
        if event.error:
            span.set_status(Status(StatusCode.ERROR, self.masker.text(event.error)))
        span.end(end_time=int(event.ended * 1e9))
