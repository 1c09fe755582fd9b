"""The order-fulfilment saga of ``sagakit demo``.

Three steps, each with a compensation::

    reserve_inventory  ->  process_payment  ->  ship_order
    release_inventory  <-  refund_payment   <-  cancel_shipment

The "services" are in memory: each side effect is recorded in a ``Ledger``
keyed by ``ctx.idempotency_key``, so a step that runs twice (a retry after
its effect happened, or a re-run after a crash) still has one effect. What
goes wrong is planned up front, per order, and carried in the saga's data, so
a run is reproducible from its seed and a resumed saga behaves the same way:

- ``fail_at``: the step that fails with a business error (``NonRetryableError``),
  which compensates the steps completed before it;
- ``flaky``: a step whose first attempt fails with a transient error and whose
  retry succeeds.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import NonRetryableError, RetryPolicy, SagaBuilder, SagaDefinition, StepContext

__all__ = [
    "SAGA_NAME",
    "STEPS",
    "Ledger",
    "OrderPlan",
    "OrderServices",
    "TransientError",
    "plan_orders",
]

SAGA_NAME = "order_fulfillment"
STEPS = ("reserve_inventory", "process_payment", "ship_order")

# Effect recorded by each step's action and by its compensation.
_DO = {"reserve_inventory": "reserve", "process_payment": "charge", "ship_order": "ship"}
_UNDO = {"reserve_inventory": "release", "process_payment": "refund", "ship_order": "cancel"}

_BUSINESS_ERRORS = {
    "reserve_inventory": "insufficient inventory: {sku} is out of stock for order {order}",
    "process_payment": "payment declined for order {order}: card expired",
    "ship_order": "carrier rejected the shipping address of order {order}",
}
_TRANSIENT_ERRORS = {
    "reserve_inventory": "inventory service unavailable (HTTP 503)",
    "process_payment": "payment gateway timed out",
    "ship_order": "carrier API connection reset",
}


class TransientError(Exception):
    """A failure that goes away on retry (a timeout, a dropped connection)."""


@dataclass(frozen=True, slots=True)
class OrderPlan:
    """One order of the demo and what will go wrong with it."""

    order_id: str
    sku: str
    quantity: int
    amount_cents: int
    fail_at: str | None = None
    flaky: str | None = None

    def as_data(self) -> dict[str, Any]:
        """The saga's input data."""
        return {
            "order_id": self.order_id,
            "sku": self.sku,
            "quantity": self.quantity,
            "amount_cents": self.amount_cents,
            "fail_at": self.fail_at,
            "flaky": self.flaky,
        }


def plan_orders(
    count: int, failure_rate: float, seed: int | None = None, *, flaky_rate: float = 0.05
) -> list[OrderPlan]:
    """Plan *count* orders: ``round(count * failure_rate)`` of them fail at a random step.

    Another ``flaky_rate`` share (at least one order when there are 20 or more)
    hits a transient error once on a step that runs, and succeeds on retry.
    """
    if not 0 <= failure_rate <= 1:
        raise ValueError(f"failure_rate must be between 0 and 1, got {failure_rate!r}")
    rng = random.Random(seed)
    failing = set(rng.sample(range(count), round(count * failure_rate)))
    n_flaky = max(round(count * flaky_rate), 1 if count >= 20 else 0)
    flaky = set(rng.sample(range(count), min(n_flaky, count)))
    plans = []
    for i in range(count):
        fail_at = rng.choice(STEPS) if i in failing else None
        # A transient error only on a step that runs and would otherwise succeed.
        last = STEPS.index(fail_at) if fail_at else len(STEPS)
        flaky_at = rng.choice(STEPS[:last]) if i in flaky and last > 0 else None
        plans.append(
            OrderPlan(
                order_id=f"o-{i + 1:05d}",
                sku=f"sku-{rng.randrange(1, 50):02d}",
                quantity=rng.randrange(1, 5),
                amount_cents=rng.randrange(500, 50_000),
                fail_at=fail_at,
                flaky=flaky_at,
            )
        )
    return plans


