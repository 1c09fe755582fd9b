"""RabbitMQ transport (``amqp://user:pass@host:5672/vhost``; needs ``pip install 'sagakit[rabbitmq]'``).

- Messages are published persistent, with publisher confirms, to one durable
  topic exchange with the destination as routing key: the exchange named
  after the ``prefix`` (``sagakit`` by default), so applications with
  different prefixes share a server (and vhost) without sharing an exchange
  or a queue.
- A group is a durable quorum queue per (group, destination), bound to the
  exchange: the members of a group compete for its messages, every group gets
  every message published after its queue was declared, and the queue keeps
  them while the group's processes are down.
- Acknowledged when the handler returned. A handler that raises has its
  message requeued after a back-off (doubling per attempt); a consumer whose
  connection drops has its unacknowledged messages requeued by the broker at
  once. The quorum queue counts the deliveries (``x-delivery-count``).
- After ``max_deliveries`` the message goes to the dead-letter destination,
  with the reason in its headers, and is acknowledged.
- The connection is watched: when it drops, publishing raises
  ``TransportError`` and a background task reconnects with exponential
  back-off and resumes the consumers.

RabbitMQ has no broker-side de-duplication: a repeated publish is delivered
twice and the receiver's inbox drops the second.

URL options (query string, removed before connecting): ``prefix``,
``exchange``, ``max_deliveries``, ``redelivery_delay``, ``concurrency``,
``dead_letter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlunsplit

try:
    import aio_pika
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"the RabbitMQ transport needs aio-pika: pip install 'sagakit[rabbitmq]' ({e})") from e

from .._transport import Delivery, Handler, TransportError
from . import _base
from ._base import DEAD_LETTER_GROUP

__all__ = ["DEAD_LETTER_GROUP", "RabbitMQTransport", "queue_name", "routing_key"]

log = logging.getLogger("sagakit.transport.rabbitmq")

_MAX_NAME = 255  # bytes, for routing keys and queue names
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_OPTIONS = {
    "prefix": str,
    "exchange": str,
    "dead_letter": str,
    "max_deliveries": int,
    "concurrency": int,
    "redelivery_delay": float,
}


def _fit(name: str) -> str:
    return _base.fit_name(name, _MAX_NAME, ".:")


def _encode(text: str) -> str:
    # AMQP names may hold only [A-Za-z0-9-_.:]; ':' is the escape, so the encoding is reversible.
    return "".join(chr(b) if b in _SAFE else f":{b:02X}" for b in text.encode())


def routing_key(destination: str) -> str:
    """The routing key of *destination*: each dot-separated word encoded, so ``*`` and ``#`` stay literal.

    Raises:
        TransportError: the destination is empty.
    """
    return _fit(_base.encode_words(destination, _encode))


def queue_name(exchange: str, group: str, destination: str) -> str:
    """The queue of *group* for *destination*: ``<exchange>.<group>.<routing key>`` (hashed when too long)."""
    return _fit(f"{_encode(exchange)}.{_encode(group)}.{routing_key(destination)}")


@dataclass(slots=True)
class _Subscription:
    destination: str
    group: str
    handler: Handler
    consumer_tag: str | None = None
    queue: Any = None


class RabbitMQTransport:
    """A Transport on RabbitMQ (3.8 or later: quorum queues).

    Args:
        url: ``amqp://user:pass@host:5672/vhost``.
        prefix: the application's namespace on the server: the name of its exchange, which
            its queue names start with.
        exchange: the durable topic exchange every destination is published to (default: *prefix*).
        max_deliveries: failed deliveries before a message is dead-lettered.
        redelivery_delay: delay before the first requeue of a failed message; doubles per attempt.
        concurrency: unacknowledged messages (handlers running) at once per destination subscribed.
        dead_letter: the destination of dead letters.
        close_grace: seconds ``close`` waits for handlers in progress before cancelling them.
        connect_timeout: seconds ``start`` keeps trying to connect.
    """

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        prefix: str = "sagakit",
        exchange: str | None = None,
        max_deliveries: int = 5,
        redelivery_delay: float = 0.2,
        concurrency: int = 16,
        dead_letter: str = "sagakit.dead_letter",
        close_grace: float = 10.0,
        connect_timeout: float = 30.0,
        publish_timeout: float = 5.0,
    ) -> None:
        self.url = url
        if not (exchange or prefix):
            raise TransportError("RabbitMQ prefix must not be empty: it names the application's exchange")
        self.prefix = prefix
        self.exchange_name = exchange or prefix
        self.max_deliveries = max_deliveries
        self.redelivery_delay = redelivery_delay
        self.concurrency = concurrency
        self.dead_letter = dead_letter
        self.close_grace = close_grace
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self._conn: Any = None
        self._exchange: Any = None
        self._subs: list[_Subscription] = []
        self._handling: set[asyncio.Task[Any]] = set()
        self._lost = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    def from_url(cls, url: str) -> RabbitMQTransport:
        parts, opts, rest = _base.url_options(url, _OPTIONS)  # the rest is aio-pika's own (heartbeat, ...)
        return cls(urlunsplit((parts.scheme, parts.netloc, parts.path, rest, "")), **opts)

    @property
    def queues(self) -> list[str]:
        """The queues this transport consumes from."""
        return [queue_name(self.exchange_name, s.group, s.destination) for s in self._subs]

    # ------------------------------------------------------------ connection

    async def start(self) -> None:
        if self._watcher is not None:
            return
        self._closing = False
        await self._connect(timeout=self.connect_timeout)
        self._watcher = asyncio.create_task(self._watch(), name="sagakit-rabbitmq-reconnect")

    async def _connect(self, timeout: float | None) -> None:
        """Connect, declare the topology and resume the consumers, retrying with back-off (None: forever)."""
        conn, exchange = await _base.connect_with_retries(
            self._connect_once, broker="RabbitMQ", where=self._safe_url, log=log, timeout=timeout
        )
        self._lost.clear()
        conn.close_callbacks.add(lambda *_: self._lost.set())
        self._conn, self._exchange = conn, exchange

    async def _connect_once(self) -> tuple[Any, Any]:
        conn = None
        try:
            conn = await aio_pika.connect(self.url, timeout=5)
            channel = await conn.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
            await self._declare(channel, DEAD_LETTER_GROUP, self.dead_letter)
            for sub in self._subs:
                await self._consume(conn, sub)
        except Exception as e:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            if self._closing:
                raise TransportError("RabbitMQ transport closed while connecting") from e
            raise
        return conn, exchange

    async def _watch(self) -> None:
        while True:
            await self._lost.wait()
            if self._closing:
                return
            log.warning("RabbitMQ: connection to %s lost; reconnecting", self._safe_url)
            self._exchange = None
            with contextlib.suppress(TransportError):
                await self._connect(timeout=None)
                log.warning("RabbitMQ: reconnected to %s", self._safe_url)

    @property
    def _safe_url(self) -> str:
        return _base.safe_url(self.url, 5672)

    async def close(self) -> None:
        self._closing = True
        self._lost.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for sub in self._subs:  # no new deliveries; handlers in progress can still ack
            if sub.queue is not None and sub.consumer_tag is not None:
                with contextlib.suppress(Exception):
                    await sub.queue.cancel(sub.consumer_tag)
        await _base.drain(self._handling, self.close_grace)
        conn, self._conn, self._exchange = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()  # unacknowledged messages go back to their queues
        self._subs.clear()

    # ------------------------------------------------------------ publishing

    async def publish(
        self, destination: str, body: bytes, *, message_id: str, headers: dict[str, str] | None = None
    ) -> None:
        exchange = self._exchange
        if exchange is None or self._conn is None or self._conn.is_closed or not self._conn.connected.is_set():
            raise TransportError(f"RabbitMQ at {self._safe_url} is unreachable (reconnecting)")
        message = aio_pika.Message(
            body,
            message_id=message_id,
            headers=dict(headers or {}),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            # mandatory=False: a message no group is bound to is dropped, as on every transport.
            await asyncio.wait_for(
                exchange.publish(message, routing_key(destination), mandatory=False), self.publish_timeout
            )
        except Exception as e:
            raise TransportError(f"RabbitMQ did not confirm the message for {destination!r}: {e!r}") from e

    # ------------------------------------------------------------ consuming

    async def _declare(self, channel: Any, group: str, destination: str) -> Any:
        queue = await channel.declare_queue(
            queue_name(self.exchange_name, group, destination),
            durable=True,
            arguments={"x-queue-type": "quorum"},
        )
        await queue.bind(self.exchange_name, routing_key(destination))
        return queue

    async def subscribe(self, destinations: Sequence[str], group: str, handler: Handler) -> None:
        conn = self._conn
        if conn is None or self._closing:
            raise TransportError("RabbitMQ transport is not started")
        for destination in destinations:
            sub = _Subscription(destination, group, handler)
            self._subs.append(sub)  # resumed after a reconnect
            try:
                await self._consume(conn, sub)
            except Exception as e:
                raise TransportError(f"cannot subscribe {group!r} to {destination!r} on RabbitMQ: {e!r}") from e

    async def _consume(self, conn: Any, sub: _Subscription) -> None:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=self.concurrency)
        sub.queue = await self._declare(channel, sub.group, sub.destination)

        async def on_message(message: Any) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._handling.add(task)
            try:
                await self._handle(message, sub)
            finally:
                self._handling.discard(task)

        sub.consumer_tag = await sub.queue.consume(on_message)

    async def _handle(self, message: Any, sub: _Subscription) -> None:
        headers = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (message.headers or {}).items()}
        attempt = int(headers.pop("x-delivery-count", 0)) + 1
        delivery = Delivery(sub.destination, message.body, message.message_id or "", attempt, headers)
        if attempt > self.max_deliveries:  # its consumers kept vanishing while handling it
            await self._give_up(message, delivery, _base.unacknowledged_reason(attempt))
            return
        try:
            await _base.call_handler(sub.handler, delivery, self.redelivery_delay, log)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            raise
        except Exception as e:
            if attempt >= self.max_deliveries:
                await self._give_up(message, delivery, _base.failed_reason(attempt, e))
                return
            log.info("RabbitMQ: handling %s failed (delivery %d): %s", delivery.message_id, attempt, e)
            await asyncio.sleep(_base.backoff_delay(self.redelivery_delay, attempt))
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        else:
            with contextlib.suppress(Exception):  # a lost ack means one more delivery, no loss
                await message.ack()

    async def _give_up(self, message: Any, delivery: Delivery, reason: str) -> None:
        log.warning("RabbitMQ: message %s on %s dead-lettered: %s", delivery.message_id, delivery.destination, reason)
        headers = _base.dead_letter_headers(delivery, reason)
        try:
            await self.publish(self.dead_letter, delivery.body, message_id=delivery.message_id, headers=headers)
        except TransportError as e:
            log.warning("RabbitMQ: cannot dead-letter %s yet: %s", delivery.message_id, e)
            await asyncio.sleep(self.redelivery_delay)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        with contextlib.suppress(Exception):
            await message.ack()
