"""Crash and recover at every commit boundary.

A run lets the engine make *n* commits; the next one never happens: the engine
dies there as a killed process would (its tasks stop, its leases stay, what it
had not committed is lost). A new engine opens the same store, takes the saga
over once the lease runs out (at once on the virtual clock) and must bring it
to the same end as a run without a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._definition import SagaDefinition
from .._engine import SagaEngine
from .._snapshot import SagaSnapshot
from .._status import SagaStatus
from ..transports.memory import MemoryTransport
from ._env import SagaTestEnv, settle
from ._harness import KILLED, Calls, check_replies, one_run
from ._report import Report

__all__ = ["CrashReport", "CrashRun", "crash_at_every_commit", "kill"]


async def _forever() -> None:
    await asyncio.Event().wait()


class _MortalStore:
    """A store that lets *lives* commits through; from the next one on, every call hangs (the process is gone)."""

    def __init__(self, inner: Any, lives: int | None) -> None:
        self._inner = inner
        self.lives = lives
        self.commits = 0
        self.dead = False
        self.crashed = asyncio.Event()

    async def commit(self, writes: Any) -> Any:
        if self.dead:
            await _forever()
        if self.lives is not None and self.commits >= self.lives:
            self.dead = True
            self.crashed.set()
            await _forever()
        self.commits += 1
        return await self._inner.commit(writes)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.dead:
                await _forever()
            return await attr(*args, **kwargs)

        return guarded


async def kill(engine: SagaEngine) -> None:
    """Stop *engine* as if its process were killed: no graceful shutdown, no lease released, nothing more written.

    Its tasks and running attempts are cancelled (a thread running a plain
    ``def`` step is abandoned); messages it was handling go back to the memory
    broker for another consumer. Its store is closed without a word to it
    (a SQLite file's lock is let go, as the kernel would).
    """
    KILLED.add(engine)
    engine._closing = True
    engine._running = False
    tasks: list[asyncio.Future[Any]] = [*engine._tasks, *engine._background, *engine._messaging._tasks]
    if engine._work_waiter is not None:
        tasks.append(engine._work_waiter)
    for held in engine._held.values():
        if held.timer is not None:
            held.timer.cancel()
        tasks.extend(held.inflight.values())
    transport = engine.transport
    if isinstance(transport, MemoryTransport):
        tasks.extend(transport._tasks)
        transport._tasks = []
        transport._started = False
    engine._messaging._running = False
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    while engine._background:  # writes its cancelled tasks started on their way out: lost too
        late = list(engine._background)
        for t in late:
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    engine._tasks = []
    engine._held.clear()
    engine._queue.clear()
    if engine._executor is not None:
        engine._executor.shutdown(wait=False, cancel_futures=True)
        engine._executor = None
    store = engine.store
    inner = getattr(store, "_inner", store)
    if engine._opened:
        with contextlib.suppress(Exception):
            await inner.close()
    engine._opened = False


@dataclass(frozen=True, slots=True)
class CrashRun:
    """One crash: after commit *after*, the engine died and another finished the saga.

    Attributes:
        after: commits made before the crash (1 = only the saga's creation).
        status: the final status the recovering engine reached.
        steps: each step's final status.
        reran: steps (``"name"`` or ``"name (compensation)"``) whose function ran more
            often than in the run without a crash: their effect must be idempotent.
        problems: differences from the run without a crash.
        snapshot: the final snapshot.
        crashed: False when the saga ended within *after* commits (its transitions were
            committed in fewer batches than in the run without a crash): nothing to recover.
    """

    after: int
    status: SagaStatus
    steps: Mapping[str, str]
    reran: tuple[str, ...]
    problems: tuple[str, ...]
    snapshot: SagaSnapshot
    crashed: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        line = f"crash after commit {self.after}: {self.status.value}"
        if not self.crashed:
            line += " (no crash: the saga ended first)"
        if self.reran:
            line += f", ran again: {', '.join(self.reran)}"
        for p in self.problems:
            line += f"\n    PROBLEM: {p}"
        return line


class CrashReport(Report[CrashRun]):
    """The crashes ``crash_at_every_commit`` ran, against the run without a crash (``reference``)."""

    _trouble = "problem(s) after crashes"

    def __init__(self, definition: SagaDefinition, reference: SagaSnapshot, commits: int, runs: list[CrashRun]) -> None:
        super().__init__(runs)
        self.definition = definition
        self.reference = reference
        self.commits = commits

    def _label(self, run: CrashRun) -> str:
        return f"crash after commit {run.after}"

    def __str__(self) -> str:
        head = (
            f"{self.definition.name} v{self.definition.version}: {self.commits} commits without a crash "
            f"(ends {self.reference.status.value}); {len(self.runs)} crashes"
        )
        return "\n".join([head, *(f"  {r}" for r in self.runs)])


def _counts(calls: Calls) -> Counter[str]:
    return Counter(step if direction == "action" else f"{step} (compensation)" for step, direction, _ in calls.log)


def _step_statuses(snap: SagaSnapshot) -> dict[str, str]:
    return {n: s.status.value for n, s in snap.steps.items()}


async def crash_at_every_commit(
    definition: SagaDefinition,
    data: Any = None,
    *,
    env: SagaTestEnv | None = None,
    replies: Mapping[type, Any] | None = None,
    events: Mapping[type, Any] | None = None,
) -> CrashReport:
    """Crash the engine after each commit of a saga in turn and check that a new engine finishes it alike.

    First a run without a crash counts the commits and gives the expected
    end. Then, for every commit but the last, a run in which the engine dies
    right after it (``kill``): a new engine on the same store takes the saga
    over and runs it to its end, which must have the same saga and step
    statuses. Steps run again after a crash are reported (``CrashRun.reran``).

    *replies* and *events* answer message steps as in ``explore_failures``.
    """
    check_replies(definition, replies or {}, events or {})
    if env is None:
        async with SagaTestEnv() as own:
            return await crash_at_every_commit(definition, data, env=own, replies=replies, events=events)
    with env._skipping():
        inner = env.new_store()
        counting = _MortalStore(env.open_store(inner), None)
        async with one_run(env, definition, replies=replies, events=events, store=counting) as r:
            saga_id = await r.engine.start(definition.name, data, version=definition.version)
            reference = await r.finish(saga_id)
            expected = _counts(r.calls)
        commits = counting.commits
        runs = []
        for n in range(1, commits):
            runs.append(await _crash_once(env, definition, data, n, reference, expected, replies, events))
    return CrashReport(definition, reference, commits, runs)


async def _crash_once(
    env: SagaTestEnv,
    definition: SagaDefinition,
    data: Any,
    lives: int,
    reference: SagaSnapshot,
    expected: Counter[str],
    replies: Mapping[type, Any] | None,
    events: Mapping[type, Any] | None,
) -> CrashRun:
    inner = env.new_store()
    mortal = _MortalStore(env.open_store(inner), lives)
    problems: list[str] = []
    async with one_run(env, definition, replies=replies, events=events, store=mortal) as r:
        saga_id = await r.engine.start(definition.name, data, version=definition.version)
        crashed = asyncio.ensure_future(mortal.crashed.wait())
        ended = asyncio.ensure_future(settle(r.engine, saga_id))
        await asyncio.wait({crashed, ended}, return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        crashed.cancel()
        await asyncio.gather(crashed, ended, return_exceptions=True)
        died = mortal.dead
        await kill(r.engine)
        # A restarted process: a new engine, the same store, the same broker and participant.
        again = env.engine(
            *r.engine.definitions,
            store=env.open_store(inner),
            transport=MemoryTransport(r.broker),
            observers=r.engine._observers,
        )
        for o in again._observers:
            if hasattr(o, "engine"):
                o.engine = again
        await again.run()
        try:
            snap = await settle(again, saga_id)
        finally:
            await again.close()
    if snap.status is not reference.status:
        problems.append(f"ends {snap.status.value}, without a crash {reference.status.value}")
    statuses, want = _step_statuses(snap), _step_statuses(reference)
    for name in definition.order:
        if statuses[name] != want[name]:
            problems.append(f"step {name} ends {statuses[name]}, without a crash {want[name]}")
    got = _counts(r.calls)
    reran = tuple(k for k in got if got[k] > expected.get(k, 0))
    return CrashRun(lives, snap.status, statuses, reran, tuple(problems), snap, died)
