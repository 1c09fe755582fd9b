"""Kafka transport (``kafka://host:9092``; needs ``pip install 'sagakit[kafka]'``).

Untested on the machines sagakit is developed on (no Kafka runs there): its
contract tests run wherever ``SAGAKIT_KAFKA`` (default ``127.0.0.1:9092``)
answers and are skipped otherwise.

- A destination is the topic ``<prefix>.<destination>`` (characters Kafka
  does not allow escaped as ``_XX``), created with ``partitions`` partitions
  when subscribed to. Producers are idempotent with ``acks=all``.
- A group is a Kafka consumer group: partitions are shared among its members,
  every group reads every topic it subscribes to, starting with the messages
  that arrive after the group first joined.
- Offsets are committed after the handlers returned. The records of one
  partition are handled in order; a handler that raises is retried in place
  after a back-off (doubling per attempt); after ``max_deliveries`` the record
  goes to the dead-letter topic with the reason in its headers. A member that
  crashed leaves its uncommitted records to the member that takes over its
  partitions (their ``attempt`` starts again at 1: Kafka keeps no count).

Kafka's idempotent producer drops its own retries, not a second publish of
one message id: the receiver's inbox drops that.

URL options (query string): ``prefix``, ``max_deliveries``,
``redelivery_delay``, ``concurrency``, ``dead_letter``, ``partitions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

try:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"the Kafka transport needs aiokafka: pip install 'sagakit[kafka]' ({e})") from e

from .._transport import Delivery, Handler, TransportError
from . import _base

__all__ = ["KafkaTransport", "topic_for"]

log = logging.getLogger("sagakit.transport.kafka")

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")
_OPTIONS = {
    "prefix": str,
    "dead_letter": str,
    "max_deliveries": int,
    "concurrency": int,
    "partitions": int,
    "redelivery_delay": float,
}


def topic_for(prefix: str, destination: str) -> str:
    """The topic of *destination*: ``<prefix>.<escaped destination>``, hashed past Kafka's 249 characters."""
    escaped = "".join(chr(b) if b in _SAFE else f"_{b:02X}" for b in _base.check_destination(destination).encode())
    return _base.fit_name(prefix + "." + escaped, 249, "_")


