"""Fixtures of the transport tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import require_service

from .brokers import NAMES, Broker


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
