"""Participants: the services on the other side of a saga.

A participant handles commands and publishes their reply events with the
saga's correlation headers copied, so a service joins a saga in a few lines::

    payments = Participant("nats://localhost:4222", name="payments")

    @payments.handles(ProcessPayment)
    async def process(cmd: ProcessPayment) -> PaymentProcessed | PaymentFailed:
        ...

    async with payments:
        await asyncio.Event().wait()

Commands are de-duplicated by message id: a command seen before is not
handled again; its first reply is published again instead (with the new
attempt's token), which is what a saga that resent after a reply timeout needs.
A handler that raises leaves the command unacknowledged, so it is delivered
again; a business failure is a *reply* (the step's failure event), not an exception.

With OpenTelemetry installed, a handler runs in a span that continues the
saga's trace from the command's ``traceparent`` header, and the reply carries
that span's context, so the saga's trace goes from the command through the
handler (and what it calls) to the reply.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from ._messages import Envelope, message_type_name
from ._trace_context import handling
from ._transport import Delivery, Transport, transport_from_url

__all__ = ["Participant"]

F = TypeVar("F", bound=Callable[..., Any])
_REPLY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://sagakit.dev/reply-id")


class Participant:
    """Handles commands from sagas and publishes the reply events.

    Args:
        transport: a transport or its URL.
        name: the consumer group: instances with the same name share the commands.
        remember: how many handled commands' replies to keep for de-duplication.
        tracer_provider: the OpenTelemetry tracer provider of the handlers' spans
            (default: the global one).
    """

    def __init__(
        self,
        transport: Transport | str,
        *,
        name: str,
        remember: int = 100_000,
        clock: Callable[[], float] = time.time,
        tracer_provider: Any = None,
    ) -> None:
        self.transport = transport_from_url(transport) if isinstance(transport, str) else transport
        self.name = name
        self.remember = remember
        self.clock = clock
        self.tracer_provider = tracer_provider
        self.handled = 0  # commands handled (not counting duplicates)
        self.duplicates = 0
        self._handlers: dict[str, tuple[type, Callable[[Any], Any]]] = {}
        self._replies: OrderedDict[str, Any] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._trace_headers: dict[str, dict[str, str]] = {}  # the trace context each remembered reply carries

    def handles(self, command: type, *, destination: str | None = None) -> Callable[[F], F]:
        """Register the decorated function as the handler of *command*; it returns the reply event."""

        def register(fn: F) -> F:
            self._handlers[destination or message_type_name(command)] = (command, fn)
            return fn

        return register

    async def start(self) -> None:
        await self.transport.start()
        if self._handlers:
            await self.transport.subscribe(list(self._handlers), self.name, self._on_delivery)

    async def close(self) -> None:
        await self.transport.close()

    async def __aenter__(self) -> Participant:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _on_delivery(self, delivery: Delivery) -> None:
        env = Envelope.from_bytes(delivery.body)
        command_cls, fn = self._handlers[delivery.destination]
        lock = self._locks.setdefault(env.message_id, asyncio.Lock())
        async with lock:
            if env.message_id in self._replies:
                self.duplicates += 1
                event = self._replies[env.message_id]
            else:
                command: Any = env.unwrap(command_cls)
                # The handler runs in a span continuing the saga's trace (with OpenTelemetry installed).
                span = f"{env.type_name} process"
                with handling(span, env.headers, _span_attributes(env), self.tracer_provider) as trace_headers:
                    result = fn(command)
                    event = await result if inspect.isawaitable(result) else result
                if trace_headers:
                    self._trace_headers[env.message_id] = trace_headers
                self.handled += 1
                self._replies[env.message_id] = event
                while len(self._replies) > self.remember:
                    gone, _ = self._replies.popitem(last=False)
                    self._trace_headers.pop(gone, None)
        self._locks.pop(env.message_id, None)
        if event is None:
            return
        reply_id = str(uuid.uuid5(_REPLY_NAMESPACE, f"{env.message_id}:{env.token}"))
        reply = env.reply(
            event, message_id=reply_id, timestamp=self.clock(), headers=self._trace_headers.get(env.message_id)
        )
        await self.transport.publish(
            reply.type_name, reply.to_bytes(), message_id=reply_id, headers={"message_id": reply_id}
        )


def _span_attributes(env: Envelope) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.operation.type": "process",
        "messaging.destination.name": env.type_name,
        "messaging.message.id": env.message_id,
    }
    if env.saga_id:
        attributes["sagakit.saga_id"] = env.saga_id
    if env.step:
        attributes["sagakit.step"] = env.step
    return attributes
