"""Retention in a running engine: finished sagas pruned in the background, running ones untouched."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import pytest

from sagakit import SagaBuilder, SagaEngine, SagaNotFound, SagaStatus, StepContext


def two_step_saga(gate: asyncio.Event) -> Any:
    async def quick(ctx: StepContext) -> dict[str, bool]:
        return {"ok": True}

    async def wait_for_gate(ctx: StepContext) -> dict[str, bool]:
        if ctx.data.get("slow"):
            await gate.wait()
        return {"ok": True}

    b = SagaBuilder("order")
    b.step("reserve", quick)
    b.step("ship", wait_for_gate)
    return b.build()


async def test_retention_prunes_finished_sagas_while_others_run(store_url: str) -> None:
    gate = asyncio.Event()
    engine = SagaEngine(store_url, retention=timedelta(seconds=1.5), lease_seconds=2.0, poll_interval=0.05)
    engine._retention_first = 0.05
    engine._retention_every = 0.1
    async with engine:
        engine.register(two_step_saga(gate))
        done = [await engine.start("order", {"n": i}) for i in range(5)]
        # Waited for together, well within the retention: none is pruned before it is seen done.
        snaps = await asyncio.gather(*(engine.wait(sid, timeout=10) for sid in done))
        assert {s.status for s in snaps} == {SagaStatus.COMPLETED}
        slow = await engine.start("order", {"slow": True})
        for _ in range(400):  # the finished sagas go once they are older than the retention
            if await engine.count() == 1:
                break
            await asyncio.sleep(0.05)
        assert await engine.count() == 1
        for sid in done:
            with pytest.raises(SagaNotFound):
                await engine.get(sid)
        running = await engine.get(slow)
        assert running.status is SagaStatus.RUNNING
        gate.set()
        finished = await engine.wait(slow, timeout=10)
        assert finished.status is SagaStatus.COMPLETED
        assert [h.kind for h in finished.history][-1] == "completed"


async def test_retention_failure_is_logged_and_the_engine_runs_on(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = SagaEngine(store_url, retention=60.0, poll_interval=0.05)
    engine._retention_first = 0.01
    engine._retention_every = 0.05

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    async with engine:
        engine.store.prune_sagas = broken  # type: ignore[method-assign]
        engine.register(two_step_saga(asyncio.Event()))
        with caplog.at_level(logging.ERROR, logger="sagakit"):
            await asyncio.sleep(0.2)
            sid = await engine.start("order", {})
            assert (await engine.wait(sid, timeout=10)).status is SagaStatus.COMPLETED
    assert "pruning finished sagas failed" in caplog.text


def test_retention_must_be_positive() -> None:
    with pytest.raises(ValueError, match="retention must be > 0 seconds"):
        SagaEngine("memory://", retention=timedelta(0))
