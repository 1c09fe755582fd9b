"""Tracing that nests: each attempt runs inside its span, and what a step calls nests under it.

The OpenTelemetry SDK records into an in-memory exporter; the steps call a
real HTTP server on a free local port through httpx clients instrumented by
opentelemetry-instrumentation-httpx, so the client spans are made by the
instrumentation, not by the test.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from sagakit import NonRetryableError, RetryPolicy, SagaBuilder, SagaEngine, SagaStatus, StepContext, send
from sagakit.otel import OpenTelemetryObserver, saga_trace_id
from sagakit.participant import Participant
from sagakit.transports.memory import MemoryBroker, MemoryTransport


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"stock": 3}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.seen.append(dict(self.headers))  # type: ignore[attr-defined]

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A local HTTP server on a free port; yields its URL and the headers of each request it got."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/stock", server.seen  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_an_instrumented_httpx_call_in_an_async_step_nests_under_the_attempt(
    store_url: str, spans: tuple[TracerProvider, InMemorySpanExporter], http_server: tuple[str, list[dict[str, str]]]
) -> None:
    provider, exporter = spans
    url, seen = http_server
    async with httpx.AsyncClient() as client:
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)

        async def check_stock(ctx: StepContext) -> dict[str, Any]:
            response = await client.get(url)
            return dict(response.json())

        b = SagaBuilder("shop")
        b.step("check_stock", check_stock)
        async with SagaEngine(store_url, observers=[OpenTelemetryObserver(provider)]) as engine:
            engine.register(b.build())
            sid = await engine.start("shop")
            snap = await engine.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPLETED
    finished = exporter.get_finished_spans()
    [attempt] = by_name(finished, "shop.check_stock")
    [call] = [s for s in finished if s.kind is SpanKind.CLIENT]
    assert attempt.context.trace_id == call.context.trace_id == saga_trace_id(sid)
    assert parent_id(call) == attempt.context.span_id
    # The server got the call's context in its traceparent header: the trace goes on downstream.
    assert seen[0]["traceparent"] == f"00-{call.context.trace_id:032x}-{call.context.span_id:016x}-01"


async def test_an_instrumented_httpx_call_in_a_sync_step_on_the_thread_pool_nests_under_the_attempt(
    store_url: str, spans: tuple[TracerProvider, InMemorySpanExporter], http_server: tuple[str, list[dict[str, str]]]
) -> None:
    provider, exporter = spans
    url, _ = http_server
    threads: list[str] = []
    with httpx.Client() as client:
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)

        def check_stock(ctx: StepContext) -> dict[str, Any]:
            threads.append(threading.current_thread().name)
            return dict(client.get(url).json())

        def release(ctx: StepContext) -> None:
            client.get(url)

        async def charge(ctx: StepContext) -> None:
            raise NonRetryableError("card declined")

        b = SagaBuilder("shop")
        b.step("check_stock", check_stock, release)
        b.step("charge", charge)
        async with SagaEngine(store_url, observers=[OpenTelemetryObserver(provider)]) as engine:
            engine.register(b.build())
            sid = await engine.start("shop")
            snap = await engine.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPENSATED
    assert threads and threads[0].startswith("sagakit-step")  # it did run on the thread pool
    finished = exporter.get_finished_spans()
    [attempt] = by_name(finished, "shop.check_stock")
    [undo] = by_name(finished, "shop.check_stock.compensation")
    calls = [s for s in finished if s.kind is SpanKind.CLIENT]
    assert sorted(parent_id(c) for c in calls) == sorted([attempt.context.span_id, undo.context.span_id])
    assert {c.context.trace_id for c in calls} == {saga_trace_id(sid)}


async def test_a_failed_attempt_records_its_exception_as_a_span_event_masked(
    store_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans

    async def charge(ctx: StepContext) -> None:
        card = {"card": "4111 1111 1111 1111"}
        raise NonRetryableError(f"declined: {card}")

    b = SagaBuilder("shop")
    b.step("charge", charge)
    async with SagaEngine(store_url, observers=[OpenTelemetryObserver(provider)]) as engine:
        engine.register(b.build())
        sid = await engine.start("shop")
        await engine.wait(sid, timeout=10)
    [span] = by_name(exporter.get_finished_spans(), "shop.charge")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["sagakit.outcome"] == "failed"
    [event] = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "sagakit._errors.NonRetryableError"
    stack = str(event.attributes["exception.stacktrace"])
    assert 'in charge\n    raise NonRetryableError(f"declined: {card}")' in stack
    assert "4111" not in stack and "4111" not in str(event.attributes["exception.message"])
    assert "4111" not in (span.status.description or "")


async def test_a_timed_out_attempt_ends_its_span_as_timed_out(
    store_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans

    async def slow(ctx: StepContext) -> None:
        await asyncio.sleep(30)

    b = SagaBuilder("shop")
    b.step("slow", slow, timeout=0.05, retry=RetryPolicy(max_attempts=1))
    async with SagaEngine(store_url, observers=[OpenTelemetryObserver(provider)]) as engine:
        engine.register(b.build())
        sid = await engine.start("shop")
        snap = await engine.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPENSATED
    [span] = by_name(exporter.get_finished_spans(), "shop.slow")
    assert span.attributes is not None and span.attributes["sagakit.outcome"] == "timed_out"
    assert span.status.status_code is StatusCode.ERROR
    [event] = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None and event.attributes["exception.type"] == "builtins.TimeoutError"


class Reserve(BaseModel):
    order_id: str


class Reserved(BaseModel):
    order_id: str
    reservation: str


class ReserveFailed(BaseModel):
    order_id: str


async def test_a_message_step_is_traced_from_command_through_the_participant_to_the_reply(
    store_url: str, spans: tuple[TracerProvider, InMemorySpanExporter], http_server: tuple[str, list[dict[str, str]]]
) -> None:
    provider, exporter = spans
    url, _ = http_server
    broker = MemoryBroker()
    warehouse = Participant(MemoryTransport(broker), name="warehouse", tracer_provider=provider)
    async with httpx.AsyncClient() as client:
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)

        @warehouse.handles(Reserve)
        async def reserve(cmd: Reserve) -> Reserved:
            await client.get(url)  # the participant's own instrumented call
            return Reserved(order_id=cmd.order_id, reservation="r-1")

        b = SagaBuilder("order")
        b.step("reserve", send(Reserve, success=Reserved, failure=ReserveFailed))
        engine = SagaEngine(store_url, transport=MemoryTransport(broker), observers=[OpenTelemetryObserver(provider)])
        async with warehouse, engine:
            engine.register(b.build())
            sid = await engine.start("order", {"order_id": "o-1"})
            snap = await engine.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPLETED
    finished = exporter.get_finished_spans()
    [sent] = by_name(finished, "order.reserve send")
    [handled] = by_name(finished, f"{Reserve.__module__}.Reserve process")
    [call] = [s for s in finished if s.kind is SpanKind.CLIENT]
    [received] = by_name(finished, f"{Reserved.__module__}.Reserved receive")
    assert (sent.kind, handled.kind, received.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.CONSUMER)
    # One trace, the saga's, from the command to the reply.
    assert {s.context.trace_id for s in (sent, handled, call, received)} == {saga_trace_id(sid)}
    assert parent_id(handled) == sent.context.span_id
    assert parent_id(call) == handled.context.span_id
    assert parent_id(received) == handled.context.span_id
    assert received.attributes is not None and received.attributes["sagakit.outcome"] == "applied"
    assert received.attributes["sagakit.saga_id"] == sid


async def test_a_choreographed_sagas_observed_events_are_traced_as_received(
    store_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    from sagakit import choreography

    provider, exporter = spans
    flow = choreography("traced_flow").starts_on(Reserve, correlate=lambda e: e.order_id).then(Reserved).build()
    broker = MemoryBroker()
    engine = SagaEngine(store_url, transport=MemoryTransport(broker), observers=[OpenTelemetryObserver(provider)])
    engine.register(flow)
    async with engine:
        await engine.publish(Reserve(order_id="o-5"))
        await engine.publish(Reserved(order_id="o-5", reservation="r-5"))
        for _ in range(500):
            found = await engine.list(name="traced_flow")
            if found and found[0].status.terminal:
                break
            await asyncio.sleep(0.01)
    assert found[0].status is SagaStatus.COMPLETED
    finished = exporter.get_finished_spans()
    received = by_name(finished, f"{Reserve.__module__}.Reserve receive") + by_name(
        finished, f"{Reserved.__module__}.Reserved receive"
    )
    assert len(received) == 2
    for span in received:
        assert span.kind is SpanKind.CONSUMER
        assert span.attributes is not None and span.attributes["sagakit.outcome"] == "applied"
        assert span.attributes["sagakit.saga_id"] == found[0].id
        assert span.context.trace_id == saga_trace_id(found[0].id)
