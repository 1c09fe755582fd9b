"""Child process of the first-start tests: opens a fresh store together with its siblings.

For each store URL in turn, every child waits at a shared barrier, so that all
of them open the same new store at one instant; then each commits one saga of
its own, reads it back, and reports the round's outcome on a queue.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sagakit import SagaStatus
from sagakit._store import Write, store_from_url
from sagakit.machine import SagaState


async def open_and_commit(url: str, saga_id: str) -> None:
    """Open the store at *url*, commit one saga and read it back."""
    store = store_from_url(url)
    await store.open()
    try:
        st = SagaState(
            id=saga_id, name="first_start", version=1, status=SagaStatus.RUNNING, data={"by": saga_id},
            steps={}, created_at=1.0, updated_at=1.0, revision=1,
        )  # fmt: skip
        assert await store.commit([Write(st, 0, [], None, insert=True)]) == [saga_id]
        got = await store.get(saga_id)
        assert got is not None and got.data == {"by": saga_id}, got
    finally:
        await store.close()


def run(worker: int, urls: list[str], barrier: threading.Barrier, results: Any) -> None:
    """Open each of *urls* when every sibling is ready; put (round, worker, error or None) on *results*."""
    for i, url in enumerate(urls):
        barrier.wait(timeout=60)
        try:
            asyncio.run(open_and_commit(url, f"w{worker}"))
        except Exception as e:  # reported, and the next round still runs
            results.put((i, worker, f"{type(e).__name__}: {e}"))
        else:
            results.put((i, worker, None))
