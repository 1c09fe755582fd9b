"""Message-driven sagas over the in-memory transport: triggers, replies, timeouts, duplicates.

The fake services, the outcome collector and the scenarios take a transport
factory: tests/transports runs the scenarios on real brokers, and other tests
reuse the helpers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Self

import pytest
from pydantic import BaseModel

from sagakit import RetryPolicy, SagaBuilder, SagaEngine, SagaStatus, StepStatus
from sagakit._messages import Envelope, message_type_name, send
from sagakit._transport import Delivery, Transport
from sagakit.participant import Participant
from sagakit.transports.memory import MemoryBroker, MemoryTransport


class OrderCreated(BaseModel):
    order_id: str
    amount: float
    fail_shipping: bool = False


class OrderState(BaseModel):
    order_id: str
    amount: float
    fail_shipping: bool = False
    payment_id: str | None = None
    tracking: str | None = None


class ProcessPayment(BaseModel):
    order_id: str
    amount: float


class PaymentProcessed(BaseModel):
    order_id: str
    payment_id: str


class PaymentFailed(BaseModel):
    order_id: str
    reason: str


class RefundPayment(BaseModel):
    order_id: str
    payment_id: str


class PaymentRefunded(BaseModel):
    order_id: str


class ShipOrder(BaseModel):
    order_id: str
    fail_shipping: bool = False


class OrderShipped(BaseModel):
    order_id: str
    tracking: str


class ShippingFailed(BaseModel):
    order_id: str
    reason: str


class OrderCompleted(BaseModel):
    order_id: str
    saga_id: str


class OrderFailed(BaseModel):
    order_id: str
    saga_id: str
    reason: str


def definition(*, reply_timeout: float | None = None, attempts: int = 3) -> Any:
    retry = RetryPolicy(max_attempts=attempts, initial_delay=0.01, max_delay=0.02)
    b = SagaBuilder("order_processing")
    b.trigger(OrderCreated, correlation=lambda e: str(e.order_id))
    b.state(OrderState)
    b.step(
        "ProcessPayment",
        action=send(ProcessPayment, success=PaymentProcessed, failure=PaymentFailed,
                    reply_timeout=reply_timeout),
        compensation=send(RefundPayment, success=PaymentRefunded),
        retry=retry,
    )  # fmt: skip
    b.step(
        "ShipOrder",
        action=send(ShipOrder, success=OrderShipped, failure=ShippingFailed, reply_timeout=reply_timeout),
        retry=retry,
    )
    b.on_completed(OrderCompleted)
    b.on_failed(OrderFailed)
    return b.build()


MakeTransport = Callable[[], Transport]


class Participants:
    """A payment and a shipping participant, each on a transport of its own, started and closed together."""

    def __init__(self, make_transport: MakeTransport, *, payments: Transport | None = None) -> None:
        self.payments = Participant(payments or make_transport(), name="payments")
        self.shipping = Participant(make_transport(), name="shipping")

    async def __aenter__(self) -> Self:
        await self.payments.start()
        await self.shipping.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.payments.close()
        await self.shipping.close()


class Services(Participants):
    """Fake payment and shipping services (*payments*: the payment service's transport, if not a new one)."""

    def __init__(self, make_transport: MakeTransport, *, payments: Transport | None = None) -> None:
        super().__init__(make_transport, payments=payments)
        self.charged: list[str] = []
        self.refunded: list[str] = []

        @self.payments.handles(ProcessPayment)
        async def pay(cmd: ProcessPayment) -> PaymentProcessed | PaymentFailed:
            if cmd.amount > 1000:
                return PaymentFailed(order_id=cmd.order_id, reason="limit exceeded")
            self.charged.append(cmd.order_id)
            return PaymentProcessed(order_id=cmd.order_id, payment_id=f"p-{cmd.order_id}")

        @self.payments.handles(RefundPayment)
        def refund(cmd: RefundPayment) -> PaymentRefunded:
            self.refunded.append(cmd.payment_id)
            return PaymentRefunded(order_id=cmd.order_id)

        @self.shipping.handles(ShipOrder)
        async def ship(cmd: ShipOrder) -> OrderShipped | ShippingFailed:
            if cmd.fail_shipping:
                return ShippingFailed(order_id=cmd.order_id, reason="address unknown")
            return OrderShipped(order_id=cmd.order_id, tracking=f"t-{cmd.order_id}")


class Outcomes:
    """Collects the sagas' completion and failure events (those of *destinations*)."""

    def __init__(
        self,
        make_transport: MakeTransport,
        destinations: Sequence[str] = (message_type_name(OrderCompleted), message_type_name(OrderFailed)),
    ) -> None:
        self.transport = make_transport()
        self.destinations = list(destinations)
        self.events: list[Envelope] = []

    async def __aenter__(self) -> Outcomes:
        await self.transport.start()

        async def collect(d: Delivery) -> None:
            self.events.append(Envelope.from_bytes(d.body))

        await self.transport.subscribe(self.destinations, "observer", collect)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()

    async def wait_for(self, n: int, timeout: float = 20) -> None:
        for _ in range(int(timeout * 100)):
            if len(self.events) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{n} outcome events not seen within {timeout}s (seen: {len(self.events)})")


async def saga_for(engine: SagaEngine, order_id: str, timeout: float = 10) -> Any:
    """The saga of *order_id* once it has finished: started within *timeout* seconds, finished within as many."""
    for _ in range(int(timeout * 100)):
        found = await engine.list(correlation_id=order_id)
        if found:
            return await engine.wait(found[0].id, timeout=timeout)
        await asyncio.sleep(0.01)
    raise AssertionError(f"no saga started for order {order_id}")


async def dead_letters(engine: SagaEngine, timeout: float = 10) -> list[Any]:
    """The engine's dead letters once there are any (none after *timeout* seconds)."""
    for _ in range(int(timeout * 100)):
        letters = await engine.dead_letters()
        if letters:
            return letters
        await asyncio.sleep(0.01)
    return []


# ------------------------------------------------------------ scenarios, on any transport (tests/transports too)


async def trigger_to_completion(store_url: str, make_transport: MakeTransport) -> None:
    """A trigger event starts one saga per correlation id; it completes and announces it."""
    async with (
        Outcomes(make_transport) as outcomes,
        Services(make_transport) as services,
        SagaEngine(store_url, transport=make_transport()) as engine,
    ):
        engine.register(definition())
        await engine._messaging.ready()
        await engine.publish(OrderCreated(order_id="o-1", amount=10))
        await engine.publish(OrderCreated(order_id="o-1", amount=10))  # same correlation: no-op
        snap = await saga_for(engine, "o-1")
        await outcomes.wait_for(1)
        assert await engine.count() == 1
    assert snap.status is SagaStatus.COMPLETED
    assert (snap.data["payment_id"], snap.data["tracking"]) == ("p-o-1", "t-o-1")
    assert snap.correlation_id == "o-1"
    assert services.charged == ["o-1"]
    [done] = outcomes.events
    assert done.type_name == message_type_name(OrderCompleted)
    assert done.payload == {"order_id": "o-1", "saga_id": snap.id}


async def shipping_failure_compensates_and_announces(store_url: str, make_transport: MakeTransport) -> None:
    """A failure reply compensates the steps done and announces the failure."""
    async with (
        Outcomes(make_transport) as outcomes,
        Services(make_transport) as services,
        SagaEngine(store_url, transport=make_transport()) as engine,
    ):
        engine.register(definition())
        await engine.publish(OrderCreated(order_id="o-2", amount=10, fail_shipping=True))
        snap = await saga_for(engine, "o-2")
        await outcomes.wait_for(1)
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["ShipOrder"].status is StepStatus.FAILED
    assert "address unknown" in (snap.steps["ShipOrder"].error or "")
    assert snap.steps["ProcessPayment"].status is StepStatus.COMPENSATED
    assert services.refunded == ["p-o-2"]
    [failed] = outcomes.events
    assert failed.type_name == message_type_name(OrderFailed)
    assert "address unknown" in failed.payload["reason"]


async def duplicated_reply_has_no_second_effect(
    store_url: str, make_transport: MakeTransport, *, payments: Transport | None = None
) -> None:
    """A payment reply delivered twice (the caller arranges it) completes the step once; the copy is dead-lettered."""
    async with (
        Services(make_transport, payments=payments),
        SagaEngine(store_url, transport=make_transport()) as engine,
    ):
        engine.register(definition())
        await engine.publish(OrderCreated(order_id="o-5", amount=10))
        snap = await saga_for(engine, "o-5")
        letters = await dead_letters(engine)
    assert snap.status is SagaStatus.COMPLETED
    assert sum(h.kind == "step_completed" and h.step == "ProcessPayment" for h in snap.history) == 1
    [letter] = letters
    assert letter.type_name == message_type_name(PaymentProcessed)
    assert letter.saga_id == snap.id
    assert "duplicate" in letter.reason or "no step" in letter.reason


# ------------------------------------------------------------ tests


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def transports(broker: MemoryBroker) -> MakeTransport:
    """Makes transports on the test's broker."""
    return partial(MemoryTransport, broker)


async def test_trigger_to_completion_event(store_url: str, transports: MakeTransport) -> None:
    await trigger_to_completion(store_url, transports)


async def test_shipping_failure_compensates_and_announces(store_url: str, transports: MakeTransport) -> None:
    await shipping_failure_compensates_and_announces(store_url, transports)


async def test_lost_reply_is_resent_with_the_same_message_id(
    store_url: str, broker: MemoryBroker, transports: MakeTransport
) -> None:
    broker.drop_next[message_type_name(OrderShipped)] = 1
    async with (
        Services(transports) as services,
        SagaEngine(store_url, transport=transports()) as engine,
    ):
        engine.register(definition(reply_timeout=0.3))
        await engine.publish(OrderCreated(order_id="o-3", amount=10))
        snap = await saga_for(engine, "o-3")
    assert snap.status is SagaStatus.COMPLETED
    assert snap.steps["ShipOrder"].attempts == 2
    ship_ids = [m.message_id for m in broker.published if m.destination == message_type_name(ShipOrder)]
    sent = [Envelope.from_bytes(m.body) for m in broker.published if m.destination == message_type_name(ShipOrder)]
    assert len(sent) == 2 and sent[0].message_id == sent[1].message_id
    assert sent[0].token != sent[1].token
    assert len(set(ship_ids)) == 2  # distinct outbox rows for the broker
    assert services.shipping.handled == 1 and services.shipping.duplicates == 1
    assert any("timed out" in h.message for h in snap.history)


async def test_lost_reply_after_last_attempt_compensates(
    store_url: str, broker: MemoryBroker, transports: MakeTransport
) -> None:
    broker.drop_next[message_type_name(OrderShipped)] = 5
    async with (
        Services(transports) as services,
        SagaEngine(store_url, transport=transports()) as engine,
    ):
        engine.register(definition(reply_timeout=0.2, attempts=2))
        await engine.publish(OrderCreated(order_id="o-4", amount=10))
        snap = await saga_for(engine, "o-4")
    assert snap.status is SagaStatus.COMPENSATED
    assert "timed out" in (snap.steps["ShipOrder"].error or "")
    assert services.refunded == ["p-o-4"]


async def test_duplicated_reply_has_no_second_effect(
    store_url: str, broker: MemoryBroker, transports: MakeTransport
) -> None:
    broker.duplicate_next[message_type_name(PaymentProcessed)] = 1
    await duplicated_reply_has_no_second_effect(store_url, transports)


async def test_reply_for_an_unknown_saga_is_dead_lettered(store_url: str, transports: MakeTransport) -> None:
    stray = transports()
    await stray.start()
    engine = SagaEngine(store_url, transport=transports())
    engine.register(definition())  # registered before it starts: subscribed on entry
    async with engine:
        env = Envelope.wrap(
            PaymentProcessed(order_id="zz", payment_id="p"),
            message_id="m-stray",
            timestamp=0.0,
            saga_id="no-such-saga",
            step="ProcessPayment",
            token=1,
        )
        await stray.publish(env.type_name, env.to_bytes(), message_id="m-stray")
        letters = await dead_letters(engine)
    await stray.close()
    [letter] = letters
    assert letter.message_id == "m-stray"
    assert "unknown saga no-such-saga" in letter.reason


async def test_business_failure_reply_fails_without_retry(store_url: str, transports: MakeTransport) -> None:
    async with (
        Services(transports) as services,
        SagaEngine(store_url, transport=transports()) as engine,
    ):
        engine.register(definition())
        await engine.publish(OrderCreated(order_id="o-6", amount=5000))
        snap = await saga_for(engine, "o-6")
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["ProcessPayment"].attempts == 1
    assert "limit exceeded" in (snap.steps["ProcessPayment"].error or "")
    assert services.refunded == []


async def test_outbox_holds_commands_until_a_transport_runs(tmp_path: Any, transports: MakeTransport) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    queued = SagaEngine(url)
    queued.register(definition())
    sid = await queued.start("order_processing", {"order_id": "o-7", "amount": 3})
    await queued.close()
    async with Services(transports), SagaEngine(url, transport=transports()) as engine:
        engine.register(definition())
        snap = await engine.wait(sid, timeout=10)
        for _ in range(200):  # the completion event is published right after the last commit
            if await engine.store.outbox_pending() == 0:
                break
            await asyncio.sleep(0.01)
        assert await engine.store.outbox_pending() == 0
    assert snap.status is SagaStatus.COMPLETED


async def test_a_reply_without_saga_headers_is_matched_by_correlation(store_url: str, broker: MemoryBroker) -> None:
    """A participant that does not echo the envelope: the trigger's extractor finds the saga by order id."""
    stripped = MemoryTransport(broker)
    await stripped.start()

    async def pay_without_headers(d: Any) -> None:
        cmd = Envelope.from_bytes(d.body)
        reply = Envelope.wrap(
            PaymentProcessed(order_id=cmd.payload["order_id"], payment_id="p-bare"),
            message_id=f"bare-{cmd.message_id}",
            timestamp=0.0,
        )
        await stripped.publish(reply.type_name, reply.to_bytes(), message_id=reply.message_id)

    await stripped.subscribe([message_type_name(ProcessPayment)], "bare-payments", pay_without_headers)
    shipping = Services(lambda: MemoryTransport(broker)).shipping
    await shipping.start()
    try:
        async with SagaEngine(store_url, transport=MemoryTransport(broker)) as engine:
            engine.register(definition())
            await engine.publish(OrderCreated(order_id="o-8", amount=10))
            snap = await saga_for(engine, "o-8")
    finally:
        await shipping.close()
        await stripped.close()
    assert snap.status is SagaStatus.COMPLETED
    assert snap.data["payment_id"] == "p-bare"


async def test_a_reply_for_a_saga_a_dead_worker_still_holds_is_applied_once_its_lease_ends(pg_url: str) -> None:
    """The reply reaches another worker while the dead one's lease runs: it is kept, not dead-lettered.

    On PostgreSQL: there a new worker cannot know the dead one is gone (a SQLite
    file's lock tells it, and it takes the leases back at once).
    """
    from sagakit import StepContext
    from sagakit.testing import kill

    broker = MemoryBroker(max_deliveries=1)  # one delivery: the reply must not be given up while it waits
    url = pg_url
    release = asyncio.Event()
    slow_runs: list[int] = []

    async def slow(ctx: StepContext) -> None:
        slow_runs.append(ctx.attempt)
        if len(slow_runs) == 1:
            await asyncio.sleep(60)  # still running when its worker dies: the saga stays leased

    b = SagaBuilder("held_while_replied")
    b.step("slow", slow)
    b.step("pay", action=send(ProcessPayment, success=PaymentProcessed), after=())  # beside "slow"
    defn = b.build()
    payments = Participant(MemoryTransport(broker), name="payments")

    @payments.handles(ProcessPayment)
    async def pay(cmd: ProcessPayment) -> PaymentProcessed:
        await release.wait()
        return PaymentProcessed(order_id=cmd.order_id, payment_id="p-1")

    first = SagaEngine(url, transport=MemoryTransport(broker), lease_seconds=7.0, worker_id="first")
    first.register(defn)
    async with payments:
        await first.__aenter__()
        sid = await first.start("held_while_replied", {"order_id": "o-1", "amount": 5.0})
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while not (slow_runs and (await first.get(sid)).steps["pay"].status is StepStatus.RUNNING):
            assert loop.time() < end
            await asyncio.sleep(0.01)
        await kill(first)
        async with SagaEngine(url, transport=MemoryTransport(broker), lease_seconds=2.0, worker_id="second") as second:
            second.register(defn)
            release.set()  # the reply comes while "first" still holds the saga's lease
            t0 = loop.time()
            snap = await second.wait(sid, timeout=30)
            waited = loop.time() - t0
            letters = await second.dead_letters()
    assert snap.status is SagaStatus.COMPLETED
    assert waited > 5.0  # applied once the dead worker's 7 s lease ran out, not before
    assert snap.steps["pay"].result == {"order_id": "o-1", "payment_id": "p-1"}
    assert letters == []


@pytest.mark.parametrize("name", ["", "a", "saga:step", "é€😀" * 20, '["x","y",0,"action"]'])
def test_message_ids_are_version_5_uuids_of_their_name(name: str) -> None:
    import uuid

    from sagakit._messages import MESSAGE_ID_NAMESPACE, name_uuid

    assert name_uuid(MESSAGE_ID_NAMESPACE, name) == str(uuid.uuid5(MESSAGE_ID_NAMESPACE, name))
    assert name_uuid(MESSAGE_ID_NAMESPACE, name.encode()) == str(uuid.uuid5(MESSAGE_ID_NAMESPACE, name))
