"""Definitions the worker CLI test runs: a quick saga and one whose step takes long."""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from sagakit import SagaBuilder, StepContext, wait_for


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
