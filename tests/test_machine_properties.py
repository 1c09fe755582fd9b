"""Property-based tests of the state machine: random DAGs driven by a simulated runtime.

A pure loop plays the runtime: it keeps the outstanding RunStep effects,
completes one of them at random (success, retryable or non-retryable
failure), fires timers when a wake-up time passes, re-delivers old
completions and simulates worker restarts (Resume). The test keeps its own
model of what happened, independent of the machine's bookkeeping, and
checks the saga invariants against it after every decision and at the end.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as tally
from hypothesis import strategies as st

from sagakit import RetryPolicy, SagaBuilder, SagaDefinition, SagaStatus, StepStatus
from sagakit.machine import (
    Begin,
    Decision,
    Event,
    Resume,
    RunStep,
    SagaState,
    StepFailed,
    StepSucceeded,
    Timer,
    decide,
    new_saga,
)

S = StepStatus
MAX_EVENTS = 600


def act(ctx: Any) -> None:
    return None


def undo(ctx: Any) -> None:
    return None


@st.composite
def dags(draw: st.DrawFn) -> SagaDefinition:
    """Up to 8 steps; each depends on a random subset of the earlier ones."""
    n = draw(st.integers(1, 8))
    b = SagaBuilder("prop")
    names: list[str] = []
    for i in range(n):
        name = f"s{i}"
        deps = draw(st.lists(st.sampled_from(names), unique=True, max_size=3)) if names else []
        b.step(
            name,
            act,
            undo if draw(st.booleans()) else None,
            after=deps,
            retry=RetryPolicy(max_attempts=draw(st.integers(1, 3)), initial_delay=0.5, jitter=0.1),
            compensation_retry=RetryPolicy(
                max_attempts=draw(st.integers(1, 3)), initial_delay=0.5, jitter=0.1
            ),
        )
        names.append(name)
    return b.build()


def descendants_of(defn: SagaDefinition) -> dict[str, set[str]]:
    """Transitive dependents, computed here from the ``after`` lists alone."""
    children: dict[str, set[str]] = {s.name: set() for s in defn.steps}
    for s in defn.steps:
        for d in s.after:
            children[d].add(s.name)
    out: dict[str, set[str]] = {}
    for name, kids in children.items():
        seen: set[str] = set()
        todo = list(kids)
        while todo:
            c = todo.pop()
            if c not in seen:
                seen.add(c)
                todo.extend(children[c])
        out[name] = seen
    return out


@dataclass
class Model:
    """What the simulated runtime saw, kept apart from the machine's state."""

    defn: SagaDefinition
    desc: dict[str, set[str]]
    current: dict[str, RunStep] = field(default_factory=dict)  # step -> attempt in flight
    superseded: list[RunStep] = field(default_factory=list)  # effects no longer current
    tokens: set[int] = field(default_factory=set)
    action_attempts: dict[str, int] = field(default_factory=dict)
    comp_attempts: dict[str, int] = field(default_factory=dict)
    completed: set[str] = field(default_factory=set)  # action success applied
    compensated: dict[str, int] = field(default_factory=dict)  # compensation successes applied
    failed: set[str] = field(default_factory=set)  # action failed for good
    gave_up: set[str] = field(default_factory=set)  # compensation failed for good
    rolling_back: bool = False
    late_completions: int = 0  # actions that succeeded while the saga rolled back

    def has_comp(self, step: str) -> bool:
        return self.defn.by_name[step].compensation is not None

    def observe(self, d: Decision, event: Event) -> None:
        """Check and record the effects of one decision."""
        for eff in d.effects:
            assert eff.token > 0
            assert eff.token not in self.tokens, f"token {eff.token} reused"
            self.tokens.add(eff.token)
            prev = self.current.get(eff.step)
            if prev is not None:
                # only a restart runs the same attempt again, under a new token
                assert isinstance(event, Resume), (event, eff, prev)
                assert (prev.compensation, prev.attempt) == (eff.compensation, eff.attempt)
                self.superseded.append(prev)
            elif not eff.compensation:
                self._check_action_start(d, eff)
            else:
                self._check_compensation_start(eff)
            self.current[eff.step] = eff

    def _check_action_start(self, d: Decision, eff: RunStep) -> None:
        step = eff.step
        assert not self.rolling_back, f"step {step} started after a step failed for good"
        assert d.state.status is SagaStatus.RUNNING
        missing = [x for x in self.defn.by_name[step].after if x not in self.completed]
        assert not missing, f"step {step} started before its dependencies {missing} completed"
        assert step not in self.completed and step not in self.failed
        self.action_attempts[step] = self.action_attempts.get(step, 0) + 1
        assert eff.attempt == self.action_attempts[step]
        assert eff.attempt <= self.defn.by_name[step].retry.max_attempts

    def _check_compensation_start(self, eff: RunStep) -> None:
        step = eff.step
        assert self.rolling_back
        assert step in self.completed, f"compensation of {step}, which never completed"
        assert self.has_comp(step)
        assert self.compensated.get(step, 0) == 0, f"{step} compensated twice"
        assert step not in self.gave_up
        for d in self.desc[step]:
            cur = self.current.get(d)
            assert cur is None or cur.compensation, f"{step} compensated while dependent {d} runs"
            if d in self.completed and self.has_comp(d):
                assert self.compensated.get(d, 0) == 1, (
                    f"{step} compensated before its dependent {d} was compensated"
                )
        self.comp_attempts[step] = self.comp_attempts.get(step, 0) + 1
        assert eff.attempt == self.comp_attempts[step]
        assert eff.attempt <= self.defn.by_name[step].compensation_retry.max_attempts

    def applied(
        self, eff: RunStep, ok: bool, retryable: bool, before: SagaState, d: Decision, now: float
    ) -> None:
        """Record a completion the machine accepted, and check the step's new status."""
        step = eff.step
        del self.current[step]
        sdef = self.defn.by_name[step]
        s = d.state.steps[step]
        again = [e for e in d.effects if e.step == step]
        if not eff.compensation:
            if ok:
                self.completed.add(step)
                if self.rolling_back:
                    self.late_completions += 1
                if again:  # it finished while the saga rolls back: undone at once
                    assert self.rolling_back and again[0].compensation
                    assert s.status is S.COMPENSATING and s.token == again[0].token
                else:
                    assert s.status is S.COMPLETED and s.token == 0
                return
            final = (
                not retryable
                or eff.attempt >= sdef.retry.max_attempts
                or before.status is not SagaStatus.RUNNING
            )
            assert s.token == 0 and not again
            if final:
                self.failed.add(step)
                self.rolling_back = True
                assert s.status is S.FAILED
            else:
                assert s.status is S.PENDING
                assert s.wake_at is not None and s.wake_at > now
            return
        assert s.token == 0 and not again
        if ok:
            self.compensated[step] = self.compensated.get(step, 0) + 1
            assert s.status is S.COMPENSATED
            return
        if not retryable or eff.attempt >= sdef.compensation_retry.max_attempts:
            self.gave_up.add(step)
            assert s.status is S.COMPENSATION_FAILED
        else:
            assert s.status is S.COMPENSATING and s.wake_at is not None


