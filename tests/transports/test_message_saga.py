"""The message-saga scenarios of ``tests/messaging`` on real brokers: NATS, RabbitMQ and Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from sagakit import SagaEngine, SagaStatus, StepStatus
from sagakit._messages import Envelope, message_type_name
from sagakit._transport import Delivery, Transport
from sagakit.transports.memory import MemoryBroker
from tests.messaging.test_message_saga import (
    OrderCompleted,
    OrderCreated,
    OrderFailed,
    PaymentProcessed,
    Services,
    _saga_for,
    definition,
)

from .brokers import Broker
from .kit import wait_until


def services_on(b: Broker, *, payments: Transport | None = None) -> Services:
    """The fake payment and shipping services of the messaging tests, on the real broker."""
    services = Services(MemoryBroker())
    services.payments.transport = payments or b.transport()
    services.shipping.transport = b.transport()
    return services


class Outcomes:
    """Collects the sagas' completion and failure events from the broker."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.events: list[Envelope] = []

    async def __aenter__(self) -> Outcomes:
        await self.transport.start()

        async def collect(d: Delivery) -> None:
            self.events.append(Envelope.from_bytes(d.body))

        await self.transport.subscribe(
            [message_type_name(OrderCompleted), message_type_name(OrderFailed)], "observer", collect
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()

    async def wait_for(self, n: int) -> None:
        await wait_until(lambda: len(self.events) >= n, 20, f"{n} outcome events")


class DuplicatingTransport:
    """Publishes every message of one destination twice: the second copy under another broker id.

    The envelope (and so its message id) is the same, as a broker's redelivery would
    have it; a different broker id keeps brokers that de-duplicate from dropping it.
    """

    def __init__(self, inner: Transport, destination: str) -> None:
        self.inner = inner
        self.destination = destination
        self.url = inner.url

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def publish(
        self, destination: str, body: bytes, *, message_id: str, headers: dict[str, str] | None = None
    ) -> None:
        await self.inner.publish(destination, body, message_id=message_id, headers=headers)
        if destination == self.destination:
            await self.inner.publish(destination, body, message_id=f"{message_id}/again", headers=headers)

    async def subscribe(self, destinations: Any, group: str, handler: Any) -> None:
        await self.inner.subscribe(destinations, group, handler)


async def test_trigger_to_completion_event(store_url: str, broker: Broker) -> None:
    async with (
        Outcomes(broker.transport()) as outcomes,
        services_on(broker) as services,
        SagaEngine(store_url, transport=broker.transport()) as engine,
    ):
        engine.register(definition())
        await engine._messaging.ready()
        await engine.publish(OrderCreated(order_id="o-1", amount=10))
        await engine.publish(OrderCreated(order_id="o-1", amount=10))  # same correlation: no-op
        snap = await _saga_for(engine, "o-1")
        await outcomes.wait_for(1)
        assert await engine.count() == 1
    assert snap.status is SagaStatus.COMPLETED
    assert (snap.data["payment_id"], snap.data["tracking"]) == ("p-o-1", "t-o-1")
    assert services.charged == ["o-1"]
    [done] = outcomes.events
    assert done.type_name == message_type_name(OrderCompleted)
    assert done.payload == {"order_id": "o-1", "saga_id": snap.id}


async def test_shipping_failure_compensates_and_announces(store_url: str, broker: Broker) -> None:
    async with (
        Outcomes(broker.transport()) as outcomes,
        services_on(broker) as services,
        SagaEngine(store_url, transport=broker.transport()) as engine,
    ):
        engine.register(definition())
        await engine.publish(OrderCreated(order_id="o-2", amount=10, fail_shipping=True))
        snap = await _saga_for(engine, "o-2")
        await outcomes.wait_for(1)
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["ShipOrder"].status is StepStatus.FAILED
    assert "address unknown" in (snap.steps["ShipOrder"].error or "")
    assert snap.steps["ProcessPayment"].status is StepStatus.COMPENSATED
    assert services.refunded == ["p-o-2"]
    [failed] = outcomes.events
    assert failed.type_name == message_type_name(OrderFailed)
    assert "address unknown" in failed.payload["reason"]


async def test_duplicated_reply_has_no_second_effect(store_url: str, broker: Broker) -> None:
    payments = DuplicatingTransport(broker.transport(), message_type_name(PaymentProcessed))
    async with (
        services_on(broker, payments=payments),  # type: ignore[arg-type]
        SagaEngine(store_url, transport=broker.transport()) as engine,
    ):
        engine.register(definition())
        await engine.publish(OrderCreated(order_id="o-5", amount=10))
        snap = await _saga_for(engine, "o-5")
        letters: list[Any] = []
        for _ in range(500):
            letters = await engine.dead_letters()
            if letters:
                break
            await asyncio.sleep(0.02)
    assert snap.status is SagaStatus.COMPLETED
    assert sum(h.kind == "step_completed" and h.step == "ProcessPayment" for h in snap.history) == 1
    [letter] = letters
    assert letter.type_name == message_type_name(PaymentProcessed)
    assert letter.saga_id == snap.id
    assert "duplicate" in letter.reason or "no step" in letter.reason
