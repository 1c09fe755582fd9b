"""Semantic locks as the dashboard shows them: each key with its holder and the sagas queued for it, in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._store import LockEntry, Store

__all__ = ["KeyLocks", "LocksPage", "locks_page"]

_LIMIT = 1000


def _saga(e: LockEntry, now: float) -> dict[str, Any]:
    return {"saga_id": e.saga_id, "name": e.saga_name, "since": e.since, "for": max(0.0, now - e.since)}


@dataclass(frozen=True, slots=True)
class KeyLocks:
    """One business key: the saga that holds it (if any) and the sagas queued for it, first in line first."""

    key: str
    holder: LockEntry | None
    queue: tuple[LockEntry, ...]

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "key": self.key,
            "holder": None if self.holder is None else _saga(self.holder, now),
            "queue": [{**_saga(e, now), "position": i + 1} for i, e in enumerate(self.queue)],
        }


@dataclass(frozen=True, slots=True)
class LocksPage:
    """The keys held or queued for (those one saga holds or waits for, when asked for one saga)."""

    keys: tuple[KeyLocks, ...]
    now: float
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"locks": [k.to_dict(self.now) for k in self.keys], "truncated": self.truncated}


async def locks_page(store: Store, now: float, saga_id: str | None = None) -> LocksPage:
    """Read the lock table and group it by key (at most 1000 entries are read)."""
    entries = await store.locks(limit=_LIMIT + 1)
    truncated = len(entries) > _LIMIT
    by_key: dict[str, list[LockEntry]] = {}
    for e in entries[:_LIMIT]:
        by_key.setdefault(e.key, []).append(e)
    keys = []
    for key, group in by_key.items():
        holder = next((e for e in group if e.held), None)
        queue = tuple(sorted((e for e in group if not e.held), key=lambda e: e.ticket))
        if saga_id is not None and not any(e.saga_id == saga_id for e in group):
            continue
        keys.append(KeyLocks(key, holder, queue))
    return LocksPage(tuple(keys), now, truncated)
