"""Definitions the lock tests run in worker processes: each step writes to a journal shared by the processes.

``LOCK_JOURNAL`` names the journal file; a saga whose data says ``gate`` waits,
after its first step began, until the file ``<journal>.<gate>`` exists.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from sagakit import SagaBuilder, StepContext


def note(ctx: StepContext, what: str) -> None:
    line = f"{what} {ctx.data['n']} {ctx.data['order_id']} {ctx.saga_id}\n"
    # One small append per line (O_APPEND): lines of several processes do not mix.
    fd = os.open(os.environ["LOCK_JOURNAL"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def begin(ctx: StepContext) -> None:
    note(ctx, "start")
    gate = ctx.data.get("gate")
    if gate:
        opened = Path(f"{os.environ['LOCK_JOURNAL']}.{gate}")
        while not opened.exists():
            await asyncio.sleep(0.02)
    else:
        await asyncio.sleep(0.02)


async def middle(ctx: StepContext) -> None:
    await asyncio.sleep(0.02)


async def finish(ctx: StepContext) -> None:
    note(ctx, "end")


def order_key(data: dict[str, Any]) -> list[str]:
    return [f"order:{data['order_id']}"]


def _build(name: str, **kw: Any) -> Any:
    b = SagaBuilder(name, locks=order_key, **kw)
    b.step("begin", begin)
    b.step("middle", middle)
    b.step("finish", finish)
    return b.build()


locked = _build("locked")
locked_timeout = _build("locked_timeout", lock_timeout=1.0)
locked_fail = _build("locked_fail", lock_policy="fail")
