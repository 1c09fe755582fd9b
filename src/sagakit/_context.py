"""What a step function receives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["StepContext"]


class StepContext:
    """The context of one step attempt.

    Attributes:
        saga_id: id of the saga.
        saga_name: name of the saga's definition.
        step: the step's name.
        attempt: 1-based attempt number of this action (or compensation).
        data: the saga's input data.
        results: outputs of finished steps, by step name.
        idempotency_key: stable across retries and crash re-runs, unique per saga,
            step and direction (action or compensation). Use it to make the
            step's side effect happen once downstream.
        correlation_id: the saga's correlation id, if any.
        compensation: True in a compensation.
        result: in a compensation, the step's own output.
    """

    __slots__ = (
        "attempt",
        "compensation",
        "correlation_id",
        "data",
        "idempotency_key",
        "result",
        "results",
        "saga_id",
        "saga_name",
        "step",
    )

    def __init__(
        self,
        *,
        saga_id: str,
        saga_name: str,
        step: str,
        attempt: int,
        data: Any,
        results: Mapping[str, Any],
        idempotency_key: str,
        correlation_id: str | None,
        compensation: bool = False,
        result: Any = None,
    ) -> None:
        self.saga_id = saga_id
        self.saga_name = saga_name
        self.step = step
        self.attempt = attempt
        self.data = data
        self.results = results
        self.idempotency_key = idempotency_key
        self.correlation_id = correlation_id
        self.compensation = compensation
        self.result = result

    def __repr__(self) -> str:
        kind = "compensation" if self.compensation else "action"
        return (
            f"StepContext(saga_id={self.saga_id!r}, step={self.step!r}, {kind}, "
            f"attempt={self.attempt})"
        )
