"""Property-based tests of resource limits: the machine's permit rules, and the grant rule the stores share.

A pure loop plays the runtime for several sagas whose steps name one shared
resource. It keeps the permits in a ``PermitBook`` (as the memory and SQLite
stores do), grants queued waiters at random moments, completes or fails
running attempts, re-delivers grants that are no longer wanted, restarts
workers (Resume), fires timers and sends operator requests (skip, compensate,
abort). After every decision it checks:

- no attempt of a step that names the resource runs without holding a permit;
- attempts running under the resource never exceed its concurrency;
- a step marked waiting for the resource has its attempt queued, and nothing runs for it;
- every permit held or waited for belongs to an attempt that is current: an
  attempt that ended, however it ended, has given its permit back;
- an attempt cancelled while it waited (an operator's request, the saga's
  deadline) is never taken to have had an effect, and is not counted.

At the end every saga is finished and no permit is left. Separately, the
grant rule never lets more than ``rate`` permits start in any window of
``per`` seconds, nor more than ``concurrency`` be held at once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagakit import DefinitionError, Resource, RetryPolicy, SagaBuilder, SagaDefinition, SagaStatus, StepStatus
from sagakit._resources import PermitBook, PermitKey, grant
from sagakit.machine import (
    Abort,
    AcquirePermit,
    CancelAttempt,
    Compensate,
    Decision,
    Event,
    PermitGranted,
    ReleasePermit,
    Resume,
    RunStep,
    SagaState,
    Skip,
    StepFailed,
    StepSucceeded,
    Timer,
    decide,
    new_saga,
)

RES = "payments"
WORKER = "w"


def act(ctx: object) -> None:
    return None


@st.composite
def definitions(draw: st.DrawFn) -> SagaDefinition:
    n = draw(st.integers(1, 4))
    b = SagaBuilder("limited", deadline=draw(st.sampled_from([None, None, 0.03, 0.2])))
    for i in range(n):
        after = draw(st.lists(st.sampled_from([f"s{j}" for j in range(i)]), unique=True)) if i else []
        b.step(
            f"s{i}",
            action=act,
            compensation=act if draw(st.booleans()) else None,
            after=after,
            resource=RES if draw(st.booleans()) else None,
            retry=RetryPolicy(max_attempts=draw(st.integers(1, 3)), initial_delay=0.01, jitter=0),
            compensation_retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0),
        )
    return b.build()


@dataclass
class World:
    defn: SagaDefinition
    limit: Resource
    now: float = 1000.0
    states: dict[str, SagaState] = field(default_factory=dict)
    book: PermitBook = field(default_factory=PermitBook)
    queued: list[PermitKey] = field(default_factory=list)  # waiting, in the order they asked
    running: dict[PermitKey, RunStep] = field(default_factory=dict)  # attempts running (any step)
    grants_seen: list[tuple[str, PermitGranted]] = field(default_factory=list)  # for re-delivery
    started: dict[tuple[str, str], int] = field(default_factory=dict)  # highest action attempt that started

    def feed(self, sid: str, event: Event) -> Decision:
        d = decide(self.defn, self.states[sid], event, self.now)
        self.apply(sid, d)
        return d

    def apply(self, sid: str, d: Decision) -> None:
        before = self.states.get(sid)
        self.states[sid] = d.state
        if before is not None:
            # Attempts the machine ended are no longer running (a resume starts them again).
            for key in list(self.running):
                if key.saga_id == sid and d.state.steps[key.step].token != key.token:
                    del self.running[key]
        for eff in d.effects:
            key = PermitKey(sid, eff.step, eff.token)
            if isinstance(eff, AcquirePermit):
                assert eff.resource == RES
                self.queued.append(key)
            elif isinstance(eff, ReleasePermit):
                self.book.release([key])
                if key in self.queued:
                    self.queued.remove(key)
            elif isinstance(eff, CancelAttempt):
                self.running.pop(key, None)
            elif isinstance(eff, RunStep):
                if self.defn.by_name[eff.step].resource is not None:
                    held = self.book.permits.get(key)
                    assert held is not None and held.granted, f"{key} runs without a permit"
                self.running[key] = eff
                if not eff.compensation:
                    at = (sid, eff.step)
                    self.started[at] = max(self.started.get(at, 0), eff.attempt)
        self.check()

    def check(self) -> None:
        limited = [k for k in self.running if self.defn.by_name[k.step].resource is not None]
        assert len(limited) <= (self.limit.concurrency or len(limited))
        for key, p in self.book.permits.items():
            s = self.states[key.saga_id].steps[key.step]
            assert s.token == key.token, f"permit of {key} outlived its attempt (step token {s.token})"
            if not p.granted:
                assert s.waiting_for == RES
        for sid, state in self.states.items():
            for name, s in state.steps.items():
                key = PermitKey(sid, name, s.token)
                if s.waiting_for is not None:
                    assert s.token and key in self.queued and key not in self.running
                # An attempt counts once it started, or while it waits to (a resumed one waits again).
                ran = self.started.get((sid, name), 0)
                if s.waiting_for is not None and s.status is StepStatus.RUNNING:
                    assert s.attempts == (ran if s.resumed else ran + 1), (name, s, ran)
                else:
                    assert s.attempts == ran, (name, s, ran)
            if not state.status.terminal and state.status is not SagaStatus.PENDING:
                busy = any(s.token for s in state.steps.values())
                assert busy or state.wake_at is not None, f"saga {sid} is stuck: {state}"

    def grant_some(self) -> None:
        if not self.queued:
            return
        got = self.book.acquire(self.limit, WORKER, list(self.queued), 60.0, self.now)
        for key in got.granted:
            if key in self.queued:
                self.queued.remove(key)
                ev = PermitGranted(key.step, key.token, RES)
                self.grants_seen.append((key.saga_id, ev))
                self.feed(key.saga_id, ev)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(defn=definitions(), sagas=st.integers(1, 3), concurrency=st.integers(1, 2), data=st.data())
def test_permits_bound_what_runs_and_every_attempt_gives_its_permit_back(
    defn: SagaDefinition, sagas: int, concurrency: int, data: st.DataObject
) -> None:
    w = World(defn, Resource(RES, concurrency=concurrency))
    for i in range(sagas):
        w.apply(f"g{i}", new_saga(defn, f"g{i}", {}, w.now))
    for _ in range(60):
        choice = data.draw(st.sampled_from(["grant", "ok", "fail", "fatal", "timer", "stale", "resume", "op"]))
        sid = data.draw(st.sampled_from(sorted(w.states)))
        w.now += data.draw(st.sampled_from([0.0, 0.005, 0.02]))
        if choice == "grant":
            w.grant_some()
        elif choice in ("ok", "fail", "fatal") and w.running:
            key = data.draw(st.sampled_from(sorted(w.running)))
            if choice == "ok":
                ev: Event = StepSucceeded(key.step, key.token)
            else:
                ev = StepFailed(key.step, key.token, "boom", retryable=choice == "fail")
            w.feed(key.saga_id, ev)
        elif choice == "timer":
            w.feed(sid, Timer())
        elif choice == "stale" and w.grants_seen:
            old_sid, ev = data.draw(st.sampled_from(w.grants_seen))
            d = decide(defn, w.states[old_sid], ev, w.now)
            s = w.states[old_sid].steps[ev.step]
            if s.token == ev.token:
                assert d.stale and not d.effects  # told twice: the attempt it started keeps its permit
            elif d.stale:
                assert d.effects == [ReleasePermit(ev.step, ev.token, RES)]
            w.apply(old_sid, d)
        elif choice == "resume":
            # The worker holding the saga stopped: what it ran is gone, what waited waits again.
            for key in [k for k in w.running if k.saga_id == sid]:
                del w.running[key]
            w.queued = [k for k in w.queued if k.saga_id != sid]
            w.feed(sid, Resume())
        elif choice == "op":
            state = w.states[sid]
            op = data.draw(st.sampled_from(["skip", "compensate", "abort"]))
            waiting = [n for n, s in state.steps.items() if s.waiting_for]
            before = state
            if op == "skip" and waiting:
                d = decide(defn, state, Skip(waiting[0]), w.now)
                assert d.rejected is None, d.rejected  # a step waiting for a permit has not started
                w.apply(sid, d)
            elif op == "compensate":
                w.apply(sid, decide(defn, state, Compensate(), w.now))
            elif op == "abort":
                w.apply(sid, decide(defn, state, Abort(), w.now))
            for n in waiting:
                s = w.states[sid].steps[n]
                if s.token != before.steps[n].token and s.status is StepStatus.FAILED:
                    # It had not started: its end says nothing about an effect.
                    assert s.uncertain == before.steps[n].uncertain
    # Drive every saga to its end: grant, succeed, fire timers.
    for _ in range(400):
        if all(s.status.terminal for s in w.states.values()):
            break
        w.now += 0.05
        w.grant_some()
        for key in sorted(w.running):
            if key in w.running:
                w.feed(key.saga_id, StepSucceeded(key.step, key.token))
        for sid in sorted(w.states):
            if not w.states[sid].status.terminal:
                w.feed(sid, Timer())
    assert all(s.status.terminal for s in w.states.values()), {k: s.status for k, s in w.states.items()}
    assert not w.book.permits, f"permits left after every saga finished: {w.book.permits}"


@settings(max_examples=200, deadline=None)
@given(
    concurrency=st.one_of(st.none(), st.integers(1, 4)),
    rate=st.integers(1, 5),
    per=st.sampled_from([0.5, 1.0, 2.0]),
    steps=st.lists(
        # Times in binary fractions: the rule and this test's own count then agree on every boundary.
        st.tuples(st.sampled_from([0.0, 0.125, 0.25, 0.5, 0.75]), st.integers(0, 4), st.integers(0, 3)),
        max_size=40,
    ),
)
def test_the_grant_rule_holds_the_rate_in_every_window_and_the_concurrency(
    concurrency: int | None, rate: int, per: float, steps: list[tuple[float, int, int]]
) -> None:
    limit = Resource("r", concurrency=concurrency, rate=rate, per=per)
    book = PermitBook()
    now = 0.0
    n = 0
    waiting: list[PermitKey] = []
    held: list[PermitKey] = []
    starts: list[float] = []
    for advance, new, done in steps:
        now += advance
        for _ in range(new):
            n += 1
            waiting.append(PermitKey("s", "x", n))
        for key in held[:done]:
            book.release([key])
        held = held[done:]
        got = book.acquire(limit, "w", waiting, 60.0, now)
        fresh = [k for k in got.granted if k in waiting]
        assert fresh == waiting[: len(fresh)], "permits go in the order they were asked for"
        waiting = waiting[len(fresh) :]
        held.extend(fresh)
        starts.extend([now] * len(fresh))
        if concurrency is not None:
            assert len(held) <= concurrency
        for t in starts:
            assert sum(1 for u in starts if t <= u < t + per) <= rate
        if waiting and got.retry_after is not None:
            # The rate, not the concurrency, holds the next one back, and it says until when.
            later = copy.deepcopy(book).acquire(limit, "w", waiting[:1], 60.0, now + got.retry_after)
            assert later.granted == waiting[:1]


@given(
    in_use=st.integers(0, 5),
    recent=st.lists(st.floats(0, 10), max_size=8),
    waiting=st.integers(0, 6),
    concurrency=st.one_of(st.none(), st.integers(1, 5)),
    rate=st.one_of(st.none(), st.integers(1, 5)),
)
def test_grant_takes_a_prefix_of_the_waiters_and_no_more_than_the_limits(
    in_use: int, recent: list[float], waiting: int, concurrency: int | None, rate: int | None
) -> None:
    if concurrency is None and rate is None:
        rate = 1
    limit = Resource("r", concurrency=concurrency, rate=rate, per=1.0)
    keys = [PermitKey("s", "x", i) for i in range(waiting)]
    got, window, _ = grant(limit, in_use, recent, keys, 10.0)
    assert got == keys[: len(got)]
    if concurrency is not None:
        assert in_use + len(got) <= max(concurrency, in_use)
    if rate is not None:
        assert len(window) <= max(rate, len([t for t in recent if t > 9.0]))
        assert all(t > 9.0 for t in window)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"concurrency": 0}, "concurrency must be an integer >= 1"),
        ({"rate": -1}, "rate must be an integer >= 1"),
        ({"concurrency": 2.5}, "concurrency must be an integer >= 1"),
        ({"rate": 5, "per": 0}, "per must be a number of seconds > 0"),
        ({}, "has no limit"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(DefinitionError, match=words):
        Resource("payments", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="resource name"):
        Resource("bad name", concurrency=1)
