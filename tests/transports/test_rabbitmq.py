"""The transport contract on RabbitMQ (the server at 127.0.0.1:5672, guest/guest)."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlencode

from .contract import Kit, TransportContract
from .kit import RABBIT_ADDR, broker_missing


def rabbit_url(kit_ns: str, address: tuple[str, int] | None = None, **options: Any) -> str:
    host, port = address or RABBIT_ADDR
    return f"amqp://guest:guest@{host}:{port}/?{urlencode({'exchange': kit_ns, **options})}"


async def drop_topology(exchange: str, queues: set[tuple[str, str]], dead_letter: str) -> None:
    """Delete the test's queues, its dead-letter queue and its exchange."""
    import aio_pika

    from sagakit.transports.rabbitmq import DEAD_LETTER_GROUP, queue_name

    conn = await aio_pika.connect(f"amqp://guest:guest@{RABBIT_ADDR[0]}:{RABBIT_ADDR[1]}/")
    try:
        channel = await conn.channel()
        for group, destination in {*queues, (DEAD_LETTER_GROUP, dead_letter)}:
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue_name(exchange, group, destination))
        with contextlib.suppress(Exception):
            await channel.exchange_delete(exchange)
    finally:
        await conn.close()


class TestRabbitMQTransport(TransportContract):
    address = RABBIT_ADDR
    options = {"redelivery_delay": 0.01}

    def missing(self) -> str | None:
        return broker_missing("RabbitMQ", RABBIT_ADDR, "aio_pika", "rabbitmq")

    def url(self, kit: Kit, address: tuple[str, int] | None = None, **options: Any) -> str:
        options.pop("ack_timeout", None)  # RabbitMQ notices a lost consumer by its connection
        return rabbit_url(kit.ns, address, **options)

    async def cleanup(self, kit: Kit) -> None:
        await drop_topology(kit.ns, kit.subscribed, kit.dead_letter)

    async def test_from_url_reads_the_options(self, kit: Kit) -> None:
        from sagakit._transport import transport_from_url
        from sagakit.transports.rabbitmq import RabbitMQTransport

        t = transport_from_url(self.url(kit, max_deliveries=7, concurrency=3) + "&heartbeat=30")
        assert isinstance(t, RabbitMQTransport)
        assert (t.exchange_name, t.max_deliveries, t.concurrency) == (kit.ns, 7, 3)
        assert t.url == "amqp://guest:guest@127.0.0.1:5672/?heartbeat=30"
