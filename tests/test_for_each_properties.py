"""Property-based tests of for-each steps in the state machine, driven by a simulated runtime.

Random small step graphs mix plain local steps and for-each steps (item lists
of 0 to 5 items read from the saga's data, or a list hook that raises;
parallelism 1 to 3; retries; with or without compensations). A pure loop
plays the runtime: it keeps the attempts in flight (per step and item),
completes one at random (success, retryable or non-retryable failure, a
timeout whose effect may have happened), fires timers, re-delivers old
completions, restarts the worker (Resume) and sends operator requests
(compensate, abort, retry of what waits).

Its own model of the world says which items may have had their effect and
which were undone. After every decision and at the end it checks:

- never more than ``parallelism`` items of a step are in flight, and no item
  is attempted more often than its retry policy allows;
- an item runs only while the saga runs forward, after the step's dependencies;
- a completed for-each step's result is its items' results in input order
  (``[]`` for an empty list, at once);
- on rollback only items that completed or may have had their effect are
  compensated, each exactly once, in reverse order, never while an item of
  the step still runs forward, and only after the step's dependents are settled;
- the machine's tokens are exactly the attempts the world holds; a saga that
  is not finished has an attempt in flight or a wake-up time; late results
  are refused.
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
    Abort,
    Begin,
    CancelAttempt,
    Compensate,
    Decision,
    Event,
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
)

S = StepStatus
MAX_EVENTS = 1500
Unit = tuple[str, int | None]  # (step, item index or None for a plain step)


def act(ctx: Any) -> None:
    return None


def undo(ctx: Any) -> None:
    return None


def act_item(item: Any, ctx: Any) -> None:
    return None


def undo_item(item: Any, ctx: Any) -> None:
    return None


def items_of(name: str) -> Any:
    return lambda data, results: data[name]


@st.composite
def graphs(draw: st.DrawFn) -> tuple[SagaDefinition, dict[str, Any]]:
    """Up to 5 steps, plain or for-each, each after a random subset of the earlier ones; and the saga's data."""
    n = draw(st.integers(1, 5))
    deadline = draw(st.sampled_from([None, None, None, 2.0]))
    b = SagaBuilder("fe-prop", deadline=deadline)
    names: list[str] = []
    data: dict[str, Any] = {}
    has_for_each = False
    pivot: str | None = None
    after_pivot: set[str] = set()
    for i in range(n):
        name = f"s{i}"
        deps = draw(st.lists(st.sampled_from(names), unique=True, max_size=2)) if names else []
        downstream = pivot is not None and any(d == pivot or d in after_pivot for d in deps)
        if downstream:
            after_pivot.add(name)
        timeout = draw(st.sampled_from([None, 0.5]))
        retry = RetryPolicy(max_attempts=draw(st.integers(1, 3)), initial_delay=0.5, jitter=0.1)
        comp_retry = RetryPolicy(max_attempts=draw(st.integers(1, 3)), initial_delay=0.5, jitter=0.1)
        with_comp = not downstream and (draw(st.booleans()) or draw(st.booleans()))
        half = draw(st.integers(0, 5)) == 0
        if draw(st.integers(0, 2)) > 0 or (i == n - 1 and not has_for_each):
            has_for_each = True
            shape = draw(st.integers(0, 9))
            if shape > 0:  # a list of 0 to 5 items (shape 0: no list in the data, the hook raises)
                data[name] = [{"sku": f"{name}-{k}"} for k in range(draw(st.integers(0, 5)))]
            b.for_each(
                name,
                items=items_of(name),
                action=act_item,
                compensation=undo_item if with_comp else None,
                key=(lambda item: item["sku"]) if draw(st.booleans()) else None,
                parallelism=draw(st.integers(1, 3)),
                after=deps,
                retry=retry,
                compensation_retry=comp_retry,
                timeout=timeout,
                compensation_timeout=timeout,
                compensate_failed=half,
            )
        else:
            is_pivot = pivot is None and not downstream and draw(st.integers(0, 3)) == 0
            if is_pivot:
                pivot = name
            b.step(
                name,
                act,
                undo if with_comp and not is_pivot else None,
                after=deps,
                retry=retry,
                compensation_retry=comp_retry,
                timeout=timeout,
                compensation_timeout=timeout,
                compensate_failed=half,
                pivot=is_pivot,
            )
        names.append(name)
    return b.build(), data


def unit(eff: RunStep | CancelAttempt) -> Unit:
    return (eff.step, eff.item)


