"""Stable message names on every broker: routing survives a class moving between modules."""

from __future__ import annotations

from tests.messaging.test_message_names import moved_class_routes

from .brokers import Broker


async def test_routing_survives_a_class_moving_between_modules(store_url: str, broker: Broker) -> None:
    await moved_class_routes(store_url, broker.transport)
