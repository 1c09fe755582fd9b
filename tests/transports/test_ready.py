"""Ready before start: a saga's first command goes out only once the replies it waits for are consumed.

A definition registered on a running engine (after ``async with engine``, as the
README shows) is subscribed to in the background; until that subscription is
live the relay holds every command, so a participant that answers at once
cannot have its reply dropped by a broker that keeps messages only for
existing subscribers. Run on the in-memory transport and on every real broker,
with subscriptions made slower than the broker's own so that a command sent
too early would certainly lose its reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytest

from sagakit import SagaBuilder, SagaEngine, SagaStatus, send
from sagakit._messages import message_type_name
from sagakit._transport import Handler, Transport, TransportError
from sagakit.transports.memory import MemoryBroker, MemoryTransport
from tests.messaging.test_message_saga import (
    PaymentProcessed,
    PaymentRefunded,
    ProcessPayment,
    RefundPayment,
    Services,
    definition,
)

from .brokers import Broker

MakeTransport = Callable[[], Transport]


class SlowSubscriptions:
    """A transport whose subscriptions go live *delay* seconds late; it records when, and what it published."""

    def __init__(self, inner: Transport, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.url = inner.url
        self.events: list[tuple[str, str]] = []  # ("live", destination) or ("published", destination)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def publish(
        self, destination: str, body: bytes, *, message_id: str, headers: dict[str, str] | None = None
    ) -> None:
        self.events.append(("published", destination))
        await self.inner.publish(destination, body, message_id=message_id, headers=headers)

    async def subscribe(self, destinations: Sequence[str], group: str, handler: Handler) -> None:
        await asyncio.sleep(self.delay)
        await self.inner.subscribe(destinations, group, handler)
        self.events.extend(("live", d) for d in destinations)


async def first_command_waits_for_its_reply_subscription(store_url: str, make: MakeTransport, register: str) -> None:
    """*register*: "inside" or "outside" ``async with engine``; the saga is started at once."""
    slow = SlowSubscriptions(make(), delay=0.5)
    engine = SagaEngine(store_url, transport=slow)
    async with Services(make) as services:
        if register == "outside":
            engine.register(definition())
        async with engine:
            if register == "inside":
                engine.register(definition())
            # No reply timeout: a reply lost because its subscription came too late hangs the saga.
            sid = await engine.start("order_processing", {"order_id": "o-ready", "amount": 10})
            snap = await engine.wait(sid, timeout=30)
    assert snap.status is SagaStatus.COMPLETED, snap
    assert services.charged == ["o-ready"]
    live = slow.events.index(("live", message_type_name(PaymentProcessed)))
    sent = slow.events.index(("published", message_type_name(ProcessPayment)))
    assert live < sent, slow.events


@pytest.mark.parametrize("register", ["inside", "outside"])
async def test_first_command_waits_for_its_reply_subscription(store_url: str, register: str) -> None:
    await first_command_waits_for_its_reply_subscription(store_url, partial(MemoryTransport, MemoryBroker()), register)


@pytest.mark.parametrize("register", ["inside", "outside"])
async def test_first_command_waits_for_its_reply_subscription_on_a_broker(
    store_url: str, broker: Broker, register: str
) -> None:
    await first_command_waits_for_its_reply_subscription(store_url, broker.transport, register)


def refund_definition() -> Any:
    b = SagaBuilder("refund")
    b.step("refund", action=send(RefundPayment, success=PaymentRefunded))
    return b.build()


async def test_a_definition_registered_while_another_is_subscribed_to_is_consumed_too(store_url: str) -> None:
    """A registration while an earlier one's subscription is under way is subscribed to before any command."""
    make = partial(MemoryTransport, MemoryBroker())
    slow = SlowSubscriptions(make(), delay=0.3)
    async with Services(make) as services, SagaEngine(store_url, transport=slow) as engine:
        engine.register(definition())
        await asyncio.sleep(0.1)  # the first subscription is under way
        engine.register(refund_definition())
        sid = await engine.start("refund", {"order_id": "o-r", "payment_id": "p-r"})
        snap = await engine.wait(sid, timeout=30)
    assert snap.status is SagaStatus.COMPLETED
    assert services.refunded == ["p-r"]
    live = slow.events.index(("live", message_type_name(PaymentRefunded)))
    assert live < slow.events.index(("published", message_type_name(RefundPayment))), slow.events


async def test_ready_does_not_suspend_once_subscribed(store_url: str) -> None:
    """The relay asks before each batch: with every subscription live the answer costs no await."""
    async with SagaEngine(store_url, transport=MemoryTransport(MemoryBroker())) as engine:
        engine.register(definition())
        await engine._messaging.ready()
        coro: Any = engine._messaging.ready()
        with pytest.raises(StopIteration):
            coro.send(None)  # finished without yielding to the event loop


async def test_a_failed_subscription_is_retried_and_commands_wait_for_it(store_url: str) -> None:
    """A broker that refuses the subscription at first: the engine retries it; the command waits meanwhile."""
    make = partial(MemoryTransport, MemoryBroker())
    slow = SlowSubscriptions(make(), delay=0.0)
    real = slow.subscribe
    refusals = 2

    async def refusing(destinations: Sequence[str], group: str, handler: Handler) -> None:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise TransportError("refused on purpose")
        await real(destinations, group, handler)

    slow.subscribe = refusing  # type: ignore[method-assign]
    async with Services(make) as services, SagaEngine(store_url, transport=slow) as engine:
        engine.register(definition())
        sid = await engine.start("order_processing", {"order_id": "o-retry", "amount": 10})
        snap = await engine.wait(sid, timeout=30)
    assert snap.status is SagaStatus.COMPLETED
    assert refusals == 0 and services.charged == ["o-retry"]
    live = slow.events.index(("live", message_type_name(PaymentProcessed)))
    assert live < slow.events.index(("published", message_type_name(ProcessPayment))), slow.events
