"""Scheduled starts: ``engine.start(..., at=/delay=)`` stores the saga now and begins it then."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest
from hypothesis import given
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