@dataclass
class Model:
    """What the simulated world saw, kept apart from the machine's state."""

    defn: SagaDefinition
    data: dict[str, Any]
    current: dict[Unit, RunStep] = field(default_factory=dict)
    superseded: list[RunStep] = field(default_factory=list)
    tokens: set[int] = field(default_factory=set)
    effect: set[Unit] = field(default_factory=set)  # may have had its effect
    attempted: set[Unit] = field(default_factory=set)
    completed: set[Unit] = field(default_factory=set)
    attempts: dict[Unit, int] = field(default_factory=dict)
    compensated: dict[Unit, int] = field(default_factory=dict)
    comp_started: list[Unit] = field(default_factory=list)  # first compensation attempts, in order
    gave_up: set[Unit] = field(default_factory=set)
    rollback: bool = False
    pivot_done: bool = False
    aborted: bool = False
    results: dict[Unit, Any] = field(default_factory=dict)

    def has_comp(self, u: Unit) -> bool:
        return self.defn.by_name[u[0]].compensation is not None

    def must_undo(self, u: Unit) -> bool:
        if not self.has_comp(u):
            return False
        if u in self.effect:
            return True
        return self.defn.by_name[u[0]].compensate_failed and u in self.attempted and u not in self.completed

    def step_settled_forward(self, step: str) -> bool:
        return not any(u[0] == step and not e.compensation for u, e in self.current.items())

    def observe(self, d: Decision, event: Event) -> None:
        for eff in d.effects:
            if isinstance(eff, CancelAttempt):
                cur = self.current.pop(unit(eff), None)
                assert cur is not None and cur.token == eff.token, f"cancel of an attempt not in flight: {eff}"
                assert cur.compensation == eff.compensation and eff.reason
                self.superseded.append(cur)
                if not cur.compensation:
                    self.effect.add(unit(eff))  # it may have got as far as its effect
        for eff in d.effects:
            if isinstance(eff, CancelAttempt):
                continue
            u = unit(eff)
            assert eff.token > 0 and eff.token not in self.tokens, f"token {eff.token} reused"
            self.tokens.add(eff.token)
            sdef = self.defn.by_name[eff.step]
            assert (eff.item is not None) == (sdef.for_each is not None), eff
            prev = self.current.get(u)
            if prev is not None:
                assert isinstance(event, Resume), (event, eff, prev)
                assert (prev.compensation, prev.attempt) == (eff.compensation, eff.attempt)
                self.superseded.append(prev)
                if not eff.compensation:
                    self.effect.add(u)
            elif not eff.compensation:
                self._check_action_start(d, eff)
            else:
                self._check_compensation_start(eff)
            self.current[u] = eff
        self._check_parallelism()

    def _check_parallelism(self) -> None:
        for name in self.defn.for_each:
            n = sum(1 for u in self.current if u[0] == name)
            limit = self.defn.by_name[name].for_each.parallelism  # type: ignore[union-attr]
            assert n <= limit, f"{n} items of {name} in flight, parallelism {limit}"

    def _check_action_start(self, d: Decision, eff: RunStep) -> None:
        u = unit(eff)
        assert d.state.status is SagaStatus.RUNNING
        assert not self.rollback and not self.comp_started, f"{u} started after the rollback began"
        missing = [x for x in self.defn.by_name[eff.step].after if (x, None) not in self.completed]
        missing = [x for x in missing if d.state.steps[x].status is not S.COMPLETED]
        assert not missing, f"{u} started before its dependencies {missing} completed"
        assert u not in self.completed
        self.attempts[u] = self.attempts.get(u, 0) + 1
        assert eff.attempt == self.attempts[u]
        assert eff.attempt <= self.defn.by_name[eff.step].retry.max_attempts, "retries beyond the policy"
        if eff.item is not None:
            assert 0 <= eff.item < len(self.data[eff.step])
        self.attempted.add(u)

    def _check_compensation_start(self, eff: RunStep) -> None:
        u = unit(eff)
        assert not self.pivot_done, f"compensation of {u} after the pivot completed"
        assert self.must_undo(u), f"compensation of {u}, which certainly had no effect"
        assert self.compensated.get(u, 0) == 0, f"{u} compensated twice"
        assert u not in self.gave_up
        assert self.step_settled_forward(eff.step), f"{u} compensated while an item of its step runs forward"
        for d in descendants(self.defn, eff.step):
            for cu, cur in self.current.items():
                assert cu[0] != d or cur.compensation, f"{u} compensated while dependent {d} runs"
            for w in self.effect | self.attempted:
                if w[0] == d and self.must_undo(w):
                    assert self.compensated.get(w, 0) == 1 or w in self.gave_up, f"{u} undone before {w}"
        if eff.attempt == 1:
            if eff.item is not None:
                earlier = [x[1] for x in self.comp_started if x[0] == eff.step]
                assert all(e is not None and e > eff.item for e in earlier), (
                    f"item compensations of {eff.step} out of reverse order: {earlier} then {eff.item}"
                )
            self.comp_started.append(u)
        assert eff.attempt <= self.defn.by_name[eff.step].compensation_retry.max_attempts

    def applied(self, eff: RunStep, outcome: str, d: Decision) -> None:
        u = unit(eff)
        del self.current[u]
        if not eff.compensation:
            if outcome == "ok":
                self.completed.add(u)
                self.effect.add(u)
                self.results[u] = {"done": list(u)}
                if self.defn.by_name[eff.step].pivot:
                    self.pivot_done = True
            elif outcome == "timeout":
                self.effect.add(u)
            return
        s = d.state.steps[eff.step]
        status = s.status if eff.item is None else s.items[eff.item].status  # type: ignore[index]
        if outcome == "ok":
            self.compensated[u] = self.compensated.get(u, 0) + 1
            assert status is S.COMPENSATED
        elif status is S.COMPENSATION_FAILED:
            self.gave_up.add(u)


