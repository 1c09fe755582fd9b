"""Resume at once after a restart, when the leases left behind are known to be stale.

On SQLite, the only running engine on a file (it holds the file's engine lock)
gives up every lease left in it; on any store, an engine restarted with the
same worker id gives up its own. Either way the sagas that were running resume
now, not when the dead engine's lease would have run out.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from sagakit import SagaBuilder, SagaEngine, SagaStatus, StepContext
from tests.test_cancellation import start_hung_worker


def finishing_definition() -> Any:
    """The hung child's saga, with a charge that completes this time."""

    async def reserve(ctx: StepContext) -> dict[str, Any]:
        return {"reservation": "r-1"}

    async def charge(ctx: StepContext) -> dict[str, Any]:
        return {"charged": True}

    b = SagaBuilder("hung")
    b.step("reserve", reserve)
    b.step("charge", charge)
    return b.build()


async def _killed_mid_step(store_url: str, tmp_path: Path, worker_id: str | None = None) -> str:
    marker = tmp_path / "charging"
    child = await start_hung_worker(store_url, marker, lease_seconds=60.0, worker_id=worker_id)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    return marker.read_text()


async def test_an_embedded_engine_reopening_its_file_resumes_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sagas.db"
    sid = await _killed_mid_step(url, tmp_path)
    began = time.monotonic()
    async with SagaEngine(url, lease_seconds=60.0) as engine:
        engine.register(finishing_definition())
        snap = await engine.wait(sid, timeout=20)
    assert snap.status is SagaStatus.COMPLETED
    assert time.monotonic() - began < 20, "waited for the dead engine's 60 s lease"


async def test_a_second_running_engine_on_the_file_takes_no_live_lease(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sagas.db"
    started = asyncio.Event()

    async def hangs(ctx: StepContext) -> None:
        started.set()
        await asyncio.Event().wait()

    b = SagaBuilder("busy")
    b.step("a", hangs)
    async with SagaEngine(url, lease_seconds=60.0) as first:
        first.register(b.build())
        sid = await first.start("busy")
        await asyncio.wait_for(started.wait(), 10)
        async with SagaEngine(url, lease_seconds=60.0) as second:
            second.register(b.build())
            await asyncio.sleep(0.2)
            st = await second.store.get(sid)
            assert st is not None
            assert second._held.get(sid) is None
        # the first engine still holds it: its lease was not given up by the second
        assert sid in first._held
        await first.abort(sid)


async def test_a_worker_restarted_with_the_same_identity_resumes_its_own_sagas_at_once(
    pg_url: str, tmp_path: Path
) -> None:
    worker_id = f"w-{os.getpid()}-restart"
    sid = await _killed_mid_step(pg_url, tmp_path, worker_id)
    began = time.monotonic()
    async with SagaEngine(pg_url, lease_seconds=60.0, worker_id=worker_id) as engine:
        engine.register(finishing_definition())
        snap = await engine.wait(sid, timeout=20)
    assert snap.status is SagaStatus.COMPLETED
    assert time.monotonic() - began < 20, "waited for its own previous lease"
