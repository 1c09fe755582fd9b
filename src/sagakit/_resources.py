"""Per-resource limits: how many attempts may use a resource at once, and how many may start per period.

``Resource`` declares a limit; ``grant`` is the pure rule every store applies
to hand out permits (memory and SQLite in the process, PostgreSQL in one
transaction on the database's clock); ``PermitBook`` keeps the permits of one
process.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ._errors import DefinitionError

__all__ = ["PermitBook", "PermitGrant", "PermitKey", "Resource", "ResourceUsage", "grant"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]*$")


@dataclass(frozen=True, slots=True)
class Resource:
    """A limit on a resource that steps name with ``resource=``.

    ``concurrency``: attempts holding a permit at once, at most (across every
    worker on PostgreSQL). ``rate`` per ``per`` seconds: permits granted in any
    window of ``per`` seconds, at most. Give either or both.

    Raises:
        DefinitionError: a bad name or value (also a ValueError).
    """

    name: str
    concurrency: int | None = None
    rate: int | None = None
    per: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name) or len(self.name) > 200:
            raise DefinitionError(
                f"resource name {self.name!r} is invalid: use letters, digits, '_', '-', '.' or ':', "
                "starting with a letter or '_', at most 200 characters"
            )
        for label, value in (("concurrency", self.concurrency), ("rate", self.rate)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise DefinitionError(
                    f"resource {self.name!r}: {label} must be an integer >= 1 or None (no limit), got {value!r}"
                )
        if self.concurrency is None and self.rate is None:
            raise DefinitionError(
                f"resource {self.name!r} has no limit: give concurrency= (at once) and/or rate= (per `per` seconds)"
            )
        per = self.per
        if isinstance(per, bool) or not isinstance(per, int | float) or not math.isfinite(per) or not per > 0:
            raise DefinitionError(f"resource {self.name!r}: per must be a number of seconds > 0, got {per!r}")


class PermitKey(NamedTuple):
    """Which attempt a permit is for: the saga, the step and the attempt's token."""

    saga_id: str
    step: str
    token: int


class PermitGrant(NamedTuple):
    """What one look at a resource gave: the waiters granted, and when the rate lets the next start.

    ``retry_after`` is seconds until a rate window frees a permit; None when
    only a release can (or when every waiter was granted).
    """

    granted: list[PermitKey]
    retry_after: float | None = None


class ResourceUsage(NamedTuple):
    """A resource as the store sees it: its limits, the permits held and the attempts waiting."""

    name: str
    concurrency: int | None
    rate: int | None
    per: float
    in_use: int
    waiting: int
    recent: int = 0  # permits granted in the current rate window


def grant(
    limit: Resource, in_use: int, recent: Sequence[float], waiting: Sequence[PermitKey], now: float
) -> tuple[list[PermitKey], list[float], float | None]:
    """Which of *waiting* (in order) get a permit now, the grant times still in the window, and the retry delay.

    *in_use* is the number of permits held; *recent* the times permits were
    granted (any order). A waiter is granted while fewer than ``concurrency``
    permits are held and fewer than ``rate`` were granted in the window of
    ``per`` seconds ending at *now*; the rest wait, in order.
    """
    window = [t for t in recent if t > now - limit.per] if limit.rate is not None else []
    granted: list[PermitKey] = []
    for key in waiting:
        if limit.concurrency is not None and in_use >= limit.concurrency:
            break
        if limit.rate is not None and len(window) >= limit.rate:
            break
        granted.append(key)
        in_use += 1
        if limit.rate is not None:
            window.append(now)
    retry_after: float | None = None
    rate_bound = limit.rate is not None and len(window) >= limit.rate
    if len(granted) < len(waiting) and rate_bound and (limit.concurrency is None or in_use < limit.concurrency):
        retry_after = max(0.0, min(window) + limit.per - now)
    return granted, window, retry_after


@dataclass(slots=True)
class _Permit:
    resource: str
    holder: str
    granted: bool
    queued_at: float
    expires_at: float


@dataclass(slots=True)
class PermitBook:
    """The permits of one process (memory and SQLite stores): waiters, holders and rate windows.

    A permit or waiter lives until released or until its holder stops
    renewing it (``expires_at``), like a lease.
    """

    permits: dict[PermitKey, _Permit] = field(default_factory=dict)
    limits: dict[str, Resource] = field(default_factory=dict)
    recent: dict[str, list[float]] = field(default_factory=dict)

    def _purge(self, now: float) -> None:
        gone = [k for k, p in self.permits.items() if p.expires_at <= now]
        for k in gone:
            del self.permits[k]

    def acquire(
        self, limit: Resource, holder: str, keys: Sequence[PermitKey], lease_seconds: float, now: float
    ) -> PermitGrant:
        self._purge(now)
        self.limits[limit.name] = limit
        expires = now + lease_seconds
        mine: list[PermitKey] = []
        for k in keys:
            p = self.permits.get(k)
            if p is None:
                self.permits[k] = _Permit(limit.name, holder, False, now, expires)
                mine.append(k)
            elif p.granted:
                p.expires_at = expires
            else:
                mine.append(k)
        in_use = sum(1 for p in self.permits.values() if p.resource == limit.name and p.granted)
        got, window, retry_after = grant(limit, in_use, self.recent.get(limit.name, ()), mine, now)
        self.recent[limit.name] = window
        for k in got:
            p = self.permits[k]
            p.granted = True
            p.expires_at = expires
        already = [k for k in keys if k not in mine]
        return PermitGrant(already + got, retry_after)

    def release(self, keys: Sequence[PermitKey]) -> None:
        for k in keys:
            self.permits.pop(k, None)

    def renew(self, holder: str, lease_seconds: float, now: float) -> None:
        for p in self.permits.values():
            if p.holder == holder:
                p.expires_at = now + lease_seconds

    def forget(self, holder: str) -> None:
        for k in [k for k, p in self.permits.items() if p.holder == holder]:
            del self.permits[k]

    def usage(self, now: float) -> list[ResourceUsage]:
        self._purge(now)
        out = []
        for name, limit in sorted(self.limits.items()):
            held = [p for p in self.permits.values() if p.resource == name]
            in_use = sum(1 for p in held if p.granted)
            recent = sum(1 for t in self.recent.get(name, ()) if t > now - limit.per)
            out.append(
                ResourceUsage(name, limit.concurrency, limit.rate, limit.per, in_use, len(held) - in_use, recent)
            )
        return out
