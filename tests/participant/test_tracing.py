"""Participants continue the saga's trace: a reply published again from the record, and a fault, carry it too."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from sagakit.participant import FAULT_TYPE_NAME, MessageContext, Participant
from sagakit.transports.memory import MemoryBroker, MemoryTransport

from .kit import Charge, Charged, Replies, saga_command, send_command


def traced_span_id(traceparent: str) -> int:
    return int(traceparent.split("-")[2], 16)


async def test_a_recorded_reply_and_a_fault_carry_the_handlers_span(tmp_path: Any) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = MemoryBroker(redelivery_delay=0.01)
    store_url = f"sqlite:///{tmp_path}/payments.db"
    payments = Participant(MemoryTransport(broker), name="payments", store=store_url, tracer_provider=provider)

    @payments.handles(Charge)
    def charge(cmd: Charge, ctx: MessageContext) -> Charged:
        if cmd.order_id == "o-bad":
            raise ValueError("no such card")
        return Charged(order_id=cmd.order_id, charge_key=ctx.idempotency_key)

    sender = MemoryTransport(broker)
    await sender.start()
    ok = saga_command(Charge(order_id="o-1", amount=5), token=1)
    again = saga_command(Charge(order_id="o-1", amount=5), saga_id=ok.saga_id, token=2)  # a resend
    bad = saga_command(Charge(order_id="o-bad", amount=5))
    async with Replies(lambda: MemoryTransport(broker)) as replies, payments:
        await send_command(sender, ok)
        await replies.wait(1)
        await send_command(sender, again)
        await replies.wait(2)
        await send_command(sender, bad)
        await replies.wait(3)
    await sender.close()
    spans = {s.attributes["sagakit.saga_id"]: s for s in exporter.get_finished_spans() if s.attributes}
    assert len(spans) == 2  # the resend was answered from the record, not handled
    handled, failed = spans[ok.saga_id], spans[bad.saga_id]
    first, second = replies.to(ok)
    assert (first.token, second.token) == (1, 2)
    assert first.headers["traceparent"] == second.headers["traceparent"]
    assert traced_span_id(second.headers["traceparent"]) == handled.context.span_id
    assert handled.context.trace_id == int(ok.headers["traceparent"].split("-")[1], 16)
    [fault] = replies.to(bad)
    assert fault.type_name == FAULT_TYPE_NAME
    assert traced_span_id(fault.headers["traceparent"]) == failed.context.span_id
    assert failed.status.status_code is StatusCode.ERROR


async def test_without_an_sdk_the_reply_carries_the_commands_trace_and_the_handler_sees_it() -> None:
    from opentelemetry import trace

    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # no SDK set up globally
    broker = MemoryBroker(redelivery_delay=0.01)
    payments = Participant(MemoryTransport(broker), name="payments")
    seen: list[Any] = []

    @payments.handles(Charge)
    def charge(cmd: Charge) -> Charged:
        seen.append(trace.get_current_span().get_span_context())
        return Charged(order_id=cmd.order_id, charge_key="k")

    sender = MemoryTransport(broker)
    await sender.start()
    ok = saga_command(Charge(order_id="o-1", amount=5))
    async with Replies(lambda: MemoryTransport(broker)) as replies, payments:
        await send_command(sender, ok)
        await replies.wait(1)
    await sender.close()
    [reply] = replies.to(ok)
    assert reply.headers["traceparent"] == ok.headers["traceparent"]
    [ctx] = seen
    assert f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01" == ok.headers["traceparent"]
    assert trace.get_current_span().get_span_context().is_valid is False  # not left current afterwards
