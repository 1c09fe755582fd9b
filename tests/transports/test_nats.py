"""The transport contract on NATS JetStream (the server at 127.0.0.1:4222)."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlencode

from .contract import Kit, TransportContract
from .kit import NATS_ADDR, broker_missing


def nats_url(kit_ns: str, address: tuple[str, int] | None = None, **options: Any) -> str:
    host, port = address or NATS_ADDR
    query = {"stream": kit_ns.upper(), "prefix": kit_ns, **options}
    return f"nats://{host}:{port}?{urlencode(query)}"


async def drop_stream(stream: str) -> None:
    import nats
    import nats.js.errors

    nc = await nats.connect(f"nats://{NATS_ADDR[0]}:{NATS_ADDR[1]}")
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


class TestNatsTransport(TransportContract):
    address = NATS_ADDR
    dedupes = True
    options = {"redelivery_delay": 0.01}

    def missing(self) -> str | None:
        return broker_missing("NATS", NATS_ADDR, "nats", "nats")

    def url(self, kit: Kit, address: tuple[str, int] | None = None, **options: Any) -> str:
        return nats_url(kit.ns, address, **options)

    async def cleanup(self, kit: Kit) -> None:
        await drop_stream(kit.ns.upper())

    async def test_from_url_reads_the_options(self, kit: Kit) -> None:
        from sagakit._transport import transport_from_url
        from sagakit.transports.nats import NatsTransport

        t = transport_from_url(self.url(kit, max_deliveries=7, ack_timeout=2.5, concurrency=3))
        assert isinstance(t, NatsTransport)
        assert (t.stream, t.prefix, t.max_deliveries, t.ack_timeout, t.concurrency) == (
            kit.ns.upper(),
            kit.ns,
            7,
            2.5,
            3,
        )
        assert t.url == "nats://127.0.0.1:4222"
