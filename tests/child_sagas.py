"""Sagas the child-saga tests run, in their own processes too (``sagakit worker tests.child_sagas``).

``order`` reserves, runs ``shipping`` as a child saga, then charges; each
step's behaviour is steered by the order's data, and every action and
compensation appends a line to the file ``CHILD_SAGAS_LOG`` names (when set),
so that a test can count what ran, across processes.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sagakit import NonRetryableError, RetryPolicy, SagaBuilder, StepContext, child


def _log(ctx: StepContext, what: str) -> None:
    path = os.environ.get("CHILD_SAGAS_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{ctx.saga_name} {ctx.saga_id} {ctx.step} {what}\n")


async def do(ctx: StepContext) -> dict[str, Any]:
    _log(ctx, "do")
    data = ctx.data or {}
    if data.get(f"fail_{ctx.step}"):
        raise NonRetryableError(f"{ctx.step} refused")
    hold = data.get(f"hold_{ctx.step}")
    if hold:
        await asyncio.sleep(float(hold))
    return {"step": ctx.step}


async def undo(ctx: StepContext) -> None:
    _log(ctx, "undo")


def shipping_data(data: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    return {
        "order_id": data["order_id"],
        "reserved": results["reserve"]["step"],
        **{k: v for k, v in data.items() if k.startswith(("fail_pack", "fail_send", "hold_pack", "hold_send"))},
    }


_shipping = SagaBuilder("shipping")
_shipping.step("pack", do, undo, retry=RetryPolicy(max_attempts=1))
_shipping.step("send", do, undo, retry=RetryPolicy(max_attempts=1))
shipping = _shipping.build()

_order = SagaBuilder("order")
_order.step("reserve", do, undo, retry=RetryPolicy(max_attempts=1))
_order.step("ship", action=child("shipping", data=shipping_data, check_every=0.5))
_order.step("charge", do, undo, retry=RetryPolicy(max_attempts=1))
order = _order.build()