class KafkaTransport:
    """A Transport on Kafka.

    Args:
        url: ``kafka://host:9092`` (several brokers: comma-separated).
        prefix: the first part of every topic name.
        max_deliveries: failed deliveries before a record is dead-lettered.
        redelivery_delay: delay before the first retry of a failed record; doubles per attempt.
        concurrency: records fetched at once per subscription (partitions are handled in parallel).
        dead_letter: the destination of dead letters.
        partitions: partitions of the topics this transport creates.
        close_grace: seconds ``close`` waits for handlers in progress before cancelling them.
        connect_timeout: seconds ``start`` keeps trying to connect.
    """

    def __init__(
        self,
        url: str = "kafka://127.0.0.1:9092",
        *,
        prefix: str = "sagakit",
        max_deliveries: int = 5,
        redelivery_delay: float = 0.2,
        concurrency: int = 16,
        dead_letter: str = "sagakit.dead_letter",
        partitions: int = 8,
        close_grace: float = 10.0,
        connect_timeout: float = 30.0,
        publish_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.bootstrap = urlsplit(url).netloc
        self.prefix = prefix
        self.max_deliveries = max_deliveries
        self.redelivery_delay = redelivery_delay
        self.concurrency = concurrency
        self.dead_letter = dead_letter
        self.partitions = partitions
        self.close_grace = close_grace
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self._producer: Any = None
        self._consumers: list[tuple[Any, asyncio.Task[None]]] = []

    @classmethod
    def from_url(cls, url: str) -> KafkaTransport:
        parts, opts, _ = _base.url_options(url, _OPTIONS, strict="Kafka")
        return cls(f"kafka://{parts.netloc}", **opts)

    async def _retrying(self, what: str, make: Any) -> Any:
        async def start() -> Any:
            client = make()
            try:
                await client.start()
            except (KafkaError, OSError):
                with contextlib.suppress(Exception):
                    await client.stop()
                raise
            return client

        return await _base.connect_with_retries(
            start,
            broker="Kafka",
            where=self.bootstrap,
            log=log,
            timeout=self.connect_timeout,
            errors=(KafkaError, OSError),
            what=what,
        )

    async def start(self) -> None:
        if self._producer is None:
            self._producer = await self._retrying(
                "a producer",
                lambda: AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=True, acks="all"),
            )

    async def close(self) -> None:
        for consumer, task in self._consumers:
            task.cancel()  # the offsets of records in progress stay uncommitted
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, self.close_grace)
            with contextlib.suppress(Exception):
                await consumer.stop()
        self._consumers.clear()
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def publish(
        self, destination: str, body: bytes, *, message_id: str, headers: dict[str, str] | None = None
    ) -> None:
        if self._producer is None:
            raise TransportError("Kafka transport is not started")
        hdrs = [(k, v.encode()) for k, v in {**(headers or {}), _base.MESSAGE_ID_HEADER: message_id}.items()]
        topic = topic_for(self.prefix, destination)
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(topic, body, key=message_id.encode(), headers=hdrs),
                self.publish_timeout,
            )
        except (KafkaError, OSError, TimeoutError) as e:
            raise TransportError(f"Kafka did not accept the message for {topic}: {e!r}") from e

    async def subscribe(self, destinations: Sequence[str], group: str, handler: Handler) -> None:
        if self._producer is None:
            raise TransportError("Kafka transport is not started")
        topics = {topic_for(self.prefix, d): d for d in [*destinations, self.dead_letter]}
        admin = await self._retrying("an admin client", lambda: AIOKafkaAdminClient(bootstrap_servers=self.bootstrap))
        try:
            for topic in topics:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(topic, self.partitions, 1)])
        except KafkaError as e:
            raise TransportError(f"cannot create the topics of {group!r} on Kafka: {e!r}") from e
        finally:
            await admin.close()
        consumer = await self._retrying(
            f"group {group!r}",
            lambda: AIOKafkaConsumer(
                *[topic_for(self.prefix, d) for d in destinations],
                bootstrap_servers=self.bootstrap,
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="latest",
            ),
        )
        task = asyncio.create_task(self._consume(consumer, topics, handler), name=f"sagakit-kafka:{group}")
        self._consumers.append((consumer, task))

    async def _consume(self, consumer: Any, topics: dict[str, str], handler: Handler) -> None:
        backoff = _base.Backoff()
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000, max_records=self.concurrency)
                await asyncio.gather(
                    *(self._partition(topics[tp.topic], records, handler) for tp, records in batches.items())
                )
                if batches:
                    await consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
                backoff.reset()
            except KafkaError as e:  # the client reconnects by itself; uncommitted records come again
                log.warning("Kafka: consuming failed (%s); retrying in %.1fs", e, backoff.delay)
                await backoff.wait()

    async def _partition(self, destination: str, records: list[Any], handler: Handler) -> None:
        for record in records:
            headers = {k: v.decode() for k, v in record.headers or ()}
            mid = headers.pop(_base.MESSAGE_ID_HEADER, "")
            for attempt in range(1, self.max_deliveries + 1):
                delivery = Delivery(destination, record.value, mid, attempt, headers)
                try:
                    await _base.call_handler(handler, delivery, self.redelivery_delay, log)
                    break
                except Exception as e:
                    if attempt == self.max_deliveries:
                        await self._give_up(delivery, _base.failed_reason(attempt, e))
                    else:
                        await asyncio.sleep(_base.backoff_delay(self.redelivery_delay, attempt))

    async def _give_up(self, delivery: Delivery, reason: str) -> None:
        log.warning("Kafka: message %s on %s dead-lettered: %s", delivery.message_id, delivery.destination, reason)
        headers = _base.dead_letter_headers(delivery, reason)
        backoff = _base.Backoff(self.redelivery_delay)
        while True:  # the offset is committed only once the dead letter is stored
            try:
                await self.publish(self.dead_letter, delivery.body, message_id=delivery.message_id, headers=headers)
                return
            except TransportError as err:
                log.warning("Kafka: cannot dead-letter %s yet: %s", delivery.message_id, err)
                await backoff.wait()
