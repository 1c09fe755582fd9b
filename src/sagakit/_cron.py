"""Cron expressions for recurring saga starts: parsing and the next matching time (pure, UTC).

Five fields, as in crontab(5): minute (0-59), hour (0-23), day of month
(1-31), month (1-12 or JAN-DEC), day of week (0-6 or SUN-SAT; 7 is Sunday
too). Each field is ``*``, a number or name, a range ``a-b``, a step
``*/n`` or ``a-b/n``, or a comma-separated list of those. When both day
fields are restricted, a day matches if either does (crontab's rule).
Shortcuts: ``@hourly``, ``@daily`` (``@midnight``), ``@weekly``,
``@monthly``, ``@yearly`` (``@annually``). Times are whole minutes in UTC.
"""

from __future__ import annotations

import calendar
import datetime
from dataclasses import dataclass

__all__ = ["Cron", "CronError", "parse_cron"]

_MONTHS = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = {d.upper(): (i + 1) % 7 for i, d in enumerate(calendar.day_abbr)}  # MON=1 ... SUN=0
_SHORTCUTS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_HORIZON_YEARS = 5  # an expression that matches no time within this many years is refused


class CronError(ValueError):
    """A cron expression that cannot be read; the message names the field and the value."""


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed cron expression: the allowed values of each field."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month is "*"
    any_weekday: bool  # day of week is "*"

    def _day_matches(self, d: datetime.date) -> bool:
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.any_day and self.any_weekday:
            return True
        if self.any_day:
            return dow
        if self.any_weekday:
            return dom
        return dom or dow

    def next_after(self, after: float) -> float:
        """The first matching minute strictly after *after* (seconds since the epoch), as seconds since the epoch.

        Raises:
            CronError: nothing matches within five years (e.g. ``0 0 30 2 *``).
        """
        t = datetime.datetime.fromtimestamp(after, datetime.UTC).replace(second=0, microsecond=0)
        t += datetime.timedelta(minutes=1)
        limit = t.year + _HORIZON_YEARS
        while t.year <= limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + datetime.timedelta(days=32)).replace(day=1)
                continue
            if not self._day_matches(t.date()):
                t = t.replace(hour=0, minute=0) + datetime.timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0) + datetime.timedelta(hours=1)
                continue
            if t.minute not in self.minutes:
                t += datetime.timedelta(minutes=1)
                continue
            return t.timestamp()
        raise CronError(f"cron {self.text!r} matches no time in the {_HORIZON_YEARS} years after {after}")


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> tuple[frozenset[int], bool]:
    values: set[int] = set()

    def number(v: str) -> int:
        key = v.upper()
        if key in names:
            return names[key]
        if not v.isdigit():
            raise CronError(f"cron {name} field: {v!r} is not a number" + (" or a name" if names else ""))
        n = int(v)
        if not low <= n <= high:
            raise CronError(f"cron {name} field: {n} is out of range {low}-{high}")
        return n

    for part in text.split(","):
        if not part:
            raise CronError(f"cron {name} field: empty item in {text!r}")
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"cron {name} field: step {step_text!r} must be a whole number > 0")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = number(a), number(b)
            if start > end:
                raise CronError(f"cron {name} field: range {base!r} runs backwards")
        else:
            start = number(base)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return frozenset(values), text == "*"


def parse_cron(text: str) -> Cron:
    """Parse a cron expression (see the module's docstring).

    Raises:
        CronError: naming the field and the value that cannot be read.
    """
    if not isinstance(text, str):
        raise CronError(f"a cron expression is a string, got {text!r}")
    expr = _SHORTCUTS.get(text.strip().lower(), text.strip())
    parts = expr.split()
    if len(parts) != 5:
        raise CronError(
            f"cron {text!r} has {len(parts)} field(s); it needs 5: minute hour day-of-month month day-of-week"
        )
    parsed = [_field(p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in parsed[4][0])
    cron = Cron(text, parsed[0][0], parsed[1][0], parsed[2][0], parsed[3][0], weekdays, parsed[2][1], parsed[4][1])
    cron.next_after(0.0)  # refuses an expression that never matches
    return cron