def descendants(defn: SagaDefinition, name: str) -> set[str]:
    out: set[str] = set()
    todo = [s.name for s in defn.steps if name in s.after]
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo.extend(s.name for s in defn.steps if n in s.after)
    return out


def check_consistent(model: Model, state: SagaState) -> None:
    """The machine's tokens are exactly the attempts the world holds; nothing unfinished is forgotten."""
    held: dict[Unit, int] = {}
    for name, s in state.steps.items():
        if s.items is None:
            if s.token:
                held[(name, None)] = s.token
            continue
        assert s.token == 0, f"for-each step {name} has a token of its own"
        for i, it in enumerate(s.items):
            if it.token:
                held[(name, i)] = it.token
    assert held == {u: e.token for u, e in model.current.items()}, (held, model.current)
    if not state.status.terminal:
        assert held or state.wake_at is not None, f"saga neither runs nor waits for a timer: {state}"
    for name in model.defn.for_each:
        s = state.steps[name]
        if s.status is S.COMPLETED:
            items = model.data[name]
            assert s.result == [model.results[(name, i)] for i in range(len(items))], "results out of order"


def statuses(state: SagaState) -> tuple[Any, ...]:
    return (
        state.status,
        tuple((n, s.status, tuple(it.status for it in s.items or ())) for n, s in state.steps.items()),
    )


def completion(eff: RunStep, outcome: str) -> Event:
    u = unit(eff)
    if outcome == "ok":
        result = None if eff.compensation else {"done": list(u)}
        return StepSucceeded(eff.step, eff.token, result, 10, item=eff.item)
    if outcome == "timeout":
        return StepFailed(eff.step, eff.token, f"{u} timed out", True, True, item=eff.item)
    return StepFailed(eff.step, eff.token, f"{u} broke", outcome == "fail", item=eff.item)


