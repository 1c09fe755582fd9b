"""Property-based tests of child sagas in the state machine: a parent and its children driven by a simulated runtime.

A pure loop plays the runtime and the world for several sagas at once: the
parent ``order`` (a local step, the child step ``ship``, a local step after
it) and the children it starts (``shipping``: one to three local steps, with a
pivot in some runs). It completes local attempts at random (success, failure),
carries out the child effects (start, roll back, abort, tell the parent) in
any order, some twice, and loses some of them (the worker that was to carry
them out died after its commit), fires timers, resumes sagas (a restart), and
asks the parent to compensate or abort at random moments. Then it lets every
saga run to its end.

What is checked, after every decision and at the end:

- a child step starts at most one child per attempt, under the id derived from
  the parent, the step and the attempt, and nothing else starts a child;
- the child step completes only when its child has completed, with the child's
  data as its result;
- every saga ends, whatever effects were lost (the parent looks at its child
  again on timers and resumes);
- a parent that ends COMPENSATED has every child COMPENSATED, every completed
  step of a child undone; a COMPLETED parent has its child COMPLETED;
- a parent that ends ABORTED leaves no child running, even when the requests to
  abort it were lost (it stays due and asks again until each child has ended);
- a parent ends FAILED only when a child could not be rolled back (its pivot
  had completed) or itself failed;
- a finished saga is never changed by a late outcome, and a refused rollback
  request is reported to the parent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as tally
from hypothesis import strategies as st

from sagakit import RetryPolicy, SagaBuilder, SagaDefinition, SagaStatus, StepStatus, child
from sagakit.machine import (
    ABORTING,
    CHILDREN,
    PARENT,
    Abort,
    AbortChild,
    CancelAttempt,
    ChildOutcome,
    Compensate,
    CompensateChild,
    Effect,
    Event,
    NotifyParent,
    ParentRollback,
    Resume,
    Retry,
    RunStep,
    SagaState,
    StartChild,
    StepFailed,
    StepSucceeded,
    Timer,
    child_id,
    child_outcome,
    decide,
    new_saga,
)

S = StepStatus
PARENT_ID = "p" * 32
CHECK_EVERY = 5.0


def act(ctx: Any) -> None:
    return None


def undo(ctx: Any) -> None:
    return None


@st.composite
def shipping(draw: st.DrawFn) -> SagaDefinition:
    """The child: one to three local steps in a chain; sometimes the last is a pivot (no compensation)."""
    n = draw(st.integers(1, 3))
    pivot = draw(st.booleans())
    b = SagaBuilder("shipping")
    for i in range(n):
        last = i == n - 1
        b.step(
            f"c{i}",
            act,
            None if (pivot and last) else undo,
            retry=RetryPolicy(max_attempts=draw(st.integers(1, 2)), initial_delay=0.5, jitter=0.0),
            pivot=pivot and last,
        )
    return b.build()


def order() -> SagaDefinition:
    b = SagaBuilder("order")
    b.step("reserve", act, undo, retry=RetryPolicy(max_attempts=1))
    b.step("ship", action=child("shipping", check_every=CHECK_EVERY))
    b.step("charge", act, undo, retry=RetryPolicy(max_attempts=1))
    return b.build()


@dataclass
class World:
    """The sagas, the attempts in flight and the child effects not yet carried out, with what was seen."""

    parent_def: SagaDefinition
    child_def: SagaDefinition
    now: float = 1000.0
    sagas: dict[str, SagaState] = field(default_factory=dict)
    inflight: list[tuple[str, RunStep]] = field(default_factory=list)
    stale: list[tuple[str, RunStep]] = field(default_factory=list)
    work: list[tuple[str, Effect]] = field(default_factory=list)  # (saga that asked, child effect)
    started: dict[str, int] = field(default_factory=dict)  # child id -> times it was inserted
    lost: set[type] = field(default_factory=set)
    refusals_reported: int = 0
    rollbacks_refused: int = 0

    def defn(self, sid: str) -> SagaDefinition:
        return self.parent_def if sid == PARENT_ID else self.child_def

    # ------------------------------------------------------------ the machine and its effects

    def apply(self, sid: str, event: Event) -> str | None:
        before = self.sagas[sid]
        d = decide(self.defn(sid), before, event, self.now)
        if d.rejected is not None:
            assert d.state is before
            assert d.history, f"a refusal is recorded: {d.rejected}"
            return d.rejected
        if before.status.terminal and event.__class__ not in (Abort, ParentRollback):
            # Only an abort (of a FAILED saga) or a parent's rollback (of a COMPLETED child) moves a finished saga.
            assert d.state.status is before.status or before.status is SagaStatus.FAILED, (event, before.status)
        self.sagas[sid] = d.state
        self.check_transition(sid, before, d.state, event)
        self.effects(sid, d.effects)
        return None

    def effects(self, sid: str, effects: list[Effect]) -> None:
        for eff in effects:
            if isinstance(eff, RunStep):
                self.inflight.append((sid, eff))
            elif isinstance(eff, CancelAttempt):
                for i, (s, r) in enumerate(self.inflight):
                    if s == sid and r.token == eff.token:
                        self.stale.append(self.inflight.pop(i))
                        break
            else:
                self.work.append((sid, eff))

    def insert(self, st_: SagaState, effects: list[Effect]) -> bool:
        if st_.id in self.sagas:
            return False
        self.started[st_.id] = self.started.get(st_.id, 0) + 1
        self.sagas[st_.id] = st_
        self.effects(st_.id, effects)
        return True

    def carry_out(self, sid: str, eff: Effect) -> None:
        """What ``sagakit._runtime.children`` does, without I/O."""
        parent = self.sagas[sid]
        match eff:
            case StartChild(step, _token, cid, _name, _version):
                kid = self.sagas.get(cid)
                if kid is None:
                    made = new_saga(self.child_def, cid, {"from": parent.id}, self.now, parent=(parent.id, step))
                    self.insert(made.state, made.effects)
                elif kid.status.terminal:
                    self.apply(parent.id, child_outcome(kid, step))
            case CompensateChild(step, _token, cid, _name, _version, reason):
                event = ParentRollback(parent.id, reason)
                kid = self.sagas.get(cid)
                if kid is None:
                    made = new_saga(self.child_def, cid, {}, self.now, begin=False, parent=(parent.id, step))
                    ended = decide(self.child_def, made.state, event, self.now)
                    assert ended.state.status is SagaStatus.COMPENSATED
                    self.insert(ended.state, [])
                    kid = ended.state
                if kid.status.terminal and kid.status is not SagaStatus.COMPLETED:
                    self.apply(parent.id, child_outcome(kid, step))
                elif kid.status is not SagaStatus.COMPENSATING:
                    refused = self.apply(cid, event)
                    if refused is not None:
                        self.rollbacks_refused += 1
                        self.apply(parent.id, ChildOutcome(step, cid, None, error=f"refused: {refused}"))
            case AbortChild(step, cid, reason):
                kid = self.sagas.get(cid)
                if kid is None:
                    made = new_saga(self.child_def, cid, {}, self.now, begin=False, parent=(parent.id, step))
                    ended = decide(self.child_def, made.state, Abort(reason), self.now)
                    self.insert(ended.state, [])
                    kid = ended.state
                if kid.status.terminal:
                    self.apply(parent.id, child_outcome(kid, step))  # it has ended: the parent stops asking
                else:
                    self.apply(cid, Abort(reason, f"saga {parent.id}"))
            case NotifyParent(parent_id, outcome):
                assert parent_id == PARENT_ID
                assert outcome.status is not None and SagaStatus(outcome.status).terminal
                if self.apply(parent_id, outcome) is not None:
                    self.refusals_reported += 1

    def complete(self, i: int, ok: bool) -> None:
        sid, r = self.inflight.pop(i)
        if r.compensation or ok:
            self.apply(sid, StepSucceeded(r.step, r.token, {"step": r.step}))
        else:
            self.apply(sid, StepFailed(r.step, r.token, "it failed", retryable=True))

    def resume(self, sid: str) -> None:
        """The worker holding *sid* died: its local attempts are lost and run again under new tokens."""
        lost = [x for x in self.inflight if x[0] == sid]
        self.inflight = [x for x in self.inflight if x[0] != sid]
        self.stale.extend(lost)
        if not self.sagas[sid].status.terminal:
            self.apply(sid, Resume())

    # ------------------------------------------------------------ invariants

    def check_transition(self, sid: str, before: SagaState, after: SagaState, event: Event) -> None:
        if sid != PARENT_ID:
            return
        children = (after.meta.get(CHILDREN) or {}) if after.meta else {}
        if "ship" in children:
            # Only a dispatch of the child step names a child, under the id of that attempt.
            s = after.steps["ship"]
            if children["ship"] != (before.meta.get(CHILDREN) or {}).get("ship"):
                assert s.status is S.RUNNING
                assert children["ship"] == child_id(PARENT_ID, "ship", s.token)
        was, now_ = before.steps["ship"].status, after.steps["ship"].status
        if now_ is S.COMPLETED and was is not S.COMPLETED:
            kid = self.sagas[children["ship"]]
            assert kid.status is SagaStatus.COMPLETED, "the child step completes only with its child"
            assert after.steps["ship"].result["data"] == kid.data
            assert after.steps["ship"].result["saga_id"] == kid.id
        if now_ is S.COMPENSATED and was is not S.COMPENSATED:
            kid = self.sagas[children["ship"]]
            assert kid.status is SagaStatus.COMPENSATED, "the child step is compensated only with its child"

    def check_children(self) -> None:
        parent = self.sagas[PARENT_ID]
        every = parent.meta.get(CHILDREN + "_all", []) if parent.meta else []
        named = {c["id"] for c in every}
        assert len(named) == len(every), "one child per attempt"
        for cid, n in self.started.items():
            assert n == 1, f"child {cid} inserted {n} times"
            assert cid in named, "a child exists only for an attempt of the child step"
            assert self.sagas[cid].meta[PARENT] == {"id": PARENT_ID, "step": "ship"}


def settle(w: World) -> None:
    """Let everything run to its end: attempts succeed, effects are carried out, timers fire."""
    for _ in range(200):
        if all(s.wake_at is None for s in w.sagas.values()) and not w.work and not w.inflight:
            return
        while w.inflight:
            w.complete(0, True)
        while w.work:
            sid, eff = w.work.pop(0)
            w.carry_out(sid, eff)
        w.now += CHECK_EVERY + 1
        for sid in list(w.sagas):
            if w.sagas[sid].wake_at is not None:  # an aborted parent stays due until its children have ended
                w.apply(sid, Timer())
    raise AssertionError(f"sagas did not settle: { {k: v.status for k, v in w.sagas.items()} }")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shipping(), st.data())
def test_child_sagas_under_random_schedules(child_def: SagaDefinition, data: st.DataObject) -> None:
    w = World(order(), child_def)
    made = new_saga(w.parent_def, PARENT_ID, {"order": 1}, w.now)
    w.insert(made.state, made.effects)
    w.started.pop(PARENT_ID)
    operator: str | None = None
    for _ in range(data.draw(st.integers(0, 60), label="steps")):
        moves = ["time", "resume"]
        if w.inflight:
            moves += ["complete", "complete", "complete"]
        if w.work:
            moves += ["carry", "carry", "carry", "twice", "lose"]
        if w.stale:
            moves.append("late")
        if operator is None:
            moves += ["compensate", "abort"]
        move = data.draw(st.sampled_from(moves), label="move")
        if move == "complete":
            i = data.draw(st.integers(0, len(w.inflight) - 1))
            w.complete(i, data.draw(st.integers(0, 4), label="ok") > 0)
        elif move in ("carry", "twice", "lose"):
            i = data.draw(st.integers(0, len(w.work) - 1))
            sid, eff = w.work[i] if move == "twice" else w.work.pop(i)
            if move == "lose":
                w.lost.add(type(eff))  # the worker died after its commit, before carrying it out
                continue
            w.carry_out(sid, eff)
        elif move == "late":
            sid, r = w.stale.pop(data.draw(st.integers(0, len(w.stale) - 1)))
            before = w.sagas[sid]
            d = decide(w.defn(sid), before, StepSucceeded(r.step, r.token), w.now)
            assert d.stale or d.rejected is not None or d.state.status is before.status
            assert d.rejected is not None or d.stale, "a late completion is never applied"
        elif move == "time":
            w.now += data.draw(st.sampled_from([0.5, 1.0, CHECK_EVERY + 0.1]))
            sid = data.draw(st.sampled_from(sorted(w.sagas)))
            if w.sagas[sid].wake_at is not None:
                w.apply(sid, Timer())
        elif move == "resume":
            w.resume(data.draw(st.sampled_from(sorted(w.sagas))))
        elif move == "compensate":
            operator = "compensate"
            w.apply(PARENT_ID, Compensate("test"))
        elif move == "abort":
            operator = "abort"
            w.apply(PARENT_ID, Abort("test"))
        w.check_children()

    settle(w)
    w.check_children()
    parent = w.sagas[PARENT_ID]
    kids = [s for sid, s in w.sagas.items() if sid != PARENT_ID]
    assert len(kids) <= 1, "the child step is not retried: one attempt, one child"
    pivot = bool(w.child_def.pivots)
    tally(f"parent {parent.status.value}, children {sorted(k.status.value for k in kids)}")
    for t in w.lost:
        tally(f"lost a {t.__name__}")
    if parent.status is SagaStatus.COMPLETED:
        assert [k.status for k in kids] == [SagaStatus.COMPLETED]
        assert parent.steps["ship"].result["data"] == kids[0].data
    elif parent.status is SagaStatus.COMPENSATED:
        for k in kids:
            assert k.status is SagaStatus.COMPENSATED, k.status
            for name, s in k.steps.items():
                if w.child_def.by_name[name].compensation is not None:
                    assert s.status is not S.COMPLETED, f"child step {name} left done after a rollback"
    elif parent.status is SagaStatus.ABORTED:
        assert operator == "abort"
        for k in kids:
            assert k.status.terminal  # whatever abort requests were lost
        assert ABORTING not in parent.meta and parent.wake_at is None
    else:
        assert parent.status is SagaStatus.FAILED
        # Only a child that could not be rolled back (past its pivot) or failed itself fails the parent.
        assert pivot, "without a pivot in the child every rollback succeeds"
        assert kids and kids[0].status in (SagaStatus.COMPLETED, SagaStatus.FAILED)
        assert parent.steps["ship"].status is S.COMPENSATION_FAILED


# ---------------------------------------------------------------- examples of single rules


def _run_to_ship(defn: SagaDefinition) -> tuple[SagaState, StartChild]:
    """A parent of *defn* whose steps before ``ship`` completed, and the effect that starts its child."""
    d = new_saga(defn, PARENT_ID, {}, 1.0)
    st_ = d.state
    effects = list(d.effects)
    while True:
        eff = effects.pop(0)
        if isinstance(eff, StartChild):
            return st_, eff
        assert isinstance(eff, RunStep)
        d = decide(defn, st_, StepSucceeded(eff.step, eff.token), 2.0)
        st_ = d.state
        effects += d.effects


def test_an_outcome_of_another_child_or_of_a_finished_attempt_is_stale_and_recorded() -> None:
    defn = order()
    st_, start = _run_to_ship(defn)
    other = ChildOutcome("ship", "0" * 32, "completed", {"saga_id": "0" * 32, "data": {}, "results": {}})
    d = decide(defn, st_, other, 3.0)
    assert d.stale and d.rejected and d.state is st_
    assert d.history[0].kind == "stale_rejected" and start.child_id in d.history[0].message
    d = decide(defn, st_, ChildOutcome("nowhere", start.child_id, "completed"), 3.0)
    assert d.stale and "no child step 'nowhere'" in (d.rejected or "")


def test_a_child_step_survives_a_failure_past_the_pivot_and_its_child_is_not_started_again() -> None:
    b = SagaBuilder("order")
    b.step("pay", act, pivot=True)
    b.step("ship", action=child("shipping", compensate=False), after=["pay"])
    b.step("notify", act, after=["pay"], retry=RetryPolicy(max_attempts=1))
    defn = b.build()
    d = new_saga(defn, PARENT_ID, {}, 1.0)
    [pay] = d.effects
    assert isinstance(pay, RunStep)
    d = decide(defn, d.state, StepSucceeded("pay", pay.token), 2.0)
    start = next(e for e in d.effects if isinstance(e, StartChild))
    notify = next(e for e in d.effects if isinstance(e, RunStep))
    d = decide(defn, d.state, StepFailed("notify", notify.token, "mail down", retryable=False), 3.0)
    assert d.state.status is SagaStatus.FAILED
    assert d.state.steps["ship"].status is S.RUNNING and d.state.steps["ship"].token == start.token
    assert not any(isinstance(e, CancelAttempt) and e.step == "ship" for e in d.effects)
    # The operator retries notify: the child step still waits for the same child.
    d = decide(defn, d.state, Retry("mail is back"), 4.0)
    assert not any(isinstance(e, StartChild) for e in d.effects)
    assert d.state.steps["ship"].token == start.token
    done = ChildOutcome("ship", start.child_id, "completed", {"saga_id": start.child_id, "data": {}, "results": {}})
    st_ = d.state
    run = next(e for e in d.effects if isinstance(e, RunStep))
    st_ = decide(defn, st_, StepSucceeded("notify", run.token), 5.0).state
    st_ = decide(defn, st_, done, 6.0).state
    assert st_.status is SagaStatus.COMPLETED


def test_aborting_a_parent_without_its_definition_aborts_its_running_child() -> None:
    defn = order()
    st_, start = _run_to_ship(defn)
    d = decide(None, st_, Abort("parked"), 3.0)
    assert d.state.status is SagaStatus.ABORTED
    [abort] = [e for e in d.effects if isinstance(e, AbortChild)]
    assert abort.child_id == start.child_id


def test_a_rollback_request_from_a_saga_that_is_not_the_parent_is_refused() -> None:
    kid = new_saga(order(), "c" * 32, {}, 1.0, parent=(PARENT_ID, "ship")).state
    d = decide(order(), kid, ParentRollback("x" * 32), 2.0)
    assert d.rejected == f"saga {'c' * 32} is not a child of saga {'x' * 32}"
    plain = new_saga(order(), "d" * 32, {}, 1.0).state
    assert decide(order(), plain, ParentRollback(PARENT_ID), 2.0).rejected is not None


def test_a_completed_child_past_its_pivot_refuses_to_roll_back_and_the_parent_stops_failed() -> None:
    b = SagaBuilder("shipping")
    b.step("hand_over", act, pivot=True)
    kid_def = b.build()
    defn = order()
    st_, start = _run_to_ship(defn)
    kid = new_saga(kid_def, start.child_id, {}, 3.0, parent=(PARENT_ID, "ship"))
    [run] = kid.effects
    assert isinstance(run, RunStep)
    kd = decide(kid_def, kid.state, StepSucceeded("hand_over", run.token), 4.0)
    [note] = [e for e in kd.effects if isinstance(e, NotifyParent)]
    d = decide(defn, st_, note.outcome, 5.0)
    charge = next(e for e in d.effects if isinstance(e, RunStep))
    d = decide(defn, d.state, StepFailed("charge", charge.token, "declined", retryable=False), 6.0)
    [comp] = [e for e in d.effects if isinstance(e, CompensateChild)]
    refused = decide(kid_def, kd.state, ParentRollback(PARENT_ID, comp.reason), 7.0)
    assert refused.rejected == "pivot step 'hand_over' has completed: the saga can no longer be rolled back"
    d = decide(defn, d.state, ChildOutcome("ship", start.child_id, None, error=f"refused: {refused.rejected}"), 8.0)
    assert d.state.steps["ship"].status is S.COMPENSATION_FAILED
    assert d.state.status is SagaStatus.FAILED and "refused: pivot step 'hand_over'" in (d.state.error or "")
