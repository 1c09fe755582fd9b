"""Retention: a running engine deletes finished sagas older than its retention, in the background."""

from __future__ import annotations

import asyncio

from .._store import prune
from ._base import RuntimeBase, log


class Retention(RuntimeBase):
    """Prunes finished sagas (and old dead letters) every ``_retention_every`` seconds.

    Batches are small transactions with a pause between them, so workers' commits
    and claims are never kept waiting long; FAILED sagas are kept (they wait for an
    operator). A failure is logged and the next round tries again.
    """

    retention: float | None
    _retention_every: float
    _retention_first: float

    async def _retention_loop(self) -> None:
        if self.retention is None:
            return
        await asyncio.sleep(self._retention_first)
        while True:
            try:
                await self._prune_once(self.clock() - self.retention)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sagakit: pruning finished sagas failed; trying again in %.0fs", self._retention_every)
            await asyncio.sleep(self._retention_every)

    async def _prune_once(self, before: float) -> None:
        sagas = dead = 0
        async for batch in prune(self.store, before):
            sagas += batch.sagas
            dead += batch.dead_letters
            # Let the engine's own loops (commits, claims, renewals) run between batches.
            await asyncio.sleep(0.01)
        if sagas or dead:
            log.info("sagakit: pruned %d finished sagas and %d dead letters older than the retention", sagas, dead)
