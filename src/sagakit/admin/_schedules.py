"""What is due to start later: recurring schedules and sagas scheduled to begin at a set time.

Recurring schedules are read from the store's schedules table (``engine.schedule``);
scheduled sagas are the ``PENDING`` sagas whose state holds a start time
(``engine.start(..., at=/delay=)``), soonest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._masking import Masker
from .._status import SagaStatus
from .._store import SagaQuery, Schedule, Store
from ..machine import START_AT, SagaState

__all__ = ["SchedulesPage", "schedules_page"]

_SCHEDULED_LIMIT = 500


@dataclass(frozen=True, slots=True)
class SchedulesPage:
    """The recurring schedules and the sagas waiting to begin, at ``now``.

    ``scheduled_truncated`` is True when more pending sagas were looked at than were read.
    """

    now: float
    schedules: tuple[Schedule, ...]
    scheduled: tuple[SagaState, ...]
    scheduled_truncated: bool
    masker: Masker

    def to_dict(self) -> dict[str, Any]:
        now = self.now
        return {
            "now": now,
            "schedules": [
                {
                    "key": s.key,
                    "name": s.name,
                    "version": s.version,
                    "cron": s.cron,
                    "data": self.masker.value(s.data),
                    "next_at": s.next_at,
                    "next_in": s.next_at - now,
                    "last_at": s.last_at,
                    "last_saga": s.last_saga,
                    "created_at": s.created_at,
                }
                for s in self.schedules
            ],
            "scheduled_sagas": [
                {
                    "id": s.id,
                    "name": s.name,
                    "version": s.version,
                    "created_at": s.created_at,
                    "start_at": float(s.meta[START_AT]),
                    "starts_in": float(s.meta[START_AT]) - now,
                }
                for s in self.scheduled
            ],
            "scheduled_truncated": self.scheduled_truncated,
        }


async def schedules_page(store: Store, now: float, masker: Masker, *, limit: int = _SCHEDULED_LIMIT) -> SchedulesPage:
    """The recurring schedules, and up to *limit* pending sagas that wait for their start time."""
    recurring = tuple(sorted(await store.schedules(), key=lambda s: (s.next_at, s.key)))
    pending = await store.list(SagaQuery(status=SagaStatus.PENDING, limit=limit + 1))
    truncated = len(pending) > limit
    waiting = [s for s in pending[:limit] if isinstance(s.meta.get(START_AT), int | float)]
    waiting.sort(key=lambda s: (float(s.meta[START_AT]), s.id))
    return SchedulesPage(now, recurring, tuple(waiting), truncated, masker)