@dataclass
class Ledger:
    """Side effects of the demo's services, each applied once per idempotency key."""

    effects: dict[str, tuple[str, str]] = field(default_factory=dict)
    repeats: int = 0

    def apply(self, key: str, effect: str, order_id: str) -> bool:
        """Record *effect* for *order_id* under *key*; False (and no effect) if the key was seen."""
        if key in self.effects:
            self.repeats += 1
            return False
        self.effects[key] = (effect, order_id)
        return True

    def by_order(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for effect, order_id in self.effects.values():
            out.setdefault(order_id, []).append(effect)
        return out

    def check(self, plans: Sequence[OrderPlan]) -> list[str]:
        """Problems where the recorded effects disagree with each order's plan (empty: consistent)."""
        recorded = self.by_order()
        problems = []
        for p in plans:
            ran = STEPS[: STEPS.index(p.fail_at)] if p.fail_at else STEPS
            expected = sorted([_DO[s] for s in ran] + ([_UNDO[s] for s in ran] if p.fail_at else []))
            got = sorted(recorded.get(p.order_id, []))
            if got != expected:
                problems.append(f"order {p.order_id}: effects {got}, expected {expected}")
        return problems


class OrderServices:
    """The demo's step functions, acting on a shared ledger.

    Args:
        ledger: where side effects are recorded.
        max_latency: each call sleeps a random time up to this many seconds.
    """

    def __init__(self, ledger: Ledger, *, max_latency: float = 0.002) -> None:
        self.ledger = ledger
        self.max_latency = max_latency

    def definition(self) -> SagaDefinition:
        """The saga: three steps, a retry policy for transient errors, a timeout per attempt."""
        retry = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.1)
        b = SagaBuilder(SAGA_NAME, version=1, description="reserve, charge and ship one order")
        b.step("reserve_inventory", self.reserve_inventory, self.release_inventory, retry=retry, timeout=5.0)
        b.step("process_payment", self.process_payment, self.refund_payment, retry=retry, timeout=5.0)
        b.step("ship_order", self.ship_order, self.cancel_shipment, retry=retry, timeout=5.0)
        return b.build()  # fmt: skip

    async def _call(self, ctx: StepContext) -> str:
        """Simulate the remote call; raise the planned error, if any. Returns the order id."""
        await asyncio.sleep(random.random() * self.max_latency)
        data = ctx.data
        order_id: str = data["order_id"]
        if ctx.compensation:
            return order_id
        if data.get("flaky") == ctx.step and ctx.attempt == 1:
            raise TransientError(_TRANSIENT_ERRORS[ctx.step])
        if data.get("fail_at") == ctx.step:
            message = _BUSINESS_ERRORS[ctx.step].format(sku=data["sku"], order=order_id)
            raise NonRetryableError(message)
        return order_id

    async def reserve_inventory(self, ctx: StepContext) -> dict[str, Any]:
        order_id = await self._call(ctx)
        self.ledger.apply(ctx.idempotency_key, "reserve", order_id)
        return {"reservation_id": f"res-{order_id}", "sku": ctx.data["sku"]}

    async def release_inventory(self, ctx: StepContext) -> None:
        order_id = await self._call(ctx)
        self.ledger.apply(ctx.idempotency_key, "release", order_id)

    async def process_payment(self, ctx: StepContext) -> dict[str, Any]:
        order_id = await self._call(ctx)
        self.ledger.apply(ctx.idempotency_key, "charge", order_id)
        return {"payment_id": f"pay-{order_id}", "amount_cents": ctx.data["amount_cents"]}

    async def refund_payment(self, ctx: StepContext) -> None:
        order_id = await self._call(ctx)
        self.ledger.apply(ctx.idempotency_key, "refund", order_id)

    async def ship_order(self, ctx: StepContext) -> dict[str, Any]:
        order_id = await self._call(ctx)
        self.ledger.apply(ctx.idempotency_key, "ship", order_id)
        return {"tracking_number": f"trk-{order_id}"}

    async def cancel_shipment(self, ctx: StepContext) -> None:
        order_id = await self._call(ctx)
        self.ledger.apply(ctx.idempotency_key, "cancel", order_id)
