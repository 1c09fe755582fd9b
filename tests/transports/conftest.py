"""Fixtures of the transport tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.conftest import require_service

from .brokers import NAMES, Broker
from .kit import free_port
from .tansu import Tansu, tansu_missing


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The address of a Tansu (Kafka-protocol broker) that this session started; stopped at its end."""
    require_service(tansu_missing())
    broker = Tansu(free_port(), tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    try:
        yield broker.address
    finally:
        broker.stop()


@pytest.fixture(params=NAMES)
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    b = Broker(request.param)
    require_service(b.missing())
    if b.name == "kafka":
        b.address = request.getfixturevalue("tansu")
    try:
        yield b
    finally:
        await b.cleanup()
