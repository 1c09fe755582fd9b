"""Unit tests of the pure saga state machine: every rule, driven with explicit times."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from sagakit import RetryPolicy, SagaBuilder, SagaDefinition, SagaStatus, StepStatus, send, wait_for
from sagakit._definition import StepAction
from sagakit.machine import (
    Abort,
    Begin,
    CancelAttempt,
    Compensate,
    Decision,
    Event,
    HistoryEntry,
    Resume,
    Retry,
    RunStep,
    SagaState,
    Skip,
    StepFailed,
    StepSucceeded,
    Timer,
    decide,
    new_saga,
    step_results,
)
from sagakit.machine._decide import ROLLBACK

S = StepStatus
NO_RETRY = RetryPolicy(max_attempts=1)
FAST = RetryPolicy(max_attempts=3, initial_delay=1.0, multiplier=2.0, max_delay=100.0, jitter=0.0)


def act(ctx: Any) -> None:
    return None


def undo(ctx: Any) -> None:
    return None


class Reply(StepAction):
    """A message step: the attempt ends when a reply arrives, not when a function returns.

    It sends nothing (``sends`` is False), so it is not ``effectful``.
    """


@dataclasses.dataclass
class Ship:
    order: int = 0


@dataclasses.dataclass
class Shipped:
    order: int = 0


@dataclasses.dataclass
class Approved:
    order: int = 0


def observable(st: SagaState) -> tuple[Any, ...]:
    return (st.status, {n: (s.status, s.token) for n, s in st.steps.items()})


class Run:
    """Drives one saga through decide(), checking at every call that the input is not mutated
    and that every transition is recorded in the history.

    decide() shares the step states a transition leaves alone between the old
    state and the new one, so every earlier state is checked too: none may
    change when a later one is decided on.
    """

    def __init__(self, defn: SagaDefinition, now: float = 0.0, *, begin: bool = True, data: Any = None) -> None:
        self.defn: SagaDefinition | None = defn  # None: decide as for a saga whose definition is not here
        self.last = new_saga(defn, "saga-1", data if data is not None else {"order": 1}, now, begin=begin)
        self.state = self.last.state
        self.history = list(self.last.history)
        self.earlier: list[tuple[SagaState, SagaState]] = []  # each state decided on, and a copy of it

    def send(self, event: Event, now: float) -> Decision:
        before = copy.deepcopy(self.state)
        self.earlier.append((self.state, before))
        d = decide(self.defn, self.state, event, now)
        assert self.state == before, "decide() mutated its input state"
        for i, (old, copied) in enumerate(self.earlier):
            assert old == copied, f"decide() on {event!r} changed state {i} of the saga's run"
        if d.rejected is not None:
            assert d.state is self.state
            assert d.effects == []
            # the refusal is recorded, with its reason
            assert [h.kind for h in d.history] == ["refused"], d.history
            assert d.rejected in d.history[0].message
            assert d.history[0].at == now
        else:
            assert "refused" not in [h.kind for h in d.history]
            if observable(d.state) != observable(before):
                assert d.history, f"transition without a history entry on {event!r}"
        for e in d.effects:
            if isinstance(e, CancelAttempt):
                # the machine ends the attempt before asking for its cancellation
                assert before.steps[e.step].token == e.token != 0
                assert d.state.steps[e.step].token != e.token
        self.last = d
        self.state = d.state
        self.history += d.history
        return d

    def token(self, step: str) -> int:
        return self.state.steps[step].token

    def ok(self, step: str, now: float, result: Any = None, size: int = 0) -> Decision:
        return self.send(StepSucceeded(step, self.token(step), result, size), now)

    def fail(
        self, step: str, now: float, error: str = "boom", retryable: bool = True, uncertain: bool = False
    ) -> Decision:
        return self.send(StepFailed(step, self.token(step), error, retryable, uncertain), now)

    def status(self, step: str) -> StepStatus:
        return self.state.steps[step].status

    def statuses(self) -> dict[str, StepStatus]:
        return {n: s.status for n, s in self.state.steps.items()}


def runs(d: Decision) -> list[tuple[str, bool, int]]:
    """The attempts a decision starts (its RunStep effects)."""
    return [(e.step, e.compensation, e.attempt) for e in d.effects if isinstance(e, RunStep)]


def cancels(d: Decision) -> list[tuple[str, bool]]:
    """The attempts a decision cancels (its CancelAttempt effects)."""
    return [(e.step, e.compensation) for e in d.effects if isinstance(e, CancelAttempt)]


def kinds(d: Decision) -> list[str]:
    return [h.kind for h in d.history]


def linear(*, retry: RetryPolicy = NO_RETRY, **kw: Any) -> SagaDefinition:
    b = SagaBuilder("orders", **kw)
    b.step("reserve", act, undo, retry=retry)
    b.step("charge", act, undo, retry=retry)
    b.step("ship", act, undo, retry=retry)
    return b.build()


def diamond(**kw: Any) -> SagaDefinition:
    b = SagaBuilder("diamond")
    b.step("a", act, undo, retry=NO_RETRY, **kw)
    b.step("b", act, undo, after=["a"], retry=NO_RETRY, **kw)
    b.step("c", act, undo, after=["a"], retry=NO_RETRY, **kw)
    b.step("d", act, undo, after=["b", "c"], retry=NO_RETRY, **kw)
    return b.build()


# ---------------------------------------------------------------- start and progress


def test_new_saga_dispatches_every_root_with_a_token() -> None:
    b = SagaBuilder("orders", version=2)
    b.step("x", act, timeout=3.0)
    b.step("y", act, after=[])
    b.step("z", act, after=["x", "y"])
    r = Run(b.build(), now=10.0)
    d = r.last
    assert d.state.name == "orders" and d.state.version == 2
    assert d.state.status is SagaStatus.RUNNING
    assert d.effects == [
        RunStep("x", False, 1, r.token("x"), 3.0),
        RunStep("y", False, 1, r.token("y"), None),
    ]
    assert r.token("x") != 0 and r.token("y") != 0 and r.token("x") != r.token("y")
    assert r.statuses() == {"x": S.RUNNING, "y": S.RUNNING, "z": S.PENDING}
    assert r.state.steps["x"].attempts == 1 and r.state.steps["x"].started_at == 10.0
    assert r.state.steps["z"].token == 0
    assert kinds(d) == ["created", "started", "step_started", "step_started"]
    assert d.history[0].message == "saga orders v2 created"
    assert [(h.step, h.attempt) for h in d.history[2:]] == [("x", 1), ("y", 1)]
    assert all(h.at == 10.0 for h in d.history)
    # local attempts are timed by the runtime: nothing for the machine to wake for
    assert r.state.wake_at is None and r.state.created_at == 10.0


def test_new_saga_without_begin_is_pending_and_due_then_begin_starts_it() -> None:
    r = Run(linear(), now=5.0, begin=False)
    assert r.state.status is SagaStatus.PENDING
    assert r.last.effects == []
    assert kinds(r.last) == ["created"]
    assert r.state.wake_at == 5.0  # due at once
    d = r.send(Begin(), 6.0)
    assert r.state.status is SagaStatus.RUNNING
    assert runs(d) == [("reserve", False, 1)]
    assert kinds(d) == ["started", "step_started"]
    # a second Begin does nothing
    d = r.send(Begin(), 7.0)
    assert d.effects == [] and d.history == []


def test_dependents_wait_for_all_dependencies_and_parallel_branches_start_together() -> None:
    r = Run(diamond())
    assert runs(r.last) == [("a", False, 1)]
    d = r.ok("a", 1.0, {"a": 1})
    assert runs(d) == [("b", False, 1), ("c", False, 1)]
    assert r.token("b") != r.token("c")
    d = r.ok("b", 2.0)
    assert d.effects == []
    assert r.status("d") is S.PENDING
    d = r.ok("c", 3.0)
    assert runs(d) == [("d", False, 1)]


def test_success_completes_and_results_are_kept() -> None:
    r = Run(linear())
    r.ok("reserve", 1.0, {"sku": "x"})
    r.ok("charge", 2.0, {"paid": 10})
    assert step_results(r.state) == {"reserve": {"sku": "x"}, "charge": {"paid": 10}}
    d = r.ok("ship", 3.0, "shipped")
    assert r.state.status is SagaStatus.COMPLETED
    assert r.state.error is None and r.state.wake_at is None
    assert kinds(d) == ["step_completed", "completed"]
    assert d.history[0].message == "step 'ship' completed"
    assert r.state.steps["ship"].finished_at == 3.0
    assert step_results(r.state)["ship"] == "shipped"
    assert r.state.updated_at == 3.0


# ---------------------------------------------------------------- retries


def test_retry_is_scheduled_and_fires_only_when_due() -> None:
    r = Run(linear(retry=FAST))
    first = r.token("reserve")
    d = r.fail("reserve", 5.0, "db down")
    s = r.state.steps["reserve"]
    assert (s.status, s.token, s.wake_at, s.error, s.attempts) == (S.PENDING, 0, 6.0, "db down", 1)
    assert r.state.wake_at == 6.0
    assert d.effects == []
    assert kinds(d) == ["step_failed"]
    assert "attempt 1 failed: db down; retry in 1.000s" in d.history[0].message
    assert r.state.status is SagaStatus.RUNNING

    d = r.send(Timer(), 5.5)  # before wake_at: nothing happens
    assert d.effects == [] and d.history == []
    assert r.status("reserve") is S.PENDING

    d = r.send(Timer(), 6.0)
    assert runs(d) == [("reserve", False, 2)]
    assert r.token("reserve") not in (0, first)
    assert r.state.steps["reserve"].wake_at is None and r.state.wake_at is None

    r.fail("reserve", 7.0)
    assert r.state.steps["reserve"].wake_at == 9.0  # 1.0 * 2
    d = r.send(Timer(), 9.5)  # a late timer is fine
    assert runs(d) == [("reserve", False, 3)]
    d = r.fail("reserve", 10.0, "still down")
    assert r.status("reserve") is S.FAILED
    assert "step 'reserve' failed (after 3 attempts): still down" in d.history[0].message
    assert r.state.status is SagaStatus.COMPENSATED  # nothing completed, nothing to undo
    assert r.state.error == "step 'reserve' failed: still down"


def test_retry_delay_uses_the_policy_jitter_deterministically() -> None:
    policy = RetryPolicy(max_attempts=2, initial_delay=10.0, jitter=0.5)
    defn = SagaBuilder("j").step("a", act, retry=policy).build()
    r1, r2 = Run(defn), Run(defn)
    r1.fail("a", 0.0)
    r2.fail("a", 0.0)
    wake = r1.state.steps["a"].wake_at
    assert wake == r2.state.steps["a"].wake_at == policy.delay(1, "saga-1:a")
    assert wake is not None and 5.0 <= wake <= 15.0


def test_non_retryable_failure_fails_without_retry() -> None:
    r = Run(linear(retry=RetryPolicy(max_attempts=5)))
    r.ok("reserve", 1.0)
    d = r.fail("charge", 2.0, "card declined", retryable=False)
    assert r.status("charge") is S.FAILED
    assert r.state.steps["charge"].attempts == 1
    assert "step 'charge' failed (not retryable): card declined" in d.history[0].message
    assert r.state.status is SagaStatus.COMPENSATING
    assert runs(d) == [("reserve", True, 1)]


# ---------------------------------------------------------------- compensation


def test_failure_compensates_completed_steps_in_reverse_order() -> None:
    r = Run(linear())
    r.ok("reserve", 1.0)
    r.ok("charge", 2.0)
    d = r.fail("ship", 3.0, "truck broke")
    assert r.state.status is SagaStatus.COMPENSATING
    assert r.state.error == "step 'ship' failed: truck broke"
    assert kinds(d) == ["step_failed", "compensating", "compensation_started"]
    assert "compensation started: step 'ship' failed: truck broke" in d.history[1].message
    assert runs(d) == [("charge", True, 1)]  # not reserve yet, never the failed step
    assert r.statuses() == {"reserve": S.COMPLETED, "charge": S.COMPENSATING, "ship": S.FAILED}

    d = r.ok("charge", 4.0)
    assert r.status("charge") is S.COMPENSATED
    assert runs(d) == [("reserve", True, 1)]
    assert kinds(d) == ["compensation_completed", "compensation_started"]

    d = r.ok("reserve", 5.0)
    assert r.state.status is SagaStatus.COMPENSATED
    assert kinds(d) == ["compensation_completed", "compensated"]
    assert r.statuses() == {"reserve": S.COMPENSATED, "charge": S.COMPENSATED, "ship": S.FAILED}
    assert r.state.wake_at is None
    # the completed steps' results survive compensation (the audit trail)
    assert r.state.steps["reserve"].result is None


def test_independent_branches_are_compensated_in_parallel() -> None:
    r = Run(diamond())
    r.ok("a", 1.0)
    r.ok("b", 2.0)
    r.ok("c", 2.0)
    d = r.fail("d", 3.0)
    assert sorted(runs(d)) == [("b", True, 1), ("c", True, 1)]
    d = r.ok("c", 4.0)
    assert d.effects == []  # a waits for b too
    assert r.status("a") is S.COMPLETED
    d = r.ok("b", 5.0)
    assert runs(d) == [("a", True, 1)]
    r.ok("a", 6.0)
    assert r.state.status is SagaStatus.COMPENSATED


def test_running_step_is_cancelled_on_rollback_and_compensated_before_its_ancestors() -> None:
    r = Run(diamond())
    r.ok("a", 1.0)
    tok_c = r.token("c")
    d = r.fail("b", 2.0)
    assert r.state.status is SagaStatus.COMPENSATING
    # c's attempt in flight is not waited for: it is cancelled at once...
    assert d.effects[0] == CancelAttempt("c", False, tok_c, "the saga is rolled back (step 'b' failed: boom)")
    assert kinds(d) == ["step_failed", "compensating", "step_cancelled", "compensation_started"]
    c = r.state.steps["c"]
    assert (c.attempts, c.uncertain) == (1, True)  # a local function may have had its effect
    assert c.error == "cancelled: the saga is rolled back (step 'b' failed: boom)"
    # ...and, since it may have acted, undone before a (which waits for it)
    assert runs(d) == [("c", True, 1)]
    assert r.statuses() == {"a": S.COMPLETED, "b": S.FAILED, "c": S.COMPENSATING, "d": S.PENDING}
    assert r.send(StepSucceeded("c", tok_c, {"c": 1}), 2.5).stale  # the cancelled attempt reports late
    assert r.state.steps["c"].result is None
    d = r.ok("c", 4.0)
    assert runs(d) == [("a", True, 1)]
    r.ok("a", 5.0)
    assert r.state.status is SagaStatus.COMPENSATED
    assert r.statuses() == {"a": S.COMPENSATED, "b": S.FAILED, "c": S.COMPENSATED, "d": S.PENDING}


def test_late_failure_of_a_cancelled_attempt_is_stale_and_not_retried() -> None:
    b = SagaBuilder("fork")
    b.step("a", act, undo)
    b.step("b", act, undo, after=["a"], retry=NO_RETRY)
    b.step("c", act, undo, after=["a"], retry=RetryPolicy(max_attempts=5))
    r = Run(b.build())
    r.ok("a", 1.0)
    tok_c = r.token("c")
    d = r.fail("b", 2.0)
    assert cancels(d) == [("c", False)]
    assert runs(d) == [("c", True, 1)]  # cancelled, so uncertain, so compensated
    d = r.send(StepFailed("c", tok_c, "late"), 3.0)
    assert d.stale and d.effects == []
    assert kinds(d) == ["stale_rejected"]
    s = r.state.steps["c"]
    assert (s.status, s.attempts, s.compensation_attempts) == (S.COMPENSATING, 1, 1)
    d = r.ok("c", 4.0)
    assert runs(d) == [("a", True, 1)]


def test_steps_without_compensation_are_not_compensated() -> None:
    b = SagaBuilder("orders")
    b.step("reserve", act, undo)
    b.step("notify", act)  # nothing to undo
    b.step("charge", act, undo, retry=NO_RETRY)
    r = Run(b.build())
    r.ok("reserve", 1.0)
    r.ok("notify", 2.0)
    d = r.fail("charge", 3.0)
    assert runs(d) == [("reserve", True, 1)]
    r.ok("reserve", 4.0)
    assert r.state.status is SagaStatus.COMPENSATED
    assert r.status("notify") is S.COMPLETED
    assert not [h for h in r.history if h.step == "notify" and "compensation" in h.kind]


def test_step_waiting_for_a_retry_fails_when_the_rollback_starts() -> None:
    b = SagaBuilder("fork")
    b.step("a", act, undo)
    b.step("b", act, undo, after=["a"], retry=FAST)
    b.step("c", act, undo, after=["a"], retry=NO_RETRY)
    r = Run(b.build())
    r.ok("a", 1.0)
    r.fail("b", 2.0, "db down")  # b waits for its retry at 3.0
    assert r.state.steps["b"].wake_at == 3.0
    d = r.fail("c", 2.5)
    assert kinds(d) == ["step_failed", "compensating", "step_failed", "compensation_started"]
    assert d.history[2].message == "step 'b' failed: db down (not retried: the saga is rolled back)"
    assert d.history[2].step == "b" and d.history[2].attempt == 1
    s = r.state.steps["b"]
    assert (s.status, s.wake_at, s.finished_at, s.uncertain) == (S.FAILED, None, 2.5, False)
    # b failed outright (a certain error): there is nothing of it to undo
    assert runs(d) == [("a", True, 1)]
    assert cancels(d) == []
    d = r.send(Timer(), 3.0)
    assert d.effects == []
    assert r.status("b") is S.FAILED
    r.ok("a", 4.0)
    assert r.state.status is SagaStatus.COMPENSATED
    assert r.statuses() == {"a": S.COMPENSATED, "b": S.FAILED, "c": S.FAILED}


def test_compensation_retries_then_gives_up_and_the_saga_fails() -> None:
    comp_retry = RetryPolicy(max_attempts=2, initial_delay=2.0, jitter=0.0)
    b = SagaBuilder("orders")
    b.step("reserve", act, undo, compensation_retry=comp_retry)
    b.step("charge", act, undo, compensation_retry=comp_retry)
    b.step("ship", act, retry=NO_RETRY)
    r = Run(b.build())
    r.ok("reserve", 1.0)
    r.ok("charge", 2.0)
    r.fail("ship", 3.0)
    first = r.token("charge")
    d = r.fail("charge", 4.0, "refund api 500")
    s = r.state.steps["charge"]
    assert (s.status, s.token, s.wake_at, s.compensation_attempts) == (S.COMPENSATING, 0, 6.0, 1)
    assert r.state.wake_at == 6.0
    assert kinds(d) == ["compensation_failed"]
    assert "attempt 1 failed: refund api 500; retry in 2.000s" in d.history[0].message
    assert d.effects == []

    assert r.send(Timer(), 5.9).effects == []
    d = r.send(Timer(), 6.0)
    assert runs(d) == [("charge", True, 2)]
    assert r.token("charge") not in (0, first)

    d = r.fail("charge", 7.0, "refund api 500")
    assert r.status("charge") is S.COMPENSATION_FAILED
    assert r.status("reserve") is S.COMPLETED  # its dependent could not be undone: left alone
    assert r.state.status is SagaStatus.FAILED
    assert r.state.error == "compensation of step 'charge' gave up: refund api 500"
    assert kinds(d) == ["compensation_failed", "failed"]
    assert "gave up (after 2 attempts)" in d.history[0].message
    assert r.state.wake_at is None


def test_non_retryable_compensation_failure_gives_up_at_once() -> None:
    r = Run(linear())
    r.ok("reserve", 1.0)
    r.fail("charge", 2.0)
    d = r.fail("reserve", 3.0, "gone", retryable=False)
    assert r.status("reserve") is S.COMPENSATION_FAILED
    assert "gave up (not retryable): gone" in d.history[0].message
    assert r.state.status is SagaStatus.FAILED


def test_independent_branch_is_still_compensated_when_another_gives_up() -> None:
    b = SagaBuilder("two_roots")
    b.step("a", act, undo, compensation_retry=NO_RETRY)
    b.step("b", act, undo, after=[])
    b.step("c", act, after=["a", "b"], retry=NO_RETRY)
    r = Run(b.build())
    r.ok("a", 1.0)
    r.ok("b", 1.0)
    d = r.fail("c", 2.0)
    assert sorted(runs(d)) == [("a", True, 1), ("b", True, 1)]
    d = r.fail("a", 3.0)
    assert r.state.status is SagaStatus.COMPENSATING  # b is still compensating
    d = r.ok("b", 4.0)
    assert r.state.status is SagaStatus.FAILED
    assert r.statuses() == {"a": S.COMPENSATION_FAILED, "b": S.COMPENSATED, "c": S.FAILED}


# ---------------------------------------------------------------- stale completions


def test_completion_with_a_wrong_token_is_rejected_and_recorded() -> None:
    r = Run(linear())
    before = copy.deepcopy(r.state)
    good = r.token("reserve")
    d = r.send(StepSucceeded("reserve", good + 100, {"x": 1}), 1.0)
    assert d.stale and d.rejected is None
    assert d.effects == []
    assert kinds(d) == ["stale_rejected"]
    assert d.history[0].step == "reserve"
    assert f"token {good + 100} rejected: current token is {good}" in d.history[0].message
    # the saga itself is untouched (only its updated_at moves with the recorded refusal)
    assert dataclasses.replace(d.state, updated_at=before.updated_at) == before


@pytest.mark.parametrize(
    "event",
    [
        StepFailed("charge", 1, "x"),  # a step that is not running
        StepSucceeded("nope", 1),  # a step that does not exist
        StepFailed("reserve", 0, "x"),  # token 0 is never current
    ],
)
def test_completion_for_no_current_attempt_is_stale(event: Event) -> None:
    r = Run(linear())
    before = copy.deepcopy(r.state)
    d = r.send(event, 1.0)
    assert d.stale
    assert kinds(d) == ["stale_rejected"]
    assert "current token is" in d.history[0].message
    assert dataclasses.replace(d.state, updated_at=before.updated_at) == before


def test_duplicate_completion_is_stale() -> None:
    r = Run(linear())
    tok = r.token("reserve")
    r.send(StepSucceeded("reserve", tok, 1), 1.0)
    d = r.send(StepSucceeded("reserve", tok, 2), 1.5)
    assert d.stale
    assert "current token is none" in d.history[0].message
    assert r.state.steps["reserve"].result == 1
    assert r.state.steps["charge"].attempts == 1  # not dispatched twice


def test_completion_after_abort_is_stale() -> None:
    r = Run(linear())
    tok = r.token("reserve")
    d = r.send(Abort(reason="stop"), 1.0)
    assert d.effects == [CancelAttempt("reserve", False, tok, "the saga was aborted")]
    s = r.state.steps["reserve"]
    assert (s.status, s.token, s.uncertain) == (S.FAILED, 0, True)
    assert s.error == "cancelled: the saga was aborted"
    d = r.send(StepSucceeded("reserve", tok, {"x": 1}), 2.0)
    assert d.stale
    assert r.state.status is SagaStatus.ABORTED
    assert r.status("reserve") is S.FAILED
    assert r.state.steps["reserve"].result is None


# ---------------------------------------------------------------- pivot


def pivot_saga(
    retry: RetryPolicy = RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0.0),
) -> SagaDefinition:
    b = SagaBuilder("pivoted")
    b.step("reserve", act, undo, retry=NO_RETRY)
    b.step("charge", act, undo, pivot=True, retry=NO_RETRY)
    b.step("ship", act, retry=retry)
    return b.build()


def test_failure_before_the_pivot_completes_compensates() -> None:
    r = Run(pivot_saga())
    r.ok("reserve", 1.0)
    d = r.fail("charge", 2.0)
    assert r.state.status is SagaStatus.COMPENSATING
    assert runs(d) == [("reserve", True, 1)]


def test_failure_after_the_pivot_is_retried_by_its_policy_then_fails_the_saga() -> None:
    r = Run(pivot_saga())  # ship: max_attempts 2, 1s apart
    r.ok("reserve", 1.0)
    r.ok("charge", 2.0)
    d = r.fail("ship", 3.0, "carrier down")
    assert r.status("ship") is S.PENDING and r.state.status is SagaStatus.RUNNING
    assert r.state.steps["ship"].wake_at == 4.0
    d = r.send(Timer(), 4.0)
    assert runs(d) == [("ship", False, 2)]
    d = r.fail("ship", 5.0, "carrier down")  # the policy's last attempt: no more retries
    assert r.status("ship") is S.FAILED
    assert "step 'ship' failed (after 2 attempts): carrier down" in d.history[0].message
    assert r.state.status is SagaStatus.FAILED
    assert r.state.error == (
        "step 'ship' failed after pivot step 'charge' completed: carrier down; "
        "the saga cannot be rolled back: retry or skip the step"
    )
    assert kinds(d) == ["step_failed", "failed"]
    assert d.effects == [] and r.state.wake_at is None
    assert not [h for h in r.history if h.kind in ("compensating", "compensation_started")]
    # an operator takes it from there
    d = r.send(Retry(reason="carrier is back"), 10.0)
    assert runs(d) == [("ship", False, 1)]
    r.ok("ship", 11.0)
    assert r.state.status is SagaStatus.COMPLETED


def test_non_retryable_failure_after_the_pivot_fails_the_saga_without_compensation() -> None:
    r = Run(pivot_saga())
    r.ok("reserve", 1.0)
    r.ok("charge", 2.0)
    d = r.fail("ship", 3.0, "address invalid", retryable=False)
    assert d.effects == []
    assert r.state.status is SagaStatus.FAILED
    assert r.status("ship") is S.FAILED
    assert r.statuses()["reserve"] is S.COMPLETED and r.statuses()["charge"] is S.COMPLETED
    assert kinds(d) == ["step_failed", "failed"]
    assert r.state.error == (
        "step 'ship' failed after pivot step 'charge' completed: address invalid; "
        "the saga cannot be rolled back: retry or skip the step"
    )
    assert d.history[1].message == r.state.error and d.history[1].step == "ship"


def test_compensate_is_rejected_after_the_pivot() -> None:
    r = Run(pivot_saga())
    r.ok("reserve", 1.0)
    before = r.send(Compensate(reason="customer asked"), 1.5)
    assert before.rejected is None  # allowed before the pivot
    r = Run(pivot_saga())
    r.ok("reserve", 1.0)
    r.ok("charge", 2.0)
    d = r.send(Compensate(reason="customer asked"), 3.0)
    assert d.rejected == "pivot step 'charge' has completed: the saga can no longer be rolled back"
    assert r.state.status is SagaStatus.RUNNING


# ---------------------------------------------------------------- deadline


def test_timer_after_the_deadline_cancels_the_running_step_and_compensates() -> None:
    r = Run(linear(deadline=10.0), now=100.0)
    assert r.state.deadline_at == 110.0
    assert r.state.wake_at == 110.0
    r.ok("reserve", 101.0)
    assert r.state.wake_at == 110.0
    tok = r.token("charge")
    d = r.send(Timer(), 109.9)
    assert d.effects == [] and d.history == []
    d = r.send(Timer(), 110.0)
    assert r.state.status is SagaStatus.COMPENSATING
    assert r.state.error == "deadline of 10.0s exceeded"
    assert kinds(d) == ["compensating", "step_cancelled", "compensation_started"]
    assert "compensation started: deadline of 10.0s exceeded" in d.history[0].message
    assert d.history[1].step == "charge"
    assert "step 'charge' attempt 1 cancelled: the saga is rolled back (deadline of 10.0s exceeded)" in (
        d.history[1].message
    )
    # charge is not waited for: cancelled, and undone since it may have acted
    assert d.effects[0] == CancelAttempt("charge", False, tok, "the saga is rolled back (deadline of 10.0s exceeded)")
    assert runs(d) == [("charge", True, 1)]
    assert r.state.steps["charge"].uncertain
    assert r.send(StepSucceeded("charge", tok), 110.5).stale
    r.ok("charge", 112.0)
    r.ok("reserve", 113.0)
    assert r.state.status is SagaStatus.COMPENSATED
    assert r.status("ship") is S.PENDING


def test_deadline_is_checked_on_any_event_and_no_step_starts_after_it() -> None:
    r = Run(linear(deadline=10.0))
    d = r.ok("reserve", 12.0)  # the completion arrives after the deadline
    assert r.state.status is SagaStatus.COMPENSATING
    assert ("charge", False, 1) not in runs(d)
    assert runs(d) == [("reserve", True, 1)]


def test_deadline_is_ignored_after_the_pivot_and_does_not_keep_the_saga_due() -> None:
    defn = SagaBuilder("p", deadline=10.0)
    defn.step("reserve", act, undo, pivot=True)
    defn.step("ship", act, retry=FAST)
    r = Run(defn.build())
    r.ok("reserve", 1.0)
    d = r.send(Timer(), 20.0)
    assert d.history == []
    assert r.state.status is SagaStatus.RUNNING
    # once the saga cannot be rolled back its deadline is moot: it must not stay due
    assert r.state.wake_at is None
    r.fail("ship", 21.0)
    assert r.state.wake_at == 22.0
    r.send(Timer(), 22.0)
    r.ok("ship", 23.0)
    assert r.state.status is SagaStatus.COMPLETED


# ---------------------------------------------------------------- payload limit


def test_oversized_result_fails_the_step_without_retry_and_it_is_compensated() -> None:
    r = Run(linear(retry=RetryPolicy(max_attempts=5), max_payload_bytes=100))
    d = r.ok("reserve", 1.0, {"big": "x" * 200}, size=101)
    assert kinds(d)[:3] == ["step_failed", "compensating", "compensation_started"]
    s = r.state.steps["reserve"]
    assert s.status is S.COMPENSATING
    assert s.result is None and s.attempts == 1
    assert s.uncertain  # the action ran to its end: its effect happened
    err = s.error
    assert err is not None
    assert "result of step 'reserve' is 101 bytes, over the limit of 100 bytes" in err
    assert "max_payload_bytes" in err
    assert "not retryable" in d.history[0].message
    assert r.state.status is SagaStatus.COMPENSATING
    assert runs(d) == [("reserve", True, 1)]
    r.ok("reserve", 2.0)
    assert r.state.status is SagaStatus.COMPENSATED


def test_oversized_result_of_a_step_without_compensation_just_fails_it() -> None:
    b = SagaBuilder("big", max_payload_bytes=100)
    b.step("a", act, undo)
    b.step("b", act, retry=RetryPolicy(max_attempts=5))
    r = Run(b.build())
    r.ok("a", 1.0)
    d = r.ok("b", 2.0, "x" * 200, size=101)
    assert r.status("b") is S.FAILED and r.state.steps["b"].uncertain
    assert runs(d) == [("a", True, 1)]  # only a has an undo


def test_result_at_the_payload_limit_is_accepted() -> None:
    r = Run(linear(max_payload_bytes=100))
    r.ok("reserve", 1.0, "x", size=100)
    assert r.status("reserve") is S.COMPLETED


def test_compensation_result_is_not_subject_to_the_payload_limit() -> None:
    # a compensation's result is not stored: a large one must not fail an undo that happened
    r = Run(linear(max_payload_bytes=100))
    r.ok("reserve", 1.0)
    r.fail("charge", 2.0)
    r.ok("reserve", 3.0, "y" * 500, size=502)
    assert r.status("reserve") is S.COMPENSATED
    assert r.state.status is SagaStatus.COMPENSATED


# ---------------------------------------------------------------- message steps


def test_message_step_reply_deadline_fails_the_attempt_and_retries() -> None:
    b = SagaBuilder("msg")
    b.step("approve", Reply(), timeout=5.0, retry=FAST)
    r = Run(b.build(), now=0.0)
    assert r.state.steps["approve"].wake_at == 5.0 and r.state.wake_at == 5.0
    assert r.send(Timer(), 4.0).effects == []
    tok = r.token("approve")
    d = r.send(Timer(), 5.0)
    assert "timed out after 5.0s waiting for the reply" in d.history[0].message
    assert r.status("approve") is S.PENDING
    assert r.state.steps["approve"].wake_at == 6.0
    assert r.send(StepSucceeded("approve", tok), 5.5).stale  # the late reply
    d = r.send(Timer(), 6.0)
    assert runs(d) == [("approve", False, 2)]


# ---------------------------------------------------------------- resume


def test_resume_redispatches_local_attempts_with_a_new_token() -> None:
    b = SagaBuilder("mixed")
    b.step("local", act, undo, timeout=2.0)
    b.step("remote", Reply(), after=[], timeout=50.0)
    r = Run(b.build())
    old = r.token("local")
    remote = r.token("remote")
    d = r.send(Resume(), 1.0)
    assert [(e.step, e.compensation, e.attempt, e.timeout) for e in d.effects] == [("local", False, 1, 2.0)]
    new = r.token("local")
    assert new not in (0, old, remote)
    assert d.effects[0].token == new
    assert r.token("remote") == remote  # the reply may still come: nothing to resend
    assert kinds(d) == ["resumed"]
    assert "step 'local' attempt 1 runs again" in d.history[0].message
    assert r.state.steps["local"].attempts == 1
    assert r.send(StepSucceeded("local", old), 2.0).stale
    assert not r.send(StepSucceeded("local", new), 2.0).stale
    assert r.status("local") is S.COMPLETED


def test_resume_redispatches_a_running_compensation() -> None:
    r = Run(linear())
    r.ok("reserve", 1.0)
    r.fail("charge", 2.0)
    old = r.token("reserve")
    d = r.send(Resume(), 3.0)
    assert runs(d) == [("reserve", True, 1)]
    assert "compensation of step 'reserve' attempt 1 runs again" in d.history[0].message
    assert r.send(StepSucceeded("reserve", old), 4.0).stale
    r.ok("reserve", 4.0)
    assert r.state.status is SagaStatus.COMPENSATED


def test_resume_of_a_pending_saga_begins_it() -> None:
    r = Run(linear(), begin=False)
    d = r.send(Resume(), 1.0)
    assert r.state.status is SagaStatus.RUNNING
    assert runs(d) == [("reserve", False, 1)]


def test_resume_with_nothing_in_flight_does_nothing() -> None:
    r = Run(linear(retry=FAST))
    r.fail("reserve", 1.0)
    d = r.send(Resume(), 1.5)
    assert d.effects == [] and d.history == []


# ---------------------------------------------------------------- admin: retry


def test_retry_of_a_failed_compensation() -> None:
    r = Run(linear(), now=0.0)
    r.ok("reserve", 1.0)
    r.fail("charge", 2.0)
    r.fail("reserve", 3.0, "nope", retryable=False)
    assert r.state.status is SagaStatus.FAILED
    d = r.send(Retry(reason="inventory service is back", actor="alice"), 10.0)
    assert d.rejected is None
    assert r.state.status is SagaStatus.COMPENSATING
    assert r.state.error is None
    assert runs(d)[0][:2] == ("reserve", True)
    assert r.status("reserve") is S.COMPENSATING and r.token("reserve") != 0
    assert kinds(d)[0] == "retry"
    msg = d.history[0].message
    assert "reserve" in msg and "by alice: inventory service is back" in msg
    r.ok("reserve", 11.0)
    assert r.state.status is SagaStatus.COMPENSATED


def test_retry_of_a_step_failed_after_the_pivot() -> None:
    r = Run(pivot_saga())
    r.ok("reserve", 1.0)
    r.ok("charge", 2.0)
    r.fail("ship", 3.0, retryable=False)
    assert r.state.status is SagaStatus.FAILED
    d = r.send(Retry(reason="address fixed"), 4.0)
    assert d.rejected is None
    assert r.state.status is SagaStatus.RUNNING and r.state.error is None
    assert r.status("ship") is S.RUNNING
    assert [(e.step, e.compensation) for e in d.effects] == [("ship", False)]
    assert "retry of steps ['ship'] by operator: address fixed" in d.history[0].message
    r.ok("ship", 5.0)
    assert r.state.status is SagaStatus.COMPLETED


def test_retry_runs_a_waiting_step_now() -> None:
    r = Run(linear(retry=RetryPolicy(max_attempts=3, initial_delay=100.0, max_delay=100.0)))
    r.fail("reserve", 1.0)
    assert r.state.steps["reserve"].wake_at is not None and r.state.steps["reserve"].wake_at > 50
    d = r.send(Retry(actor="bob"), 2.0)
    assert runs(d) == [("reserve", False, 2)]
    assert "retry of waiting steps ['reserve'] now by bob" in d.history[0].message


def test_retry_runs_a_waiting_compensation_now() -> None:
    comp_retry = RetryPolicy(max_attempts=3, initial_delay=100.0, max_delay=100.0)
    b = SagaBuilder("w")
    b.step("a", act, undo, compensation_retry=comp_retry)
    b.step("b", act, retry=NO_RETRY)
    r = Run(b.build())
    r.ok("a", 1.0)
    r.fail("b", 2.0)
    r.fail("a", 3.0)
    d = r.send(Retry(), 4.0)
    assert runs(d) == [("a", True, 2)]


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("running", "saga is running and no step is waiting for a retry: nothing to retry"),
        ("completed", "saga is completed: only a failed saga or a waiting step can be retried"),
        ("compensated", "saga is compensated: only a failed saga or a waiting step can be retried"),
        ("aborted", "saga is aborted: only a failed saga or a waiting step can be retried"),
    ],
)
def test_retry_rejections(setup: str, reason: str) -> None:
    r = Run(linear())
    if setup == "completed":
        for n, t in (("reserve", 1.0), ("charge", 2.0), ("ship", 3.0)):
            r.ok(n, t)
    elif setup == "compensated":
        r.fail("reserve", 1.0)
    elif setup == "aborted":
        r.send(Abort(), 1.0)
    d = r.send(Retry(), 5.0)
    assert d.rejected == reason


# ---------------------------------------------------------------- admin: skip


def test_skip_of_a_waiting_step_gives_its_result_to_dependents() -> None:
    r = Run(linear(retry=FAST))
    r.ok("reserve", 1.0)
    r.fail("charge", 2.0)
    assert r.status("charge") is S.PENDING
    d = r.send(Skip("charge", result={"paid": 0}, reason="paid by phone", actor="carol"), 2.5)
    assert d.rejected is None
    assert r.status("charge") is S.SKIPPED
    assert step_results(r.state)["charge"] == {"paid": 0}
    assert runs(d) == [("ship", False, 1)]
    assert kinds(d)[0] == "skip"
    msg = d.history[0].message
    assert "step 'charge' (pending) skipped" in msg and "by carol: paid by phone" in msg
    assert d.history[0].step == "charge"
    r.ok("ship", 3.0)
    assert r.state.status is SagaStatus.COMPLETED


def test_skip_of_a_message_step_waiting_for_its_reply_makes_the_reply_stale() -> None:
    b = SagaBuilder("msg")
    b.step("approve", Reply(), timeout=5.0)
    b.step("ship", act)
    r = Run(b.build())
    tok = r.token("approve")
    d = r.send(Skip("approve", result=7), 1.0)
    assert d.rejected is None
    assert runs(d) == [("ship", False, 1)]
    s = r.state.steps["approve"]
    assert (s.status, s.token, s.wake_at) == (S.SKIPPED, 0, None)
    assert r.send(StepSucceeded("approve", tok, 8), 2.0).stale
    assert step_results(r.state) == {"approve": 7}


def test_skip_of_a_running_local_step_is_refused() -> None:
    r = Run(linear())
    d = r.send(Skip("reserve", result=7, actor="carol"), 1.0)
    assert d.rejected == (
        "step 'reserve' is executing (an attempt is in flight): skip is refused while it runs; "
        "wait for the attempt to end, or compensate or abort the saga, which cancel it"
    )
    assert d.history[0].step == "reserve"
    assert d.history[0].message.startswith("skip (by carol) refused: step 'reserve' is executing")
    r.ok("reserve", 2.0, 8)
    assert step_results(r.state) == {"reserve": 8}


def test_skip_of_a_running_local_compensation_is_refused() -> None:
    r = Run(linear())
    r.ok("reserve", 1.0)
    r.fail("charge", 2.0)
    assert r.status("reserve") is S.COMPENSATING and r.token("reserve")
    d = r.send(Skip("reserve"), 3.0)
    assert d.rejected is not None
    assert "step 'reserve' is executing (its compensation is in flight)" in d.rejected
    r.ok("reserve", 4.0)
    assert r.state.status is SagaStatus.COMPENSATED


def test_skip_of_a_failed_step_after_the_pivot_resumes_the_saga() -> None:
    b = SagaBuilder("p")
    b.step("charge", act, undo, pivot=True)
    b.step("ship", act, retry=NO_RETRY)
    b.step("notify", act)
    r = Run(b.build())
    r.ok("charge", 1.0)
    r.fail("ship", 2.0, retryable=False)
    assert r.state.status is SagaStatus.FAILED
    d = r.send(Skip("ship", result={"manual": True}), 3.0)
    assert r.state.status is SagaStatus.RUNNING and r.state.error is None
    assert runs(d) == [("notify", False, 1)]


def pivot_with_siblings() -> SagaDefinition:
    """A pivot running alongside two sibling roots; z needs all three."""
    b = SagaBuilder("p")
    b.step("pay", act, undo, pivot=True)
    b.step("x", act, after=[], retry=FAST)
    b.step("y", act, after=[], retry=FAST)
    b.step("z", act, after=["pay", "x", "y"])
    return b.build()


def test_skip_of_one_of_two_failed_steps_after_the_pivot_keeps_the_saga_failed() -> None:
    r = Run(pivot_with_siblings())
    r.fail("x", 1.0, "bad x", retryable=False)  # the rollback waits for pay
    r.fail("y", 2.0, "bad y")  # not retried while the rollback waits
    r.ok("pay", 3.0)  # the rollback is refused: two steps failed after the pivot
    assert r.state.status is SagaStatus.FAILED
    assert r.statuses() == {"pay": S.COMPLETED, "x": S.FAILED, "y": S.FAILED, "z": S.PENDING}
    d = r.send(Skip("x", result=1), 4.0)
    assert d.rejected is None and d.effects == []
    # y still needs an operator: the saga must not look running with nothing to run
    assert r.state.status is SagaStatus.FAILED
    assert r.state.error is not None
    assert "step 'y' failed after" in r.state.error and "bad y" in r.state.error
    assert "retry or skip the step" in r.state.error
    d = r.send(Skip("y", result=2), 5.0)
    assert r.state.status is SagaStatus.RUNNING and r.state.error is None
    assert runs(d) == [("z", False, 1)]
    r.ok("z", 6.0)
    assert r.state.status is SagaStatus.COMPLETED


def test_retry_after_the_pivot_reruns_every_failed_step() -> None:
    r = Run(pivot_with_siblings())
    r.fail("x", 1.0, retryable=False)
    r.fail("y", 2.0)
    r.ok("pay", 3.0)
    assert r.state.status is SagaStatus.FAILED
    d = r.send(Retry(), 4.0)
    assert sorted(runs(d)) == [("x", False, 1), ("y", False, 1)]
    assert r.state.status is SagaStatus.RUNNING
    r.ok("x", 5.0)
    d = r.ok("y", 6.0)
    assert runs(d) == [("z", False, 1)]


def test_failure_after_the_pivot_stops_other_attempts_in_flight_until_retried() -> None:
    b = SagaBuilder("p")
    b.step("pay", act, undo, pivot=True)
    b.step("x", act, retry=NO_RETRY)
    b.step("y", act, after=["pay"])
    r = Run(b.build())
    r.ok("pay", 1.0)
    tok_y = r.token("y")
    d = r.fail("x", 2.0, "bad x")
    assert r.state.status is SagaStatus.FAILED
    assert cancels(d) == [("y", False)]
    assert r.status("y") is S.PENDING and r.token("y") == 0
    assert r.send(StepSucceeded("y", tok_y), 2.5).stale
    assert r.state.status is SagaStatus.FAILED
    d = r.send(Retry(), 3.0)
    assert sorted(runs(d)) == [("x", False, 1), ("y", False, 2)]


def test_skip_of_a_failed_compensation_marks_it_resolved() -> None:
    r = Run(linear())
    r.ok("reserve", 1.0)
    r.ok("charge", 2.0)
    r.fail("ship", 3.0)
    r.fail("charge", 4.0, retryable=False)
    assert r.state.status is SagaStatus.FAILED
    d = r.send(Skip("charge", reason="refunded by hand"), 5.0)
    assert "compensation marked resolved" in d.history[0].message
    assert r.status("charge") is S.SKIPPED
    assert r.state.status is SagaStatus.COMPENSATING
    assert runs(d) == [("reserve", True, 1)]
    r.ok("reserve", 6.0)
    assert r.state.status is SagaStatus.COMPENSATED


def test_skip_rejections() -> None:
    r = Run(linear())
    d = r.send(Skip("chrge"), 1.0)
    assert d.rejected == "saga orders has no step 'chrge' (steps: reserve, charge, ship)"
    r.ok("reserve", 1.0)
    d = r.send(Skip("reserve"), 2.0)
    assert d.rejected == "step 'reserve' is completed: only a waiting or failed step can be skipped"
    r.ok("charge", 3.0)
    r.ok("ship", 4.0)
    d = r.send(Skip("ship"), 5.0)
    assert d.rejected == "saga is completed: steps of a finished saga cannot be skipped"


# ---------------------------------------------------------------- admin: compensate


def test_compensate_a_running_saga() -> None:
    r = Run(diamond())
    r.ok("a", 1.0)
    r.ok("b", 2.0)  # c still running
    tok_c = r.token("c")
    d = r.send(Compensate(reason="fraud suspected", actor="dave"), 3.0)
    assert d.rejected is None
    assert r.state.status is SagaStatus.COMPENSATING
    assert kinds(d)[:2] == ["compensate", "step_cancelled"]
    assert "compensation requested by dave: fraud suspected" in d.history[0].message
    assert r.state.error == "compensation requested by dave: fraud suspected"
    reason = "the saga is rolled back (compensation requested by dave: fraud suspected)"
    assert d.effects[0] == CancelAttempt("c", False, tok_c, reason)
    assert r.state.steps["c"].error == f"cancelled: {reason}"
    # the cancelled c may have acted: it is compensated with b; a waits for both
    assert sorted(runs(d)) == [("b", True, 1), ("c", True, 1)]
    r.ok("b", 4.0)
    d = r.ok("c", 5.0)
    assert runs(d) == [("a", True, 1)]
    r.ok("a", 7.0)
    assert r.state.status is SagaStatus.COMPENSATED
    assert r.status("d") is S.PENDING


def test_compensate_a_pending_saga_finishes_at_once() -> None:
    r = Run(linear(), begin=False)
    r.send(Compensate(), 1.0)
    assert r.state.status is SagaStatus.COMPENSATED


@pytest.mark.parametrize("setup", ["completed", "compensating", "compensated", "aborted", "failed"])
def test_compensate_rejected_unless_pending_or_running(setup: str) -> None:
    r = Run(linear())
    if setup == "completed":
        for n, t in (("reserve", 1.0), ("charge", 2.0), ("ship", 3.0)):
            r.ok(n, t)
    elif setup == "compensating":
        r.ok("reserve", 1.0)
        r.fail("charge", 2.0)
    elif setup == "compensated":
        r.fail("reserve", 1.0)
    elif setup == "aborted":
        r.send(Abort(), 1.0)
    elif setup == "failed":
        r.ok("reserve", 1.0)
        r.fail("charge", 2.0)
        r.fail("reserve", 3.0, retryable=False)
    assert r.state.status.value == setup
    d = r.send(Compensate(), 5.0)
    assert d.rejected == f"saga is {setup}: only a pending or running saga can be compensated"


# ---------------------------------------------------------------- admin: abort


def test_abort_cancels_attempts_in_flight_and_stops_the_saga() -> None:
    r = Run(diamond(timeout=None))
    r.ok("a", 1.0)
    tok_b, tok_c = r.token("b"), r.token("c")
    d = r.send(Abort(reason="duplicate order", actor="erin"), 2.0)
    assert d.rejected is None
    assert d.effects == [
        CancelAttempt("b", False, tok_b, "the saga was aborted"),
        CancelAttempt("c", False, tok_c, "the saga was aborted"),
    ]
    assert r.state.status is SagaStatus.ABORTED
    assert all(s.token == 0 and s.wake_at is None for s in r.state.steps.values())
    assert r.state.wake_at is None
    assert r.state.error == "aborted by erin: duplicate order"
    assert kinds(d) == ["abort", "step_cancelled", "step_cancelled"]
    assert d.history[0].message == "aborted by erin: duplicate order"
    assert "step 'b' attempt 1 cancelled: the saga was aborted; it may have had its effect" in d.history[1].message
    assert r.statuses() == {"a": S.COMPLETED, "b": S.FAILED, "c": S.FAILED, "d": S.PENDING}  # no compensation
    assert r.state.steps["b"].uncertain and r.state.steps["b"].error == "cancelled: the saga was aborted"
    d = r.send(Abort(), 3.0)
    assert d.rejected == "saga is aborted: it has already finished"
    assert r.send(Timer(), 100.0).effects == []
    assert r.send(StepSucceeded("b", tok_b), 101.0).stale


def test_abort_of_a_waiting_retry_cancels_it() -> None:
    r = Run(linear(retry=FAST))
    r.fail("reserve", 1.0)
    r.send(Abort(), 1.5)
    assert r.state.wake_at is None
    assert r.send(Timer(), 5.0).effects == []


def test_abort_of_a_failed_saga_is_allowed_and_of_a_completed_one_rejected() -> None:
    r = Run(linear())
    r.ok("reserve", 1.0)
    r.fail("charge", 2.0)
    r.fail("reserve", 3.0, retryable=False)
    assert r.send(Abort(reason="written off"), 4.0).rejected is None
    assert r.state.status is SagaStatus.ABORTED

    r = Run(SagaBuilder("one").step("a", act).build())
    r.ok("a", 1.0)
    assert r.send(Abort(), 2.0).rejected == "saga is completed: it has already finished"


# ---------------------------------------------------------------- purity


def test_decide_never_mutates_its_input() -> None:
    defn = diamond()
    start = new_saga(defn, "s", {"k": [1, 2]}, 0.0).state
    frozen = copy.deepcopy(start)
    tok = start.steps["a"].token
    for event in (
        StepSucceeded("a", tok, {"r": 1}),
        StepFailed("a", tok, "x", retryable=False),
        StepFailed("a", tok, "x"),
        Timer(),
        Resume(),
        Retry(),
        Skip("b", result=1),
        Compensate(),
        Abort(),
    ):
        decide(defn, start, event, 50.0)
        assert start == frozen, event
    assert start.steps["a"].status is S.RUNNING


def test_same_inputs_give_the_same_decision() -> None:
    defn = diamond()
    st = new_saga(defn, "s", None, 0.0).state
    ev = StepSucceeded("a", st.steps["a"].token, 1)
    a, b = decide(defn, st, ev, 3.0), decide(defn, st, ev, 3.0)
    assert a.state == b.state and a.effects == b.effects and a.history == b.history


# ---------------------------------------------------------------- rollback cancels attempts in flight


def message_saga(action: StepAction, *, retry: RetryPolicy = NO_RETRY, with_undo: bool = True) -> SagaDefinition:
    """reserve, then *action* (with or without a local compensation) beside a local root 'other'."""
    b = SagaBuilder("msg")
    b.step("reserve", act, undo)
    if with_undo:
        b.step("remote", action, undo, retry=retry)
    else:
        b.step("remote", action, retry=retry)
    b.step("other", act, after=[], retry=NO_RETRY)
    return b.build()


def test_compensate_cancels_a_running_local_step_and_compensates_it() -> None:
    r = Run(linear())
    r.ok("reserve", 1.0)
    tok = r.token("charge")
    d = r.send(Compensate(reason="customer asked"), 2.0)
    reason = "the saga is rolled back (compensation requested by operator: customer asked)"
    assert d.effects[0] == CancelAttempt("charge", False, tok, reason)
    assert kinds(d) == ["compensate", "step_cancelled", "compensation_started"]
    assert d.history[1].step == "charge" and d.history[1].attempt == 1
    assert d.history[1].message == f"step 'charge' attempt 1 cancelled: {reason}; it may have had its effect"
    s = r.state.steps["charge"]
    assert (s.status, s.token, s.error, s.uncertain) == (
        S.COMPENSATING,
        d.effects[1].token,
        f"cancelled: {reason}",
        True,
    )
    assert s.finished_at == 2.0 and s.attempts == 1
    # charge may have acted: it is undone first, then reserve
    assert runs(d) == [("charge", True, 1)]
    late = r.send(StepSucceeded("charge", tok, {"paid": 1}), 2.5)
    assert late.stale and late.effects == []
    assert r.state.steps["charge"].result is None
    d = r.ok("charge", 3.0)
    assert runs(d) == [("reserve", True, 1)]
    r.ok("reserve", 4.0)
    assert r.state.status is SagaStatus.COMPENSATED
    assert r.statuses() == {"reserve": S.COMPENSATED, "charge": S.COMPENSATED, "ship": S.PENDING}


def test_rollback_cancels_a_wait_for_step_without_uncertainty() -> None:
    r = Run(message_saga(wait_for(Approved, timeout=60.0)))
    r.ok("reserve", 1.0)
    tok = r.token("remote")
    assert r.state.steps["remote"].wake_at == 61.0
    d = r.fail("other", 2.0, "no stock")
    assert cancels(d) == [("remote", False)]
    assert d.effects[0].token == tok
    s = r.state.steps["remote"]
    assert (s.status, s.token, s.wake_at, s.uncertain) == (S.FAILED, 0, None, False)
    assert s.error is not None and s.error.startswith("cancelled: ")
    cancelled = [h for h in d.history if h.kind == "step_cancelled"]
    assert len(cancelled) == 1 and "may have had its effect" not in cancelled[0].message
    # waiting for an event did nothing: there is nothing of it to undo
    assert runs(d) == [("reserve", True, 1)]
    assert r.send(StepSucceeded("remote", tok), 3.0).stale
    r.ok("reserve", 4.0)
    assert r.state.status is SagaStatus.COMPENSATED
    assert r.statuses() == {"reserve": S.COMPENSATED, "remote": S.FAILED, "other": S.FAILED}


def test_rollback_cancels_a_send_step_and_compensates_it() -> None:
    r = Run(message_saga(send(Ship, success=Shipped, reply_timeout=60.0)))
    r.ok("reserve", 1.0)
    tok = r.token("remote")
    d = r.fail("other", 2.0, "no stock")
    assert d.effects[0] == CancelAttempt(
        "remote", False, tok, "the saga is rolled back (step 'other' failed: no stock)"
    )
    s = r.state.steps["remote"]
    assert s.uncertain  # the command went out: it may have been carried out
    assert runs(d) == [("remote", True, 1)]  # undone before reserve
    assert r.status("reserve") is S.COMPLETED
    assert r.send(StepSucceeded("remote", tok), 2.5).stale  # the late reply
    d = r.ok("remote", 3.0)
    assert runs(d) == [("reserve", True, 1)]
    r.ok("reserve", 4.0)
    assert r.state.status is SagaStatus.COMPENSATED


def test_cancelled_step_without_compensation_is_not_compensated() -> None:
    b = SagaBuilder("x")
    b.step("a", act, retry=NO_RETRY)
    b.step("b", act, after=[], retry=NO_RETRY)
    r = Run(b.build())
    d = r.fail("a", 1.0)
    assert cancels(d) == [("b", False)] and runs(d) == []
    assert r.state.steps["b"].uncertain
    assert r.state.status is SagaStatus.COMPENSATED


def test_deadline_cancels_a_running_message_step() -> None:
    b = SagaBuilder("msg", deadline=10.0)
    b.step("remote", send(Ship, success=Shipped, reply_timeout=60.0), undo)
    r = Run(b.build())
    assert r.state.wake_at == 10.0  # the deadline comes before the reply deadline
    tok = r.token("remote")
    d = r.send(Timer(), 10.0)
    assert r.state.status is SagaStatus.COMPENSATING
    assert d.effects[0] == CancelAttempt("remote", False, tok, "the saga is rolled back (deadline of 10.0s exceeded)")
    assert runs(d) == [("remote", True, 1)]
    assert r.state.steps["remote"].uncertain
    r.ok("remote", 11.0)
    assert r.state.status is SagaStatus.COMPENSATED


# ---------------------------------------------------------------- uncertain means compensate


def test_step_that_failed_outright_is_not_compensated() -> None:
    b = SagaBuilder("orders")
    b.step("reserve", act, undo)
    b.step("charge", act, undo, retry=NO_RETRY)
    r = Run(b.build())
    r.ok("reserve", 1.0)
    d = r.fail("charge", 2.0, "card declined")
    assert not r.state.steps["charge"].uncertain
    assert runs(d) == [("reserve", True, 1)]
    r.ok("reserve", 3.0)
    assert r.state.status is SagaStatus.COMPENSATED
    assert r.status("charge") is S.FAILED
    assert r.state.steps["charge"].compensation_attempts == 0


def test_compensate_failed_option_compensates_a_step_that_failed_outright() -> None:
    b = SagaBuilder("orders")
    b.step("reserve", act, undo)
    b.step("charge", act, undo, retry=NO_RETRY, compensate_failed=True)
    b.step("ship", act, undo, compensate_failed=True)
    defn = b.build()
    assert defn.by_name["charge"].compensate_failed and not defn.by_name["reserve"].compensate_failed
    r = Run(defn)
    r.ok("reserve", 1.0)
    d = r.fail("charge", 2.0, "card declined", retryable=False)
    assert not r.state.steps["charge"].uncertain
    # it may have half-failed: its undo runs first, then reserve's
    assert runs(d) == [("charge", True, 1)]
    d = r.ok("charge", 3.0)
    assert runs(d) == [("reserve", True, 1)]
    r.ok("reserve", 4.0)
    assert r.state.status is SagaStatus.COMPENSATED
    # ship never ran (no attempt): compensate_failed does not undo what never happened
    assert r.status("ship") is S.PENDING and r.state.steps["ship"].compensation_attempts == 0


def test_compensate_failed_option_compensates_a_step_waiting_for_its_retry() -> None:
    b = SagaBuilder("fork")
    b.step("a", act, undo)
    b.step("b", act, undo, after=["a"], retry=FAST, compensate_failed=True)
    b.step("c", act, after=["a"], retry=NO_RETRY)
    r = Run(b.build())
    r.ok("a", 1.0)
    r.fail("b", 2.0)  # waits for its retry
    d = r.fail("c", 2.5)
    assert r.status("b") is S.COMPENSATING
    assert runs(d) == [("b", True, 1)]
    d = r.ok("b", 3.0)
    assert runs(d) == [("a", True, 1)]


def test_uncertain_failure_is_compensated() -> None:
    r = Run(linear())
    r.ok("reserve", 1.0)
    d = r.fail("charge", 2.0, "result lost", retryable=False, uncertain=True)
    assert r.state.steps["charge"].uncertain
    assert runs(d) == [("charge", True, 1)]
    d = r.ok("charge", 3.0)
    assert runs(d) == [("reserve", True, 1)]
    r.ok("reserve", 4.0)
    assert r.state.status is SagaStatus.COMPENSATED
    assert r.statuses() == {"reserve": S.COMPENSATED, "charge": S.COMPENSATED, "ship": S.PENDING}


def test_step_failed_carries_uncertain_as_its_fifth_field() -> None:
    assert StepFailed._fields == ("step", "token", "error", "retryable", "uncertain", "traceback", "item")
    assert StepFailed("a", 1, "x").uncertain is False
    assert StepFailed("a", 1, "x", True, True).uncertain is True


def test_a_failures_traceback_is_carried_to_its_history_entry_and_nowhere_else() -> None:
    b = SagaBuilder("orders")
    b.step("reserve", act, undo, compensation_retry=RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0.0))
    b.step("charge", act, undo, retry=RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0.0))
    r = Run(b.build())
    r.ok("reserve", 1.0)

    def fail(step: str, now: float, tb: str) -> Decision:
        return r.send(StepFailed(step, r.token(step), "KeyError: 'id'", True, False, tb), now)

    fail("charge", 2.0, "tb of charge 1")  # retried
    r.send(Timer(), 3.5)
    fail("charge", 4.0, "tb of charge 2")  # gave up: reserve is compensated
    fail("reserve", 5.0, "tb of undo 1")  # compensation retried
    r.send(Timer(), 6.5)
    fail("reserve", 7.0, "tb of undo 2")  # compensation gave up: FAILED
    assert r.state.status is SagaStatus.FAILED
    failures = [(h.kind, h.step, h.attempt, h.traceback) for h in r.history if h.traceback is not None]
    assert failures == [
        ("step_failed", "charge", 1, "tb of charge 1"),
        ("step_failed", "charge", 2, "tb of charge 2"),
        ("compensation_failed", "reserve", 1, "tb of undo 1"),
        ("compensation_failed", "reserve", 2, "tb of undo 2"),
    ]
    # Every entry the machine makes has all its fields, the traceback included.
    assert all(len(h) == len(HistoryEntry._fields) for h in r.history)


def test_uncertain_is_sticky_over_a_later_certain_failure() -> None:
    b = SagaBuilder("orders")
    b.step("reserve", act, undo)
    b.step("charge", act, undo, retry=FAST)
    r = Run(b.build())
    r.ok("reserve", 1.0)
    r.fail("charge", 2.0, "timed out", uncertain=True)
    s = r.state.steps["charge"]
    assert (s.status, s.uncertain) == (S.PENDING, True)
    r.send(Timer(), 3.0)
    assert r.status("charge") is S.RUNNING and r.state.steps["charge"].uncertain
    d = r.fail("charge", 4.0, "card declined", retryable=False)  # certain, but the first may have charged
    s = r.state.steps["charge"]
    assert (s.uncertain, s.error, s.attempts) == (True, "card declined", 2)
    assert runs(d) == [("charge", True, 1)]


def test_uncertain_step_waits_for_its_descendants_to_be_undone() -> None:
    b = SagaBuilder("chain")
    b.step("a", act, undo, retry=FAST)
    b.step("b", act, undo)
    b.step("c", act, retry=NO_RETRY)
    r = Run(b.build())
    r.fail("a", 1.0, uncertain=True)
    r.send(Timer(), 2.0)
    r.ok("a", 3.0)
    r.ok("b", 4.0)
    d = r.fail("c", 5.0)
    assert runs(d) == [("b", True, 1)]  # a only after b
    d = r.ok("b", 6.0)
    assert runs(d) == [("a", True, 1)]


# ---------------------------------------------------------------- reply timeouts


@pytest.mark.parametrize(
    ("action", "uncertain"),
    [
        (send(Ship, success=Shipped, reply_timeout=5.0), True),  # the command went out
        (wait_for(Approved, timeout=5.0), False),  # nothing was asked of anyone
    ],
)
def test_reply_timeout_is_uncertain_when_the_step_is_effectful(action: StepAction, uncertain: bool) -> None:
    r = Run(message_saga(action))
    assert r.defn is not None and r.defn.by_name["remote"].effectful is uncertain
    r.ok("reserve", 0.5)
    r.ok("other", 0.5)
    assert r.state.steps["remote"].wake_at == 5.5 and r.state.wake_at == 5.5
    tok = r.token("remote")
    assert r.send(Timer(), 5.4).history == []
    d = r.send(Timer(), 5.5)
    s = r.state.steps["remote"]
    assert s.attempts == 1 and s.uncertain is uncertain
    assert s.error == "timed out after 5.0s waiting for the reply"
    assert d.history[0].kind == "step_failed" and "timed out after 5.0s" in d.history[0].message
    assert cancels(d) == []  # the attempt ended by itself: nothing to cancel
    assert r.state.status is SagaStatus.COMPENSATING
    if uncertain:
        assert runs(d) == [("remote", True, 1)]
    else:
        assert runs(d) == [("reserve", True, 1)]
    assert r.send(StepSucceeded("remote", tok), 6.0).stale


def test_reply_timeout_with_retries_left_retries_and_stays_uncertain() -> None:
    b = SagaBuilder("msg")
    b.step("remote", send(Ship, success=Shipped, reply_timeout=5.0), undo, retry=FAST)
    r = Run(b.build())
    r.send(Timer(), 5.0)
    s = r.state.steps["remote"]
    assert (s.status, s.wake_at, s.uncertain) == (S.PENDING, 6.0, True)
    d = r.send(Timer(), 6.0)
    assert runs(d) == [("remote", False, 2)]
    d = r.fail("remote", 7.0, "rejected", retryable=False)
    assert runs(d) == [("remote", True, 1)]


# ---------------------------------------------------------------- pivot: deferred rollback


def deferred_pivot(pivot_retry: RetryPolicy = NO_RETRY) -> SagaDefinition:
    """reserve, then pay (the pivot) beside a sibling root 'side'; ship after both."""
    b = SagaBuilder("pivoted")
    b.step("reserve", act, undo)
    b.step("pay", act, undo, pivot=True, retry=pivot_retry)
    b.step("side", act, undo, after=[], retry=FAST)
    b.step("ship", act, after=["pay", "side"])
    return b.build()


def test_compensate_while_the_pivot_runs_is_deferred_then_refused_when_it_completes() -> None:
    r = Run(deferred_pivot())
    r.ok("reserve", 1.0)
    r.ok("side", 1.0)
    assert r.status("pay") is S.RUNNING
    d = r.send(Compensate(reason="customer asked", actor="dave"), 2.0)
    assert d.rejected is None and d.effects == []  # nothing cancelled: pay may still go through
    assert r.state.status is SagaStatus.RUNNING
    reason = "compensation requested by dave: customer asked"
    assert r.state.meta[ROLLBACK] == reason
    assert kinds(d) == ["rollback_deferred"]
    assert d.history[0].step == "pay"
    assert d.history[0].message == (
        f"rollback requested ({reason}): it waits for the outcome of pivot step 'pay', which is running"
    )
    assert r.state.wake_at is None
    # a second request is refused while the first waits
    d = r.send(Compensate(reason="again"), 2.5)
    assert d.rejected == f"a rollback is already requested ({reason}) and waits for the running pivot step"
    d = r.ok("pay", 3.0)
    assert kinds(d) == ["step_completed", "rollback_refused", "step_started"]
    assert d.history[1].step == "pay"
    assert "rollback refused: pivot step 'pay' completed" in d.history[1].message
    assert f"(the request: {reason})" in d.history[1].message
    assert ROLLBACK not in r.state.meta
    assert r.state.status is SagaStatus.RUNNING and r.state.error is None
    assert runs(d) == [("ship", False, 1)]  # the saga goes forward
    r.ok("ship", 4.0)
    assert r.state.status is SagaStatus.COMPLETED


def test_deferred_rollback_proceeds_when_the_pivot_fails_even_retryably() -> None:
    r = Run(deferred_pivot(pivot_retry=RetryPolicy(max_attempts=5, initial_delay=1.0, jitter=0.0)))
    r.ok("reserve", 1.0)
    r.send(Compensate(reason="customer asked"), 2.0)
    d = r.fail("pay", 3.0, "bank down")  # it had retries left
    assert "step 'pay' failed (not retried: a rollback waits for the pivot step): bank down" in d.history[0].message
    assert r.state.status is SagaStatus.COMPENSATING
    assert ROLLBACK not in r.state.meta
    assert r.state.error == "compensation requested by operator: customer asked"
    assert r.status("pay") is S.FAILED
    # side still ran: it is cancelled; it may have acted, so it is undone, as reserve is
    assert cancels(d) == [("side", False)]
    assert sorted(runs(d)) == [("reserve", True, 1), ("side", True, 1)]
    r.ok("reserve", 4.0)
    r.ok("side", 4.0)
    assert r.state.status is SagaStatus.COMPENSATED
    assert r.status("pay") is S.FAILED  # failed outright: nothing to undo


def test_sibling_failure_while_the_pivot_runs_defers_the_rollback() -> None:
    b = SagaBuilder("pivoted")
    b.step("pay", act, undo, pivot=True)
    b.step("side", act, undo, after=[], retry=FAST)
    b.step("other", act, undo, after=[], retry=FAST)
    b.step("late", act, after=["side"])
    b.step("ship", act, after=["pay", "side", "other"])
    r = Run(b.build())
    r.fail("other", 1.0, "flaky")  # waits for its retry at 2.0
    assert r.state.steps["other"].wake_at == 2.0
    d = r.fail("side", 1.5, "no stock", retryable=False)
    assert kinds(d) == ["step_failed", "rollback_deferred"]
    assert r.state.status is SagaStatus.RUNNING
    assert r.state.meta[ROLLBACK] == "step 'side' failed: no stock"
    assert d.effects == []
    # the retry waiting for its time will not run while the rollback waits
    s = r.state.steps["other"]
    assert (s.status, s.wake_at) == (S.PENDING, None)
    assert r.state.wake_at is None
    assert r.send(Timer(), 2.0).effects == []
    assert r.send(Retry(), 2.1).rejected is not None  # nothing waits for a retry any more
    d = r.ok("pay", 3.0)
    assert kinds(d)[:3] == ["step_completed", "rollback_refused", "failed"]
    assert r.state.status is SagaStatus.FAILED
    assert r.state.error == (
        "step 'side' failed after pivot step 'pay' completed: no stock; "
        "the saga cannot be rolled back: retry or skip the step"
    )
    assert ROLLBACK not in r.state.meta
    assert not [e for e in d.effects if isinstance(e, RunStep)]
    assert not [h for h in r.history if h.kind.startswith("compensation")]
    assert r.statuses()["late"] is S.PENDING and r.statuses()["ship"] is S.PENDING


def test_no_step_starts_and_sibling_failures_are_final_while_the_rollback_waits() -> None:
    b = SagaBuilder("pivoted")
    b.step("pay", act, undo, pivot=True)
    b.step("a", act, undo, after=[], retry=FAST)
    b.step("a2", act, after=["a"])
    b.step("b", act, undo, after=[], retry=FAST)
    r = Run(b.build())
    r.send(Compensate(), 1.0)
    d = r.ok("a", 2.0)
    assert d.effects == []  # a2 does not start
    assert r.status("a2") is S.PENDING
    d = r.fail("b", 3.0, "flaky")  # retryable, with retries left: final all the same
    assert r.status("b") is S.FAILED and r.state.steps["b"].wake_at is None
    assert "not retried: a rollback waits for the pivot step" in d.history[0].message
    assert r.state.status is SagaStatus.RUNNING
    d = r.fail("pay", 4.0, "declined", retryable=False)
    assert r.state.status is SagaStatus.COMPENSATING
    assert runs(d) == [("a", True, 1)]  # b failed outright, pay too


def test_deferred_deadline_does_not_leave_the_saga_due_forever() -> None:
    b = SagaBuilder("pivoted", deadline=10.0)
    b.step("reserve", act, undo)
    b.step("pay", act, undo, pivot=True)
    b.step("ship", act)
    r = Run(b.build())
    r.ok("reserve", 1.0)
    assert r.state.wake_at == 10.0
    d = r.send(Timer(), 10.0)
    assert kinds(d) == ["rollback_deferred"]
    assert r.state.meta[ROLLBACK] == "deadline of 10.0s exceeded"
    assert r.state.status is SagaStatus.RUNNING
    assert r.state.wake_at is None or r.state.wake_at > 10.0
    # a later timer finds nothing to do and does not record the request again
    d = r.send(Timer(), 20.0)
    assert d.history == [] and d.effects == []
    assert r.state.wake_at is None or r.state.wake_at > 20.0
    d = r.ok("pay", 21.0)
    assert kinds(d) == ["step_completed", "rollback_refused", "step_started"]
    assert "(the request: deadline of 10.0s exceeded)" in d.history[1].message
    assert runs(d) == [("ship", False, 1)]
    assert r.state.wake_at is None  # past the pivot the deadline is moot
    r.ok("ship", 22.0)
    assert r.state.status is SagaStatus.COMPLETED


def test_deferred_deadline_proceeds_when_the_pivot_fails() -> None:
    b = SagaBuilder("pivoted", deadline=10.0)
    b.step("reserve", act, undo)
    b.step("pay", act, undo, pivot=True)
    r = Run(b.build())
    r.ok("reserve", 1.0)
    r.send(Timer(), 10.0)
    d = r.fail("pay", 12.0, "declined")
    assert r.state.status is SagaStatus.COMPENSATING
    assert r.state.error == "deadline of 10.0s exceeded"
    assert runs(d) == [("reserve", True, 1)]


def test_deferred_message_pivot_keeps_its_reply_deadline_and_its_timeout_lets_the_rollback_go() -> None:
    b = SagaBuilder("pivoted")
    b.step("reserve", act, undo)
    b.step("pay", send(Ship, success=Shipped, reply_timeout=30.0), undo, pivot=True, retry=FAST)
    r = Run(b.build())
    r.ok("reserve", 1.0)
    r.send(Compensate(), 2.0)
    assert r.state.wake_at == 31.0  # the pivot's reply deadline
    d = r.send(Timer(), 31.0)
    assert r.state.status is SagaStatus.COMPENSATING
    assert r.state.steps["pay"].uncertain  # the payment may have gone through
    assert runs(d) == [("pay", True, 1)]
    d = r.ok("pay", 32.0)
    assert runs(d) == [("reserve", True, 1)]


def test_oversized_pivot_result_while_a_rollback_waits_lets_it_go_and_undoes_the_pivot() -> None:
    b = SagaBuilder("pivoted", max_payload_bytes=10)
    b.step("reserve", act, undo)
    b.step("pay", act, undo, pivot=True)
    r = Run(b.build())
    r.ok("reserve", 1.0)
    r.send(Compensate(), 2.0)
    d = r.ok("pay", 3.0, "x" * 50, size=52)
    assert r.state.status is SagaStatus.COMPENSATING
    assert runs(d) == [("pay", True, 1)]


def test_abort_while_a_rollback_waits_cancels_the_pivot_and_clears_the_request() -> None:
    r = Run(deferred_pivot())
    r.ok("reserve", 1.0)
    r.send(Compensate(), 2.0)
    d = r.send(Abort(), 3.0)
    assert sorted(cancels(d)) == [("pay", False), ("side", False)]
    assert r.state.status is SagaStatus.ABORTED
    assert ROLLBACK not in r.state.meta
    assert r.state.wake_at is None


def test_compensate_after_the_pivot_is_rejected_even_with_a_step_running() -> None:
    r = Run(pivot_saga())
    r.ok("reserve", 1.0)
    r.ok("charge", 2.0)
    assert r.status("ship") is S.RUNNING
    d = r.send(Compensate(), 3.0)
    assert d.rejected == "pivot step 'charge' has completed: the saga can no longer be rolled back"
    assert r.status("ship") is S.RUNNING


# ---------------------------------------------------------------- abort cancels


def test_abort_cancels_a_running_compensation() -> None:
    b = SagaBuilder("orders")
    b.step("reserve", act, undo)
    b.step("charge", act, undo, compensation_retry=FAST)
    b.step("ship", act, retry=NO_RETRY)
    r = Run(b.build())
    r.ok("reserve", 1.0)
    r.ok("charge", 2.0)
    r.fail("ship", 3.0)
    r.fail("charge", 4.0, "refund api 500")  # the compensation waits for its retry
    assert r.state.steps["charge"].wake_at == 5.0
    r.send(Timer(), 5.0)
    tok = r.token("charge")
    d = r.send(Abort(reason="handled by hand"), 6.0)
    assert d.effects == [CancelAttempt("charge", True, tok, "the saga was aborted")]
    assert kinds(d) == ["abort", "compensation_cancelled"]
    assert "compensation of step 'charge' attempt 2 cancelled: the saga was aborted" in d.history[1].message
    s = r.state.steps["charge"]
    assert (s.status, s.token, s.wake_at) == (S.COMPENSATION_FAILED, 0, None)
    assert s.error == "cancelled: the saga was aborted"
    assert r.state.status is SagaStatus.ABORTED and r.state.wake_at is None
    assert r.send(StepSucceeded("charge", tok), 7.0).stale


def test_abort_clears_the_wake_time_of_a_waiting_compensation() -> None:
    b = SagaBuilder("orders")
    b.step("reserve", act, undo, compensation_retry=FAST)
    b.step("ship", act, retry=NO_RETRY)
    r = Run(b.build())
    r.ok("reserve", 1.0)
    r.fail("ship", 2.0)
    r.fail("reserve", 3.0)
    assert r.state.wake_at == 4.0
    d = r.send(Abort(), 3.5)
    assert d.effects == []
    assert r.state.steps["reserve"].wake_at is None and r.state.wake_at is None


def test_abort_of_a_wait_for_step_is_not_uncertain() -> None:
    b = SagaBuilder("w")
    b.step("approve", wait_for(Approved, timeout=60.0))
    r = Run(b.build())
    d = r.send(Abort(), 1.0)
    assert cancels(d) == [("approve", False)]
    s = r.state.steps["approve"]
    assert (s.status, s.uncertain, s.wake_at) == (S.FAILED, False, None)
    assert r.state.wake_at is None


def test_abort_of_a_pending_saga() -> None:
    r = Run(linear(), begin=False)
    d = r.send(Abort(), 1.0)
    assert d.rejected is None and d.effects == []
    assert r.state.status is SagaStatus.ABORTED and r.state.wake_at is None


# ---------------------------------------------------------------- without the definition


def test_abort_without_the_definition_cancels_attempts_in_flight() -> None:
    r = Run(diamond())
    r.ok("a", 1.0)
    tok_b, tok_c = r.token("b"), r.token("c")
    r.defn = None  # a worker without this version of the definition
    d = r.send(Abort(reason="stuck", actor="ops"), 2.0)
    assert d.rejected is None
    assert d.effects == [
        CancelAttempt("b", False, tok_b, "the saga was aborted"),
        CancelAttempt("c", False, tok_c, "the saga was aborted"),
    ]
    assert r.state.status is SagaStatus.ABORTED
    assert r.state.error == "aborted by ops: stuck"
    # without the code, an attempt cannot be known to be harmless
    assert r.state.steps["b"].uncertain and r.state.steps["c"].uncertain
    assert r.state.wake_at is None and r.state.updated_at == 2.0


def test_skip_without_the_definition_of_a_step_with_no_attempt_in_flight() -> None:
    r = Run(linear(retry=FAST))
    r.fail("reserve", 1.0)  # waits for its retry
    r.defn = None
    d = r.send(Skip("reserve", result={"manual": True}), 1.5)
    assert d.rejected is None
    assert d.effects == []  # nothing can be dispatched without the code
    s = r.state.steps["reserve"]
    assert (s.status, s.result, s.wake_at) == (S.SKIPPED, {"manual": True}, None)
    assert kinds(d) == ["skip"]


def test_skip_without_the_definition_of_a_step_in_flight_is_refused() -> None:
    r = Run(linear())
    r.defn = None
    d = r.send(Skip("reserve"), 1.0)
    assert d.rejected is not None and "step 'reserve' is executing" in d.rejected


@pytest.mark.parametrize("event", [Timer(), Resume(), Begin(), Retry(), Compensate(), StepSucceeded("reserve", 1)])
def test_other_events_without_the_definition_are_refused(event: Event) -> None:
    r = Run(linear())
    r.defn = None
    d = r.send(event, 1.0)
    assert d.rejected == (
        "definition orders v1 is not registered here: "
        "only abort and skip are possible until a worker that has it runs the saga"
    )


# ---------------------------------------------------------------- refusals are recorded


def test_rejected_event_records_the_refusal_and_leaves_the_state_alone() -> None:
    r = Run(pivot_saga())
    r.ok("reserve", 1.0)
    r.ok("charge", 2.0)
    before = copy.deepcopy(r.state)
    d = r.send(Compensate(reason="too late", actor="dave"), 3.0)
    assert d.state is r.state and d.state == before and d.state.updated_at == 2.0
    assert d.effects == [] and not d.stale
    assert d.history == [
        HistoryEntry(
            3.0,
            "refused",
            "compensate (by dave) refused: pivot step 'charge' has completed: the saga can no longer be rolled back",
        )
    ]
    d = r.send(Skip("nope", actor="erin"), 4.0)
    assert (
        d.history[0].message == "skip (by erin) refused: saga pivoted has no step 'nope' (steps: reserve, charge, ship)"
    )
    assert d.history[0].step == "nope"


def test_skip_of_a_message_compensation_waiting_for_its_reply_marks_it_resolved() -> None:
    b = SagaBuilder("msg")
    b.step("reserve", act, undo)
    b.step("pay", act, send(Ship, success=Shipped, reply_timeout=30.0))
    b.step("ship", act, retry=NO_RETRY)
    r = Run(b.build())
    r.ok("reserve", 1.0)
    r.ok("pay", 2.0)
    r.fail("ship", 3.0)
    tok = r.token("pay")
    assert r.status("pay") is S.COMPENSATING and r.state.steps["pay"].wake_at == 33.0
    d = r.send(Skip("pay", reason="refunded by hand"), 4.0)
    assert d.rejected is None
    assert "compensation marked resolved" in d.history[0].message
    assert runs(d) == [("reserve", True, 1)]
    assert r.send(StepSucceeded("pay", tok), 5.0).stale
    r.ok("reserve", 6.0)
    assert r.state.status is SagaStatus.COMPENSATED
