"""Child process: starts one saga whose second step hangs, says so, and waits to be killed.

``reserve`` completes; ``charge`` writes a marker file and then hangs (and
writes a second marker, ``*.cancelled``, when its task is cancelled). Both
have compensations (run later by the parent's engine, which registers the same
definition through ``make_definition``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from sagakit import SagaBuilder, SagaDefinition, SagaEngine, StepContext


def make_definition(marker: Path, undone: list[str] | None = None) -> SagaDefinition:
    async def reserve(ctx: StepContext) -> dict[str, Any]:
        return {"reservation": "r-1"}

    async def charge(ctx: StepContext) -> dict[str, Any]:
        marker.write_text(ctx.saga_id)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            marker.with_suffix(".cancelled").write_text(ctx.saga_id)
            raise
        return {"charged": True}

    async def undo(ctx: StepContext) -> None:
        if undone is not None:
            undone.append(ctx.step)

    b = SagaBuilder("hung")
    b.step("reserve", reserve, undo)
    b.step("charge", charge, undo)
    return b.build()


async def main(store_url: str, marker: str, lease_seconds: float = 1.0, worker_id: str | None = None) -> None:
    engine = SagaEngine(store_url, lease_seconds=lease_seconds, worker_id=worker_id)
    engine.register(make_definition(Path(marker)))
    async with engine:
        await engine.start("hung", {})
        await asyncio.sleep(3600)


if __name__ == "__main__":
    lease = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    asyncio.run(main(sys.argv[1], sys.argv[2], lease, sys.argv[4] if len(sys.argv) > 4 else None))
