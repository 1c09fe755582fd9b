"""Kafka transport (``kafka://host:9092``; needs ``pip install 'sagakit[kafka]'``).

Its contract tests run against Tansu, a Kafka-protocol broker the tests start
themselves (``tests/transports/tansu.py``).

- A destination is the topic ``<prefix>.<destination>`` (characters Kafka
  does not allow escaped as ``_XX``), created with ``partitions`` partitions
  when subscribed to. Producers publish with ``acks=all``.
- Idempotent production (``idempotence``): ``auto`` (default) asks the
  broker for a producer id (``InitProducerId``) and publishes idempotently
  when it grants one; a broker that does not (the API missing from its
  ``ApiVersions``, or an error answer, as Tansu gives) gets a plain
  ``acks=all`` producer and one logged warning. ``required`` refuses to start
  on such a broker instead; ``off`` never asks.
- A group is the Kafka consumer group ``<prefix>.<group>``: partitions are shared among its members,
  every group reads every topic it subscribes to, starting with the messages
  that arrive after the group first joined (its first member commits the
  partitions' ends before ``subscribe`` returns). A rebalance waits for the
  batch each member is handling, so a joining member does not get records
  that another is still handling.
- Offsets are committed after the handlers returned. The records of one
  partition are handled in order; a handler that raises is retried in place
  after a back-off (doubling per attempt); after ``max_deliveries`` the record
  goes to the dead-letter topic with the reason in its headers. A member that
  crashed leaves its uncommitted records to the member that takes over its
  partitions (their ``attempt`` starts again at 1: Kafka keeps no count).

Kafka's idempotent producer drops its own retries, not a second publish of
one message id: the receiver's inbox drops that.

URL options (query string): ``prefix``, ``max_deliveries``,
``redelivery_delay``, ``concurrency``, ``dead_letter``, ``partitions``,
``replication``, ``session_timeout``, ``heartbeat``, ``idempotence``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

try:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import BrokerResponseError, IncompatibleBrokerVersion, KafkaError, TopicAlreadyExistsError
    from aiokafka.structs import TopicPartition
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"the Kafka transport needs aiokafka: pip install 'sagakit[kafka]' ({e})") from e

from .._transport import Delivery, Handler, TransportError
from . import _base

__all__ = ["IDEMPOTENCE", "KafkaTransport", "topic_for"]

log = logging.getLogger("sagakit.transport.kafka")


def _not_the_refused_producer_id(record: logging.LogRecord) -> bool:
    # aiokafka logs an ERROR when a broker refuses InitProducerId, then raises it from the
    # producer's start: this transport reports that itself (one warning, or a TransportError).
    return not record.getMessage().startswith("Unexpected error during InitProducerIdRequest")


logging.getLogger("aiokafka.producer.sender").addFilter(_not_the_refused_producer_id)

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")
_OPTIONS = {
    "prefix": str,
    "dead_letter": str,
    "max_deliveries": int,
    "concurrency": int,
    "partitions": int,
    "redelivery_delay": float,
    "idempotence": str,
    "replication": int,
    "session_timeout": float,
    "heartbeat": float,
}
IDEMPOTENCE = ("auto", "required", "off")
_REBALANCE_WAIT = 300.0  # seconds a rebalance waits for a member to finish the batch it is handling
_JOIN_WAIT = 10.0  # seconds subscribe waits for a group with committed offsets to take in a new member


class _NoProducerIds(TransportError):
    """The broker does not grant producer ids: no idempotent production there."""


async def _stop(client: Any) -> None:
    """Stop an aiokafka client, ignoring its errors (a consumer cut off from the broker may raise on stop).

    aiokafka can let the cancellation of its own fetch tasks escape ``stop()``;
    only a cancellation of the caller's task is passed on. A ``stop()`` that
    raises has skipped the rest of its work, closing the connections among it
    (they are marked stopped, so a second ``stop()`` does nothing): those are
    closed here, or their sockets would outlive the event loop.
    """
    try:
        await client.stop()
    except asyncio.CancelledError:
        await _close_connections(client)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception as e:
        log.debug("Kafka: stopping %s: %r", type(client).__name__, e)
        await _close_connections(client)


async def _close_connections(client: Any) -> None:
    """Close the connections of an aiokafka consumer, producer or admin client whose ``stop()`` failed."""
    inner = getattr(client, "_client", None) or getattr(client, "client", None)
    if inner is None:
        return
    try:
        await inner.close()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception as e:
        log.debug("Kafka: closing the connections of %s: %r", type(client).__name__, e)


def topic_for(prefix: str, destination: str) -> str:
    """The topic of *destination*: ``<prefix>.<escaped destination>``, hashed past Kafka's 249 characters."""
    escaped = "".join(chr(b) if b in _SAFE else f"_{b:02X}" for b in _base.check_destination(destination).encode())
    return _base.fit_name(prefix + "." + escaped, 249, "_")


