"""The run-each-step-twice check: does a step's second run, with the same idempotency key, change anything?

A step runs at least once: after a crash, a lost result or a timeout it runs
again with the same ``ctx.idempotency_key``. This check runs every action (and,
in a second saga that is rolled back, every compensation) twice in a row with
the same context, and reports those whose second run had an effect the first
had not (the state *observe* returns changed), returned another result, or raised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .._definition import SagaDefinition, build_definition
from .._snapshot import SagaSnapshot
from ._env import SagaTestEnv
from ._harness import InjectedFailure, Mode, check_replies, one_run

__all__ = ["DoubleRun", "IdempotencyReport", "check_idempotency"]

_ROLLBACK_STEP = "sagakit_testing_rollback"


@dataclass(frozen=True, slots=True)
class DoubleRun:
    """A step function run twice with the same context.

    Attributes:
        step: the step's name.
        compensation: True for its compensation.
        same_result: the second run returned what the first did.
        same_effect: *observe* saw the same state after the second run as after the first
            (True when no *observe* was given).
        error: what the second run raised, if it raised (its first result is kept).
    """

    step: str
    compensation: bool
    same_result: bool
    same_effect: bool
    error: str | None = None

    @property
    def label(self) -> str:
        return f"compensation of {self.step}" if self.compensation else self.step

    @property
    def ok(self) -> bool:
        return self.same_result and self.same_effect and self.error is None

    def __str__(self) -> str:
        if self.ok:
            return f"{self.label}: idempotent"
        why = []
        if not self.same_effect:
            why.append("its second run changed the observed state")
        if not self.same_result:
            why.append("its second run returned another result")
        if self.error is not None:
            why.append(f"its second run raised {self.error}")
        return f"{self.label}: NOT idempotent: {'; '.join(why)}"


class IdempotencyReport(Sequence[DoubleRun]):
    """The steps and compensations ``check_idempotency`` ran twice, in the order they ran."""

    def __init__(self, runs: list[DoubleRun], snapshots: tuple[SagaSnapshot, ...]) -> None:
        self.runs = runs
        self.snapshots = snapshots

    def __getitem__(self, i: Any) -> Any:
        return self.runs[i]

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[DoubleRun]:
        return iter(self.runs)

    @property
    def not_idempotent(self) -> list[str]:
        """Labels (``"charge"``, ``"compensation of reserve"``) of the functions that are not."""
        return [r.label for r in self.runs if not r.ok]

    def assert_ok(self) -> None:
        """Raise AssertionError naming every step or compensation whose second run differed."""
        bad = [r for r in self.runs if not r.ok]
        if bad:
            raise AssertionError("\n".join(str(r) for r in bad))

    def __str__(self) -> str:
        return "\n".join(str(r) for r in self.runs) or "no local step ran"


class _Doubler:
    def __init__(self, observe: Callable[[], Any] | None) -> None:
        self.observe = observe
        self.runs: list[DoubleRun] = []
        self._lock = threading.Lock()

    def _look(self) -> Any:
        return None if self.observe is None else self.observe()

    def _record(self, ctx: Any, first: Any, second: Any, before: Any, after: Any, error: str | None) -> None:
        run = DoubleRun(ctx.step, ctx.compensation, first == second or error is not None, before == after, error)
        with self._lock:
            self.runs.append(run)

    def run_sync(self, fn: Callable[..., Any], ctx: Any) -> Any:
        first = fn(ctx)
        before = self._look()
        try:
            second = fn(ctx)
        except Exception as e:
            self._record(ctx, first, first, before, self._look(), f"{type(e).__name__}: {e}")
            return first
        self._record(ctx, first, second, before, self._look(), None)
        return second

    async def run_async(self, fn: Callable[..., Any], ctx: Any) -> Any:
        first = await fn(ctx)
        before = self._look()
        try:
            second = await fn(ctx)
        except Exception as e:
            self._record(ctx, first, first, before, self._look(), f"{type(e).__name__}: {e}")
            return first
        self._record(ctx, first, second, before, self._look(), None)
        return second


def _with_rollback(definition: SagaDefinition) -> SagaDefinition:
    """*definition* plus a last step, after every other, that fails: the whole saga is rolled back."""

    def roll_back(ctx: Any) -> None:
        raise InjectedFailure("rolled back by check_idempotency to run every compensation")

    from .._policy import RetryPolicy

    sinks = tuple(n for n in definition.order if not definition.dependents[n])
    extra = replace(definition.steps[-1], name=_ROLLBACK_STEP, action=roll_back, compensation=None, after=sinks)
    extra = replace(extra, retry=RetryPolicy(max_attempts=1), timeout=None, pivot=False, compensate_failed=False)
    d = definition
    return build_definition(
        d.name,
        d.version,
        [*d.steps, extra],
        deadline=d.deadline,
        max_payload_bytes=d.max_payload_bytes,
        description=d.description,
        extras=d.extras,
        triggers=d.triggers,
        state_model=d.state_model,
        completion_event=d.completion_event,
        failure_event=d.failure_event,
    )


async def check_idempotency(
    definition: SagaDefinition,
    data: Any = None,
    *,
    observe: Callable[[], Any] | None = None,
    env: SagaTestEnv | None = None,
    replies: Mapping[type, Any] | None = None,
    events: Mapping[type, Any] | None = None,
) -> IdempotencyReport:
    """Run every local step function twice in a row with the same context and report those that differ.

    Two sagas run: one in which every action runs twice, and one, rolled back
    by an extra failing last step, in which every compensation runs twice.
    After the first run of a function and again after the second, *observe*
    (a function of no arguments returning a comparable value: rows of a fake
    database, calls recorded by a fake API) is called; a different value means
    the second run had an effect of its own. A different result, or an error
    on the second run, is reported too.

    Message steps are answered as in ``explore_failures`` (*replies*, *events*);
    only local functions are run twice (a participant de-duplicates its
    commands by message id: see ``check_deliveries``).
    """
    check_replies(definition, replies or {}, events or {})
    if env is None:
        async with SagaTestEnv() as own:
            return await check_idempotency(definition, data, observe=observe, env=own, replies=replies, events=events)
    doubler = _Doubler(observe)
    snaps = []
    with env._skipping():
        for defn, comp in ((definition, False), (_with_rollback(definition), True)):
            modes: dict[tuple[str, bool], Mode] = {(s.name, comp): "twice" for s in defn.steps}
            async with one_run(env, defn, modes=modes, replies=replies, events=events, twice=doubler) as r:
                saga_id = await r.engine.start(defn.name, data, version=defn.version)
                snaps.append(await r.finish(saga_id))
    runs = [r for r in doubler.runs if r.step != _ROLLBACK_STEP]
    return IdempotencyReport(runs, tuple(snaps))
