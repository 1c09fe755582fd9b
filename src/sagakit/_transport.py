"""The transport protocol: how sagakit sends commands and receives events over a broker.

Semantics every transport provides (the in-memory one included):

- **At least once.** A delivered message is acknowledged only after the
  handler returned, i.e. after the engine committed its effect; a handler
  that raises, or a consumer that dies, gets the message delivered again.
- **Competing consumers.** Subscribers that share a ``group`` split the
  messages of a destination between them; each group gets every message.
- **Poison messages.** After ``max_deliveries`` failed deliveries a message is
  moved to the transport's dead-letter destination with the reason.
- **Message ids.** ``publish`` gets the envelope's message id, which brokers
  with de-duplication use to drop a repeated publish of the same outbox row.

Transports are picked by URL with ``transport_from_url``; each lives in its
own module and imports its client library only there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ._backends import Backend, backend_from_url
from ._errors import SagaError

__all__ = [
    "Delivery",
    "Handler",
    "Transport",
    "TransportError",
    "transport_from_url",
]


class TransportError(SagaError):
    """The broker cannot be reached or refused an operation."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One received message."""

    destination: str
    body: bytes
    message_id: str
    attempt: int = 1  # 1 on first delivery, higher on redelivery
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Delivery], Awaitable[None]]


@runtime_checkable
class Transport(Protocol):
    """A message broker connection."""

    url: str

    async def start(self) -> None:
        """Connect (with back-off on failure)."""
        ...

    async def close(self) -> None:
        """Stop consuming, let handlers in progress finish, disconnect."""
        ...

    async def publish(
        self, destination: str, body: bytes, *, message_id: str, headers: dict[str, str] | None = None
    ) -> None:
        """Publish durably: return only once the broker has accepted the message.

        Raises:
            TransportError: the broker is unreachable or refused the message.
        """
        ...

    async def subscribe(self, destinations: Sequence[str], group: str, handler: Handler) -> None:
        """Deliver messages of *destinations* to *handler*, shared among the members of *group*.

        A message is acknowledged when *handler* returns and delivered again
        when it raises.
        """
        ...


_BACKENDS: dict[str, Backend] = {
    "memory": ("sagakit.transports.memory", "MemoryTransport", None),
    "nats": ("sagakit.transports.nats", "NatsTransport", "nats"),
    "amqp": ("sagakit.transports.rabbitmq", "RabbitMQTransport", "rabbitmq"),
    "redis": ("sagakit.transports.redis", "RedisTransport", "redis"),
    "kafka": ("sagakit.transports.kafka", "KafkaTransport", "kafka"),
}


def transport_from_url(url: str) -> Transport:
    """Make (but do not start) the transport for *url*.

    ``memory://``, ``nats://host:4222``, ``amqp://user:pass@host/``,
    ``redis://host:6379``, ``kafka://host:9092``.

    Raises:
        TransportError: unknown scheme, or the transport's extra is not installed.
    """
    transport: Transport = backend_from_url(
        url,
        _BACKENDS,
        kind="transport",
        usage="memory://, nats://, amqp://, redis:// or kafka://",
        error=TransportError,
    )
    return transport
