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

    async def test_members_that_create_the_group_at_once_all_receive(self, kit: Kit) -> None:
        """Two members each find no consumer and create it: the group's messages still reach the survivor.

        The later creation would re-point the consumer at its creator's subject; with one
        subject per consumer whoever creates it, the earlier member is not left listening to
        a subject nothing is delivered to once the later one has gone.
        """
        import nats.js.errors

        from .kit import Collector

        first = await kit.transport()
        second = await kit.transport()
        from sagakit.transports.nats import _consumer_name

        looked = first._js.consumer_info  # type: ignore[attr-defined]
        group_consumer = _consumer_name(kit.group(), kit.dest())
        lied = False

        async def not_yet(stream: str, name: str, *args: Any, **kwargs: Any) -> Any:
            nonlocal lied
            if name == group_consumer and not lied:  # the first looked before the second created it
                lied = True
                raise nats.js.errors.NotFoundError
            return await looked(stream, name, *args, **kwargs)

        got_first, got_second = Collector(), Collector()
        # The second creates the consumer; the first, having looked before, creates it too, and binds.
        created = await second._ensure_consumer(kit.dest(), kit.group())  # type: ignore[attr-defined]
        first._js.consumer_info = not_yet  # type: ignore[attr-defined]
        await kit.subscribe(first, [kit.dest()], kit.group(), got_first)

        async def as_created(*args: Any) -> Any:  # the second binds what its own creation returned
            return created

        second._ensure_consumer = as_created  # type: ignore[attr-defined]
        await kit.subscribe(second, [kit.dest()], kit.group(), got_second)
        await first.close()  # the member that created the consumer last goes
        for i in range(5):
            await second.publish(kit.dest(), b"x", message_id=f"m-{i}")
        await got_second.wait(5)
        assert sorted(got_second.ids) == [f"m-{i}" for i in range(5)]
