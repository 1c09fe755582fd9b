"""Cron expressions: parsing errors name the field; the next time matches and nothing matching is skipped."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagakit._cron import CronError, parse_cron

UTC = datetime.UTC


def at(*args: int) -> float:
    return datetime.datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/15 * * * *", at(2026, 12, 7, 10, 7), at(2026, 12, 7, 10, 15)),
        ("0 3 * * *", at(2026, 12, 7, 3, 0), at(2026, 12, 8, 3, 0)),  # strictly after
        ("30 9 * * MON-FRI", at(2026, 12, 5, 12, 0), at(2026, 12, 7, 9, 30)),  # Saturday -> Monday
        ("0 0 1 JAN *", at(2026, 6, 1), at(2027, 1, 1)),
        ("0 0 29 2 *", at(2026, 3, 1), at(2028, 2, 29)),
        ("0 12 13 * FRI", at(2026, 12, 7), at(2026, 12, 11, 12, 0)),  # either day field matches
        ("@daily", at(2026, 12, 7, 23, 59), at(2026, 12, 8)),
        ("0 0 * * 7", at(2026, 12, 7), at(2026, 12, 13)),  # 7 is Sunday
    ],
)
def test_next_after(expr: str, after: float, expected: float) -> None:
    assert parse_cron(expr).next_after(after) == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "has 4 field(s); it needs 5"),
        ("60 * * * *", "minute field: 60 is out of range 0-59"),
        ("* 24 * * *", "hour field: 24 is out of range"),
        ("* * * FOO *", "month field: 'FOO' is not a number or a name"),
        ("*/0 * * * *", "step '0' must be a whole number > 0"),
        ("5-1 * * * *", "range '5-1' runs backwards"),
        ("0 0 30 2 *", "matches no time"),
        ("1,,2 * * * *", "empty item"),
    ],
)
def test_bad_expressions_name_the_field(expr: str, message: str) -> None:
    with pytest.raises(CronError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_cron(expr)


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    n = st.integers(low, high)
    single = n.map(str)
    rng = st.tuples(n, n).map(lambda ab: f"{min(ab)}-{max(ab)}")
    step = st.tuples(st.sampled_from(["*", None]), st.integers(1, 7)).map(lambda t: f"*/{t[1]}")
    item = st.one_of(single, rng, step)
    return st.one_of(st.just("*"), st.lists(item, min_size=1, max_size=3).map(",".join))


@settings(max_examples=200, deadline=None)
@given(
    minute=_field(0, 59),
    hour=_field(0, 23),
    dom=st.one_of(st.just("*"), _field(1, 28)),
    dow=_field(0, 6),
    after=st.integers(at(2026, 1, 1), at(2030, 1, 1)),
)
def test_property_the_next_time_matches_and_none_is_skipped(
    minute: str, hour: str, dom: str, dow: str, after: int
) -> None:
    cron = parse_cron(f"{minute} {hour} {dom} * {dow}")
    nxt = cron.next_after(after)
    assert nxt > after and nxt % 60 == 0

    def matches(t: datetime.datetime) -> bool:
        return t.minute in cron.minutes and t.hour in cron.hours and cron._day_matches(t.date())

    assert matches(datetime.datetime.fromtimestamp(nxt, UTC))
    # Nothing matching in between (checked minute by minute over up to 3 days).
    t = datetime.datetime.fromtimestamp(after - after % 60, UTC) + datetime.timedelta(minutes=1)
    end = min(nxt, after + 3 * 86400)
    while t.timestamp() < end:
        assert not matches(t), f"{cron.text}: {t} matches before {datetime.datetime.fromtimestamp(nxt, UTC)}"
        t += datetime.timedelta(minutes=1)
