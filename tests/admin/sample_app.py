"""A small application for the admin tests: an order saga whose shipping can be switched off.

``reserve`` and ``check_fraud`` run in parallel, then ``charge`` (the pivot),
then ``ship``: while ``SHIPPING["down"]`` is true shipping fails for good, so
the saga ends ``FAILED`` (it cannot be rolled back past the pivot) and an
operator's retry finishes it once shipping is back. ``reserve`` fails for
orders with ``"reserve_fails": true`` (the saga is then compensated).
Payloads carry secrets that the admin API must mask.
"""

from __future__ import annotations

from typing import Any

from sagakit import NonRetryableError, RetryPolicy, SagaBuilder, StepContext

SHIPPING = {"down": False}
ONE_TRY = RetryPolicy(max_attempts=1, jitter=0)


async def reserve(ctx: StepContext) -> dict[str, Any]:
    if ctx.data.get("reserve_fails"):
        raise NonRetryableError("out of stock")
    return {"reservation": f"r-{ctx.data['order_id']}"}


async def release(ctx: StepContext) -> None:
    return None


async def charge(ctx: StepContext) -> dict[str, Any]:
    return {"charge_id": f"ch-{ctx.data['order_id']}", "card_token": "tok_visa_4242", "amount": 42}


async def ship(ctx: StepContext) -> dict[str, Any]:
    if SHIPPING["down"]:
        raise NonRetryableError("carrier API down: password=hunter2 rejected")
    return {"tracking": f"t-{ctx.data['order_id']}"}


async def check_fraud(ctx: StepContext) -> dict[str, Any]:
    return {"score": 3}


def build() -> Any:
    b = SagaBuilder("order", version=1)
    b.step("reserve", reserve, release, retry=ONE_TRY)
    b.step("check_fraud", check_fraud, after=[], retry=ONE_TRY)
    b.step("charge", charge, after=["reserve", "check_fraud"], pivot=True, retry=ONE_TRY)
    b.step("ship", ship, retry=ONE_TRY)
    return b.build()


order = build()