def check_consistent(model: Model, state: SagaState) -> None:
    """The machine's tokens are exactly the attempts the runtime holds."""
    for name, s in state.steps.items():
        cur = model.current.get(name)
        assert s.token == (cur.token if cur else 0), (name, s, cur)


def statuses(state: SagaState) -> tuple[Any, ...]:
    return (state.status, tuple((n, s.status) for n, s in state.steps.items()))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(defn=dags(), data=st.data())
def test_random_sagas_keep_the_invariants(defn: SagaDefinition, data: st.DataObject) -> None:
    model = Model(defn, descendants_of(defn))
    now = 0.0
    d = new_saga(defn, "p-1", {"n": 1}, now)
    model.observe(d, Begin())
    state = d.state
    check_consistent(model, state)
    resumes_left = restarts = data.draw(st.integers(0, 2), label="restarts")
    redelivered = 0

    for _ in range(MAX_EVENTS):
        if state.status.terminal:
            break
        options = []
        if model.current:
            options += ["complete"] * 4
        if state.wake_at is not None:
            options.append("timer")
        if model.superseded:
            options.append("redeliver")
        if resumes_left and model.current:
            options.append("restart")
        assert options, f"saga stuck: {state}"
        choice = data.draw(st.sampled_from(options), label="action")
        now += 0.01

        if choice == "complete":
            names = sorted(model.current)
            eff = model.current[data.draw(st.sampled_from(names), label="step")]
            outcome = data.draw(st.sampled_from(["ok", "ok", "fail", "fatal"]), label="outcome")
            ok, retryable = outcome == "ok", outcome != "fatal"
            event: Event = (
                StepSucceeded(eff.step, eff.token, {"by": eff.step})
                if ok
                else StepFailed(eff.step, eff.token, f"{eff.step} broke", retryable)
            )
            before = state
            d = step(defn, state, event, now, model, observe=False)
            assert not d.stale, f"current attempt {eff} rejected as stale"
            state = d.state
            # record the completion first: its own decision may already compensate it
            model.applied(eff, ok, retryable, before, d, now)
            model.observe(d, event)
            model.superseded.append(eff)  # a later duplicate of it must be refused
        elif choice == "timer":
            early = data.draw(st.booleans(), label="early timer")
            assert state.wake_at is not None
            if early and state.wake_at > now:
                before = state
                d = step(defn, state, Timer(), now, model)
                assert d.effects == [] and d.history == []
                state = d.state
                assert statuses(state) == statuses(before)
                continue
            now = max(now, state.wake_at)
            state = step(defn, state, Timer(), now, model).state
        elif choice == "redeliver":
            eff = model.superseded[data.draw(st.integers(0, len(model.superseded) - 1), label="old")]
            ok = data.draw(st.booleans(), label="old outcome")
            event = StepSucceeded(eff.step, eff.token) if ok else StepFailed(eff.step, eff.token, "late")
            before = state
            d = step(defn, state, event, now, model)
            state = d.state
            assert d.stale, f"superseded attempt {eff} was applied"
            redelivered += 1
            assert [h.kind for h in d.history] == ["stale_rejected"]
            assert statuses(state) == statuses(before)
            assert {n: s.token for n, s in state.steps.items()} == {
                n: s.token for n, s in before.steps.items()
            }
        else:
            resumes_left -= 1
            running = set(model.current)
            d = step(defn, state, Resume(), now, model)
            state = d.state
            assert {e.step for e in d.effects} >= running
        check_consistent(model, state)

    # the run terminates
    assert state.status.terminal, f"not finished after {MAX_EVENTS} events: {state}"
    tally(f"final status: {state.status.value}")
    tally(f"restarts used: {restarts - resumes_left}")
    tally(f"stale redeliveries: {min(redelivered, 3)}+")
    tally(f"completed while rolling back: {min(model.late_completions, 2)}+")
    tally(f"compensation blocked by a give-up: {any(model.desc[n] & model.gave_up for n in model.completed)}")
    assert state.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)
    assert not model.current, "a finished saga still has attempts in flight"
    assert state.wake_at is None
    final = {n: s.status for n, s in state.steps.items()}

    # COMPLETED iff no step failed; FAILED iff a compensation gave up
    assert (state.status is SagaStatus.COMPLETED) == (not model.failed)
    assert (state.status is SagaStatus.FAILED) == bool(model.gave_up)
    assert (S.FAILED in final.values()) == bool(model.failed)
    assert (S.COMPENSATION_FAILED in final.values()) == bool(model.gave_up)
    assert all(n == 1 for n in model.compensated.values())

    if state.status is SagaStatus.COMPLETED:
        assert model.completed == set(defn.by_name)
        assert all(s is S.COMPLETED for s in final.values())
        assert not model.comp_attempts
        assert state.error is None
    else:
        assert state.error
        undoable = {n for n in model.completed if model.has_comp(n)}
        if state.status is SagaStatus.COMPENSATED:
            # every completed step with a compensation was compensated exactly once
            assert set(model.compensated) == undoable
        else:
            for n in undoable:
                blocked = n in model.gave_up or bool(model.desc[n] & model.gave_up)
                assert model.compensated.get(n, 0) == 1 or blocked, n
                if n in model.compensated:
                    assert final[n] is S.COMPENSATED
                elif n in model.gave_up:
                    assert final[n] is S.COMPENSATION_FAILED
                else:
                    assert final[n] is S.COMPLETED
        # steps that never completed, or have nothing to undo, are never compensated
        assert set(model.comp_attempts) <= undoable

    # after the end, every old completion is still refused
    for eff in model.superseded:
        d = decide(defn, state, StepSucceeded(eff.step, eff.token), now + 1)
        assert d.stale and d.effects == []
        assert statuses(d.state) == statuses(state)


def step(
    defn: SagaDefinition,
    state: SagaState,
    event: Event,
    now: float,
    model: Model,
    *,
    observe: bool = True,
) -> Decision:
    """One decide() call as the runtime makes it, with the checks every transition must pass."""
    before = copy.deepcopy(state)
    d = decide(defn, state, event, now)
    assert state == before, f"decide() mutated its input state on {event!r}"
    assert all(d.state.steps[n] is not s for n, s in state.steps.items() if d.state.steps[n] != s), (
        "a changed step must be a new object"
    )
    assert d.rejected is None
    if statuses(d.state) != statuses(state):
        assert d.history, f"transition without a history entry on {event!r}"
    assert all(h.at == now for h in d.history)
    if d.stale:
        assert d.effects == []
    elif observe:
        model.observe(d, event)
    return d
