"""Property-based tests of the state machine: random step graphs driven by a simulated runtime.

A pure loop plays the runtime and the outside world. It keeps the attempts in
flight, completes one at random (success, retryable or non-retryable failure,
a timeout whose effect may have happened), fires timers, re-delivers old and
cancelled completions, simulates worker restarts (Resume), and sends operator
requests (compensate, abort) at random moments. Steps are local functions,
``send`` steps (a command goes out, a reply comes back) or ``wait_for`` steps
(nothing is sent); some graphs have a pivot step and a saga deadline.

The test keeps its own model of what may have happened in the world, apart
from the machine's bookkeeping: which steps may have had their effect, which
were undone and in what order. It checks the saga invariants against it after
every decision and at the end:

- a saga that is not finished has an attempt in flight or a wake-up time;
- every step that completed, or whose outcome is uncertain, and has a
  compensation is compensated exactly once on rollback, after its dependents;
- a step that certainly had no effect is never compensated (unless its
  definition says it can fail half-way);
- once a pivot step has completed, no rollback follows;
- nothing changes a finished saga, and no late or cancelled result is applied;
- every refused request is recorded with its reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as tally
from hypothesis import strategies as st

from sagakit import RetryPolicy, SagaBuilder, SagaDefinition, SagaStatus, StepStatus, send, wait_for
from sagakit._messages import message_type_name
from sagakit.machine import (
    Abort,
    Begin,
    CancelAttempt,
    Compensate,
    Decision,
    Event,
    Reply,
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
MAX_EVENTS = 800


def act(ctx: Any) -> None:
    return None


def undo(ctx: Any) -> None:
    return None


@dataclass
class Cmd:
    n: int = 0


@dataclass
class Done:
    n: int = 0


@dataclass
class Undo:
    n: int = 0


@dataclass
class Undone:
    n: int = 0


KINDS = ("local", "send", "wait")


@st.composite
def dags(draw: st.DrawFn) -> SagaDefinition:
    """Up to 7 steps of mixed kinds; each depends on a random subset of the earlier ones.

    At most one pivot; no step downstream of it has a compensation (build() refuses that).
    """
    n = draw(st.integers(1, 7))
    deadline = draw(st.sampled_from([None, None, 0.3, 2.0]))
    b = SagaBuilder("prop", deadline=deadline)
    names: list[str] = []
    pivot: str | None = None
    after_pivot: set[str] = set()
    for i in range(n):
        name = f"s{i}"
        deps = draw(st.lists(st.sampled_from(names), unique=True, max_size=3)) if names else []
        downstream = pivot is not None and any(d == pivot or d in after_pivot for d in deps)
        if downstream:
            after_pivot.add(name)
        kind = draw(st.sampled_from(KINDS))
        timeout = draw(st.sampled_from([None, 0.5]))
        if kind == "local":
            action: Any = act
        elif kind == "send":
            action = send(Cmd, success=Done, failure=Undone, reply_timeout=timeout)
        else:
            action = wait_for(Done, failure=Undone, timeout=timeout)
        comp: Any = None
        if not downstream and pivot != name and draw(st.booleans()):
            comp = undo if draw(st.booleans()) else send(Undo, success=Undone, reply_timeout=timeout)
        is_pivot = pivot is None and not downstream and draw(st.integers(0, 4)) == 0
        if is_pivot:
            pivot = name
            comp = None
        b.step(
            name,
            action,
            comp,
            after=deps,
            retry=RetryPolicy(max_attempts=draw(st.integers(1, 3)), initial_delay=0.5, jitter=0.1),
            compensation_retry=RetryPolicy(max_attempts=draw(st.integers(1, 3)), initial_delay=0.5, jitter=0.1),
            timeout=timeout if kind == "local" else None,
            compensation_timeout=timeout,
            pivot=is_pivot,
            compensate_failed=draw(st.integers(0, 5)) == 0,
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


def kind_of(defn: SagaDefinition, step: str) -> str:
    action = defn.by_name[step].action
    if callable(action) and not hasattr(action, "reply_types"):
        return "local"
    return "send" if getattr(action, "sends", False) else "wait"


@dataclass
class Model:
    """What the simulated world saw, kept apart from the machine's state."""

    defn: SagaDefinition
    desc: dict[str, set[str]]
    current: dict[str, RunStep] = field(default_factory=dict)  # step -> attempt in flight
    superseded: list[RunStep] = field(default_factory=list)  # attempts no longer current
    tokens: set[int] = field(default_factory=set)
    effect: set[str] = field(default_factory=set)  # actions that may have had their effect
    attempted: set[str] = field(default_factory=set)  # actions that had at least one attempt
    completed: set[str] = field(default_factory=set)  # action success applied
    compensated: dict[str, int] = field(default_factory=dict)  # compensation successes applied
    comp_started: set[str] = field(default_factory=set)
    gave_up: set[str] = field(default_factory=set)  # compensation failed for good
    pivot_done: bool = False
    aborted: bool = False
    refusals: int = 0

    def has_comp(self, step: str) -> bool:
        return self.defn.by_name[step].compensation is not None

    def must_undo(self, step: str) -> bool:
        """Whether a rollback has to compensate *step*, judged from what may have happened."""
        if not self.has_comp(step):
            return False
        if step in self.effect:
            return True
        return self.defn.by_name[step].compensate_failed and step in self.attempted and step not in self.completed

    def observe(self, d: Decision, event: Event) -> None:
        """Check and record the effects of one decision."""
        for eff in d.effects:
            if isinstance(eff, CancelAttempt):
                cur = self.current.pop(eff.step, None)
                assert cur is not None and cur.token == eff.token, f"cancel of an attempt not in flight: {eff}"
                assert cur.compensation == eff.compensation
                assert eff.reason
                self.superseded.append(cur)
                if not cur.compensation and kind_of(self.defn, eff.step) != "wait":
                    self.effect.add(eff.step)  # it may have got as far as its effect
                continue
        for eff in d.effects:
            if isinstance(eff, CancelAttempt):
                continue
            assert eff.token > 0
            assert eff.token not in self.tokens, f"token {eff.token} reused"
            self.tokens.add(eff.token)
            prev = self.current.get(eff.step)
            if prev is not None:
                # only a restart runs the same attempt again, under a new token
                assert isinstance(event, Resume), (event, eff, prev)
                assert (prev.compensation, prev.attempt) == (eff.compensation, eff.attempt)
                assert kind_of(self.defn, eff.step) == "local" or eff.compensation
                self.superseded.append(prev)
                if not eff.compensation:
                    self.effect.add(eff.step)  # the dead worker may have had the effect
            elif not eff.compensation:
                self._check_action_start(d, eff)
            else:
                self._check_compensation_start(eff)
            self.current[eff.step] = eff

    def _check_action_start(self, d: Decision, eff: RunStep) -> None:
        step = eff.step
        assert d.state.status is SagaStatus.RUNNING
        assert not self.comp_started, f"step {step} started after the rollback began"
        missing = [x for x in self.defn.by_name[step].after if x not in self.completed]
        assert not missing, f"step {step} started before its dependencies {missing} completed"
        assert step not in self.completed
        assert eff.attempt <= self.defn.by_name[step].retry.max_attempts, "retries beyond the policy"
        self.attempted.add(step)

    def _check_compensation_start(self, eff: RunStep) -> None:
        step = eff.step
        assert not self.pivot_done, f"compensation of {step} after the pivot completed"
        assert self.must_undo(step), f"compensation of {step}, which certainly had no effect"
        assert self.compensated.get(step, 0) == 0, f"{step} compensated twice"
        assert step not in self.gave_up
        for d in self.desc[step]:
            cur = self.current.get(d)
            assert cur is None or cur.compensation, f"{step} compensated while dependent {d} runs"
            if self.must_undo(d):
                assert self.compensated.get(d, 0) == 1, f"{step} compensated before its dependent {d}"
        self.comp_started.add(step)
        assert eff.attempt <= self.defn.by_name[step].compensation_retry.max_attempts

    def applied(self, eff: RunStep, outcome: str, d: Decision) -> None:
        """Record a completion the machine accepted."""
        step = eff.step
        del self.current[step]
        s = d.state.steps[step]
        if not eff.compensation:
            if outcome == "ok":
                self.completed.add(step)
                self.effect.add(step)
                if self.defn.by_name[step].pivot:
                    self.pivot_done = True
                assert s.status in (S.COMPLETED, S.COMPENSATING), s
            elif outcome == "timeout":
                self.effect.add(step)  # cut off mid-way: it may have happened
            return
        if outcome == "ok":
            self.compensated[step] = self.compensated.get(step, 0) + 1
            assert s.status is S.COMPENSATED
        elif s.status is S.COMPENSATION_FAILED:
            self.gave_up.add(step)


