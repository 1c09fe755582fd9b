"""Real brokers for the saga-level tests: a fresh namespace per test, transports made from it, cleanup.

Kafka is a Tansu broker the tests start (``tansu.py``): the session's, or a
private one at *address*.
"""

from __future__ import annotations

import uuid
from typing import Any

from sagakit._transport import Transport, transport_from_url

from .kit import NATS_ADDR, RABBIT_ADDR, REDIS_ADDR, broker_missing
from .tansu import tansu_missing
from .test_kafka import drop_topics, kafka_url
from .test_nats import drop_stream, nats_url
from .test_rabbitmq import drop_topology, rabbit_url
from .test_redis import drop_keys, redis_url

NAMES = ["nats", "rabbitmq", "redis", "kafka"]


class Broker:
    """One test's namespace on a real broker: the machine's, or the one at *address*."""

    def __init__(self, name: str, address: tuple[str, int] | None = None) -> None:
        self.name = name
        self.address = address
        self.ns = f"t{uuid.uuid4().hex[:10]}"
        self.subscribed: set[tuple[str, str]] = set()

    def missing(self) -> str | None:
        return {
            "nats": lambda: broker_missing("NATS", NATS_ADDR, "nats", "nats"),
            "rabbitmq": lambda: broker_missing("RabbitMQ", RABBIT_ADDR, "aio_pika", "rabbitmq"),
            "redis": lambda: broker_missing("Redis", REDIS_ADDR, "redis", "redis"),
            "kafka": tansu_missing,
        }[self.name]()

    def url(self, **options: Any) -> str:
        options.setdefault("dead_letter", f"{self.ns}.dead_letter")
        if self.name == "nats":
            return nats_url(self.ns, self.address, **options)
        if self.name == "kafka":
            assert self.address is not None, "a Kafka broker needs the address of the Tansu the test started"
            return kafka_url(self.ns, self.address, **options)
        options.pop("ack_timeout", None)
        if self.name == "rabbitmq":
            return rabbit_url(self.ns, self.address, **options)
        return redis_url(self.ns, self.address, **options)

    def transport(self, **options: Any) -> Transport:
        """A new transport in this namespace; its subscriptions are recorded for the cleanup."""
        t: Any = transport_from_url(self.url(**options))
        subscribe = t.subscribe

        async def recording(destinations: Any, group: str, handler: Any) -> None:
            self.subscribed.update((group, d) for d in destinations)
            await subscribe(destinations, group, handler)

        t.subscribe = recording
        return t  # type: ignore[no-any-return]

    async def cleanup(self) -> None:
        if self.name == "nats":
            await drop_stream(self.ns.upper())
        elif self.name == "kafka":
            if self.address is not None:
                await drop_topics(self.ns, self.address)
        elif self.name == "rabbitmq":
            await drop_topology(self.ns, self.subscribed, f"{self.ns}.dead_letter")
        else:
            await drop_keys(self.ns)
