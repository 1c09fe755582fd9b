"""Definitions the worker CLI tests run: quick, slow, waiting for an approval, and failing for good."""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from sagakit import RetryPolicy, SagaBuilder, StepContext, wait_for


async def quick(ctx: StepContext) -> str:
    return ctx.step


async def slow(ctx: StepContext) -> str:
    await asyncio.sleep(float(os.environ.get("SLOW_SECONDS", "30")))
    return "slow done"


_quick = SagaBuilder("quick")
_quick.step("a", quick)
_quick.step("b", quick)
quick_saga = _quick.build()

_slow = SagaBuilder("slow")
_slow.step("wait", slow)
slow_saga = _slow.build()


class Approved(BaseModel):
    approver: str


class Rejected(BaseModel):
    reason: str


async def release(ctx: StepContext) -> None:
    return None


_approval = SagaBuilder("approval")
_approval.step("reserve", quick, release)
_approval.step("approve", action=wait_for(Approved, failure=Rejected))
approval_saga = _approval.build()


def _order_id(payload: dict[str, str]) -> str:
    return payload["id"]  # KeyError: the payload has no "id"


async def reserve(ctx: StepContext) -> str:
    return "reserved"


def release_fails(ctx: StepContext) -> None:
    raise ConnectionError("inventory service unreachable")


async def charge(ctx: StepContext) -> str:
    return _order_id({"order": "o-1"})


# charge fails for good; compensating reserve gives up too: the saga ends FAILED (needs an operator).
_broken = SagaBuilder("broken")
_broken.step("reserve", reserve, release_fails, compensation_retry=RetryPolicy(max_attempts=1))
_broken.step("charge", charge, retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0))
broken_saga = _broken.build()
