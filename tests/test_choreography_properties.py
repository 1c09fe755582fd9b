"""Property-based tests of choreographed sagas in the state machine, driven by a simulated world.

A random flow of up to six stages (each after some earlier ones; each with or
without a failure event and a compensation that is waited for or
fire-and-forget; the flow with or without a deadline, stage timeouts and a
flow-level failure event) meets a random world: some stages happen (only
when the stages they follow did), one stage may fail, the flow may be
cancelled. The participants' events reach the machine in any order, some of
them twice, with time passing in between; compensation commands the machine
sends are answered like a participant would, the replies duplicated too.

Checked after every decision and at the end:

- nothing is lost: when every stage happened and nothing failed, the saga
  completes, whatever the order the events came in;
- a saga that rolls back compensates exactly the stages that happened before
  it finished (those with a compensation), each once, never one that did not
  happen, and a stage only after the stages that follow it;
- duplicates change nothing: an event applied again at once is refused and the
  state stays as it was; nothing changes a finished saga;
- the machine sends nothing on the way forward (no command but compensations);
- a saga that does not finish waits for a stage whose event never came, and
  has no deadline or stage timeout that would end the wait.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagakit import SagaDefinition, SagaStatus, StepStatus, choreography, send
from sagakit._messages import message_type_name
from sagakit.machine import (
    CancelAttempt,
    Decision,
    Event,
    Reply,
    RunStep,
    StepSucceeded,
    Timer,
    decide,
    new_saga,
)

S = StepStatus
N = 6


def _event(name: str) -> type:
    cls = dataclasses.make_dataclass(name, [("order_id", str, dataclasses.field(default="o-1"))])
    cls.__module__ = __name__
    globals()[name] = cls
    return cls


EVENTS = [_event(f"Happened{i}") for i in range(N)]
FAILURES = [_event(f"Failed{i}") for i in range(N)]
UNDO = [_event(f"Undo{i}") for i in range(N)]
UNDONE = [_event(f"Undone{i}") for i in range(N)]
CANCELLED = _event("FlowCancelled")


@dataclass
class Flow:
    definition: SagaDefinition
    after: dict[str, tuple[str, ...]]
    failing: set[str]  # stages with a failure event
    compensated_by: dict[str, str]  # stage -> "wait" | "forget"
    timeouts: set[str]
    cancellable: bool


@st.composite
def flows(draw: st.DrawFn) -> Flow:
    n = draw(st.integers(1, N))
    deadline = draw(st.sampled_from([None, None, 5.0]))
    c = choreography("prop", deadline=deadline)
    after: dict[str, tuple[str, ...]] = {}
    failing: set[str] = set()
    comp: dict[str, str] = {}
    timeouts: set[str] = set()
    names: list[str] = []
    for i in range(n):
        name = f"s{i}"
        how = draw(st.sampled_from(["wait", "forget", None]))
        compensate: Any = None
        if how == "wait":
            compensate = send(UNDO[i], success=UNDONE[i])
        elif how == "forget":
            compensate = UNDO[i]
        if how is not None:
            comp[name] = how
        if i == 0:
            c.starts_on(EVENTS[0], correlate=lambda e: e.order_id, name=name, compensate=compensate)
            after[name] = ()
        else:
            deps = draw(st.lists(st.sampled_from(names), unique=True, min_size=1, max_size=2))
            fails = draw(st.booleans())
            timeout = draw(st.sampled_from([None, None, 3.0]))
            if fails:
                failing.add(name)
            if timeout is not None:
                timeouts.add(name)
            c.then(
                EVENTS[i],
                name=name,
                after=deps,
                failure=FAILURES[i] if fails else None,
                compensate=compensate,
                timeout=timeout,
            )
            after[name] = tuple(deps)
        names.append(name)
    cancellable = draw(st.booleans())
    if cancellable:
        c.fails_on(CANCELLED)
    return Flow(c.build(), after, failing, comp, timeouts, cancellable)


def descendants(flow: Flow) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {n: set() for n in flow.after}
    for n in reversed(list(flow.after)):
        for d in flow.after[n]:
            out[d] |= {n} | out[n]
    return out


@dataclass
class World:
    """What the test knows happened outside the machine."""

    happened: set[str] = field(default_factory=set)  # stages whose event reached a saga not yet finished
    sent_undo: list[str] = field(default_factory=list)  # compensation commands, in order
    undone: list[str] = field(default_factory=list)


def stage_of(name: str) -> int:
    return int(name[1:])


def observed(type_: type) -> Reply:
    return Reply(message_type_name(type_), {"order_id": "o-1"})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow=flows(), data=st.data())
def test_choreographies_keep_the_invariants(flow: Flow, data: st.DataObject) -> None:
    defn = flow.definition
    stages = list(flow.after)
    below = descendants(flow)
    # The world: stages happen in an order their dependencies allow; one may fail; the flow may be cancelled.
    happens: list[str] = []
    for name in stages:
        if all(d in happens for d in flow.after[name]) and data.draw(st.integers(0, 5)) > 0:
            happens.append(name)
    frontier = [n for n in stages if n not in happens and all(d in happens for d in flow.after[n])]
    fails = [n for n in frontier if n in flow.failing]
    failing = data.draw(st.sampled_from([None, *fails])) if fails else None
    outgoing: list[Reply] = [observed(EVENTS[stage_of(n)]) for n in happens]
    if failing is not None:
        outgoing.append(observed(FAILURES[stage_of(failing)]))
    cancel = flow.cancellable and data.draw(st.booleans())
    if cancel:
        outgoing.append(observed(CANCELLED))
    # Any order, some twice.
    outgoing = data.draw(st.permutations(outgoing))
    dups = data.draw(st.lists(st.sampled_from(outgoing), max_size=3)) if outgoing else []
    for d in dups:
        outgoing.insert(data.draw(st.integers(0, len(outgoing))), d)

    now = 1000.0
    first = new_saga(defn, "saga-1", {}, now, correlation_id="o-1", idempotency_key="o-1")
    state = first.state
    world = World()
    replies: list[Event] = []  # participants' answers to compensation commands, with headers
    finished_at: float | None = None
    rollback_seen = False

    def effects(d: Decision) -> None:
        for eff in d.effects:
            if isinstance(eff, CancelAttempt):
                continue
            assert isinstance(eff, RunStep)
            if not eff.compensation:
                assert defn.by_name[eff.step].local is False  # a stage sends nothing on the way forward
                continue
            # A stage is compensated only once the stages that follow it are settled.
            for later in below[eff.step]:
                s = d.state.steps[later]
                assert s.status is not S.COMPENSATING, (eff.step, later)
                assert not (s.status is S.COMPLETED and later in flow.compensated_by), (eff.step, later)
            world.sent_undo.append(eff.step)
            if flow.compensated_by[eff.step] == "forget":
                replies.insert(0, StepSucceeded(eff.step, eff.token))  # the runtime: done once committed
            else:
                answer = Reply(message_type_name(UNDONE[stage_of(eff.step)]), {"order_id": "o-1"}, eff.step, eff.token)
                replies.append(answer)
                if data.draw(st.booleans()):
                    replies.append(answer)  # delivered twice

    def apply(event: Event) -> Decision:
        nonlocal state, finished_at, rollback_seen
        before = state
        d = decide(defn, state, event, now)
        if before.status.terminal:
            assert d.rejected is not None or d.state.status is before.status
        if d.rejected is None:
            state = d.state
            effects(d)
            if state.status is SagaStatus.COMPENSATING:
                rollback_seen = True
            if state.status.terminal and finished_at is None:
                finished_at = now
        else:
            assert d.state is before and not d.effects
            assert d.history, "a refusal is recorded with its reason"
        return d

    effects(first)
    for ev in outgoing:
        now += data.draw(st.sampled_from([0.0, 0.5, 2.0]))
        apply(Timer())
        stage = next((n for n in stages if message_type_name(EVENTS[stage_of(n)]) == ev.type_name), None)
        was_open = not state.status.terminal
        d = apply(ev)
        if d.rejected is None:
            # The same event again at once is a duplicate: refused, nothing changes.
            again = decide(defn, state, ev, now)
            assert again.rejected is not None and again.state is state, again.history
        if stage is not None and was_open and d.rejected is None:
            world.happened.add(stage)
        while replies and data.draw(st.booleans()):
            apply(replies.pop(0))
    # The world goes quiet: answers arrive, time passes.
    for _ in range(4 * N + 10):
        while replies:
            apply(replies.pop(0))
        now += 10.0
        apply(Timer())

    compensated = [n for n in stages if state.steps[n].status is S.COMPENSATED]
    assert sorted(world.sent_undo) == sorted(set(world.sent_undo)), "each stage is compensated once"
    if state.status is SagaStatus.COMPLETED:
        assert set(happens) == set(stages) and failing is None and not rollback_seen
        assert not world.sent_undo
    elif state.status is SagaStatus.COMPENSATED:
        assert failing is not None or cancel or defn.deadline is not None or flow.timeouts
        assert set(compensated) == world.happened & set(flow.compensated_by), (compensated, world.happened)
        assert set(world.sent_undo) <= world.happened
    else:
        assert not state.status.terminal, state.status
        # Stalled: it waits for a stage that never happened, and nothing would end the wait.
        assert defn.deadline is None
        waiting = [n for n in stages if state.steps[n].token]
        assert waiting and all(n not in happens and n not in flow.timeouts for n in waiting)
        assert failing is None and not cancel
    # Nothing was lost: when every stage happened and nothing failed, the saga completed.
    if set(happens) == set(stages) and failing is None and not cancel and defn.deadline is None and not flow.timeouts:
        assert state.status is SagaStatus.COMPLETED


def test_an_event_before_its_turn_is_kept_and_applied_in_order() -> None:
    flow = (
        choreography("kept")
        .starts_on(EVENTS[0], correlate=lambda e: e.order_id)
        .then(EVENTS[1])
        .then(EVENTS[2])
        .build()
    )
    d = new_saga(flow, "s", {}, 1.0)
    late, early = observed(EVENTS[2]), observed(EVENTS[1])
    d = decide(flow, d.state, late, 2.0)
    assert d.rejected is None and d.history[-1].kind == "observed_early"
    assert d.state.steps["Happened2"].status is S.PENDING
    d = decide(flow, d.state, early, 3.0)
    assert d.history[-1].kind == "observed_early"
    d = decide(flow, d.state, observed(EVENTS[0]), 4.0)
    assert d.state.status is SagaStatus.COMPLETED
    kinds = [h.kind for h in d.history]
    assert kinds.count("observed") == 3 and kinds[-1] == "completed"
    done = [h.step for h in d.history if h.kind == "step_completed"]
    assert done == ["Happened0", "Happened1", "Happened2"]  # in the flow's order, not the arrival order


def test_a_stage_observed_while_rolling_back_is_compensated_too() -> None:
    flow = (
        choreography("late")
        .starts_on(EVENTS[0], correlate=lambda e: e.order_id, compensate=send(UNDO[0], success=UNDONE[0]))
        .then(EVENTS[1], compensate=send(UNDO[1], success=UNDONE[1]))
        .fails_on(CANCELLED)
        .build()
    )
    d = new_saga(flow, "s", {}, 1.0)
    d = decide(flow, d.state, observed(EVENTS[0]), 2.0)
    d = decide(flow, d.state, observed(CANCELLED), 3.0)
    assert d.state.status is SagaStatus.COMPENSATING
    (undo0,) = [e for e in d.effects if isinstance(e, RunStep)]
    assert undo0.step == "Happened0" and undo0.compensation
    # Stage 1 happened after all (its event was on its way): it is compensated too.
    d = decide(flow, d.state, observed(EVENTS[1]), 4.0)
    assert d.rejected is None and any(h.kind == "observed_late" for h in d.history)
    (undo1,) = [e for e in d.effects if isinstance(e, RunStep)]
    assert undo1.step == "Happened1" and undo1.compensation
    d = decide(flow, d.state, Reply(message_type_name(UNDONE[0]), {}, "Happened0", undo0.token), 5.0)
    d = decide(flow, d.state, Reply(message_type_name(UNDONE[1]), {}, "Happened1", undo1.token), 6.0)
    assert d.state.status is SagaStatus.COMPENSATED
    again = decide(flow, d.state, observed(EVENTS[1]), 7.0)
    assert again.rejected is not None and "is a duplicate" in again.rejected


def test_an_event_after_the_saga_finished_is_refused_with_the_reason() -> None:
    flow = (
        choreography("finished")
        .starts_on(EVENTS[0], correlate=lambda e: e.order_id)
        .then(EVENTS[1])
        .fails_on(CANCELLED)
        .build()
    )
    d = new_saga(flow, "s", {}, 1.0)
    d = decide(flow, d.state, observed(CANCELLED), 2.0)
    assert d.state.status is SagaStatus.COMPENSATED
    late = decide(flow, d.state, observed(EVENTS[1]), 3.0)
    assert late.rejected is not None and "came after it finished" in late.rejected
    assert late.state is d.state and late.history[-1].kind == "refused"


def test_a_stage_that_waits_past_its_timeout_rolls_the_saga_back() -> None:
    flow = (
        choreography("timed")
        .starts_on(EVENTS[0], correlate=lambda e: e.order_id, compensate=UNDO[0])
        .then(EVENTS[1], timeout=5.0)
        .build()
    )
    d = new_saga(flow, "s", {}, 1.0)
    d = decide(flow, d.state, observed(EVENTS[0]), 2.0)
    assert d.state.steps["Happened1"].status is S.RUNNING and d.state.wake_at == 7.0
    assert d.history[-1].message == f"stage 'Happened1' waits for {message_type_name(EVENTS[1])}"
    early = decide(flow, d.state, Timer(), 6.9)
    assert early.state.status is SagaStatus.RUNNING
    d = decide(flow, d.state, Timer(), 7.0)
    assert d.state.status is SagaStatus.COMPENSATING and "timed out after 5.0s" in (d.state.error or "")
    [undo] = [e for e in d.effects if isinstance(e, RunStep)]
    assert (undo.step, undo.compensation) == ("Happened0", True)
    d = decide(flow, d.state, StepSucceeded("Happened0", undo.token), 7.1)  # fire-and-forget: done once committed
    assert d.state.status is SagaStatus.COMPENSATED
