"""Search filters of the operations API, and their parsing from text (query strings, CLI options).

``SagaFilter`` is what an operator searches by; it becomes one or two
``SagaQuery`` objects for the store (two for ``stuck_for``: failed sagas, and
unfinished sagas that are overdue, which one query cannot express).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from .._errors import SagaError
from .._status import SagaStatus
from .._store import UNFINISHED, SagaQuery

__all__ = [
    "FILTER_PARAMETERS",
    "MAX_LIMIT",
    "InvalidParameter",
    "SagaFilter",
    "parse_filter",
    "parse_int",
    "parse_seconds",
    "parse_time",
]

MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000
_MAX_VERSION = 2**31 - 1  # the column is a 32-bit INTEGER on PostgreSQL
_MAX_TEXT = 500
_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
FILTER_PARAMETERS = (
    "status", "name", "version", "correlation_id", "key", "created_after", "created_before",
    "updated_after", "updated_before", "stuck",
)  # fmt: skip


class InvalidParameter(SagaError, ValueError):
    """A filter or an action input that cannot be used; names the parameter and the value."""

    def __init__(self, parameter: str, value: object, problem: str) -> None:
        shown = value if isinstance(value, str) and len(value) <= 80 else repr(value)[:80]
        super().__init__(f"bad value {shown!r} for {parameter}: {problem}")
        self.parameter = parameter
        self.value = value if isinstance(value, str) else repr(value)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class SagaFilter:
    """What to look for; every filter given must hold (AND).

    Attributes:
        statuses: any of these statuses (none: all).
        name, version, correlation_id: exact matches.
        data_equals: business key: top-level data keys and the values they must have
            (compared as text: ``{"order_id": "o-1"}``, ``{"customer": "42"}``).
        created_after, created_before, updated_after, updated_before: Unix times;
            ``after`` inclusive, ``before`` exclusive.
        stuck_for: only stuck sagas: ``FAILED`` ones, pending or running ones whose
            wake time passed more than this many seconds ago (nobody runs them),
            and compensating ones that have not changed for that long.
    """

    statuses: tuple[SagaStatus, ...] = ()
    name: str | None = None
    version: int | None = None
    correlation_id: str | None = None
    data_equals: Mapping[str, str] = field(default_factory=dict)
    created_after: float | None = None
    created_before: float | None = None
    updated_after: float | None = None
    updated_before: float | None = None
    stuck_for: float | None = None

    @property
    def empty(self) -> bool:
        """True when the filter matches every saga."""
        return self == SagaFilter()

    def describe(self) -> str:
        """The filters as ``key=value`` words, for confirmations and logs."""
        words = []
        if self.statuses:
            words.append("status=" + ",".join(s.value for s in self.statuses))
        for attr in ("name", "version", "correlation_id"):
            value = getattr(self, attr)
            if value is not None:
                words.append(f"{attr}={value}")
        words.extend(f"key:{k}={v}" for k, v in self.data_equals.items())
        for attr in ("created_after", "created_before", "updated_after", "updated_before"):
            value = getattr(self, attr)
            if value is not None:
                words.append(f"{attr}={_iso(value)}")
        if self.stuck_for is not None:
            words.append(f"stuck_for={self.stuck_for:g}s")
        return " ".join(words) or "(all sagas)"

    def queries(self, now: float, *, limit: int = 100, offset: int = 0) -> list[SagaQuery]:
        """The store queries whose union is this filter (disjoint; one to three)."""
        base = SagaQuery(
            name=self.name,
            version=self.version,
            correlation_id=self.correlation_id,
            data_equals=dict(self.data_equals) or None,
            created_after=self.created_after,
            created_before=self.created_before,
            updated_after=self.updated_after,
            updated_before=self.updated_before,
            statuses=self.statuses or None,
            limit=limit,
            offset=offset,
        )
        if self.stuck_for is None:
            return [base]
        wanted = set(self.statuses or SagaStatus)
        out = []
        if SagaStatus.FAILED in wanted:
            out.append(replace(base, statuses=(SagaStatus.FAILED,)))
        since = now - self.stuck_for
        waiting = tuple(s for s in UNFINISHED if s in wanted and s is not SagaStatus.COMPENSATING)
        if waiting:
            out.append(replace(base, statuses=waiting, overdue_before=since))
        if SagaStatus.COMPENSATING in wanted:
            # A rollback that has not moved for that long, overdue or not: a compensation
            # waiting for a reply that does not come has no wake time to be overdue by.
            bound = since if base.updated_before is None else min(since, base.updated_before)
            out.append(replace(base, statuses=(SagaStatus.COMPENSATING,), updated_before=bound))
        return out or [replace(base, statuses=())]


# ---------------------------------------------------------------- parsing


def parse_filter(params: Mapping[str, Sequence[str]]) -> SagaFilter:
    """A SagaFilter from text parameters (each may be repeated).

    ``status`` (repeated or comma-separated), ``name``, ``version``,
    ``correlation_id``, ``key`` (``name=value``, repeated), ``created_after``,
    ``created_before``, ``updated_after``, ``updated_before`` (Unix seconds or
    ISO 8601), ``stuck`` (seconds). Unknown parameters are not looked at.

    Raises:
        InvalidParameter: naming the parameter and the value.
    """
    statuses: list[SagaStatus] = []
    for raw in params.get("status", ()):
        for part in raw.split(","):
            if part.strip():
                statuses.append(parse_status("status", part))
    keys: dict[str, str] = {}
    for raw in params.get("key", ()):
        k, v = parse_key("key", raw)
        keys[k] = v

    def one(name: str) -> str | None:
        values = params.get(name, ())
        if len(values) > 1:
            raise InvalidParameter(name, values[-1], "give it once")
        return values[0] if values else None

    version = one("version")
    stuck = one("stuck")
    return SagaFilter(
        statuses=tuple(dict.fromkeys(statuses)),
        name=_text("name", one("name")),
        version=None if version is None else parse_int("version", version, 1, _MAX_VERSION),
        correlation_id=_text("correlation_id", one("correlation_id")),
        data_equals=keys,
        created_after=_time("created_after", one("created_after")),
        created_before=_time("created_before", one("created_before")),
        updated_after=_time("updated_after", one("updated_after")),
        updated_before=_time("updated_before", one("updated_before")),
        stuck_for=None if stuck is None else parse_seconds("stuck", stuck),
    )


def parse_status(parameter: str, text: str) -> SagaStatus:
    try:
        return SagaStatus(text.strip().lower())
    except ValueError:
        allowed = ", ".join(s.value for s in SagaStatus)
        raise InvalidParameter(parameter, text, f"not a saga status; use one of: {allowed}") from None


def parse_key(parameter: str, text: str) -> tuple[str, str]:
    """``name=value`` of a business key."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep:
        raise InvalidParameter(parameter, text, "use name=value, e.g. order_id=o-1")
    if not _KEY.fullmatch(name):
        raise InvalidParameter(parameter, text, "the key name must be 1-64 letters, digits, '_' or '-'")
    return name, _text(parameter, value) or ""


