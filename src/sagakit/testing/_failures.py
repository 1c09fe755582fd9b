"""Failure injection: every failure path of a definition, run, with the compensation order of each.

The paths: no failure; each step failing on every attempt; each step with a
timeout timing out on every attempt; and, for each step failure, each
compensation that rollback runs failing (or timing out) on every attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._definition import SagaDefinition
from .._messages import SendCommand, WaitFor
from .._snapshot import SagaSnapshot
from .._status import SagaStatus, StepStatus
from ._env import SagaTestEnv
from ._harness import Mode, check_replies, one_run
from ._report import Report

__all__ = ["FailurePath", "FailureReport", "explore_failures"]


@dataclass(frozen=True, slots=True)
class FailurePath:
    """One failure path and what the saga did on it.

    Attributes:
        name: what was injected, e.g. ``"charge fails"``, ``"charge times out"``,
            ``"ship fails, compensation of charge fails"``; ``"no failure"``.
        injected: ``(step, "fails" | "times out", compensation)`` per fault.
        status: the saga's final status (an unfinished one waits for an operator).
        completed: steps whose action completed, in order.
        compensated: steps whose compensation started, in the order they started.
        compensation_failed: steps whose compensation gave up.
        problems: what broke the rules (empty when the path is sound).
        snapshot: the final snapshot, with the history.
    """

    name: str
    injected: tuple[tuple[str, str, bool], ...]
    status: SagaStatus
    completed: tuple[str, ...]
    compensated: tuple[str, ...]
    compensation_failed: tuple[str, ...]
    problems: tuple[str, ...]
    snapshot: SagaSnapshot

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        order = " -> ".join(self.compensated) or "nothing"
        line = f"{self.name}: {self.status.value}, compensated {order}"
        if self.compensation_failed:
            line += f" (gave up on {', '.join(self.compensation_failed)})"
        for p in self.problems:
            line += f"\n    PROBLEM: {p}"
        return line


class FailureReport(Report[FailurePath]):
    """The paths ``explore_failures`` ran; index by position or by path name."""

    _kind = "failure path"
    _trouble = "problem(s) in the failure paths"

    def __init__(self, definition: SagaDefinition, paths: list[FailurePath]) -> None:
        super().__init__(paths)
        self.definition = definition
        self.paths = paths

    def _label(self, run: FailurePath) -> str:
        return run.name

    def __str__(self) -> str:
        head = f"{self.definition.name} v{self.definition.version}: {len(self.paths)} failure paths"
        return "\n".join([head, *(f"  {p}" for p in self.paths)])


def _has_timeout(definition: SagaDefinition, step: str, compensation: bool) -> bool:
    return definition.by_name[step].attempt_timeouts[compensation] is not None


def _can_fail(definition: SagaDefinition, step: str, compensation: bool) -> bool:
    s = definition.by_name[step]
    action = s.compensation if compensation else s.action
    if isinstance(action, SendCommand):
        return action.awaits_reply  # a fire-and-forget send completes when committed
    if isinstance(action, WaitFor):
        return False  # it fails by its timeout ("times out"); failure events are not made up
    return action is not None


async def explore_failures(
    definition: SagaDefinition,
    data: Any = None,
    *,
    env: SagaTestEnv | None = None,
    replies: Mapping[type, Any] | None = None,
    events: Mapping[type, Any] | None = None,
    compensation_faults: bool = True,
) -> FailureReport:
    """Run *definition* on every failure path and report the compensations of each.

    Each path runs one saga with *data* on a fresh store: the step functions
    are wrapped so that the chosen action or compensation fails on every
    attempt (raising ``InjectedFailure``, so its retry policy runs out on the
    virtual clock) or hangs until its timeout. ``send`` steps are answered by
    a fake participant with *replies* (``{Command: event or cmd -> event}``);
    a failing one gets a ``Fault``, a timing-out one no answer. ``wait_for``
    steps get the event in *events* (``{Event: event or saga_id -> event}``)
    when they start, or none on their "times out" path.

    Each path is checked: a rollback that ends ``COMPENSATED`` has compensated
    every step that completed and has a compensation, each compensation
    starting only after those of the steps that depend on it ended (reverse
    dependency order); a failing compensation ends the saga ``FAILED``.

    Args:
        env: the environment to run in (the ``saga_env`` fixture); default a
            new one with a memory store (the running loop must have no clock yet).
        compensation_faults: also fail each compensation in turn (the number
            of paths grows with the square of the steps).

    Raises:
        ValueError: a message step lacks its reply or event.
    """
    check_replies(definition, replies or {}, events or {})
    if env is None:
        async with SagaTestEnv() as own:
            return await explore_failures(
                definition, data, env=own, replies=replies, events=events, compensation_faults=compensation_faults
            )
    paths: list[FailurePath] = []

    async def run(name: str, injected: tuple[tuple[str, str, bool], ...]) -> FailurePath:
        modes: dict[tuple[str, bool], Mode] = {
            (step, comp): ("fail" if how == "fails" else "hang") for step, how, comp in injected
        }
        with env._skipping():
            async with one_run(env, definition, modes=modes, replies=replies, events=events) as r:
                saga_id = await r.engine.start(definition.name, data, version=definition.version)
                snap = await r.finish(saga_id)
        path = _path(definition, name, injected, snap)
        paths.append(path)
        return path

    await run("no failure", ())
    for step in definition.order:
        if _can_fail(definition, step, False):
            failed = await run(f"{step} fails", ((step, "fails", False),))
            if compensation_faults:
                for comp in failed.compensated:
                    await run(
                        f"{step} fails, compensation of {comp} fails", ((step, "fails", False), (comp, "fails", True))
                    )
                    if _has_timeout(definition, comp, True):
                        await run(
                            f"{step} fails, compensation of {comp} times out",
                            ((step, "fails", False), (comp, "times out", True)),
                        )
        if _has_timeout(definition, step, False):
            await run(f"{step} times out", ((step, "times out", False),))
    return FailureReport(definition, paths)


def _path(
    definition: SagaDefinition, name: str, injected: tuple[tuple[str, str, bool], ...], snap: SagaSnapshot
) -> FailurePath:
    history = snap.history
    completed: list[str] = []
    started: dict[str, int] = {}
    ended: dict[str, int] = {}
    for i, h in enumerate(history):
        if h.step is None:
            continue
        if h.kind == "step_completed" and h.step not in completed:
            completed.append(h.step)
        elif h.kind == "compensation_started" and h.step not in started:
            started[h.step] = i
        elif h.kind in ("compensation_completed", "compensation_failed", "compensation_cancelled"):
            ended[h.step] = i
    compensated = tuple(sorted(started, key=started.__getitem__))
    gave_up = tuple(n for n in compensated if snap.steps[n].status is StepStatus.COMPENSATION_FAILED)
    problems: list[str] = []
    comp_faults = [step for step, _, comp in injected if comp]
    if not injected and snap.status is not SagaStatus.COMPLETED:
        problems.append(f"without any failure the saga ends {snap.status.value}: {snap.error}")
    if injected and snap.status is SagaStatus.COMPLETED:
        problems.append("the saga completed although a failure was injected")
    if comp_faults and comp_faults[0] in compensated and snap.status is not SagaStatus.FAILED:
        problems.append(f"compensation of {comp_faults[0]} failed, yet the saga ends {snap.status.value}, not failed")
    if snap.status is SagaStatus.COMPENSATED:
        for step in completed:
            if definition.by_name[step].compensation is not None and step not in started:
                problems.append(f"step {step} completed and has a compensation, but was not compensated")
    for step in compensated:
        for later in definition.descendants[step]:
            if later in started and later in ended and ended[later] > started[step]:
                problems.append(
                    f"compensation of {step} started before that of {later} (which depends on it) ended: "
                    "not reverse dependency order"
                )
            elif later in started and later not in ended:
                problems.append(
                    f"compensation of {step} started while that of {later} (which depends on it) had not ended"
                )
    return FailurePath(
        name=name,
        injected=injected,
        status=snap.status,
        completed=tuple(completed),
        compensated=compensated,
        compensation_failed=gave_up,
        problems=tuple(problems),
        snapshot=snap,
    )
