"""A saga's definition graph with each step's state in that saga, laid out in layers.

States, as an operator reads them:

- ``done``: the action completed (or was skipped with a given result);
- ``running``: an attempt of the action or the compensation is in flight;
- ``waiting``: waiting for a retry, or a message step waiting for its reply;
- ``failed``: the action failed for good, or the compensation gave up;
- ``compensated``: completed, then undone;
- ``remaining``: not started yet (or never will be).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._definition import SagaDefinition, StepAction, StepDefinition
from .._messages import SendCommand, WaitFor
from .._snapshot import SagaSnapshot, StepSnapshot
from .._status import SagaStatus, StepStatus

__all__ = ["STATES", "GraphNode", "SagaGraph", "build_graph", "definition_graph", "step_state"]

STATES = ("done", "running", "waiting", "failed", "compensated", "remaining")


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One step: its place in the definition and its state in this saga."""

    name: str
    after: tuple[str, ...]
    kind: str  # "local", "send" (a command and its reply), "wait" (an external event), "for-each", "child"
    compensation: str | None  # None, "local" or "send"
    pivot: bool
    state: str
    status: str
    attempts: int
    compensation_attempts: int
    error: str | None
    layer: int
    row: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "after": list(self.after),
            "kind": self.kind,
            "compensation": self.compensation,
            "pivot": self.pivot,
            "state": self.state,
            "status": self.status,
            "attempts": self.attempts,
            "compensation_attempts": self.compensation_attempts,
            "error": self.error,
            "layer": self.layer,
            "row": self.row,
        }


@dataclass(frozen=True, slots=True)
class SagaGraph:
    """The steps of a saga's definition as a DAG; ``definition_known`` is False when the
    definition is not registered here (then the steps are shown in stored order, with
    no dependencies)."""

    saga_id: str
    name: str
    version: int
    definition_known: bool
    nodes: tuple[GraphNode, ...]
    layers: int
    rows: int

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(d, n.name) for n in self.nodes for d in n.after]

    def to_dict(self) -> dict[str, Any]:
        return {
            "saga_id": self.saga_id,
            "name": self.name,
            "version": self.version,
            "definition_known": self.definition_known,
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [{"from": a, "to": b} for a, b in self.edges],
            "layers": self.layers,
            "rows": self.rows,
            "states": list(STATES),
        }


def step_state(s: StepSnapshot, sdef: StepDefinition | None, *, saga_finished: bool = False) -> str:
    """The operator's word for a step's state (see the module docstring).

    Nothing runs in a finished saga: a step it left running or compensating
    (the saga failed or was aborted meanwhile) did not finish.
    """
    st = s.status
    if saga_finished and st is StepStatus.RUNNING:
        return "remaining"
    if saga_finished and st is StepStatus.COMPENSATING:
        return "done"
    if st in (StepStatus.COMPLETED, StepStatus.SKIPPED):
        return "done"
    if st in (StepStatus.FAILED, StepStatus.COMPENSATION_FAILED):
        return "failed"
    if st is StepStatus.COMPENSATED:
        return "compensated"
    if st is StepStatus.COMPENSATING:
        return "waiting" if s.next_attempt_at is not None else "running"
    if s.waiting_for is not None and st in (StepStatus.RUNNING, StepStatus.COMPENSATING):
        return "waiting"  # for a permit of its resource
    if st is StepStatus.RUNNING:
        message_step = sdef is not None and not sdef.local
        return "waiting" if message_step else "running"
    # PENDING: waiting for its next attempt, or not started.
    return "waiting" if s.next_attempt_at is not None and s.attempts > 0 else "remaining"


def build_graph(snap: SagaSnapshot, definition: SagaDefinition | None) -> SagaGraph:
    """The graph of *snap*'s definition, each step coloured by its state in *snap*."""
    if definition is not None:
        names = list(definition.order)
        deps = {n: tuple(definition.by_name[n].after) for n in names}
    else:
        names = list(snap.steps)
        deps = dict.fromkeys(names, ())
    layer: dict[str, int] = {}
    for n in names:  # definition.order is topological: dependencies come first
        layer[n] = 1 + max((layer[d] for d in deps[n] if d in layer), default=-1)
    if definition is None:
        layer = {n: i for i, n in enumerate(names)}
    rows: dict[int, int] = {}
    nodes = []
    for n in names:
        sdef = definition.by_name[n] if definition is not None else None
        s = snap.steps.get(n)
        row = rows.get(layer[n], 0)
        rows[layer[n]] = row + 1
        nodes.append(
            GraphNode(
                name=n,
                after=deps[n],
                kind="unknown" if sdef is None else "for-each" if sdef.for_each is not None else _kind(sdef.action),
                compensation=None if sdef is None or sdef.compensation is None else _kind(sdef.compensation),
                pivot=bool(sdef and sdef.pivot),
                state=step_state(s, sdef, saga_finished=snap.status.terminal) if s is not None else "remaining",
                status=s.status.value if s is not None else StepStatus.PENDING.value,
                attempts=s.attempts if s is not None else 0,
                compensation_attempts=s.compensation_attempts if s is not None else 0,
                error=s.error if s is not None else None,
                layer=layer[n],
                row=row,
            )
        )
    return SagaGraph(
        saga_id=snap.id,
        name=snap.name,
        version=snap.version,
        definition_known=definition is not None,
        nodes=tuple(nodes),
        layers=max(layer.values(), default=-1) + 1,
        rows=max(rows.values(), default=0),
    )


def _kind(action: object) -> str:
    if isinstance(action, SendCommand):
        return "send"
    if isinstance(action, WaitFor):
        return "wait"
    if isinstance(action, StepAction):
        return "child" if action.starts_child else "message"
    return "local"


def definition_graph(definition: SagaDefinition) -> SagaGraph:
    """The graph of a definition on its own (every step ``remaining``), for the definitions page."""
    blank = SagaSnapshot(
        id="",
        name=definition.name,
        version=definition.version,
        status=SagaStatus.PENDING,
        data=None,
        steps={},
        correlation_id=None,
        idempotency_key=None,
        error=None,
        created_at=0.0,
        updated_at=0.0,
        wake_at=None,
    )
    return build_graph(blank, definition)
