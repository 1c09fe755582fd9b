"""The engine's ``concurrency`` limit: step attempts in flight at once, and how a waiting attempt gets its turn."""

from __future__ import annotations

import asyncio

from sagakit import SagaBuilder, SagaEngine, SagaStatus, StepContext
from sagakit._runtime._base import Slots as _Slots


async def test_no_more_attempts_run_at_once_than_the_concurrency_allows(store_url: str) -> None:
    running = 0
    most = 0
    gate = asyncio.Event()

    async def slow(ctx: StepContext) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        await asyncio.sleep(0.01)
        running -= 1

    b = SagaBuilder("limited")
    b.step("one", slow)
    b.step("two", slow)
    async with SagaEngine(store_url, concurrency=3) as engine:
        engine.register(b.build())
        ids = [await engine.start("limited", {"i": i}) for i in range(8)]
        for _ in range(100):  # until every slot is taken
            if running == 3:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # room for a fourth attempt to start, if the limit let it
        assert running == 3
        gate.set()
        done = [await engine.wait(sid, timeout=10) for sid in ids]
    assert most == 3
    assert {s.status for s in done} == {SagaStatus.COMPLETED}


async def test_a_released_slot_goes_to_the_first_waiter_and_a_cancelled_waiter_passes_it_on() -> None:
    slots = _Slots(1)
    slots.free -= 1  # taken
    order: list[str] = []

    async def take(name: str) -> None:
        await slots.wait()
        order.append(name)

    first = asyncio.create_task(take("first"))
    second = asyncio.create_task(take("second"))
    third = asyncio.create_task(take("third"))
    await asyncio.sleep(0)
    assert len(slots.waiters) == 3

    slots.release()  # handed to the first waiter, not counted as free
    assert slots.free == 0
    first.cancel()  # cancelled before it could run: the slot must reach the next waiter
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.sleep(0)
    assert order == ["second"]
    assert slots.free == 0

    slots.release()
    await asyncio.sleep(0)
    assert order == ["second", "third"]
    slots.release()
    assert slots.free == 1  # nobody waits: the slot is free again
    await asyncio.gather(second, third)
