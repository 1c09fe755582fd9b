"""Read-only views of a saga for users: SagaSnapshot and StepSnapshot."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ._json import from_json
from ._status import SagaStatus, StepStatus
from .machine import CHILDREN, CHOREOGRAPHED, PARENT, HistoryEntry, ItemState, SagaState

__all__ = ["ItemSnapshot", "SagaSnapshot", "StepSnapshot"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ItemSnapshot:
    """One item of a for-each step as stored."""

    index: int
    key: str
    """The item's key (the step's ``key`` of the item, or its index): part of its idempotency key."""
    item: Any
    status: StepStatus
    attempts: int
    compensation_attempts: int
    result: Any
    error: str | None
    next_attempt_at: float | None
    uncertain: bool = False


@dataclass(frozen=True, slots=True)
class StepSnapshot:
    """One step of a saga as stored."""

    name: str
    status: StepStatus
    attempts: int
    compensation_attempts: int
    result: Any
    error: str | None
    started_at: float | None
    finished_at: float | None
    next_attempt_at: float | None
    uncertain: bool = False
    """An attempt ended without a clear outcome (cancelled, timed out, result lost): it may have had its effect."""
    items: tuple[ItemSnapshot, ...] | None = None
    """The items of a for-each step, in the list's order, once it was read (None for other steps)."""
    waiting_for: str | None = None
    """The resource whose permit the step's current attempt waits for (it has not started yet)."""

    def result_as(self, model: type[T]) -> T:
        """The step's result read as *model* (a pydantic model, a dataclass, or any type pydantic validates).

        Raises:
            DataEncodingError: the result does not fit *model*; names each field.
        """
        return from_json(model, self.result, f"the result of step {self.name!r}")


@dataclass(frozen=True, slots=True)
class SagaSnapshot:
    """A saga as stored at one moment. ``history`` is empty in results of ``list()``."""

    id: str
    name: str
    version: int
    status: SagaStatus
    data: Any
    steps: Mapping[str, StepSnapshot]
    correlation_id: str | None
    idempotency_key: str | None
    error: str | None
    created_at: float
    updated_at: float
    wake_at: float | None
    history: tuple[HistoryEntry, ...] = ()
    parent_id: str | None = None
    """For a child saga: the saga whose step started it (``parent_step``)."""
    parent_step: str | None = None
    children: tuple[tuple[str, str], ...] = ()
    """The child sagas this saga's child steps started, oldest first, as (step, child saga id)."""
    choreographed: bool = False
    """A choreographed saga (``sagakit.choreography``): its stages are events observed, not commands sent."""

    def data_as(self, model: type[T]) -> T:
        """The saga's data read as *model* (a pydantic model, a dataclass, or any type pydantic validates).

        Raises:
            DataEncodingError: the data does not fit *model*; names each field.
        """
        return from_json(model, self.data, f"the data of saga {self.id}")

    @classmethod
    def from_state(cls, st: SagaState, history: tuple[HistoryEntry, ...] = ()) -> SagaSnapshot:
        steps = {
            name: StepSnapshot(
                name=name,
                status=s.status,
                attempts=s.attempts,
                compensation_attempts=s.compensation_attempts,
                result=s.result,
                error=s.error,
                started_at=s.started_at,
                finished_at=s.finished_at,
                next_attempt_at=s.wake_at if not s.token else None,
                uncertain=s.uncertain,
                items=None if s.items is None else _items(s.items),
                waiting_for=s.waiting_for,
            )
            for name, s in st.steps.items()
        }
        return cls(
            id=st.id,
            name=st.name,
            version=st.version,
            status=st.status,
            data=st.data,
            steps=steps,
            correlation_id=st.correlation_id,
            idempotency_key=st.idempotency_key,
            error=st.error,
            created_at=st.created_at,
            updated_at=st.updated_at,
            wake_at=st.wake_at,
            history=history,
            **(_family(st.meta) if st.meta else {}),
            choreographed=bool(st.meta.get(CHOREOGRAPHED)) if st.meta else False,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for ``--json`` output and the HTTP API)."""
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "status": self.status.value,
            "data": self.data,
            "correlation_id": self.correlation_id,
            "idempotency_key": self.idempotency_key,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "wake_at": self.wake_at,
            "parent": None if self.parent_id is None else {"id": self.parent_id, "step": self.parent_step},
            "children": [{"step": step, "id": cid} for step, cid in self.children],
            "choreographed": self.choreographed,
            "steps": {
                n: {
                    "status": s.status.value,
                    "attempts": s.attempts,
                    "compensation_attempts": s.compensation_attempts,
                    "result": s.result,
                    "error": s.error,
                    "started_at": s.started_at,
                    "finished_at": s.finished_at,
                    "next_attempt_at": s.next_attempt_at,
                    "uncertain": s.uncertain,
                    **({} if s.items is None else {"items": [_item_dict(it) for it in s.items]}),
                    "waiting_for": s.waiting_for,
                }
                for n, s in self.steps.items()
            },
            "history": [
                {"at": h.at, "kind": h.kind, "step": h.step, "attempt": h.attempt,
                 "message": h.message, "traceback": h.traceback}
                for h in self.history
            ],
        }  # fmt: skip


def _items(items: list[ItemState]) -> tuple[ItemSnapshot, ...]:
    return tuple(
        ItemSnapshot(
            index=i,
            key=it.key,
            item=it.value,
            status=it.status,
            attempts=it.attempts,
            compensation_attempts=it.compensation_attempts,
            result=it.result,
            error=it.error,
            next_attempt_at=it.wake_at if not it.token else None,
            uncertain=it.uncertain,
        )
        for i, it in enumerate(items)
    )


def _item_dict(it: ItemSnapshot) -> dict[str, Any]:
    return {
        "index": it.index,
        "key": it.key,
        "item": it.item,
        "status": it.status.value,
        "attempts": it.attempts,
        "compensation_attempts": it.compensation_attempts,
        "result": it.result,
        "error": it.error,
        "next_attempt_at": it.next_attempt_at,
        "uncertain": it.uncertain,
    }


def _family(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The parent and children fields of a snapshot, from the saga's meta (see ``sagakit.machine``)."""
    out: dict[str, Any] = {}
    parent = meta.get(PARENT)
    if isinstance(parent, dict):
        out["parent_id"] = parent.get("id")
        out["parent_step"] = parent.get("step")
    every = meta.get(CHILDREN + "_all")
    if isinstance(every, list):
        out["children"] = tuple((str(c["step"]), str(c["id"])) for c in every if isinstance(c, dict))
    return out
