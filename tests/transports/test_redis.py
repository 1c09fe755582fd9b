"""The transport contract on Redis Streams (the server at 127.0.0.1:6379)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import pytest

from .contract import Kit, TransportContract
from .kit import REDIS_ADDR, Collector, broker_missing, wait_until


def redis_url(kit_ns: str, address: tuple[str, int] | None = None, **options: Any) -> str:
    host, port = address or REDIS_ADDR
    return f"redis://{host}:{port}/0?{urlencode({'prefix': kit_ns, **options})}"


async def drop_keys(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis(host=REDIS_ADDR[0], port=REDIS_ADDR[1])
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class TestRedisTransport(TransportContract):
    address = REDIS_ADDR
    options = {"redelivery_delay": 0.01}

    def missing(self) -> str | None:
        return broker_missing("Redis", REDIS_ADDR, "redis", "redis")

    def url(self, kit: Kit, address: tuple[str, int] | None = None, **options: Any) -> str:
        return redis_url(kit.ns, address, **options)

    async def cleanup(self, kit: Kit) -> None:
        await drop_keys(kit.ns)

    async def test_from_url_reads_the_options(self, kit: Kit) -> None:
        from sagakit._transport import transport_from_url
        from sagakit.transports.redis import RedisTransport

        t = transport_from_url(self.url(kit, max_deliveries=7, ack_timeout=2.5, maxlen=1000))
        assert isinstance(t, RedisTransport)
        assert (t.prefix, t.max_deliveries, t.ack_timeout, t.maxlen) == (kit.ns, 7, 2.5, 1000)
        assert t.url == "redis://127.0.0.1:6379/0"

    async def test_close_drops_the_connections_when_their_close_does_not_finish(
        self, kit: Kit, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import asyncio

        t = await kit.transport()
        await t.publish(kit.dest(), b"x", message_id="m-1")
        client = t._redis  # type: ignore[attr-defined]
        conns = list(client.connection_pool._available_connections)
        assert conns, "publishing left no pooled connection"

        async def never_finishes(*args: Any, **kwargs: Any) -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(client, "aclose", never_finishes)
        await t.close()
        # No socket is left open for the garbage collector to find.
        assert all(c._writer is None for c in conns)

    async def test_close_ends_a_reader_whose_cancellation_the_client_swallowed(
        self, kit: Kit, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # redis-py may answer a blocking XREADGROUP whose task is cancelled with an empty reply
        # instead of raising: the reader must stop all the same, or close() waits for it forever.
        from sagakit.transports.redis import RedisTransport

        real = RedisTransport._reader_client
        reading: list[bool] = []
        swallowed: list[bool] = []

        def reader_client(self: RedisTransport) -> Any:
            client = real(self)

            async def xreadgroup(*args: Any, **kwargs: Any) -> Any:
                reading.append(True)
                try:
                    await asyncio.Event().wait()  # a read blocked until entries come (none will)
                except asyncio.CancelledError:
                    swallowed.append(True)
                return []

            client.xreadgroup = xreadgroup
            return client

        monkeypatch.setattr(RedisTransport, "_reader_client", reader_client)
        t = await kit.transport()
        await kit.subscribe(t, [kit.dest()], kit.group(), Collector())
        await wait_until(lambda: bool(reading), 10, "the reader blocked in XREADGROUP")
        await asyncio.wait_for(t.close(), 15)
        assert swallowed == [True]
