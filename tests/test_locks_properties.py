"""Property-based tests of semantic locks: several sagas, a simulated store and runtime, random interleavings.

A pure loop plays the runtime for a few sagas at once. Each saga declares
business keys drawn from a small pool (for the whole saga, for some steps, or
both), with the ``wait`` or ``fail`` policy, maybe a timeout and an early
release. The lock table is the stores' own queue rules (``stores._lockplan``),
applied the way the stores apply them: a release in the transition's write,
an acquisition after its transition, refused as stale when the saga no longer
waits for it, and sagas granted their keys woken (a ``Resume``). At random the
loop completes attempts (success or failure), fires timers, restarts workers
(``Resume``) and sends operators' aborts and compensations.

Checked after every step of the world:

- no two sagas hold one key (the machine's view), and a saga holds in its state
  only keys the lock table says it holds;
- a step attempt starts, and runs, only while its saga holds the saga's keys
  (until they are released early) and the step's own keys;
- a finished saga holds no key and waits for none, in its state and in the table;
- a saga never rolls back once its pivot step has completed (a lock refused after
  an operator's retry stops it for the operator again);
- the table never leaves an acquisition waiting that could be granted.

And at the end, once everything left is allowed to finish: every saga is
finished (no deadlock, no lost wake-up), and the table is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagakit import RetryPolicy, SagaBuilder, SagaDefinition
from sagakit.machine import (
    LOCKS,
    Abort,
    AcquireLocks,
    Begin,
    CancelAttempt,
    Compensate,
    Decision,
    Event,
    LocksGranted,
    LocksRefused,
    ReleaseLocks,
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
from sagakit.stores import _lockplan

KEYS = ("a", "b", "c", "d")


def act(ctx: Any) -> None:
    return None


def undo(ctx: Any) -> None:
    return None


def keys_reader(keys: list[str]) -> Any:
    return lambda data: list(keys)


@st.composite
def definitions(draw: st.DrawFn, i: int) -> SagaDefinition:
    """A chain or fork of up to 4 steps; saga-level keys, step-level keys, or both."""
    saga_keys = draw(st.lists(st.sampled_from(KEYS), max_size=3))
    policy = draw(st.sampled_from(["wait", "wait", "fail"]))
    timeout = draw(st.sampled_from([None, None, 1.0])) if policy == "wait" else None
    n = draw(st.integers(1, 4))
    names = [f"s{j}" for j in range(n)]
    release_after = draw(st.sampled_from([None, None, *names]))
    step_keys = [draw(st.lists(st.sampled_from(KEYS), max_size=2)) if draw(st.booleans()) else None for _ in names]
    if not saga_keys and not any(step_keys):
        saga_keys = [draw(st.sampled_from(KEYS))]
    b = SagaBuilder(
        f"saga{i}",
        locks=keys_reader(saga_keys) if saga_keys else None,
        lock_policy=policy,
        lock_timeout=timeout,
        release_locks_after=release_after,
    )
    pivot = draw(st.sampled_from([None, None, *names]))
    downstream: set[str] = set()
    for j, name in enumerate(names):
        after = [] if j == 0 else [names[draw(st.integers(0, j - 1))]]
        if any(d == pivot or d in downstream for d in after):
            downstream.add(name)
        compensable = name != pivot and name not in downstream
        b.step(
            name,
            act,
            undo if compensable and draw(st.booleans()) else None,
            pivot=name == pivot,
            after=after,
            retry=RetryPolicy(max_attempts=draw(st.integers(1, 2)), initial_delay=0.5, jitter=0),
            compensation_retry=RetryPolicy(max_attempts=3, initial_delay=0.5, jitter=0),
            locks=keys_reader(step_keys[j]) if step_keys[j] else None,
        )
    return b.build()


@dataclass
class Saga:
    defn: SagaDefinition
    state: SagaState
    inflight: dict[str, RunStep] = field(default_factory=dict)
    acquire: AcquireLocks | None = None  # committed, not yet asked of the store
    woken: bool = False
    pivot_done: bool = False


def meta_locks(st: SagaState) -> dict[str, Any]:
    found = st.meta.get(LOCKS) if st.meta else None
    return found if isinstance(found, dict) else {}


def saga_keys(s: Saga) -> set[str]:
    return set(meta_locks(s.state).get("saga") or [])


class World:
    def __init__(self, sagas: list[Saga]) -> None:
        self.sagas = {s.state.id: s for s in sagas}
        self.rows: list[_lockplan.LockRow] = []
        self.now = 0.0

    # -- the store
    def commit(self, s: Saga, d: Decision) -> None:
        """A transition is committed: its releases apply in its write; then its attempts and acquisition."""
        s.state = d.state
        for eff in d.effects:
            if isinstance(eff, ReleaseLocks):
                plan = _lockplan.release(self.rows, s.state.id, eff.keys)
                self.rows = _lockplan.apply(self.rows, plan)
                self.wake(plan.woken)
        for eff in d.effects:
            if isinstance(eff, CancelAttempt):
                s.inflight.pop(eff.step, None)
            elif isinstance(eff, RunStep):
                self.check_may_run(s, eff)
                s.inflight[eff.step] = eff
            elif isinstance(eff, AcquireLocks):
                s.acquire = eff
        if s.state.status.terminal:
            s.inflight.clear()
        self.check()

    def wake(self, sagas: set[str]) -> None:
        for sid in sagas:
            self.sagas[sid].woken = True

    def ask(self, s: Saga) -> None:
        """Carry out a committed acquisition, as a store does."""
        eff = s.acquire
        assert eff is not None
        s.acquire = None
        wanted = meta_locks(s.state).get("wanted")
        if s.state.status.terminal or not wanted or set(wanted) != set(eff.keys):
            return  # stale
        plan, answer = _lockplan.acquire(self.rows, s.state.id, eff.keys, self.now, fail=eff.fail, give_up=eff.give_up)
        self.rows = _lockplan.apply(self.rows, plan)
        self.wake(plan.woken)
        if answer.outcome == "granted":
            self.feed(s, LocksGranted(eff.keys))
        elif answer.outcome == "refused":
            assert answer.reason in ("taken", "timeout", "deadlock")
            self.feed(s, LocksRefused(eff.keys, answer.reason, answer.blockers))

    def feed(self, s: Saga, event: Event) -> None:
        d = decide(s.defn, s.state, event, self.now)
        if d.rejected is None:
            self.commit(s, d)

    # -- the invariants
    def check_may_run(self, s: Saga, eff: RunStep) -> None:
        held = set(meta_locks(s.state).get("held") or [])
        if eff.compensation:
            return
        locks = meta_locks(s.state)
        if s.defn.locks is not None and s.defn.locks.keys is not None and not locks.get("released"):
            assert saga_keys(s) <= held, f"{s.state.id} runs {eff.step} without its saga keys"
        fn = s.defn.by_name[eff.step].locks
        if fn is not None:
            assert set(fn(s.state.data)) <= held, f"{s.state.id} runs {eff.step} without the step's keys"

    def check(self) -> None:
        owner: dict[str, str] = {}
        table_held = {(r.key, r.saga_id) for r in self.rows if r.held}
        for sid, s in self.sagas.items():
            locks = meta_locks(s.state)
            for k in locks.get("held") or []:
                assert k not in owner, f"key {k!r} held by {owner.get(k)} and {sid}"
                owner[k] = sid
                assert (k, sid) in table_held, f"{sid} thinks it holds {k!r}; the table does not"
            held = set(locks.get("held") or [])
            if any(s.state.steps[p].status.value == "completed" for p in s.defn.pivots):
                s.pivot_done = True
            if s.pivot_done:
                assert s.state.status.value not in ("compensating", "compensated"), f"{sid} rolled back past its pivot"
            for name, step in s.state.steps.items():
                fn = s.defn.by_name[name].locks
                if step.token and step.status.value == "running" and fn is not None:
                    assert set(fn(s.state.data)) <= held, f"{sid} runs {name} while not holding its keys"
                if step.token and not locks.get("released") and s.defn.locks is not None and s.defn.locks.keys:
                    assert saga_keys(s) <= held, f"{sid} runs {name} while not holding the saga's keys"
            if s.state.status.terminal:
                assert not locks.get("held") and not locks.get("wanted"), f"finished {sid} keeps locks: {locks}"
                assert not any(r.saga_id == sid for r in self.rows), f"finished {sid} left rows in the table"
        # Nothing grantable is left waiting (a release or a refusal grants what may go).
        regranted, woken = _lockplan._grant(list(self.rows))
        assert not woken, f"acquisitions of {woken} could be granted but wait: {self.rows}"


def start(defn: SagaDefinition, i: int) -> Saga:
    d = new_saga(defn, f"saga{i}", {"n": i}, 0.0, begin=False)
    return Saga(defn, d.state)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(2, 4))
def test_sagas_sharing_keys_never_hold_one_at_once_and_all_finish(data: st.DataObject, n: int) -> None:
    sagas = [start(data.draw(definitions(i)), i) for i in range(n)]
    world = World(sagas)
    for s in sagas:
        world.feed(s, Begin())

    def moves() -> list[tuple[str, Saga, Any]]:
        out: list[tuple[str, Saga, Any]] = []
        for s in world.sagas.values():
            if s.state.status.value == "failed":
                out.append(("retry", s, None))  # an operator sees to it
            if s.state.status.terminal:
                continue
            if s.acquire is not None:
                out.append(("ask", s, None))
            if s.woken:
                out.append(("wake", s, None))
            for eff in s.inflight.values():
                out.append(("complete", s, eff))
            if s.state.wake_at is not None:
                out.append(("timer", s, None))
        return out

    for _ in range(400):
        options = moves()
        if not options:
            break
        kind, s, eff = data.draw(st.sampled_from(options))
        chaos = data.draw(st.integers(0, 30))
        if chaos == 0:
            world.feed(s, Resume())  # a worker restarted: attempts in flight run again, acquisitions are asked again
            continue
        if chaos == 1:
            world.feed(s, Abort("test"))
            continue
        if chaos == 2:
            world.feed(s, Compensate("test"))
            continue
        if chaos == 3:
            world.feed(s, Retry("test"))  # a failed saga or a step waiting for its retry, now
            continue
        if chaos == 4:
            world.feed(s, Skip(data.draw(st.sampled_from(sorted(s.state.steps))), None, "test"))
            continue
        if kind == "retry":
            world.feed(s, Retry("operator"))
        elif kind == "ask":
            world.ask(s)
        elif kind == "wake":
            s.woken = False
            world.feed(s, Resume())
        elif kind == "complete":
            s.inflight.pop(eff.step, None)
            if data.draw(st.integers(0, 4)) == 0:
                world.feed(s, StepFailed(eff.step, eff.token, "boom", retryable=data.draw(st.booleans())))
            else:
                world.feed(s, StepSucceeded(eff.step, eff.token))
        else:
            assert s.state.wake_at is not None
            world.now = max(world.now, s.state.wake_at)
            world.feed(s, Timer())

    # Let everything finish: asks answered, wake-ups delivered, attempts succeed, timers fire.
    for _ in range(2000):
        pending = [s for s in world.sagas.values() if not s.state.status.terminal]
        if not pending:
            break
        progressed = False
        for s in pending:
            if s.acquire is not None:
                world.ask(s)
                progressed = True
            elif s.woken:
                s.woken = False
                world.feed(s, Resume())
                progressed = True
            elif s.inflight:
                eff = next(iter(s.inflight.values()))
                s.inflight.pop(eff.step)
                world.feed(s, StepSucceeded(eff.step, eff.token))
                progressed = True
        if not progressed:
            due = [s for s in pending if s.state.wake_at is not None]
            if due:
                s = min(due, key=lambda x: x.state.wake_at or 0.0)
                world.now = max(world.now, s.state.wake_at or 0.0)
                world.feed(s, Timer())
                continue
            # Only sagas waiting for locks are left and nobody will release: a deadlock, or a FAILED
            # saga an operator must see to. FAILED is terminal; anything else stuck is a bug.
            stuck = {s.state.id: (s.state.status.value, meta_locks(s.state), s.inflight) for s in pending}
            raise AssertionError(f"sagas stuck: {stuck}; table: {world.rows}")
    assert all(s.state.status.terminal for s in world.sagas.values())
    assert world.rows == []


# ---------------------------------------------------------------- the queue rules alone


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(st.tuples(st.integers(0, 5), st.lists(st.sampled_from(KEYS), min_size=1, max_size=3), st.booleans()))
)
def test_queues_are_first_come_first_served_and_a_free_head_is_granted(ops: list[tuple[int, list[str], bool]]) -> None:
    """Random acquisitions and releases by six sagas, each at most one acquisition at a time.

    A key goes to the earliest acquisition waiting for it (none granted on it
    jumps ahead of an earlier one still waiting), every acquisition that may go
    goes at once, and one saga's acquisitions never deadlock with another's:
    an acquisition that would close a cycle is refused.
    """
    rows: list[_lockplan.LockRow] = []
    for t, (saga_n, keys, release) in enumerate(ops):
        saga = f"s{saga_n}"
        waiting_before = {(r.key, r.saga_id): r.ticket for r in rows if not r.held}
        if release:
            plan = _lockplan.release(rows, saga, None)
        else:
            if any(r.saga_id == saga and not r.held for r in rows):
                continue  # the machine asks for one acquisition at a time
            wanted = sorted(set(keys))
            plan, answer = _lockplan.acquire(rows, saga, wanted, float(t), fail=False, give_up=False)
            assert answer.outcome in ("granted", "waiting", "refused")
            if answer.outcome == "refused":
                assert answer.reason == "deadlock"
                assert any(r.saga_id == saga and r.held for r in rows), "only a saga holding keys can deadlock"
        # The stores read only the rows connected to the operation: the same plan comes out.
        part = component(rows, [] if release else sorted(set(keys)), [saga])
        if release:
            partial = _lockplan.release(part, saga, None)
        else:
            partial, partial_answer = _lockplan.acquire(
                part, saga, sorted(set(keys)), float(t), fail=False, give_up=False
            )
            assert partial_answer == answer
        assert same_plan(partial, plan)
        after = _lockplan.apply(rows, plan)
        for key, sid in plan.granted:
            ticket = waiting_before[(key, sid)]
            earlier = [s for (k, s), tk in waiting_before.items() if k == key and tk < ticket and s != sid]
            still = [s for s in earlier if any(r.key == key and r.saga_id == s and not r.held for r in after)]
            assert not still, f"{sid} was granted {key!r} before {still}, queued earlier"
        holders = [r.key for r in after if r.held]
        assert len(holders) == len(set(holders)), f"a key held twice: {after}"
        _, woken = _lockplan._grant(list(after))
        assert not woken, f"{woken} could go but wait"
        assert no_cycle(after), f"sagas wait for each other in a cycle: {after}"
        rows = after


def no_cycle(rows: list[_lockplan.LockRow]) -> bool:
    """No saga waits, through others, for itself: a waiting saga waits for the holders of its keys
    and for the sagas queued before it on them (worked out here, apart from the planner)."""
    edges: dict[str, set[str]] = {}
    for w in rows:
        if w.held:
            continue
        for r in rows:
            if r.key == w.key and r.saga_id != w.saga_id and (r.held or r.ticket < w.ticket):
                edges.setdefault(w.saga_id, set()).add(r.saga_id)
    state: dict[str, int] = {}

    def visit(n: str) -> bool:
        state[n] = 1
        for m in edges.get(n, ()):
            if state.get(m) == 1 or (m not in state and not visit(m)):
                return False
        state[n] = 2
        return True

    return all(visit(n) for n in list(edges) if n not in state)


def component(rows: list[_lockplan.LockRow], keys: list[str], sagas: list[str]) -> list[_lockplan.LockRow]:
    """What a store reads: ``Component`` over a table held in memory."""
    c = _lockplan.Component(keys, sagas)
    while True:
        k, s = c.todo()
        if not k and not s:
            return c.all()
        c.add(r for r in rows if r.key in k or r.saga_id in s)


def same_plan(a: _lockplan.Plan, b: _lockplan.Plan) -> bool:
    """Equal plans; new rows may differ in ticket (drawn from the rows read), not in order."""
    return (
        sorted(a.deleted) == sorted(b.deleted)
        and sorted(a.granted) == sorted(b.granted)
        and a.woken == b.woken
        and sorted((r.key, r.saga_id, r.held) for r in a.inserted)
        == sorted((r.key, r.saga_id, r.held) for r in b.inserted)
    )


def test_a_saga_waiting_for_two_keys_is_not_overtaken_on_the_free_one() -> None:
    rows: list[_lockplan.LockRow] = []
    plan, answer = _lockplan.acquire(rows, "holder", ["b"], 0.0, fail=False, give_up=False)
    rows = _lockplan.apply(rows, plan)
    plan, answer = _lockplan.acquire(rows, "both", ["a", "b"], 1.0, fail=False, give_up=False)
    rows = _lockplan.apply(rows, plan)
    assert answer.outcome == "waiting" and answer.blockers == (("b", "holder"),)
    plan, answer = _lockplan.acquire(rows, "late", ["a"], 2.0, fail=False, give_up=False)
    rows = _lockplan.apply(rows, plan)
    assert answer.outcome == "waiting" and answer.blockers == (("a", "both"),)
    plan = _lockplan.release(rows, "holder", None)
    assert plan.woken == {"both"}
    rows = _lockplan.apply(rows, plan)
    plan = _lockplan.release(rows, "both", None)
    assert plan.woken == {"late"}


def test_an_acquisition_that_would_close_a_cycle_is_refused_as_a_deadlock() -> None:
    rows: list[_lockplan.LockRow] = []
    for saga, key in (("x", "a"), ("y", "b")):
        plan, _ = _lockplan.acquire(rows, saga, [key], 0.0, fail=False, give_up=False)
        rows = _lockplan.apply(rows, plan)
    plan, answer = _lockplan.acquire(rows, "x", ["b"], 1.0, fail=False, give_up=False)
    rows = _lockplan.apply(rows, plan)
    assert answer.outcome == "waiting"
    plan, answer = _lockplan.acquire(rows, "y", ["a"], 2.0, fail=False, give_up=False)
    assert answer == _lockplan.Answer("refused", "deadlock", (("a", "x"),))
    assert not plan.inserted  # y left the queue


def test_a_cycle_through_an_earlier_waiter_is_a_deadlock_too() -> None:
    """y holds b and asks for a, held by z; x queued for a and b before: y would wait for x, x for y."""
    rows: list[_lockplan.LockRow] = []
    for saga, keys in (("z", ["a"]), ("y", ["b"]), ("x", ["a", "b"])):
        plan, _ = _lockplan.acquire(rows, saga, keys, 0.0, fail=False, give_up=False)
        rows = _lockplan.apply(rows, plan)
    plan, answer = _lockplan.acquire(rows, "y", ["a"], 1.0, fail=False, give_up=False)
    assert answer.outcome == "refused" and answer.reason == "deadlock"


def test_asking_again_is_a_no_op_and_keeps_the_place_in_line() -> None:
    rows: list[_lockplan.LockRow] = []
    plan, _ = _lockplan.acquire(rows, "x", ["a"], 0.0, fail=False, give_up=False)
    rows = _lockplan.apply(rows, plan)
    plan, _ = _lockplan.acquire(rows, "y", ["a"], 1.0, fail=False, give_up=False)
    rows = _lockplan.apply(rows, plan)
    plan, _ = _lockplan.acquire(rows, "z", ["a"], 2.0, fail=False, give_up=False)
    rows = _lockplan.apply(rows, plan)
    for saga in ("x", "y"):
        plan, answer = _lockplan.acquire(rows, saga, ["a"], 3.0, fail=False, give_up=False)
        assert plan == _lockplan.Plan([], [], [], set())
        assert answer.outcome == ("granted" if saga == "x" else "waiting")
    assert _lockplan.release(rows, "x", None).woken == {"y"}
