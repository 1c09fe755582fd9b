"""W3C trace context in message headers, and the span a participant handles a command in.

OpenTelemetry is optional: without ``opentelemetry-api`` installed,
``handling`` is a no-op and a participant sends its replies with the
command's ``traceparent`` unchanged. With it, the participant's span
continues the saga's trace and is current while its handler runs, so the
handler's own instrumented calls nest under it.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["handling", "parse_traceparent", "span_traceparent"]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@functools.cache
def _trace() -> Any:
    """The ``opentelemetry.trace`` module, or None when it is not installed (looked for once)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


def parse_traceparent(header: str) -> Any:
    """The remote ``SpanContext`` a ``traceparent`` header names (None if invalid or without OpenTelemetry)."""
    trace = _trace()
    m = _TRACEPARENT.match(header.strip().lower())
    if trace is None or m is None:
        return None
    trace_id, span_id = int(m.group(1), 16), int(m.group(2), 16)
    if not trace_id or not span_id:
        return None
    return trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(int(m.group(3), 16)))


def span_traceparent(ctx: Any) -> str | None:
    """The ``traceparent`` header naming a ``SpanContext`` (None for an invalid one)."""
    if ctx is None or not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


@contextlib.contextmanager
def handling(
    name: str, headers: Mapping[str, str], attributes: Mapping[str, Any], tracer_provider: Any = None
) -> Iterator[dict[str, str]]:
    """Run the body in a CONSUMER span that continues the trace of *headers*' ``traceparent``.

    Yields the headers a reply should carry to continue the trace from this
    span (empty without OpenTelemetry). An exception leaving the body is
    recorded on the span, which ends with an error status.
    """
    trace = _trace()
    if trace is None:
        yield {}
        return
    parent = parse_traceparent(headers.get("traceparent", ""))
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        # No SDK is set up: what its no-op tracer does (the span is the command's context, current
        # while the handler runs), without a tracer and a span per command.
        from opentelemetry import context

        span = trace.get_current_span(ctx)
        header = span_traceparent(span.get_span_context())
        token = context.attach(ctx) if ctx is not None else None
        try:
            yield {"traceparent": header} if header else {}
        finally:
            if token is not None:
                context.detach(token)
        return
    tracer = trace.get_tracer("sagakit.participant", tracer_provider=tracer_provider)
    with tracer.start_as_current_span(name, context=ctx, kind=trace.SpanKind.CONSUMER, attributes=attributes) as span:
        header = span_traceparent(span.get_span_context())
        yield {"traceparent": header} if header else {}