def parse_int(parameter: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise InvalidParameter(parameter, text, "not an integer") from None
    if not low <= value <= high:
        raise InvalidParameter(parameter, text, f"must be between {low} and {high}")
    return value


def parse_seconds(parameter: str, text: str) -> float:
    """A non-negative, finite number of seconds."""
    try:
        value = float(text.strip())
    except ValueError:
        raise InvalidParameter(parameter, text, "not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or value > 10 * 365 * 86400:
        raise InvalidParameter(parameter, text, "must be a number of seconds between 0 and ten years")
    return value


def parse_time(parameter: str, text: str) -> float:
    """Unix seconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidParameter(parameter, text, "use Unix seconds or ISO 8601, e.g. 2026-01-31T08:00:00Z") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            return moment.timestamp()
        except (OverflowError, ValueError, OSError):
            raise InvalidParameter(parameter, text, "not a usable time") from None
    if not math.isfinite(value) or abs(value) > 1e11:
        raise InvalidParameter(parameter, text, "not a usable Unix time")
    return value


def _time(parameter: str, text: str | None) -> float | None:
    return None if text is None else parse_time(parameter, text)


def _text(parameter: str, text: str | None) -> str | None:
    if text is None:
        return None
    if len(text) > _MAX_TEXT:
        raise InvalidParameter(parameter, text, f"longer than {_MAX_TEXT} characters")
    if "\x00" in text:
        raise InvalidParameter(parameter, text, "contains a NUL character")
    return text


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def statuses_of(values: Iterable[str]) -> tuple[SagaStatus, ...]:
    """Statuses from CLI choices (already validated)."""
    return tuple(dict.fromkeys(SagaStatus(v.lower()) for v in values))
