"""Redis Streams transport (``redis://host:6379/0``; needs ``pip install 'sagakit[redis]'``).

- A destination is the stream ``<prefix>:<destination>``; a message is one
  entry (``id``, ``body``, ``headers``), added with ``XADD`` (those published
  at about the same time in one pipeline).
- A group is a Redis consumer group on each of its destinations' streams;
  every member reads with ``XREADGROUP`` under its own consumer name, so the
  members compete and every group gets every entry added after it was
  created.
- ``XACK`` when the handler returned (one for the entries of a stream whose
  handlers returned at about the same time). A handler that raises gets its entry
  again after a back-off (doubling per attempt; ``XCLAIM`` counts the
  delivery). Entries of a consumer that vanished are taken over with
  ``XAUTOCLAIM`` by the other members once idle for ``ack_timeout``; long
  handlers refresh their claim so they keep their entry.
- After ``max_deliveries`` the entry is added to the dead-letter stream, with
  the reason in its headers, and acknowledged.
- Readers reconnect with exponential back-off. A group that disappeared
  (the server restarted without persistence, or it was deleted) is created
  again from the start of its stream, so entries added meanwhile are read.

Redis has no broker-side de-duplication: a repeated publish is delivered
twice and the receiver's inbox drops the second. Streams are not trimmed
unless ``maxlen`` is set (which may drop entries a slow group has not read).
Redis without persistence loses what it held when it restarts: sagas get
their commands again through their steps' reply timeouts.

URL options (query string, removed before connecting): ``prefix``,
``max_deliveries``, ``redelivery_delay``, ``ack_timeout``, ``concurrency``,
``dead_letter``, ``maxlen``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlunsplit

import orjson

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import RedisError, ResponseError
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"the Redis transport needs redis-py: pip install 'sagakit[redis]' ({e})") from e

from .._transport import Delivery, Handler, TransportError
from . import _base
from ._base import DEAD_LETTER_GROUP

__all__ = ["DEAD_LETTER_GROUP", "RedisTransport"]

log = logging.getLogger("sagakit.transport.redis")

_OPTIONS = {
    "prefix": str,
    "dead_letter": str,
    "max_deliveries": int,
    "concurrency": int,
    "maxlen": int,
    "redelivery_delay": float,
    "ack_timeout": float,
}


def _drop_connections(client: Any) -> None:
    """Close every connection of *client*'s pool at once, without waiting for the server (best effort)."""
    pool = client.connection_pool
    conns = [*getattr(pool, "_available_connections", ()), *getattr(pool, "_in_use_connections", ())]
    for conn in conns:
        writer = getattr(conn, "_writer", None)
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.transport.abort()
            with contextlib.suppress(Exception):
                conn._close()  # forgets the stream, so the connection counts as closed


