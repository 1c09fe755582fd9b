"""Broker outages: the broker goes away mid-run and comes back; no saga is lost, no effect is applied twice.

Sagas run over the broker with a store (SQLite, or PostgreSQL with
SAGAKIT_TEST_DB=postgres); the payment and shipping services are
participants over the same broker. While the broker is down the engine's
relay keeps commands in its outbox, sagas started meanwhile queue up there,
and handlers whose replies cannot be published retry in place.

The outage happens to a broker the test owns (``outages.py``): a private
Redis or NATS server is stopped and started again; the machine's RabbitMQ,
and a private Tansu (Kafka), are reached through a proxy that is cut and
restored. The private Redis runs
without persistence, so what it held is gone after the restart: the steps'
reply timeouts resend those commands (same message ids, so the services
answer from their de-duplication memory instead of acting again).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sagakit import SagaEngine, SagaStatus
from tests.conftest import require_service
from tests.messaging.test_message_saga import (
    OrderShipped,
    Participants,
    PaymentProcessed,
    ProcessPayment,
    ShipOrder,
    definition,
)

from .brokers import NAMES, Broker
from .kit import wait_until
from .outages import Outage, make_outage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

ORDERS = 60


class Ledger(Participants):
    """Payment and shipping services that count their effects per order."""

    def __init__(self, b: Broker) -> None:
        super().__init__(lambda: b.transport(ack_timeout=3.0))
        self.charged: Counter[str] = Counter()
        self.shipped: Counter[str] = Counter()

        @self.payments.handles(ProcessPayment)
        async def pay(cmd: ProcessPayment) -> PaymentProcessed:
            self.charged[cmd.order_id] += 1
            return PaymentProcessed(order_id=cmd.order_id, payment_id=f"p-{cmd.order_id}")

        @self.shipping.handles(ShipOrder)
        async def ship(cmd: ShipOrder) -> OrderShipped:
            self.shipped[cmd.order_id] += 1
            return OrderShipped(order_id=cmd.order_id, tracking=f"t-{cmd.order_id}")


@pytest.fixture(params=NAMES)
async def outage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Outage]:
    o = make_outage(request.param, tmp_path)
    require_service(o.missing())
    await o.open()
    try:
        yield o
    finally:
        await o.close()


async def test_sagas_survive_a_broker_restart(store_url: str, outage: Outage) -> None:
    broker = outage.broker
    engine = SagaEngine(store_url, transport=broker.transport(ack_timeout=3.0))
    engine.register(definition(reply_timeout=4.0, attempts=30))
    ids: list[str] = []

    async def start(n: int) -> None:
        for i in range(len(ids), len(ids) + n):
            oid = f"o-{i}"
            ids.append(await engine.start("order_processing", {"order_id": oid, "amount": 10}, idempotency_key=oid))

    async def finished() -> int:
        return sum([await engine.count(status=s) for s in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)])

    stopped = False
    try:
        async with Ledger(broker) as ledger, engine:
            await start(ORDERS // 2)
            done = 0
            while done < 5:  # some sagas finished, the rest in flight
                await asyncio.sleep(0.02)
                done = await finished()
            stopped = True
            await outage.down()
            await start(ORDERS // 2)  # into the outbox while the broker is down
            await asyncio.sleep(2.0)
            await outage.up()
            stopped = False
            snaps = [await engine.wait(sid, timeout=90) for sid in ids]
            await wait_until(lambda: len(ledger.shipped) == ORDERS, 10, "every order shipped")
    finally:
        if stopped:
            await outage.up()
    assert len(set(ids)) == ORDERS
    assert [s.status for s in snaps] == [SagaStatus.COMPLETED] * ORDERS
    assert ledger.charged == Counter({f"o-{i}": 1 for i in range(ORDERS)})  # exactly once, outage or not
    assert ledger.shipped == Counter({f"o-{i}": 1 for i in range(ORDERS)})
