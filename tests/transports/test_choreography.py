"""Choreographed sagas on real brokers (NATS JetStream, RabbitMQ, Redis Streams), on the suite's database.

The shop's services and the engine each consume the events with their own
consumer group; the engine's two instances in the last test compete within
theirs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import require_service
from tests.messaging.choreography import (
    cancelled_flow_compensates,
    failure_compensates_in_reverse,
    flow_completes,
    out_of_order_and_duplicates,
    several_trackers_share_the_flows,
)

from .brokers import Broker


@pytest.fixture(params=["nats", "rabbitmq", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    b = Broker(request.param)
    require_service(b.missing())
    try:
        yield b
    finally:
        await b.cleanup()


async def test_flow_completes(store_url: str, broker: Broker) -> None:
    await flow_completes(store_url, broker.transport)


async def test_failure_compensates_in_reverse(store_url: str, broker: Broker) -> None:
    await failure_compensates_in_reverse(store_url, broker.transport)


async def test_out_of_order_and_duplicates(store_url: str, broker: Broker) -> None:
    await out_of_order_and_duplicates(store_url, broker.transport)


async def test_cancelled_flow_compensates(store_url: str, broker: Broker) -> None:
    await cancelled_flow_compensates(store_url, broker.transport)


async def test_several_trackers_share_the_flows(store_url: str, broker: Broker) -> None:
    await several_trackers_share_the_flows(store_url, broker.transport)