def _raise_if_cancelled() -> None:
    """Raise CancelledError if the current task was cancelled and a client call swallowed it.

    redis-py may answer a blocking ``XREADGROUP`` whose task is cancelled with
    an empty reply instead of the CancelledError: a reader would then read on
    and ``close`` would wait for it forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class RedisTransport:
    """A Transport on Redis Streams (Redis 6.2 or later: ``XAUTOCLAIM``).

    Args:
        url: ``redis://[:password@]host:6379/db`` (``rediss://`` for TLS).
        prefix: prepended to every stream key (``<prefix>:<destination>``).
        max_deliveries: failed deliveries before a message is dead-lettered.
        redelivery_delay: delay before the first redelivery of a failed message; doubles per attempt.
        ack_timeout: seconds an unacknowledged entry stays with a silent consumer.
        concurrency: handlers running at once per destination subscribed.
        dead_letter: the destination of dead letters.
        maxlen: trim streams to about this many entries (None: never trim).
        close_grace: seconds ``close`` waits for handlers in progress before cancelling them.
        connect_timeout: seconds ``start`` keeps trying to connect.
        block: seconds one ``XREADGROUP`` waits for new entries.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "sagakit",
        max_deliveries: int = 5,
        redelivery_delay: float = 0.2,
        ack_timeout: float = 30.0,
        concurrency: int = 16,
        dead_letter: str = "sagakit.dead_letter",
        maxlen: int | None = None,
        close_grace: float = 10.0,
        connect_timeout: float = 30.0,
        block: float = 2.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_deliveries = max_deliveries
        self.redelivery_delay = redelivery_delay
        self.ack_timeout = ack_timeout
        self.concurrency = concurrency
        self.dead_letter = dead_letter
        self.maxlen = maxlen
        self.close_grace = close_grace
        self.connect_timeout = connect_timeout
        self.block = block
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._redis: Any = None
        self._readers: list[asyncio.Task[None]] = []
        self._handling: set[asyncio.Task[None]] = set()
        self._groups: set[tuple[str, str]] = set()
        # Acknowledgements per (stream, group): those of entries handled meanwhile go together.
        self._acks: dict[tuple[str, str], _base.Grouped[bytes]] = {}
        self._outgoing: _base.Grouped[_Outgoing] = _base.Grouped(self._append)

    @classmethod
    def from_url(cls, url: str) -> RedisTransport:
        parts, opts, rest = _base.url_options(url, _OPTIONS)  # the rest is redis-py's own (socket_timeout, ...)
        return cls(urlunsplit((parts.scheme, parts.netloc, parts.path, rest, "")), **opts)

    def key(self, destination: str) -> str:
        """The stream key of *destination* (Redis keys are binary-safe: no escaping needed)."""
        return f"{self.prefix}:{_base.check_destination(destination)}"

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._redis is not None:
            return
        client = aioredis.Redis.from_url(
            self.url,
            max_connections=1024,
            socket_connect_timeout=2.0,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
        )
        try:
            await _base.connect_with_retries(
                client.ping,
                broker="Redis",
                where=self._safe_url,
                log=log,
                timeout=self.connect_timeout,
                errors=(RedisError, OSError),
            )
        except TransportError:
            await client.aclose()
            raise
        self._redis = client

    def _reader_client(self) -> Any:
        return aioredis.Redis.from_url(
            self.url,
            single_connection_client=True,
            socket_connect_timeout=2.0,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
        )

    @property
    def _safe_url(self) -> str:
        return _base.safe_url(self.url, 6379)

    async def close(self) -> None:
        client = self._redis
        if client is None:
            return
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers.clear()
        await _base.drain(self._handling, self.close_grace)  # a cancelled handler's entry: claimed after ack_timeout
        self._acks.clear()
        # Best effort, and bounded: leave no empty consumer names behind. A connection left busy
        # by a reader cancelled mid-read must not keep close() waiting.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(5.0):
                for key, group in self._groups:
                    if not await client.xpending_range(key, group, "-", "+", 1, consumername=self.consumer):
                        await client.xgroup_delconsumer(key, group, self.consumer)
        self._groups.clear()
        self._redis = None
        try:
            async with asyncio.timeout(5.0):
                await client.aclose()
        except (RedisError, OSError, TimeoutError) as e:
            # A graceful close that cannot finish (a connection's close never confirmed) must
            # not leave sockets open behind it: close every connection of the pool without waiting.
            log.warning("Redis: closing the connections to %s did not finish (%r); dropping them", self._safe_url, e)
            _drop_connections(client)
            await asyncio.sleep(0)  # the transports close their sockets on the next loop turn

    # ------------------------------------------------------------ publishing

    async def publish(
        self, destination: str, body: bytes, *, message_id: str, headers: dict[str, str] | None = None
    ) -> None:
        if self._redis is None:
            raise TransportError("Redis transport is not started")
        fields = {"id": message_id, "body": body, "headers": orjson.dumps(headers or {})}
        out = _Outgoing(self.key(destination), fields)
        await self._outgoing.add(out)
        if out.error is not None:
            e = out.error
            raise TransportError(f"Redis at {self._safe_url} did not take the message: {e}") from e

    async def _append(self, batch: list[_Outgoing]) -> None:
        """Append the messages published at about the same time in one round trip (a pipeline, not a transaction).

        Each message's own error, if any, is left on it.
        """
        redis = self._redis
        try:
            if redis is None:
                raise TransportError("Redis transport is closed")
            pipe = redis.pipeline(transaction=False)
            for out in batch:
                pipe.xadd(out.key, out.fields, maxlen=self.maxlen, approximate=True)
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TransportError) as e:
            for out in batch:
                out.error = e
            return
        for out, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                out.error = result

    # ------------------------------------------------------------ consuming

    async def _create_group(self, key: str, group: str, start: str) -> None:
        try:
            await self._redis.xgroup_create(key, group, id=start, mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def subscribe(self, destinations: Sequence[str], group: str, handler: Handler) -> None:
        if self._redis is None:
            raise TransportError("Redis transport is not started")
        try:
            await self._create_group(self.key(self.dead_letter), DEAD_LETTER_GROUP, "0")
            for destination in destinations:
                key = self.key(destination)
                await self._create_group(key, group, "$")  # a new group reads what comes next
                self._groups.add((key, group))
        except (RedisError, OSError) as e:
            raise TransportError(f"cannot subscribe {group!r} on Redis: {e}") from e
        for destination in destinations:
            task = asyncio.create_task(self._read(destination, group, handler), name=f"sagakit-redis:{destination}")
            self._readers.append(task)

    async def _read(self, destination: str, group: str, handler: Handler) -> None:
        # Its own connection: a blocked XREADGROUP must not hold one of the shared pool's.
        reader = self._reader_client()
        try:
            await self._read_with(reader, destination, group, handler)
        finally:
            await reader.aclose()

    async def _read_with(self, reader: Any, destination: str, group: str, handler: Handler) -> None:
        key = self.key(destination)
        inflight: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        next_claim = 0.0
        backoff = _base.Backoff()
        while True:
            _raise_if_cancelled()
            if len(inflight) >= self.concurrency:
                await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            free = self.concurrency - len(inflight)
            try:
                if loop.time() >= next_claim:
                    next_claim = loop.time() + min(self.ack_timeout / 2, 5.0)
                    batch = await self._reclaim(key, group, free)
                else:
                    block = min(self.block, max(0.05, next_claim - loop.time()))
                    reply = await reader.xreadgroup(
                        group, self.consumer, {key: ">"}, count=free, block=int(block * 1000)
                    )
                    batch = [(i, f, 1) for _key, entries in reply or () for i, f in entries]
                backoff.reset()
            except ResponseError as e:
                if "NOGROUP" in str(e):
                    # The group is gone (server restarted without persistence): read its stream from the start.
                    log.warning("Redis: group %r on %s is gone; creating it again", group, key)
                    try:
                        await self._create_group(key, group, "0")
                    except (RedisError, OSError):
                        await asyncio.sleep(backoff.delay)
                    continue
                log.warning("Redis: reading %s failed: %s; retrying in %.1fs", key, e, backoff.delay)
                await backoff.wait()
                continue
            except (RedisError, OSError) as e:
                log.warning("Redis at %s unreachable (%s); retrying in %.1fs", self._safe_url, e, backoff.delay)
                await backoff.wait()
                continue
            for entry_id, fields, attempt in batch:
                task = asyncio.create_task(self._handle(destination, key, group, handler, entry_id, fields, attempt))
                for tasks in (inflight, self._handling):
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

    async def _reclaim(self, key: str, group: str, count: int) -> list[tuple[bytes, dict[bytes, bytes], int]]:
        """Entries other consumers left unacknowledged for ``ack_timeout``, now ours, with their delivery counts."""
        reply = await self._redis.xautoclaim(key, group, self.consumer, int(self.ack_timeout * 1000), "0-0", count)
        entries = reply[1]
        for entry_id in reply[2] if len(reply) > 2 else ():  # deleted from the stream meanwhile
            await self._redis.xack(key, group, entry_id)
        live = [(i, f) for i, f in entries if f is not None]
        if not live:
            return []
        pending = await self._redis.xpending_range(
            key, group, live[0][0], live[-1][0], len(live) * 2, consumername=self.consumer
        )
        counts = {p["message_id"]: p["times_delivered"] for p in pending}
        return [(i, f, counts.get(i, 2)) for i, f in live]

    async def _handle(
        self,
        destination: str,
        key: str,
        group: str,
        handler: Handler,
        entry_id: bytes,
        fields: dict[bytes, bytes],
        attempt: int,
    ) -> None:
        redis = self._redis
        while True:
            headers = orjson.loads(fields.get(b"headers", b"{}"))
            delivery = Delivery(
                destination, fields.get(b"body", b""), fields.get(b"id", b"").decode(), attempt, headers
            )
            if attempt > self.max_deliveries:  # its consumers kept vanishing while handling it
                await self._give_up(key, group, entry_id, delivery, _base.unacknowledged_reason(attempt))
                return
            beat = _base.Heartbeat(self.ack_timeout / 3, functools.partial(self._keep_alive, key, group, entry_id))
            try:
                await _base.call_handler(handler, delivery, self.redelivery_delay, log)
            except Exception as e:
                if attempt >= self.max_deliveries:
                    await self._give_up(key, group, entry_id, delivery, _base.failed_reason(attempt, e))
                    return
                log.info("Redis: handling %s failed (delivery %d): %s", delivery.message_id, attempt, e)
                await asyncio.sleep(_base.backoff_delay(self.redelivery_delay, attempt))
                try:  # take it again (counts a delivery); gone if another member took it over
                    claimed = await redis.xclaim(key, group, self.consumer, 0, [entry_id])
                except (RedisError, OSError):
                    return  # still pending: claimed by someone after ack_timeout
                if not claimed or claimed[0][1] is None:
                    return
                fields, attempt = claimed[0][1], attempt + 1
                continue
            else:
                acks = self._acks.get((key, group))
                if acks is None:
                    acks = self._acks[(key, group)] = _base.Grouped(functools.partial(self._ack, key, group))
                await acks.add(entry_id)
                return
            finally:
                beat.cancel()

    async def _ack(self, key: str, group: str, entry_ids: list[bytes]) -> None:
        """Acknowledge entries handled at about the same time, in one command."""
        with contextlib.suppress(RedisError, OSError):  # a lost ack means one more delivery, no loss
            await self._redis.xack(key, group, *entry_ids)

    async def _keep_alive(self, key: str, group: str, entry_id: bytes) -> None:
        # Resets the entry's idle time; counts no delivery.
        await self._redis.xclaim(key, group, self.consumer, 0, [entry_id], justid=True)

    async def _give_up(self, key: str, group: str, entry_id: bytes, delivery: Delivery, reason: str) -> None:
        log.warning("Redis: message %s on %s dead-lettered: %s", delivery.message_id, delivery.destination, reason)
        headers = _base.dead_letter_headers(delivery, reason)
        try:
            await self._create_group(self.key(self.dead_letter), DEAD_LETTER_GROUP, "0")
            await self.publish(self.dead_letter, delivery.body, message_id=delivery.message_id, headers=headers)
            await self._redis.xack(key, group, entry_id)
        except (TransportError, RedisError, OSError) as e:
            log.warning("Redis: cannot dead-letter %s yet: %s", delivery.message_id, e)


class _Outgoing:
    """A message on its way to a stream: where, what, and the error that kept it out (None: appended)."""

    __slots__ = ("error", "fields", "key")

    def __init__(self, key: str, fields: dict[str, Any]) -> None:
        self.key = key
        self.fields = fields
        self.error: BaseException | None = None
