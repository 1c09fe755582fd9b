"""Recurring starts: a running engine starts the sagas of due schedules, one per period of their cron expression.

Any worker that has the schedule's definition may find it due. The saga of a
period has the idempotency key ``schedule:KEY:PERIOD``, so workers that race
for one period start one saga; the schedule then moves on with a
compare-and-set on its next time. Periods missed while no worker ran are
collapsed into one start: the schedule moves on to the first period after now.
"""

from __future__ import annotations

import asyncio

from .._cron import parse_cron
from .._store import Schedule
from ._base import RuntimeBase, log

__all__ = ["Schedules"]


class Schedules(RuntimeBase):
    """Starts the sagas of due recurring schedules."""

    async def _start_scheduled(self, s: Schedule, idempotency_key: str) -> str:
        """Start the saga of one period (``SagaEngine.start``)."""
        raise NotImplementedError

    def _runs(self, name: str, version: int | None) -> bool:
        """Whether this engine has the definition a schedule starts."""
        raise NotImplementedError

    async def _schedules_loop(self) -> None:
        while True:
            try:
                await self._start_due_schedules()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sagakit: starting scheduled sagas failed; trying again")
            await asyncio.sleep(self.poll_interval)

    async def _start_due_schedules(self) -> int:
        """Start one saga for each due schedule this engine can run; returns how many it started."""
        now = self.clock()
        started = 0
        for s in await self.store.schedules_due(now, 100):
            if not self._runs(s.name, s.version):
                continue  # a worker that has the definition starts it
            started += await self._start_period(s, now)
        return started

    async def _start_period(self, s: Schedule, now: float) -> int:
        period = s.next_at
        try:
            following = parse_cron(s.cron).next_after(max(now, period))
        except ValueError as e:
            log.error("sagakit: schedule %r has an unusable cron expression %r: %s", s.key, s.cron, e)
            return 0
        try:
            saga_id = await self._start_scheduled(s, f"schedule:{s.key}:{period:.0f}")
        except Exception as e:
            # Its data or definition is refused: the period is skipped, not retried in a loop.
            log.error("sagakit: schedule %r could not start %s for %.0f: %s", s.key, s.name, period, e)
            saga_id = ""
        await self.store.schedule_advance(s.key, period, following, period, saga_id)
        return 1 if saga_id else 0