def step(
    defn: SagaDefinition, state: SagaState, event: Event, now: float, model: Model, *, observe: bool = True
) -> Decision:
    """One decide() call as the runtime makes it, with the checks every transition must pass."""
    before = copy.deepcopy(state)
    d = decide(defn, state, event, now)
    assert state == before, f"decide() mutated its input state on {event!r}"
    assert d.rejected is None, d.rejected
    if statuses(d.state) != statuses(state):
        assert d.history, f"transition without a history entry on {event!r}"
    if d.stale:
        assert d.effects == []
    elif observe:
        model.observe(d, event)
    return d


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graph=graphs(), data=st.data())
def test_for_each_sagas_keep_the_invariants(graph: tuple[SagaDefinition, dict[str, Any]], data: st.DataObject) -> None:
    defn, saga_data = graph
    model = Model(defn, saga_data)
    now = 0.0
    d = new_saga(defn, "fe-1", saga_data, now)
    model.observe(d, Begin())
    state = d.state
    check_consistent(model, state)
    resumes_left = data.draw(st.integers(0, 2), label="restarts")
    requests_left = data.draw(st.integers(0, 2), label="operator requests")

    for _ in range(MAX_EVENTS):
        if state.status.terminal:
            break
        options = []
        if model.current:
            options += ["complete"] * 6
        if state.wake_at is not None:
            options.append("timer")
        if model.superseded:
            options.append("redeliver")
        if resumes_left and model.current:
            options.append("restart")
        if requests_left:
            options += ["compensate", "abort", "retry"]
        assert options, f"saga stuck: {state}"
        choice = data.draw(st.sampled_from(options), label="action")
        now += 0.01

        if choice == "complete":
            eff = model.current[data.draw(st.sampled_from(sorted(model.current, key=repr)), label="unit")]
            outcome = data.draw(st.sampled_from(["ok", "ok", "ok", "fail", "fatal", "timeout"]), label="outcome")
            event = completion(eff, outcome)
            d = step(defn, state, event, now, model, observe=False)
            assert not d.stale, f"current attempt {eff} rejected as stale"
            state = d.state
            model.applied(eff, outcome, d)
            model.observe(d, event)
            model.superseded.append(eff)
        elif choice == "timer":
            assert state.wake_at is not None
            now = max(now, state.wake_at)
            d = step(defn, state, Timer(), now, model)
            state = d.state
        elif choice == "redeliver":
            eff = model.superseded[data.draw(st.integers(0, len(model.superseded) - 1), label="old")]
            before = state
            d = step(defn, state, completion(eff, "ok"), now, model)
            state = d.state
            assert d.stale, f"superseded attempt {eff} was applied"
            assert [h.kind for h in d.history] == ["stale_rejected"]
            assert statuses(state) == statuses(before)
        elif choice == "restart":
            resumes_left -= 1
            running = set(model.current)
            d = step(defn, state, Resume(), now, model)
            state = d.state
            assert {unit(e) for e in d.effects if isinstance(e, RunStep)} >= running
        else:
            requests_left -= 1
            req: Event = {"compensate": Compensate("test"), "abort": Abort("test"), "retry": Retry("test")}[choice]
            before = state
            in_flight = dict(model.current)
            d = decide(defn, state, req, now)
            if d.rejected is not None:
                assert d.state is before and d.effects == []
                continue
            state = d.state
            model.observe(d, req)
            if isinstance(req, Abort):
                model.aborted = True
                assert state.status is SagaStatus.ABORTED
                assert not model.current, "abort left attempts running"
                cancelled = {e.token for e in d.effects if isinstance(e, CancelAttempt)}
                assert cancelled == {e.token for e in in_flight.values()}
            elif isinstance(req, Compensate):
                assert not model.pivot_done, "compensate accepted after the pivot completed"
                if state.status is SagaStatus.RUNNING:  # deferred: it waits for the running pivot's outcome
                    assert [h.kind for h in d.history] == ["rollback_deferred"]
                else:
                    assert not [u for u, e in model.current.items() if not e.compensation], "rollback left actions"
        if state.status is SagaStatus.COMPENSATING:
            model.rollback = True
        check_consistent(model, state)

    assert state.status.terminal, f"not finished after {MAX_EVENTS} events: {state}"
    tally(f"final status: {state.status.value}")
    tally(f"for-each steps: {len(defn.for_each)}")
    tally(f"pivot: {bool(defn.pivots)}")
    assert state.wake_at is None
    assert all(n == 1 for n in model.compensated.values()), "an item compensated more than once"
    assert not model.current, "a finished saga still has attempts in flight"
    if state.status is SagaStatus.COMPLETED:
        for name in defn.for_each:
            items = saga_data[name]
            assert {(name, i) for i in range(len(items))} <= model.completed
            assert state.steps[name].result == [{"done": [name, i]} for i in range(len(items))]
        assert not model.comp_started and state.error is None
    elif state.status is SagaStatus.COMPENSATED:
        undo_all = {u for u in model.effect | model.attempted if model.must_undo(u)}
        assert set(model.compensated) == undo_all, (model.compensated, undo_all)
        assert set(model.comp_started) == undo_all
        for name in defn.for_each:
            s = state.steps[name]
            if any(u[0] == name for u in undo_all):
                assert s.status is S.COMPENSATED, s
                assert s.items is not None
                for i, it in enumerate(s.items):
                    assert (it.status is S.COMPENSATED) == ((name, i) in undo_all), (name, i, it)
    elif state.status is SagaStatus.FAILED:
        assert state.error and (model.gave_up or model.pivot_done)
        if model.pivot_done:
            assert not model.comp_started
    assert set(model.comp_started) <= {u for u in model.effect | model.attempted if model.must_undo(u)}

    # after the end, every old completion is still refused, and nothing changes
    for eff in model.superseded:
        d = decide(defn, state, completion(eff, "ok"), now + 1)
        assert d.stale and d.effects == []
        assert statuses(d.state) == statuses(state)