class _Batch(ConsumerRebalanceListener):  # type: ignore[misc]
    """Holds a rebalance until the batch in progress is handled and committed.

    aiokafka rebalances in the background: without this, a member joining the
    group would take the partitions of a member still handling their records
    and get those records again. The group waits for a busy member up to the
    rebalance timeout (``_REBALANCE_WAIT``, as Kafka's Java client's
    ``max.poll.interval.ms``) and then goes on without it; that member's
    commit then fails and its records are handled again by the new owner.
    """

    def __init__(self) -> None:
        self.idle = asyncio.Event()
        self.idle.set()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        with contextlib.suppress(TimeoutError):  # a broker that does not enforce the timeout: let go here
            await asyncio.wait_for(self.idle.wait(), _REBALANCE_WAIT)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass


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
        replication: replication factor of the topics this transport creates.
        session_timeout: seconds without a heartbeat after which the group drops a member
            (a crashed process's partitions move after this long; a new group's first join
            takes about half of it on some brokers).
        heartbeat: seconds between a member's heartbeats; a rebalance is noticed within one.
        idempotence: ``auto`` (idempotent where the broker grants producer ids, else
            plain with a logged warning), ``required`` (refuse to start without) or ``off``.
        close_grace: seconds ``close`` waits for handlers in progress before cancelling them.
        connect_timeout: seconds ``start`` keeps trying to connect.
        publish_timeout: seconds ``publish`` waits for the broker's acknowledgement before raising
            ``TransportError`` (the client may still deliver the message later: a duplicate the inbox drops).
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
        publish_timeout: float = 5.0,
        idempotence: str = "auto",
        replication: int = 1,
        session_timeout: float = 10.0,
        heartbeat: float = 1.0,
    ) -> None:
        if idempotence not in IDEMPOTENCE:
            raise TransportError(
                f"Kafka option idempotence={idempotence!r} is not one of {', '.join(IDEMPOTENCE)}: "
                "auto uses idempotent production where the broker supports it, "
                "required refuses to start without it, off never uses it"
            )
        self.url = url
        self.bootstrap = urlsplit(url).netloc
        self.prefix = prefix
        self.max_deliveries = max_deliveries
        self.redelivery_delay = redelivery_delay
        self.concurrency = concurrency
        self.dead_letter = dead_letter
        self.partitions = partitions
        self.replication = replication
        self.session_timeout = session_timeout
        self.heartbeat = heartbeat
        self.close_grace = close_grace
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.idempotence = idempotence
        self.idempotent: bool | None = None  # whether the producer is idempotent, once started
        self._producer: Any = None
        self._consumers: list[tuple[Any, asyncio.Task[None]]] = []
        self._busy: set[asyncio.Task[Any] | None] = set()  # consumer tasks handling a batch
        self._closing = False

    @classmethod
    def from_url(cls, url: str) -> KafkaTransport:
        parts, opts, _ = _base.url_options(url, _OPTIONS, strict="Kafka")
        return cls(f"kafka://{parts.netloc}", **opts)

    async def _retrying(self, what: str, make: Any, *, idempotent_producer: bool = False) -> Any:
        async def start() -> Any:
            client = make()
            try:
                await client.start()
            except (IncompatibleBrokerVersion, BrokerResponseError) as e:
                await _stop(client)
                if not idempotent_producer:
                    raise
                # An idempotent producer's start: the bootstrap raises only connection errors,
                # so these come from its InitProducerId request. aiokafka retries that request
                # itself on the coordinator errors and lost connections; what reaches here is
                # final: the API missing from the broker's ApiVersions, or an error answer.
                raise _NoProducerIds(f"{type(e).__name__}: {e}") from e
            except BaseException:  # a connection error, or a cancelled start: close what it opened
                await _stop(client)
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
        if self._producer is not None:
            return
        if self.idempotence != "off":
            try:
                self._producer = await self._retrying(
                    "an idempotent producer", lambda: self._make_producer(True), idempotent_producer=True
                )
                self.idempotent = True
                return
            except _NoProducerIds as e:
                if self.idempotence == "required":
                    raise TransportError(
                        f"Kafka at {self.bootstrap} does not support idempotent producers "
                        f"(InitProducerId refused: {e}), and idempotence=required: "
                        "remove that option to publish without idempotence there"
                    ) from e
                log.warning(
                    "Kafka at %s does not support idempotent producers (InitProducerId refused: %s): "
                    "publishing with acks=all but without idempotence, so a producer retry may store "
                    "a message twice (the receiver's inbox drops the copy); "
                    "add ?idempotence=required to refuse such a broker, or ?idempotence=off to skip this check",
                    self.bootstrap,
                    e,
                )
        self._producer = await self._retrying("a producer", lambda: self._make_producer(False))
        self.idempotent = False

    def _make_producer(self, idempotent: bool) -> Any:
        return AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=idempotent, acks="all")

    async def close(self) -> None:
        # Consumers between batches stop at once; a batch in progress gets close_grace seconds to
        # finish its handlers and commit, after which it is cancelled and its offsets stay uncommitted.
        self._closing = True
        tasks = [task for _, task in self._consumers]
        for task in tasks:
            if task not in self._busy:
                task.cancel()
        await _base.drain(tasks, self.close_grace)
        for consumer, _ in self._consumers:
            await _stop(consumer)
        self._consumers.clear()
        self._closing = False
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop(producer)

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
                    await admin.create_topics([NewTopic(topic, self.partitions, self.replication)])
        except KafkaError as e:
            raise TransportError(f"cannot create the topics of {group!r} on Kafka: {e!r}") from e
        finally:
            await admin.close()
        batch = _Batch()
        wanted = [topic_for(self.prefix, d) for d in destinations]
        # Started without a subscription, the consumer joins no group yet (start() would wait for the join).
        consumer = await self._retrying(
            f"group {group!r}",
            lambda: AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=f"{self.prefix}.{group}",  # applications with different prefixes never share a group
                enable_auto_commit=False,
                auto_offset_reset="latest",
                session_timeout_ms=int(self.session_timeout * 1000),
                rebalance_timeout_ms=int(_REBALANCE_WAIT * 1000),
                heartbeat_interval_ms=int(self.heartbeat * 1000),
            ),
        )
        try:
            positioned = await self._positioned(consumer, wanted)
            consumer.subscribe(wanted, listener=batch)
            if positioned:
                await self._joined(consumer, _JOIN_WAIT)
            else:
                await self._pin_start(consumer)
        except BaseException:
            await _stop(consumer)
            raise
        task = asyncio.create_task(self._consume(consumer, topics, handler, batch), name=f"sagakit-kafka:{group}")
        self._consumers.append((consumer, task))

    async def _joined(self, consumer: Any, timeout: float) -> bool:
        """Wait until the group gave this member partitions, for up to *timeout* seconds."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while not consumer.assignment():
            if loop.time() > give_up:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _positioned(self, consumer: Any, topics: list[str]) -> bool:
        """Whether the group has a committed offset on every partition of *topics*.

        Then nothing is lost while this member joins: the group reads on from
        those offsets whoever gets the partitions. ``subscribe`` waits for the
        join only so long (``_JOIN_WAIT``): a rebalance waits for the batches
        the members are handling (``_Batch``), which may take any time.
        """
        try:
            await consumer.topics()  # the topics' partitions, into the client's metadata
            for topic in topics:
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    return False
                for partition in partitions:
                    if await consumer.committed(TopicPartition(topic, partition)) is None:
                        return False
        except KafkaError as e:
            raise TransportError(f"cannot read the committed offsets of {topics} on Kafka: {e!r}") from e
        return True

    async def _pin_start(self, consumer: Any) -> None:
        """Join the group and commit its position on the partitions it gives this member, before consuming.

        A group without committed offsets looks up the partitions' ends
        (``auto_offset_reset="latest"``) only when it first fetches: a message
        published in between would be skipped, and so would one published
        while such a partition moves to another member. Committing the
        positions now makes "every message published after the group first
        subscribed" hold from the moment ``subscribe`` returns. A partition
        that has a committed offset is positioned there, so committing it
        again changes nothing.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.connect_timeout
        backoff = _base.Backoff()
        while True:
            if not await self._joined(consumer, give_up - loop.time()):
                return  # the group's other members hold every partition, and commit them
            assigned = list(consumer.assignment())
            try:
                positions = {tp: await consumer.position(tp) for tp in assigned}
                await consumer.commit(positions)
                return
            except KafkaError as e:
                # A rebalance (another member joining at the same time) fails the commit: pin the new assignment.
                if loop.time() > give_up:
                    raise TransportError(f"cannot commit the start positions of {assigned}: {e!r}") from e
                log.warning("Kafka: committing the start positions failed (%s); retrying", e)
                await backoff.wait()

    async def _consume(self, consumer: Any, topics: dict[str, str], handler: Handler, batch: _Batch) -> None:
        backoff = _base.Backoff()
        me = asyncio.current_task()
        while not self._closing:
            try:
                batches = await consumer.getmany(timeout_ms=1000, max_records=self.concurrency)
                if not batches or self._closing:
                    continue
                self._busy.add(me)
                batch.idle.clear()
                try:
                    await asyncio.gather(
                        *(self._partition(topics[tp.topic], records, handler) for tp, records in batches.items())
                    )
                    await consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
                finally:
                    self._busy.discard(me)
                    batch.idle.set()
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
