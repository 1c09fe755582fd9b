"""Fixtures of the admin tests: a store seeded with sagas in every interesting state, operations, HTTP clients.

The store is the suite's database (``store_url``: a SQLite file, or a
PostgreSQL schema under ``SAGAKIT_TEST_DB=postgres``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from sagakit import SagaEngine
from sagakit.admin import Operations, create_app

from . import sample_app

TOKEN = "test-token-6f1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Seed:
    url: str
    completed: list[str]
    failed: list[str]
    compensated: list[str]
    pending: list[str]

    @property
    def all(self) -> list[str]:
        return [*self.completed, *self.failed, *self.compensated, *self.pending]


@pytest.fixture(autouse=True)
def shipping() -> Iterator[dict[str, bool]]:
    """The sample app's shipping switch, back on after each test."""
    sample_app.SHIPPING["down"] = False
    yield sample_app.SHIPPING
    sample_app.SHIPPING["down"] = False


async def seed_store(url: str) -> Seed:
    """Two completed sagas, two failed past the pivot (shipping down), one compensated, one pending."""
    secrets = {"password": "hunter2", "card": {"number": "4111111111111111", "cvv": "123"}}
    async with SagaEngine(url) as engine:
        engine.register(sample_app.order)
        completed = [
            await engine.start("order", {"order_id": f"ok-{i}", "customer": i, **secrets}, correlation_id="c-ok")
            for i in range(2)
        ]
        for sid in completed:
            await engine.wait(sid, timeout=10)
        sample_app.SHIPPING["down"] = True
        failed = [
            await engine.start("order", {"order_id": f"bad-{i}", "customer": i, **secrets}, correlation_id="c-bad")
            for i in range(2)
        ]
        for sid in failed:
            await engine.wait(sid, timeout=10)
        sample_app.SHIPPING["down"] = False
        compensated = [await engine.start("order", {"order_id": "nostock", "reserve_fails": True})]
        await engine.wait(compensated[0], timeout=10)
    queued = SagaEngine(url)  # not running: the saga stays pending, due now
    queued.register(sample_app.order)
    try:
        pending = [await queued.start("order", {"order_id": "later"})]
    finally:
        await queued.close()
    return Seed(url, completed, failed, compensated, pending)


@pytest.fixture
async def seed(store_url: str) -> Seed:
    return await seed_store(store_url)


@pytest.fixture
async def ops(seed: Seed) -> AsyncIterator[Operations]:
    o = Operations.for_store(seed.url, [sample_app.order])
    async with o:
        yield o


def client_for(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")  # type: ignore[arg-type]


@pytest.fixture
async def client(ops: Operations) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(ops, token=TOKEN)) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServedApp:
    """An app served by uvicorn on a loopback port, in a thread with its own event loop."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="sagakit-test-server", daemon=True)

    def __enter__(self) -> ServedApp:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def seed_sync(url: str) -> Seed:
    """seed_store for synchronous tests (browser, schemathesis), in a loop of its own."""
    return asyncio.run(seed_store(url))
