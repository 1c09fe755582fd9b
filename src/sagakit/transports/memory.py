"""In-memory transport: the broker semantics of the real ones, inside one process.

At-least-once delivery with acknowledgement after the handler returns,
redelivery of a message whose handler raised (or whose consumer was closed
before acknowledging), competing consumers within a group, every group gets
every message, and dead-lettering after ``max_deliveries``. Used by tests and
by single-process setups; a shared ``MemoryBroker`` lets several transports
(an orchestrator and its participants) talk to each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._transport import Delivery, Handler, TransportError
from . import _base

__all__ = ["DeadLetter", "MemoryBroker", "MemoryTransport", "default_broker"]

log = logging.getLogger("sagakit.transport.memory")


@dataclass(slots=True)
class _Message:
    destination: str
    body: bytes
    message_id: str
    headers: dict[str, str]
    deliveries: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message given up on after too many failed deliveries."""

    destination: str
    message_id: str
    body: bytes
    reason: str


@dataclass(slots=True)
class _Group:
    queue: asyncio.Queue[_Message] = field(default_factory=asyncio.Queue)
    consumers: list[asyncio.Task[None]] = field(default_factory=list)


class MemoryBroker:
    """Destinations and consumer groups shared by the MemoryTransports attached to it."""

    def __init__(self, *, max_deliveries: int = 5, redelivery_delay: float = 0.05) -> None:
        self.max_deliveries = max_deliveries
        self.redelivery_delay = redelivery_delay
        self._groups: dict[tuple[str, str], _Group] = {}
        self._bindings: dict[str, set[tuple[str, str]]] = {}
        self.published: list[_Message] = []
        self.dead_letters: list[DeadLetter] = []
        self.drop_next: dict[str, int] = {}  # destination -> publishes to lose (fault injection)
        self.duplicate_next: dict[str, int] = {}  # destination -> publishes to deliver twice

    def _group(self, destination: str, group: str) -> _Group:
        key = (destination, group)
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = _Group()
            self._bindings.setdefault(destination, set()).add(key)
        return g

    def publish(self, destination: str, body: bytes, message_id: str, headers: dict[str, str]) -> None:
        msg = _Message(destination, body, message_id, dict(headers))
        self.published.append(msg)
        lost = self.drop_next.get(destination, 0)
        if lost:
            self.drop_next[destination] = lost - 1
            return
        copies = 2 if self.duplicate_next.get(destination, 0) else 1
        if copies == 2:
            self.duplicate_next[destination] -= 1
        for key in self._bindings.get(destination, ()):
            for _ in range(copies):
                self._groups[key].queue.put_nowait(_Message(destination, body, message_id, dict(headers)))


_default_brokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MemoryBroker] = weakref.WeakKeyDictionary()


def default_broker() -> MemoryBroker:
    """The broker ``memory://`` transports share: one per event loop, since its queues belong to one loop."""
    loop = asyncio.get_running_loop()
    broker = _default_brokers.get(loop)
    if broker is None:
        broker = _default_brokers[loop] = MemoryBroker()
    return broker


class MemoryTransport:
    """A Transport on a MemoryBroker (given, or the default one of the event loop it runs in)."""

    def __init__(self, broker: MemoryBroker | None = None, *, concurrency: int = 16) -> None:
        self._broker = broker
        self.url = "memory://"
        self.concurrency = concurrency
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._ids = itertools.count(1)

    @property
    def broker(self) -> MemoryBroker:
        """The broker given, else the running event loop's default one (``memory://``)."""
        return self._broker if self._broker is not None else default_broker()

    @classmethod
    def from_url(cls, url: str) -> MemoryTransport:
        return cls()

    async def start(self) -> None:
        self._started = True

    async def close(self) -> None:
        self._started = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    async def publish(
        self, destination: str, body: bytes, *, message_id: str, headers: dict[str, str] | None = None
    ) -> None:
        if not self._started:
            raise TransportError("memory transport is not started")
        self.broker.publish(destination, body, message_id, headers or {})

    async def subscribe(self, destinations: Sequence[str], group: str, handler: Handler) -> None:
        if not self._started:
            raise TransportError("memory transport is not started")
        for d in destinations:
            g = self.broker._group(d, group)
            for _ in range(self.concurrency):
                task = asyncio.create_task(self._consume(g, handler))
                self._tasks.append(task)
                g.consumers.append(task)

    async def _consume(self, g: _Group, handler: Handler) -> None:
        broker = self.broker
        while True:
            msg = await g.queue.get()
            msg.deliveries += 1
            delivery = Delivery(msg.destination, msg.body, msg.message_id, msg.deliveries, msg.headers)
            try:
                await handler(delivery)
            except asyncio.CancelledError:
                g.queue.put_nowait(msg)  # not acknowledged: another consumer gets it
                raise
            except TransportError:
                # The handler could not reach the broker (e.g. to publish its reply):
                # not the message's fault, so it is retried without counting against it.
                msg.deliveries -= 1
                await asyncio.sleep(broker.redelivery_delay)
                g.queue.put_nowait(msg)
            except Exception as e:
                if msg.deliveries >= broker.max_deliveries:
                    reason = _base.failed_reason(msg.deliveries, e)
                    broker.dead_letters.append(DeadLetter(msg.destination, msg.message_id, msg.body, reason))
                    log.warning("message %s dead-lettered: %s", msg.message_id, e)
                else:
                    await asyncio.sleep(broker.redelivery_delay)
                    g.queue.put_nowait(msg)
