"""The message-saga scenarios of ``tests/messaging`` on real brokers."""

from __future__ import annotations

from typing import Any

from sagakit._messages import message_type_name
from sagakit._transport import Transport
from tests.messaging.mixed import (
    failure_event_reason_reaches_compensation,
    local_result_reaches_commands_and_outcome,
    participant_fault_fails_the_step_at_once,
)
from tests.messaging.test_message_saga import (
    PaymentProcessed,
    duplicated_reply_has_no_second_effect,
    shipping_failure_compensates_and_announces,
    trigger_to_completion,
)

from .brokers import Broker


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
    await trigger_to_completion(store_url, broker.transport)


async def test_shipping_failure_compensates_and_announces(store_url: str, broker: Broker) -> None:
    await shipping_failure_compensates_and_announces(store_url, broker.transport)


async def test_duplicated_reply_has_no_second_effect(store_url: str, broker: Broker) -> None:
    payments = DuplicatingTransport(broker.transport(), message_type_name(PaymentProcessed))
    await duplicated_reply_has_no_second_effect(store_url, broker.transport, payments=payments)


async def test_local_result_reaches_commands_and_outcome(store_url: str, broker: Broker) -> None:
    await local_result_reaches_commands_and_outcome(store_url, broker.transport)


async def test_failure_event_reason_reaches_compensation(store_url: str, broker: Broker) -> None:
    await failure_event_reason_reaches_compensation(store_url, broker.transport)


async def test_participant_fault_fails_the_step_at_once(store_url: str, broker: Broker) -> None:
    await participant_fault_fails_the_step_at_once(store_url, broker.transport)