def test_an_empty_list_completes_the_step_at_once_with_an_empty_result() -> None:
    b = SagaBuilder("empty")
    b.for_each("each", items=lambda data, results: data["xs"], action=act_item, compensation=undo_item)
    b.step("after", act)
    defn = b.build()
    d = new_saga(defn, "e-1", {"xs": []}, 0.0)
    s = d.state.steps["each"]
    assert s.status is S.COMPLETED and s.result == [] and s.items == []
    assert [(e.step, e.item) for e in d.effects] == [("after", None)]


def test_an_item_list_that_cannot_be_read_fails_the_step_and_says_why() -> None:
    b = SagaBuilder("bad")
    b.step("first", act, undo)
    b.for_each("each", items=lambda data, results: data["missing"], action=act_item)
    defn = b.build()
    d = new_saga(defn, "b-1", {}, 0.0)
    d = decide(defn, d.state, StepSucceeded("first", d.effects[0].token), 1.0)
    s = d.state.steps["each"]
    assert s.status is S.FAILED and s.items is None
    assert "items() raised KeyError" in (s.error or "")
    assert d.state.status is SagaStatus.COMPENSATING
    assert [(e.step, e.compensation) for e in d.effects] == [("first", True)]


def test_past_the_pivot_a_failed_item_stops_the_saga_and_a_retry_runs_only_the_items_not_completed() -> None:
    b = SagaBuilder("past-pivot")
    b.step("pay", act, pivot=True)
    b.for_each("ship", items=lambda data, results: data["parcels"], action=act_item, parallelism=3)
    defn = b.build()
    d = new_saga(defn, "p-1", {"parcels": ["a", "b", "c"]}, 0.0)
    d = decide(defn, d.state, StepSucceeded("pay", d.effects[0].token), 1.0)
    runs = {e.item: e for e in d.effects if isinstance(e, RunStep)}
    assert sorted(runs) == [0, 1, 2]
    d = decide(defn, d.state, StepSucceeded("ship", runs[0].token, "ok-a", 4, item=0), 2.0)
    d = decide(defn, d.state, StepFailed("ship", runs[1].token, "lost", False, item=1), 3.0)
    assert d.state.status is SagaStatus.FAILED and "cannot be rolled back" in (d.state.error or "")
    # item 2 was in flight: stopped (it may have had its effect), to run again if the saga goes on
    assert [(type(e).__name__, e.item) for e in d.effects] == [("CancelAttempt", 2)]
    items = d.state.steps["ship"].items
    assert items is not None
    assert [(i.status, i.uncertain) for i in items] == [(S.COMPLETED, False), (S.FAILED, False), (S.FAILED, True)]
    d = decide(defn, d.state, Retry("parcel b found"), 4.0)
    assert d.rejected is None and d.state.status is SagaStatus.RUNNING
    again = {e.item: e for e in d.effects if isinstance(e, RunStep)}
    assert sorted(again) == [1, 2] and all(e.attempt == 1 for e in again.values())
    d = decide(defn, d.state, StepSucceeded("ship", again[1].token, "ok-b", 4, item=1), 5.0)
    d = decide(defn, d.state, StepSucceeded("ship", again[2].token, "ok-c", 4, item=2), 6.0)
    assert d.state.status is SagaStatus.COMPLETED
    assert d.state.steps["ship"].result == ["ok-a", "ok-b", "ok-c"]


def test_skipping_a_for_each_step_that_waits_for_an_item_retry_moves_on_with_the_given_result() -> None:
    b = SagaBuilder("skip")
    b.for_each("each", items=lambda data, results: data["xs"], action=act_item, retry=RetryPolicy(max_attempts=3))
    b.step("after", act)
    defn = b.build()
    d = new_saga(defn, "k-1", {"xs": [1]}, 0.0)
    d = decide(defn, d.state, StepFailed("each", d.effects[0].token, "busy", item=0), 1.0)
    assert d.state.steps["each"].status is S.RUNNING and d.state.wake_at is not None
    refused = decide(defn, new_saga(defn, "k-2", {"xs": [1]}, 0.0).state, Skip("each", [0]), 1.0)
    assert refused.rejected is not None and "items are in flight" in refused.rejected
    d = decide(defn, d.state, Skip("each", ["given"]), 2.0)
    assert d.rejected is None
    s = d.state.steps["each"]
    assert s.status is S.SKIPPED and s.result == ["given"]
    assert s.items is not None and all(i.wake_at is None for i in s.items)
    assert [(e.step, e.item) for e in d.effects if isinstance(e, RunStep)] == [("after", None)]
