"""Sagas the sagakit.testing tests run: local steps in a diamond, and a mixed saga with message steps."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from sagakit import RetryPolicy, SagaBuilder, SagaDefinition, send, wait_for


class World:
    """What the steps did to the outside world: a fake database."""

    def __init__(self) -> None:
        self.rows: dict[str, Any] = {}
        self.log: list[str] = []


def diamond(world: World, *, reserve_idempotent: bool = True) -> SagaDefinition:
    """reserve -> (charge | notify) -> ship; every step but notify has a compensation."""

    async def reserve(ctx) -> dict:
        key = ctx.idempotency_key if reserve_idempotent else f"{ctx.idempotency_key}:{len(world.rows)}"
        world.rows[key] = "reserved"
        return {"reservation": "r-1"}

    async def release(ctx) -> None:
        world.rows.pop(f"{ctx.saga_id}:reserve:action", None)
        world.log.append("release")

    def charge(ctx) -> dict:  # a plain def: runs in a thread
        world.rows[ctx.idempotency_key] = 10
        return {"payment": "p-1"}

    def refund(ctx) -> None:
        world.rows[ctx.idempotency_key] = -10

    async def notify(ctx) -> None:
        world.log.append("notify")

    async def ship(ctx) -> dict:
        world.rows[ctx.idempotency_key] = "shipped"
        return {"tracking": "t-1"}

    async def unship(ctx) -> None:
        world.rows[ctx.idempotency_key] = "cancelled"

    b = SagaBuilder("diamond")
    b.step("reserve", reserve, release, retry=RetryPolicy(max_attempts=3, initial_delay=60, max_delay=600))
    b.step("charge", charge, refund, timeout=30, compensation_timeout=10)
    b.step("notify", notify, after=["reserve"])
    b.step("ship", ship, unship, after=["charge", "notify"])
    return b.build()


class Charge(BaseModel):
    order_id: str
    amount: int


class Charged(BaseModel):
    payment_id: str


class ChargeFailed(BaseModel):
    reason: str


class Refund(BaseModel):
    order_id: str


class Refunded(BaseModel):
    order_id: str


class Approved(BaseModel):
    by: str


def mixed(world: World) -> SagaDefinition:
    """A local step, a command with a reply (and a compensating command), then an approval to wait for."""

    async def reserve(ctx) -> dict:
        world.rows[ctx.idempotency_key] = "reserved"
        return {"reservation": "r-1"}

    async def release(ctx) -> None:
        world.rows[f"{ctx.saga_id}:reserve:action"] = "released"

    b = SagaBuilder("mixed")
    b.step("reserve", reserve, release)
    b.step(
        "charge",
        send(Charge, success=Charged, failure=ChargeFailed, reply_timeout=30),
        send(Refund, success=Refunded),
        retry=RetryPolicy(max_attempts=2, initial_delay=5, max_delay=5),
    )
    b.step("approve", wait_for(Approved, timeout=3600))
    return b.build()


REPLIES = {
    Charge: lambda c: Charged(payment_id=f"p-{c.order_id}"),
    Refund: lambda c: Refunded(order_id=c.order_id),
}
EVENTS = {Approved: Approved(by="manager")}
ORDER = {"order_id": "o-1", "amount": 5}
