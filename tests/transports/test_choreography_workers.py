"""Two tracker processes observe one shop's flows on a real broker; one is SIGKILLed half-way.

The trackers share the events as one consumer group and the sagas through
the store (SQLite file or PostgreSQL). Whatever the killed one had taken (an
event not yet acknowledged, a saga leased, a compensating command in its
outbox) is finished by the other: every order ends as its services decided,
tracked by one saga, each stage passed once and each reservation released
once.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sagakit import SagaEngine, SagaSnapshot, SagaStatus
from sagakit._messages import Envelope
from tests.conftest import require_service
from tests.messaging.choreography import OrderPlaced, Shop, kinds, poll

from .brokers import Broker

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(params=["nats", "rabbitmq", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    b = Broker(request.param)
    require_service(b.missing())
    try:
        yield b
    finally:
        await b.cleanup()


def tracker(broker: Broker, store_url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.transports.choreography_child", broker.url(ack_timeout=1.0), store_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


async def test_a_tracker_killed_half_way_loses_no_flow(store_url: str, broker: Broker) -> None:
    reader = SagaEngine(store_url)
    await reader.store.open()
    await reader.store.close()  # the schema exists before two processes open the store at once
    children = [tracker(broker, store_url), tracker(broker, store_url)]
    publisher = broker.transport()
    orders = {f"w-{i}": (40.0 if i % 3 else 400.0) for i in range(12)}

    async def place(order_id: str) -> None:
        mid = uuid.uuid4().hex
        env = Envelope.wrap(
            OrderPlaced(order_id=order_id, amount=orders[order_id]), message_id=mid, timestamp=time.time()
        )
        await publisher.publish(env.type_name, env.to_bytes(), message_id=mid, headers={"message_id": mid})

    async def finished() -> list[SagaSnapshot]:
        found = await reader.list(name="order_flow", limit=1000)
        return [s for s in found if s.status.terminal]

    try:
        for child in children:
            assert child.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
            assert line.strip() == "ready"
        await publisher.start()
        async with Shop(broker.transport) as shop:
            names = list(orders)
            for order_id in names[:6]:
                await place(order_id)
            await poll(lambda: _at_least(finished, 2), 60, "some flows finish")
            children[0].send_signal(signal.SIGKILL)
            await asyncio.to_thread(children[0].wait, 10)
            for order_id in names[6:]:
                await place(order_id)
            try:
                await poll(lambda: _at_least(finished, len(orders)), 90, "every flow finishes")
            except AssertionError:
                stuck = [s for s in await reader.list(name="order_flow", limit=1000) if not s.status.terminal]
                seen = {s.correlation_id for s in await reader.list(name="order_flow", limit=1000)}
                detail = [
                    (s.correlation_id, [(h.kind, h.message) for h in (await reader.get(s.id)).history]) for s in stuck
                ]
                outbox: list[object] = []
                if store_url.startswith("sqlite:///"):
                    with sqlite3.connect(store_url.removeprefix("sqlite:///")) as db:
                        outbox = db.execute(
                            "SELECT saga_id, destination, attempts, claimed_by, claimed_until, available_at "
                            "FROM sagakit_outbox"
                        ).fetchall()
                raise AssertionError(
                    f"unfinished: {detail}; never opened: {sorted(set(orders) - seen)}; "
                    f"dead letters: {[(d.type_name, d.reason) for d in await reader.dead_letters()]}; "
                    f"outbox: {outbox}; released: {shop.released}; stock handled {shop.stock.handled}; "
                    f"now {time.time()}"
                ) from None
            sagas = await reader.list(name="order_flow", limit=1000)
            await asyncio.sleep(0.5)  # a compensation sent twice would show by now
            released = list(shop.released)
    finally:
        await publisher.close()
        await reader.close()
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(10)
            if child.stdout is not None:
                child.stdout.close()
    assert sorted(s.correlation_id for s in sagas) == sorted(orders)  # one saga per order
    for s in sagas:
        snap = await _get(store_url, s.id)
        want = SagaStatus.COMPLETED if orders[snap.correlation_id] < 100 else SagaStatus.COMPENSATED
        assert snap.status is want, (snap.correlation_id, [(h.kind, h.message) for h in snap.history])
        passed = kinds(snap, "step_completed")
        assert len(passed) == len(set(passed)), passed
    assert sorted(released) == sorted(f"r-{o}" for o, a in orders.items() if a > 100)


async def _at_least(finished: Callable[[], Awaitable[list[SagaSnapshot]]], n: int) -> bool:
    return len(await finished()) >= n


async def _get(store_url: str, saga_id: str) -> SagaSnapshot:
    engine = SagaEngine(store_url)
    try:
        return await engine.get(saga_id)
    finally:
        await engine.close()
