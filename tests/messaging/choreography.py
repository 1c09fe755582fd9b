"""Scenarios of choreographed sagas: services that react to each other's events, tracked by an engine.

They take a transport factory, so that tests/messaging runs them on the
in-memory broker and tests/transports on real brokers. The shop's services
are sagakit participants that handle *events* (no saga sends them anything on
the way forward); the engine only observes, and sends compensating commands
when the flow fails.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Self

from pydantic import BaseModel

from sagakit import SagaDefinition, SagaEngine, SagaStatus, StepStatus, choreography, send
from sagakit.participant import Participant
from tests.messaging.test_message_saga import MakeTransport, saga_for


class OrderPlaced(BaseModel):
    message_name: ClassVar[str] = "shop.OrderPlaced"
    order_id: str
    amount: float
    address: str = "Main St 1"


class StockReserved(BaseModel):
    message_name: ClassVar[str] = "shop.StockReserved"
    order_id: str
    amount: float
    address: str
    reservation: str


class OutOfStock(BaseModel):
    message_name: ClassVar[str] = "shop.OutOfStock"
    order_id: str


class PaymentCaptured(BaseModel):
    message_name: ClassVar[str] = "shop.PaymentCaptured"
    order_id: str
    address: str
    payment_id: str


class PaymentDeclined(BaseModel):
    message_name: ClassVar[str] = "shop.PaymentDeclined"
    order_id: str
    reason: str


class OrderShipped(BaseModel):
    message_name: ClassVar[str] = "shop.OrderShipped"
    order_id: str
    tracking: str


class ShippingFailed(BaseModel):
    message_name: ClassVar[str] = "shop.ShippingFailed"
    order_id: str
    reason: str


class OrderCancelled(BaseModel):
    message_name: ClassVar[str] = "shop.OrderCancelled"
    order_id: str


class ReleaseStock(BaseModel):
    message_name: ClassVar[str] = "shop.ReleaseStock"
    order_id: str
    reservation: str


class StockReleased(BaseModel):
    message_name: ClassVar[str] = "shop.StockReleased"
    order_id: str


class RefundPayment(BaseModel):
    message_name: ClassVar[str] = "shop.RefundPayment"
    order_id: str
    payment_id: str


def order_flow(*, deadline: float | None = None, name: str = "order_flow") -> SagaDefinition:
    return (
        choreography(name, deadline=deadline)
        .starts_on(OrderPlaced, correlate=lambda e: e.order_id)
        .then(StockReserved, failure=OutOfStock, compensate=send(ReleaseStock, success=StockReleased))
        .then(PaymentCaptured, failure=PaymentDeclined, compensate=RefundPayment)  # not waited for
        .then(OrderShipped, failure=ShippingFailed)
        .fails_on(OrderCancelled)
        .build()
    )


class Shop:
    """Stock, payments and shipping: each reacts to the event before it and publishes its own.

    An order over 100 is declined, one to "nowhere" cannot be shipped, and one
    whose id starts with "slow" is never paid (the payment service stalls).
    """

    def __init__(self, make_transport: MakeTransport) -> None:
        self.stock = Participant(make_transport(), name="stock")
        self.payments = Participant(make_transport(), name="payments")
        self.shipping = Participant(make_transport(), name="shipping")
        self.released: list[str] = []
        self.refunded: list[str] = []

        @self.stock.handles(OrderPlaced)
        def reserve(e: OrderPlaced) -> StockReserved:
            return StockReserved(order_id=e.order_id, amount=e.amount, address=e.address, reservation=f"r-{e.order_id}")

        @self.stock.handles(ReleaseStock)
        def release(c: ReleaseStock) -> StockReleased:
            self.released.append(c.reservation)
            return StockReleased(order_id=c.order_id)

        @self.payments.handles(StockReserved)
        def capture(e: StockReserved) -> PaymentCaptured | PaymentDeclined | None:
            if e.order_id.startswith("slow"):
                return None
            if e.amount > 100:
                return PaymentDeclined(order_id=e.order_id, reason=f"{e.amount} is over the limit")
            return PaymentCaptured(order_id=e.order_id, address=e.address, payment_id=f"p-{e.order_id}")

        @self.payments.handles(RefundPayment)
        def refund(c: RefundPayment) -> None:
            self.refunded.append(c.payment_id)

        @self.shipping.handles(PaymentCaptured)
        def ship(e: PaymentCaptured) -> OrderShipped | ShippingFailed:
            if e.address == "nowhere":
                return ShippingFailed(order_id=e.order_id, reason="address unknown")
            return OrderShipped(order_id=e.order_id, tracking=f"t-{e.order_id}")

    async def __aenter__(self) -> Self:
        for p in (self.stock, self.payments, self.shipping):
            await p.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for p in (self.stock, self.payments, self.shipping):
            await p.close()


def kinds(snap: Any, kind: str) -> list[str | None]:
    return [h.step for h in snap.history if h.kind == kind]


async def poll(check: Any, timeout: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        got = await check()
        if got:
            return got
        if loop.time() > end:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.02)


STAGES = ["OrderPlaced", "StockReserved", "PaymentCaptured", "OrderShipped"]


async def flow_completes(store_url: str, transports: MakeTransport) -> None:
    """The services carry the order through; the engine only watched, and has the whole flow on record."""
    engine = SagaEngine(store_url, transport=transports())
    engine.register(order_flow())
    async with Shop(transports) as shop, engine:
        await engine.publish(OrderPlaced(order_id="o-1", amount=40))
        snap = await saga_for(engine, "o-1", timeout=20)
    assert snap.status is SagaStatus.COMPLETED and snap.choreographed
    assert snap.name == "order_flow" and snap.correlation_id == "o-1"
    assert all(snap.steps[s].status is StepStatus.COMPLETED for s in STAGES)
    assert snap.data["payment_id"] == "p-o-1" and snap.data["tracking"] == "t-o-1"
    assert sorted(h.step for h in snap.history if h.kind == "observed") == sorted(STAGES)
    assert kinds(snap, "step_completed") == STAGES  # in the flow's order, whatever order the events came in
    assert not kinds(snap, "compensation_started")  # nothing was sent
    assert shop.released == [] and shop.refunded == []


async def failure_compensates_in_reverse(store_url: str, transports: MakeTransport) -> None:
    """Shipping fails: the payment is refunded (fire-and-forget), then the stock released (waited for)."""
    engine = SagaEngine(store_url, transport=transports())
    engine.register(order_flow())
    async with Shop(transports) as shop, engine:
        await engine.publish(OrderPlaced(order_id="o-2", amount=40, address="nowhere"))
        await engine.publish(OrderPlaced(order_id="o-3", amount=400))
        shipped_nowhere = await saga_for(engine, "o-2", timeout=20)
        declined = await saga_for(engine, "o-3", timeout=20)
    assert shipped_nowhere.status is SagaStatus.COMPENSATED
    assert kinds(shipped_nowhere, "compensation_started") == ["PaymentCaptured", "StockReserved"]
    assert shipped_nowhere.steps["OrderShipped"].status is StepStatus.FAILED
    assert "address unknown" in (shipped_nowhere.steps["OrderShipped"].error or "")
    assert declined.status is SagaStatus.COMPENSATED
    assert kinds(declined, "compensation_started") == ["StockReserved"]
    assert sorted(shop.released) == ["r-o-2", "r-o-3"] and shop.refunded == ["p-o-2"]


async def out_of_order_and_duplicates(store_url: str, transports: MakeTransport) -> None:
    """Events published in reverse order, one of them twice: nothing lost, nothing applied twice."""
    engine = SagaEngine(store_url, transport=transports())
    engine.register(order_flow())
    async with engine:
        await engine.publish(OrderShipped(order_id="o-4", tracking="t-4"))
        await engine.publish(PaymentCaptured(order_id="o-4", address="a", payment_id="p-4"))
        await engine.publish(PaymentCaptured(order_id="o-4", address="a", payment_id="p-4"))  # a duplicate
        await engine.publish(StockReserved(order_id="o-4", amount=1, address="a", reservation="r-4"))
        await engine.publish(OrderPlaced(order_id="o-4", amount=1))
        snap = await saga_for(engine, "o-4", timeout=20)
        letters = await poll(engine.dead_letters, 10, "the duplicate is dead-lettered")
    assert snap.status is SagaStatus.COMPLETED
    assert kinds(snap, "step_completed") == STAGES
    assert len(entries(snap, "observed")) == 4
    assert snap.data["tracking"] == "t-4" and snap.data["reservation"] == "r-4"
    assert len(letters) == 1 and letters[0].saga_id == snap.id
    assert "duplicate" in letters[0].reason or "already" in letters[0].reason, letters[0].reason


def entries(snap: Any, kind: str) -> list[Any]:
    return [h for h in snap.history if h.kind == kind]


async def stalled_flow_hits_its_deadline(store_url: str, transports: MakeTransport) -> None:
    """The payment service never answers: at the deadline the stock is released and the saga compensated."""
    engine = SagaEngine(store_url, transport=transports())
    engine.register(order_flow(deadline=1.5, name="order_flow_deadline"))
    async with Shop(transports) as shop, engine:
        await engine.publish(OrderPlaced(order_id="slow-1", amount=10))
        snap = await saga_for(engine, "slow-1", timeout=20)
    assert snap.status is SagaStatus.COMPENSATED
    assert "deadline" in (snap.error or "")
    assert kinds(snap, "compensation_started") == ["StockReserved"]
    assert snap.steps["PaymentCaptured"].status is StepStatus.FAILED  # cancelled: it never happened
    assert shop.released == ["r-slow-1"]


async def cancelled_flow_compensates(store_url: str, transports: MakeTransport) -> None:
    """An OrderCancelled event fails the flow at whatever stage it is."""
    engine = SagaEngine(store_url, transport=transports())
    engine.register(order_flow())
    async with Shop(transports) as shop, engine:
        await engine.publish(OrderPlaced(order_id="slow-2", amount=10))

        async def waits_for_payment() -> bool:
            found = await engine.list(correlation_id="slow-2")
            return bool(found) and found[0].steps["PaymentCaptured"].status is StepStatus.RUNNING

        await poll(waits_for_payment, 20, "the flow waits for the payment")
        await engine.publish(OrderCancelled(order_id="slow-2"))
        snap = await saga_for(engine, "slow-2", timeout=20)
    assert snap.status is SagaStatus.COMPENSATED
    assert "OrderCancelled" in (snap.error or "")
    assert shop.released == ["r-slow-2"]


async def several_trackers_share_the_flows(store_url: str, transports: MakeTransport) -> None:
    """Two engines on one store observe as one consumer group: every flow is tracked once, correctly."""
    one = SagaEngine(store_url, transport=transports())
    two = SagaEngine(store_url, transport=transports())
    for e in (one, two):
        e.register(order_flow())
    orders = {f"m-{i}": (40.0 if i % 2 else 400.0) for i in range(6)}
    async with Shop(transports) as shop, one, two:
        for order_id, amount in orders.items():
            await one.publish(OrderPlaced(order_id=order_id, amount=amount))
        snaps = {order_id: await saga_for(one, order_id, timeout=30) for order_id in orders}
        total = len(await one.list(name="order_flow"))
    assert total == len(orders)  # one saga per order
    for order_id, amount in orders.items():
        want = SagaStatus.COMPLETED if amount < 100 else SagaStatus.COMPENSATED
        assert snaps[order_id].status is want, (order_id, snaps[order_id].history)
        assert kinds(snaps[order_id], "step_completed").count("StockReserved") == 1
    assert sorted(shop.released) == sorted(f"r-{o}" for o, a in orders.items() if a > 100)
