"""Resource permits kept in the process: the memory and SQLite stores' side of ``Store.permits_*``."""

from __future__ import annotations

from collections.abc import Sequence

from .._resources import PermitBook, PermitGrant, PermitKey, Resource, ResourceUsage

__all__ = ["InProcessPermits"]


class InProcessPermits:
    """Enforces resource limits among the engines of this process (a ``PermitBook`` per store object)."""

    _permit_book: PermitBook | None = None

    @property
    def _book(self) -> PermitBook:
        if self._permit_book is None:
            self._permit_book = PermitBook()
        return self._permit_book

    async def permits_acquire(
        self, resource: Resource, holder: str, keys: Sequence[PermitKey], lease_seconds: float, now: float
    ) -> PermitGrant:
        return self._book.acquire(resource, holder, keys, lease_seconds, now)

    async def permits_release(self, resource: str, keys: Sequence[PermitKey]) -> None:
        self._book.release(keys)

    async def permits_renew(self, holder: str, lease_seconds: float, now: float) -> None:
        self._book.renew(holder, lease_seconds, now)

    async def permits_forget(self, holder: str) -> None:
        self._book.forget(holder)

    async def resources(self, now: float) -> list[ResourceUsage]:
        return self._book.usage(now)
