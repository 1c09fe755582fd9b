"""Duplicate and out-of-order messages for message steps.

The saga must end as it does when every message comes once, in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._definition import SagaDefinition
from .._snapshot import SagaSnapshot
from ._env import SagaTestEnv
from ._harness import check_replies, message_actions, one_run
from ._report import Report

__all__ = ["DeliveryReport", "DeliveryRun", "check_deliveries"]

# name -> (participant options, duplicate every command)
_SCENARIOS: dict[str, tuple[dict[str, Any], bool]] = {
    "every message once": ({}, False),
    "every reply twice, same message id": ({"duplicates": "same_id"}, False),
    "every reply twice, new message id": ({"duplicates": "new_id"}, False),
    "every command delivered twice": ({}, True),
    "replies late, in reverse order": ({"delay": 1.0, "reverse": True}, False),
}


@dataclass(frozen=True, slots=True)
class DeliveryRun:
    """One delivery scenario and how the saga ended.

    Attributes:
        scenario: what the messages did (``"every reply twice, same message id"``, ...).
        status: the saga's final status.
        commands: commands the participant received, per step (duplicates included).
        dead_letters: messages the engine set aside (duplicates, stale replies), with their reasons.
        problems: differences from the scenario in which every message came once.
        snapshot: the final snapshot.
    """

    scenario: str
    status: Any
    commands: Mapping[str, int]
    dead_letters: tuple[str, ...]
    problems: tuple[str, ...]
    snapshot: SagaSnapshot

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        line = f"{self.scenario}: {self.status.value}, {len(self.dead_letters)} message(s) set aside"
        for p in self.problems:
            line += f"\n    PROBLEM: {p}"
        return line


class DeliveryReport(Report[DeliveryRun]):
    """The scenarios ``check_deliveries`` ran; the first is the reference. Index by position or scenario."""

    _kind = "scenario"
    _trouble = "problem(s) with duplicate or reordered messages"

    def _label(self, run: DeliveryRun) -> str:
        return run.scenario


async def check_deliveries(
    definition: SagaDefinition,
    data: Any = None,
    *,
    replies: Mapping[type, Any],
    events: Mapping[type, Any] | None = None,
    env: SagaTestEnv | None = None,
) -> DeliveryReport:
    """Run a saga with message steps under duplicate and out-of-order messages; each must end as the first.

    The scenarios: every message once (the reference); every reply published
    twice with the same message id (a broker's redelivery: the inbox drops the
    second) and with a new one (the service answered twice: the second is
    stale); every command delivered twice to the participant; replies held a
    second and released in reverse order. Each scenario must reach the
    reference's saga status, step statuses and saga data.

    *replies* answers the commands (``{Command: event or cmd -> event}``), as
    a fake participant; *events* feeds ``wait_for`` steps.

    Raises:
        ValueError: the definition has no ``send`` step, or a reply is missing.
    """
    check_replies(definition, replies, events or {})
    if not message_actions(definition):
        raise ValueError(f"saga {definition.name} has no message step (send or wait_for): nothing to deliver twice")
    if env is None:
        async with SagaTestEnv() as own:
            return await check_deliveries(definition, data, replies=replies, events=events, env=own)
    runs: list[DeliveryRun] = []
    reference: SagaSnapshot | None = None
    with env._skipping():
        for scenario, (options, dup_commands) in _SCENARIOS.items():
            async with one_run(
                env,
                definition,
                replies=replies,
                events=events,
                participant_options=options,
                duplicate_commands=dup_commands,
            ) as r:
                saga_id = await r.engine.start(definition.name, data, version=definition.version)
                snap = await r.finish(saga_id)
                dead = tuple(f"{d.type_name}: {d.reason}" for d in await r.engine.dead_letters())
                commands: dict[str, int] = {}
                if r.participant is not None:
                    for got in r.participant.received:
                        key = got.step or got.type_name
                        commands[key] = commands.get(key, 0) + 1
            problems: list[str] = []
            if reference is None:
                reference = snap
            else:
                if snap.status is not reference.status:
                    problems.append(f"ends {snap.status.value}, with every message once {reference.status.value}")
                for name, s in snap.steps.items():
                    want = reference.steps[name].status
                    if s.status is not want:
                        problems.append(f"step {name} ends {s.status.value}, with every message once {want.value}")
                if snap.data != reference.data:
                    problems.append(f"saga data {snap.data!r} differs from {reference.data!r}")
            runs.append(DeliveryRun(scenario, snap.status, commands, dead, tuple(problems), snap))
    return DeliveryReport(runs)
