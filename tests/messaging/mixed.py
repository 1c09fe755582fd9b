"""Mixed sagas: a local step hands data to message steps, failure events carry reasons, participants fault.

Scenario functions take a store URL and a transport factory; tests/messaging
runs them on the in-memory transport, tests/transports on every real broker.
"""

from __future__ import annotations

import asyncio
import traceback
import uuid
from typing import Any

from pydantic import BaseModel

from sagakit import RetryPolicy, SagaBuilder, SagaEngine, SagaStatus, StepContext, StepStatus
from sagakit._messages import Envelope, Fault, message_type_name, send
from sagakit._transport import Delivery
from sagakit.participant import Participant
from tests.messaging.test_message_saga import MakeTransport, Outcomes


class Order(BaseModel):
    customer: str
    amount: int
    order_id: str | None = None


class ReserveCredit(BaseModel):
    order_id: str
    customer: str
    amount: int
    order_ref: str  # from the local step's result


class CreditReserved(BaseModel):
    order_id: str
    reservation: str


class CreditLimitExceeded(BaseModel):
    order_id: str
    reason: str


class CustomerUnknown(BaseModel):
    order_id: str
    reason: str


class ReleaseCredit(BaseModel):
    order_id: str
    reservation: str | None = None  # None when the reservation's outcome is not known (a fault)


class CreditReleased(BaseModel):
    order_id: str


class ScheduleDelivery(BaseModel):
    order_id: str
    note: str


class DeliveryScheduled(BaseModel):
    order_id: str


class OrderApproved(BaseModel):
    saga_id: str
    order_id: str
    order_ref: str
    reservation: str


class OrderRejected(BaseModel):
    saga_id: str
    order_id: str
    failed_step: str
    failure_event: str
    failure: dict[str, Any]
    reason: str


class Orders:
    """The local side: an orders table (a dict here) and what its compensation saw."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.cancelled: dict[str, Any] = {}

    async def create(self, ctx: StepContext) -> dict[str, Any]:
        order_id = f"O-{uuid.uuid5(uuid.NAMESPACE_URL, ctx.idempotency_key).hex[:8]}"
        self.rows[order_id] = "open"
        ctx.update_data(order_id=order_id)  # message steps' commands are built from the data
        return {"order_ref": f"R-{order_id}"}  # ... and from finished steps' results

    async def cancel(self, ctx: StepContext) -> None:
        order_id = ctx.data["order_id"]
        self.rows[order_id] = "cancelled"
        self.cancelled[order_id] = ctx.failure


def mixed_definition(name: str = "mixed_order", *, fault_attempts: int = 2) -> tuple[Any, Orders]:
    orders = Orders()
    b = SagaBuilder(name)
    b.state(Order)
    b.step("create_order", orders.create, orders.cancel)
    b.step(
        "reserve_credit",
        action=send(ReserveCredit, success=CreditReserved, failure=(CreditLimitExceeded, CustomerUnknown)),
        compensation=send(ReleaseCredit, success=CreditReleased),
        retry=RetryPolicy(max_attempts=fault_attempts, initial_delay=0.01, max_delay=0.02),
    )
    b.step(
        "schedule_delivery",
        action=send(
            ScheduleDelivery,
            success=DeliveryScheduled,
            to_command=lambda data, ctx: ScheduleDelivery(
                order_id=data["order_id"], note=f"{ctx.results['create_order']['order_ref']} for {data['customer']}"
            ),
        ),
    )
    b.on_completed(OrderApproved)
    b.on_failed(OrderRejected)
    return b.build(), orders


class Credit:
    """The credit service: a participant that reserves, refuses (two ways) and faults."""

    def __init__(self, make_transport: MakeTransport) -> None:
        self.participant = Participant(make_transport(), name="credit")
        self.raw = make_transport()  # a participant whose handler raises, answering with a Fault
        self.reserved: list[ReserveCredit] = []
        self.released: list[str] = []
        self.faults = 0
        self.notes: list[str] = []

        @self.participant.handles(ReleaseCredit)
        def release(cmd: ReleaseCredit) -> CreditReleased:
            self.released.append(cmd.order_id)
            return CreditReleased(order_id=cmd.order_id)

        @self.participant.handles(ScheduleDelivery)
        def schedule(cmd: ScheduleDelivery) -> DeliveryScheduled:
            self.notes.append(cmd.note)
            return DeliveryScheduled(order_id=cmd.order_id)

    def reserve(self, cmd: ReserveCredit) -> CreditReserved | CreditLimitExceeded | CustomerUnknown:
        if cmd.customer == "nobody":
            return CustomerUnknown(order_id=cmd.order_id, reason=f"customer {cmd.customer!r} is not known")
        if cmd.amount > 100:
            return CreditLimitExceeded(order_id=cmd.order_id, reason=f"{cmd.amount} is over the limit of 100")
        if cmd.customer == "broken":
            raise ConnectionError("credit database unreachable")
        self.reserved.append(cmd)
        return CreditReserved(order_id=cmd.order_id, reservation=f"C-{cmd.order_id}")

    async def _on_reserve(self, d: Delivery) -> None:
        env = Envelope.from_bytes(d.body)
        cmd = env.unwrap(ReserveCredit)
        try:
            reply: Any = self.reserve(cmd)
        except Exception as e:
            self.faults += 1
            reply = Fault(type(e).__name__, str(e), env.type_name, traceback.format_exc(limit=5))
        out = env.reply(reply, message_id=uuid.uuid4().hex, timestamp=0.0)
        await self.raw.publish(out.type_name, out.to_bytes(), message_id=out.message_id)

    async def __aenter__(self) -> Credit:
        await self.participant.start()
        await self.raw.start()
        await self.raw.subscribe([message_type_name(ReserveCredit)], "credit-reserve", self._on_reserve)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.participant.close()
        await self.raw.close()


async def _run(
    store_url: str, make_transport: MakeTransport, order: Order, name: str
) -> tuple[Any, Orders, Credit, Outcomes]:
    defn, orders = mixed_definition(name)
    outcomes = Outcomes(make_transport, [message_type_name(OrderApproved), message_type_name(OrderRejected)])
    async with outcomes, Credit(make_transport) as credit, SagaEngine(store_url, transport=make_transport()) as engine:
        engine.register(defn)
        await engine._messaging.ready()
        sid = await engine.start(name, order.model_dump())
        snap = await engine.wait(sid, timeout=30)
        await outcomes.wait_for(1)
    return snap, orders, credit, outcomes


async def local_result_reaches_commands_and_outcome(store_url: str, make_transport: MakeTransport) -> None:
    """The local step's data change and result fill the later commands and the completion event."""
    snap, orders, credit, outcomes = await _run(
        store_url, make_transport, Order(customer="ann", amount=40), f"mixed_ok_{uuid.uuid4().hex[:6]}"
    )
    assert snap.status is SagaStatus.COMPLETED, snap.history
    order_id = snap.data["order_id"]
    assert orders.rows == {order_id: "open"}
    [cmd] = credit.reserved
    assert (cmd.order_id, cmd.customer, cmd.amount, cmd.order_ref) == (order_id, "ann", 40, f"R-{order_id}")
    assert credit.notes == [f"R-{order_id} for ann"]
    [done] = outcomes.events
    assert done.payload == {
        "saga_id": snap.id,
        "order_id": order_id,
        "order_ref": f"R-{order_id}",
        "reservation": f"C-{order_id}",
    }