def check_consistent(model: Model, state: SagaState) -> None:
    """The machine's tokens are exactly the attempts the world holds; nothing unfinished is forgotten."""
    for name, s in state.steps.items():
        cur = model.current.get(name)
        assert s.token == (cur.token if cur else 0), (name, s, cur)
    if not state.status.terminal:
        waiting = any(s.token for s in state.steps.values())
        assert waiting or state.wake_at is not None, f"saga neither runs nor waits for a timer: {state}"


def statuses(state: SagaState) -> tuple[Any, ...]:
    return (state.status, tuple((n, s.status) for n, s in state.steps.items()))


def completion(defn: SagaDefinition, eff: RunStep, outcome: str) -> Event:
    if not _local_attempt(defn, eff):
        # A message step ends with a reply, which the machine matches to the waiting step.
        if eff.compensation:
            return Reply(message_type_name(Undone), {"n": 2}, eff.step, eff.token)
        kind = Done if outcome == "ok" else Undone
        return Reply(message_type_name(kind), {"n": 1}, eff.step, eff.token)
    if outcome == "ok":
        return StepSucceeded(eff.step, eff.token, {"by": eff.step})
    if outcome == "timeout":
        return StepFailed(eff.step, eff.token, f"{eff.step} timed out", True, True)
    return StepFailed(eff.step, eff.token, f"{eff.step} broke", outcome == "fail")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(defn=dags(), data=st.data())
