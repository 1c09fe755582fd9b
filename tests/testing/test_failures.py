"""Failure injection over every failure path, with the compensation order per path."""

from __future__ import annotations

import pytest

from sagakit import SagaBuilder, SagaStatus, StepStatus
from sagakit.testing import InjectedFailure, SagaTestEnv, explore_failures

from .sagas import EVENTS, ORDER, REPLIES, World, diamond, mixed


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_every_failure_path_of_a_diamond(kind: str, tmp_path) -> None:
    async with SagaTestEnv(kind, directory=tmp_path) as env:
        report = await explore_failures(diamond(World()), {"order": 1}, env=env)
    report.assert_ok()
    assert [p.name for p in report] == [
        "no failure",
        "reserve fails",
        "charge fails",
        "charge fails, compensation of reserve fails",
        "charge times out",
        "notify fails",
        "notify fails, compensation of charge fails",
        "notify fails, compensation of charge times out",
        "notify fails, compensation of reserve fails",
        "ship fails",
        "ship fails, compensation of charge fails",
        "ship fails, compensation of charge times out",
        "ship fails, compensation of reserve fails",
    ]
    assert report["no failure"].status is SagaStatus.COMPLETED
    assert report["no failure"].compensated == ()
    assert report["reserve fails"].compensated == ()
    assert report["reserve fails"].snapshot.steps["reserve"].attempts == 3  # its retries ran out
    assert report["charge fails"].compensated == ("reserve",)
    # A timed-out attempt may have had its effect: the step is compensated too, first.
    assert report["charge times out"].compensated == ("charge", "reserve")
    ship = report["ship fails"]
    assert ship.status is SagaStatus.COMPENSATED
    assert ship.completed[0] == "reserve" and set(ship.completed) == {"reserve", "charge", "notify"}
    assert ship.compensated == ("charge", "reserve")
    failed = report["ship fails, compensation of charge fails"]
    assert failed.status is SagaStatus.FAILED
    assert failed.compensation_failed == ("charge",)
    assert failed.snapshot.steps["charge"].status is StepStatus.COMPENSATION_FAILED
    assert failed.snapshot.steps["charge"].compensation_attempts == 10  # the default compensation retries
    assert "InjectedFailure" in (failed.snapshot.steps["charge"].error or "")
    assert "compensated charge -> reserve" in str(report)


async def test_message_steps_fail_by_fault_and_time_out_without_a_reply(saga_env: SagaTestEnv) -> None:
    report = await explore_failures(mixed(World()), ORDER, env=saga_env, replies=REPLIES, events=EVENTS)
    names = [p.name for p in report]
    assert "charge fails" in names and "charge times out" in names and "approve times out" in names
    assert "approve fails" not in names  # a wait_for step fails by its timeout only
    assert report["no failure"].status is SagaStatus.COMPLETED
    failed = report["charge fails"]
    assert failed.snapshot.steps["charge"].attempts == 2  # a fault fails an attempt; its retries run out
    assert any(h.kind == "fault" and "participant fault" in h.message for h in failed.snapshot.history)
    # A command that faulted may have had its effect: it is compensated (by its command) before reserve.
    assert failed.compensated == ("charge", "reserve")
    approve = report["approve times out"]
    assert approve.status is SagaStatus.COMPENSATED
    assert approve.compensated == ("charge", "reserve")
    report.assert_ok()


async def test_a_saga_that_fails_without_injection_is_reported(saga_env: SagaTestEnv) -> None:
    async def broken(ctx) -> None:
        raise RuntimeError("always")

    b = SagaBuilder("broken")
    b.step("a", broken)
    report = await explore_failures(b.build(), {}, env=saga_env, compensation_faults=False)
    assert report.problems and report.problems[0].startswith(
        "no failure: without any failure the saga ends compensated"
    )
    with pytest.raises(AssertionError, match="without any failure"):
        report.assert_ok()
    with pytest.raises(KeyError, match="no failure path 'nope'; the failure paths are: 'no failure', 'a fails'"):
        report["nope"]


async def test_a_message_step_without_its_reply_is_refused(saga_env: SagaTestEnv) -> None:
    with pytest.raises(ValueError, match=r"step 'charge' sends .*Charge and waits for a reply: .*replies=\{Charge"):
        await explore_failures(mixed(World()), ORDER, env=saga_env, events=EVENTS)


def test_injected_failure_is_an_ordinary_exception() -> None:
    assert issubclass(InjectedFailure, Exception)


async def test_the_failure_paths_of_a_saga_with_a_for_each_step(saga_env: SagaTestEnv) -> None:
    """Injection wraps a for-each step's item functions too: all its items fail (or their compensations do)."""

    def reserve(line: str, ctx) -> str:
        return f"held-{line}"

    def release(line: str, ctx) -> None:
        return None

    def charge(ctx) -> int:
        return len(ctx.results["reserve"])

    b = SagaBuilder("lines")
    b.for_each("reserve", items=lambda data, results: data["lines"], action=reserve, compensation=release)
    b.step("charge", charge, lambda ctx: None)
    b.step("ship", lambda ctx: None)
    report = await explore_failures(b.build(), {"lines": ["a", "b"]}, env=saga_env)
    report.assert_ok()
    assert report["no failure"].snapshot.steps["reserve"].result == ["held-a", "held-b"]
    assert report["reserve fails"].status is SagaStatus.COMPENSATED
    ship = report["ship fails"]
    assert ship.status is SagaStatus.COMPENSATED and ship.compensated == ("charge", "reserve")
    items = ship.snapshot.steps["reserve"].items
    assert items is not None and [i.status for i in items] == [StepStatus.COMPENSATED] * 2
    assert report["ship fails, compensation of reserve fails"].status is SagaStatus.FAILED
