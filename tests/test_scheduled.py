"""Scheduled starts: ``engine.start(..., at=/delay=)`` stores the saga now and begins it then."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagakit import SagaBuilder, SagaEngine, SagaStatus, StepContext
from sagakit.machine import START_AT, Begin, Resume, Timer, decide, new_saga

ran: list[tuple[str, float]] = []


async def work(ctx: StepContext) -> None:
    ran.append((ctx.saga_id, time.time()))


def definition() -> Any:
    b = SagaBuilder("scheduled")
    b.step("work", work)
    return b.build()


async def test_a_delayed_saga_begins_after_its_delay_and_not_before(store_url: str) -> None:
    ran.clear()
    async with SagaEngine(store_url, poll_interval=0.05) as engine:
        engine.register(definition())
        t0 = time.time()
        sid = await engine.start("scheduled", {}, delay=1.0)
        now = await engine.get(sid)
        assert now.status is SagaStatus.PENDING and now.wake_at is not None and now.wake_at >= t0 + 1.0
        assert any(h.kind == "scheduled" for h in now.history)
        snap = await engine.wait(sid, timeout=20)
    assert snap.status is SagaStatus.COMPLETED
    [(saga, at)] = ran
    assert saga == sid and at >= t0 + 1.0


async def test_a_scheduled_saga_survives_a_restart_and_can_be_aborted(store_url: str) -> None:
    ran.clear()
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1.5)
    async with SagaEngine(store_url) as first:
        first.register(definition())
        keep = await first.start("scheduled", {}, at=at)
        drop = await first.start("scheduled", {}, at=at)
        await first.abort(drop, reason="the customer changed their mind")
    async with SagaEngine(store_url, poll_interval=0.05) as second:  # a new process, after the restart
        second.register(definition())
        kept = await second.wait(keep, timeout=20)
        dropped = await second.get(drop)
    assert kept.status is SagaStatus.COMPLETED
    assert [s for s, _ in ran] == [keep]
    assert dropped.status is SagaStatus.ABORTED


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"at": 1.0, "delay": 1.0}, "not both"),
        ({"delay": -1}, "delay must be"),
        ({"at": datetime.datetime(2030, 1, 1)}, "no time zone"),  # noqa: DTZ001 - the point of the test
        ({"at": "tomorrow"}, "at must be"),
    ],
)
async def test_bad_schedules_are_refused(kwargs: dict[str, Any], message: str) -> None:
    async with SagaEngine("memory://") as engine:
        engine.register(definition())
        with pytest.raises(ValueError, match=message):
            await engine.start("scheduled", {}, **kwargs)
        assert await engine.count() == 0


@settings(deadline=None)  # a pure property: no timing in it, so none that a loaded machine could break
@given(
    start_at=st.floats(min_value=0, max_value=100),
    events=st.lists(st.tuples(st.sampled_from(["begin", "resume", "timer"]), st.floats(0, 200)), max_size=6),
)
def test_property_no_event_begins_a_scheduled_saga_before_its_time(start_at: float, events: list[Any]) -> None:
    defn = definition()
    d = new_saga(defn, "s", {}, 0.0, start_at=start_at)
    state = d.state
    if start_at > 0:
        assert START_AT in state.meta and state.wake_at == start_at and not d.effects
    for kind, now in sorted(events, key=lambda e: e[1]):
        event = {"begin": Begin(), "resume": Resume(), "timer": Timer()}[kind]
        d = decide(defn, state, event, now)
        began = d.state.status is not SagaStatus.PENDING
        if began and state.status is SagaStatus.PENDING:
            assert now >= start_at, "began before its start time"
        if not began:
            assert d.state.wake_at == max(start_at, 0.0) or d.state.wake_at == start_at
        state = d.state


# ---------------------------------------------------------------- recurring starts


class FakeClock:
    """The engines' wall clock, moved on by the test (whole minutes of cron time in a fraction of a second)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def report() -> Any:
    b = SagaBuilder("nightly_report")
    b.step("work", work)
    return b.build()


async def _until(cond: Any, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_schedule_starts_one_saga_per_period_across_two_workers(store_url: str) -> None:
    clock = FakeClock(datetime.datetime(2026, 12, 7, 10, 0, 30, tzinfo=datetime.UTC).timestamp())
    engines = [SagaEngine(store_url, clock=clock, poll_interval=0.02, worker_id=f"w{i}") for i in range(2)]
    for e in engines:
        e.register(report())
    async with engines[0], engines[1]:
        s = await engines[0].schedule("nightly_report", {"kind": "sales"}, cron="*/5 * * * *", key="sales")
        assert s.next_at == datetime.datetime(2026, 12, 7, 10, 5, tzinfo=datetime.UTC).timestamp()
        for minute in range(1, 16):  # 10:01 ... 10:15: periods 10:05, 10:10, 10:15
            clock.now += 60
            await _until(lambda: _settled(engines[0], clock.now))
        sagas = await engines[0].list(name="nightly_report")
        [listed] = await engines[1].schedules()
    assert len(sagas) == 3
    keys = sorted(x.idempotency_key or "" for x in sagas)
    assert keys == [f"schedule:sales:{datetime.datetime(2026, 12, 7, 10, m, tzinfo=datetime.UTC).timestamp():.0f}"
                    for m in (5, 10, 15)]  # fmt: skip
    assert listed.last_saga in {x.id for x in sagas} and listed.next_at > clock.now


async def _settled(engine: SagaEngine, now: float) -> bool:
    [s] = await engine.schedules()
    return s.next_at > now


async def test_a_schedule_survives_a_restart_collapses_missed_periods_and_can_be_removed(store_url: str) -> None:
    clock = FakeClock(datetime.datetime(2026, 12, 7, 10, 0, 30, tzinfo=datetime.UTC).timestamp())
    async with SagaEngine(store_url, clock=clock) as api:  # an API process: it only stores the schedule
        await api.schedule("nightly_report", {}, cron="@hourly", key="hourly")
    clock.now += 5 * 3600  # nobody ran for five hours
    async with SagaEngine(store_url, clock=clock, poll_interval=0.02) as worker:
        worker.register(report())
        await _until(lambda: _settled(worker, clock.now))
        started = await worker.list(name="nightly_report")
        assert await worker.unschedule("hourly") is True
        assert await worker.unschedule("hourly") is False
        clock.now += 3 * 3600
        await asyncio.sleep(0.2)
        assert await worker.schedules() == []
        after = await worker.list(name="nightly_report")
    assert len(started) == 1  # the missed periods are one start, not five
    assert len(after) == 1


@pytest.mark.parametrize(("cron", "message"), [("61 * * * *", "minute field: 61 is out of range"), ("* *", "needs 5")])
async def test_a_bad_cron_expression_is_refused_naming_the_field(cron: str, message: str) -> None:
    async with SagaEngine("memory://") as engine:
        with pytest.raises(ValueError, match=message):
            await engine.schedule("nightly_report", {}, cron=cron)
        assert await engine.schedules() == []