def test_random_sagas_keep_the_invariants(defn: SagaDefinition, data: st.DataObject) -> None:
    model = Model(defn, descendants_of(defn))
    now = 0.0
    d = new_saga(defn, "p-1", {"n": 1}, now)
    model.observe(d, Begin())
    state = d.state
    check_consistent(model, state)
    resumes_left = data.draw(st.integers(0, 2), label="restarts")
    requests_left = data.draw(st.integers(0, 2), label="operator requests")
    kinds_seen: set[str] = set()

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
        if requests_left:
            options += ["compensate", "abort"]
        assert options, f"saga stuck: {state}"
        choice = data.draw(st.sampled_from(options), label="action")
        kinds_seen.add(choice)
        now += 0.01

        if choice == "complete":
            eff = model.current[data.draw(st.sampled_from(sorted(model.current)), label="step")]
            local = _local_attempt(defn, eff)
            outcomes = ["ok", "ok", "fail", "fatal"] + (["timeout"] if local else [])
            if not local:
                # a reply: the success or failure event (a compensation's command has a success event only)
                outcomes = ["ok"] if eff.compensation else ["ok", "ok", "fatal"]
            outcome = data.draw(st.sampled_from(outcomes), label="outcome")
            event = completion(defn, eff, outcome)
            d = step(defn, state, event, now, model, observe=False)
            assert not d.stale, f"current attempt {eff} rejected as stale"
            state = d.state
            model.applied(eff, outcome, d)
            model.observe(d, event)
            model.superseded.append(eff)  # a later duplicate of it must be refused
        elif choice == "timer":
            assert state.wake_at is not None
            if data.draw(st.booleans(), label="early timer") and state.wake_at > now:
                before = state
                d = step(defn, state, Timer(), now, model)
                assert d.effects == [] and d.history == []
                state = d.state
                assert statuses(state) == statuses(before)
                continue
            now = max(now, state.wake_at)
            timed_out = {
                n: e for n, e in model.current.items() if (w := state.steps[n].wake_at) is not None and w <= now
            }
            d = step(defn, state, Timer(), now, model, observe=False)
            state = d.state
            cancelled = {c.token for c in d.effects if isinstance(c, CancelAttempt)}
            for n, e in timed_out.items():
                if e.token in cancelled:
                    continue  # an earlier timeout rolled the saga back: this one was cancelled
                # a reply deadline passed: a command that went out may have been carried out
                if model.current.get(n) is e and state.steps[n].token != e.token:
                    del model.current[n]
                    model.superseded.append(e)
                    if not e.compensation and kind_of(defn, n) == "send":
                        model.effect.add(n)
                    if e.compensation and state.steps[n].status is S.COMPENSATION_FAILED:
                        model.gave_up.add(n)
            model.observe(d, Timer())
        elif choice == "redeliver":
            eff = model.superseded[data.draw(st.integers(0, len(model.superseded) - 1), label="old")]
            ok = data.draw(st.booleans(), label="old outcome")
            before = state
            if not _local_attempt(defn, eff):
                # a late or duplicated reply, carrying the old attempt's token
                event = completion(defn, eff, "ok" if ok else "fatal")
                d = decide(defn, state, event, now)
                assert d.rejected is not None and d.effects == [], f"stale reply to {eff} was applied"
                assert d.state is state
                assert len(d.history) == 1 and d.history[0].kind in ("stale_rejected", "refused")
                assert d.rejected in d.history[0].message
                continue
            event = StepSucceeded(eff.step, eff.token) if ok else StepFailed(eff.step, eff.token, "late")
            d = step(defn, state, event, now, model)
            state = d.state
            assert d.stale, f"superseded attempt {eff} was applied"
            assert [h.kind for h in d.history] == ["stale_rejected"]
            assert statuses(state) == statuses(before)
        elif choice == "restart":
            resumes_left -= 1
            running = {n for n, e in model.current.items() if _local_attempt(defn, e)}
            d = step(defn, state, Resume(), now, model)
            state = d.state
            assert {e.step for e in d.effects if isinstance(e, RunStep)} >= running
        else:
            requests_left -= 1
            event = Compensate("test") if choice == "compensate" else Abort("test")
            before = state
            d = decide(defn, state, event, now)
            if d.rejected is not None:
                model.refusals += 1
                assert d.state is before and d.effects == []
                assert [h.kind for h in d.history] == ["refused"] and d.rejected in d.history[0].message
                continue
            in_flight = dict(model.current)
            state = d.state
            model.observe(d, event)
            if isinstance(event, Abort):
                model.aborted = True
                assert state.status is SagaStatus.ABORTED
                assert not model.current, "abort left attempts running"
                cancelled = {e.token for e in d.effects if isinstance(e, CancelAttempt)}
                assert cancelled == {e.token for e in in_flight.values()}
            elif model.pivot_done:
                raise AssertionError("compensate accepted after the pivot completed")
            elif state.status is SagaStatus.RUNNING:
                # deferred: a pivot runs, and the request waits for its outcome
                assert any(defn.by_name[n].pivot for n in model.current)
                assert [h.kind for h in d.history] == ["rollback_deferred"]
            else:
                running_actions = [n for n, e in in_flight.items() if not e.compensation]
                left = [n for n in running_actions if n in model.current and not model.current[n].compensation]
                assert not left, "rollback left actions running"
        check_consistent(model, state)

    # the run terminates
    assert state.status.terminal, f"not finished after {MAX_EVENTS} events: {state}"
    tally(f"final status: {state.status.value}")
    tally(f"pivot: {bool(defn.pivots)}, deadline: {defn.deadline}")
    tally(f"refusals: {min(model.refusals, 1)}+")
    assert state.wake_at is None
    final = {n: s.status for n, s in state.steps.items()}
    assert all(n == 1 for n in model.compensated.values()), "a step compensated more than once"

    if state.status is SagaStatus.ABORTED:
        assert model.aborted
        assert not model.current
    else:
        assert not model.current, "a finished saga still has attempts in flight"
    if state.status is SagaStatus.COMPLETED:
        assert model.completed == set(defn.by_name)
        assert all(s is S.COMPLETED for s in final.values())
        assert not model.comp_started
        assert state.error is None
    elif state.status is SagaStatus.COMPENSATED:
        assert not model.pivot_done, "a completed pivot was rolled back"
        # every step that may have had its effect, and can be undone, was undone exactly once
        undo = {n for n in defn.by_name if model.must_undo(n)}
        assert set(model.compensated) == undo, (model.compensated, undo)
        assert model.comp_started == undo
    elif state.status is SagaStatus.FAILED:
        assert state.error
        assert model.gave_up or model.pivot_done, "FAILED with no compensation given up and no pivot passed"
        if model.pivot_done:
            assert not model.comp_started
    assert model.comp_started <= {n for n in defn.by_name if model.must_undo(n)}

    # after the end, every old completion is still refused, and nothing changes
    for eff in model.superseded:
        d = decide(defn, state, StepSucceeded(eff.step, eff.token), now + 1)
        assert d.stale and d.effects == []
        assert statuses(d.state) == statuses(state)
    late: list[Event] = [Compensate("late"), Timer(), Resume()]
    if state.status is not SagaStatus.FAILED:  # a failed saga waits for an operator, who may abort it
        late.append(Abort("late"))
    for event in late:
        d = decide(defn, state, event, now + 1)
        assert statuses(d.state) == statuses(state) and not d.effects, event
        if d.rejected is not None:
            assert [h.kind for h in d.history] == ["refused"]


def _local_attempt(defn: SagaDefinition, eff: RunStep) -> bool:
    sdef = defn.by_name[eff.step]
    return sdef.compensation_local if eff.compensation else sdef.local


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