async def failure_event_reason_reaches_compensation(store_url: str, make_transport: MakeTransport) -> None:
    """Either failure event fails the step; its reason is the step's error, the compensation's and the outcome's."""
    for order, event, reason in (
        (Order(customer="ann", amount=500), CreditLimitExceeded, "500 is over the limit of 100"),
        (Order(customer="nobody", amount=5), CustomerUnknown, "customer 'nobody' is not known"),
    ):
        snap, orders, credit, outcomes = await _run(
            store_url, make_transport, order, f"mixed_fail_{uuid.uuid4().hex[:6]}"
        )
        assert snap.status is SagaStatus.COMPENSATED, snap.history
        order_id = snap.data["order_id"]
        step = snap.steps["reserve_credit"]
        assert step.status is StepStatus.FAILED
        assert step.attempts == 1  # a business failure is not retried
        assert message_type_name(event) in (step.error or "") and reason in (step.error or "")
        assert orders.rows == {order_id: "cancelled"}
        seen = orders.cancelled[order_id]
        assert seen["step"] == "reserve_credit" and seen["event"] == message_type_name(event)
        assert seen["payload"] == {"order_id": order_id, "reason": reason} and seen["fault"] is False
        assert credit.released == []  # the step failed: nothing was reserved, so nothing is released
        [rejected] = outcomes.events
        assert rejected.type_name == message_type_name(OrderRejected)
        assert rejected.payload["failed_step"] == "reserve_credit"
        assert rejected.payload["failure_event"] == message_type_name(event)
        assert rejected.payload["failure"] == {"order_id": order_id, "reason": reason}
        assert reason in rejected.payload["reason"]


async def participant_fault_fails_the_step_at_once(store_url: str, make_transport: MakeTransport) -> None:
    """A handler that raises answers with a Fault: the step fails without waiting (no reply timeout is set),
    is retried by its policy, and its rollback compensates it as uncertain."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    snap, orders, credit, outcomes = await _run(
        store_url, make_transport, Order(customer="broken", amount=5), f"mixed_fault_{uuid.uuid4().hex[:6]}"
    )
    assert snap.status is SagaStatus.COMPENSATED, snap.history
    step = snap.steps["reserve_credit"]
    assert step.attempts == 2 and credit.faults == 2  # the retry policy applied to faults
    failed = [h.message for h in snap.history if h.kind == "step_failed" and h.step == "reserve_credit"]
    assert len(failed) == 2
    assert all("participant fault: ConnectionError: credit database unreachable" in m for m in failed)
    faults = [h for h in snap.history if h.kind == "fault"]
    assert [h.attempt for h in faults] == [1, 2]
    assert step.status is StepStatus.COMPENSATED  # uncertain: the handler may have got part way
    order_id = snap.data["order_id"]
    assert credit.released == [order_id]  # released by order id: the reservation may exist
    assert orders.cancelled[order_id]["fault"] is True
    assert orders.cancelled[order_id]["payload"]["error_type"] == "ConnectionError"
    assert loop.time() - t0 < 30  # finished within the wait's deadline, with no reply timeout configured
