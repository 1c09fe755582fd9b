"""What a step function receives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .machine import SagaState, step_results

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
        worker_id: the worker that holds the saga's lease and runs this attempt
            (None outside an engine); ``sagakit.stores.postgres.fenced`` checks it.
    """

    __slots__ = (
        "_idempotency_key",
        "_results",
        "_state",
        "_updates",
        "attempt",
        "compensation",
        "correlation_id",
        "data",
        "result",
        "saga_id",
        "saga_name",
        "step",
        "worker_id",
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
        worker_id: str | None = None,
    ) -> None:
        self.saga_id = saga_id
        self.saga_name = saga_name
        self.step = step
        self.attempt = attempt
        self.data = data
        self._results: Mapping[str, Any] | None = results
        self._idempotency_key: str | None = idempotency_key
        self._state: SagaState | None = None
        self.correlation_id = correlation_id
        self.compensation = compensation
        self.result = result
        self.worker_id = worker_id
        self._updates: dict[str, Any] | None = None

    @classmethod
    def _of(
        cls, st: SagaState, step: str, attempt: int, compensation: bool, worker_id: str | None = None
    ) -> StepContext:
        """The context of an attempt of *step* in the saga *st* (a state the machine no longer changes).

        ``results`` and ``idempotency_key`` are worked out when first read.
        """
        ctx = cls.__new__(cls)
        ctx.saga_id = st.id
        ctx.saga_name = st.name
        ctx.step = step
        ctx.attempt = attempt
        ctx.data = st.data
        ctx._results = None
        ctx._idempotency_key = None
        ctx._state = st
        ctx.correlation_id = st.correlation_id
        ctx.compensation = compensation
        ctx.result = st.steps[step].result if compensation else None
        ctx.worker_id = worker_id
        ctx._updates = None
        return ctx

    @property
    def results(self) -> Mapping[str, Any]:
        """Outputs of the steps that completed (or were skipped) before this attempt, by step name."""
        results = self._results
        if results is None:
            assert self._state is not None
            results = self._results = step_results(self._state)
        return results

    @property
    def idempotency_key(self) -> str:
        """``saga id:step:action`` (or ``:compensation``): the same for every attempt of this step's side."""
        key = self._idempotency_key
        if key is None:
            key = self._idempotency_key = (
                f"{self.saga_id}:{self.step}:{'compensation' if self.compensation else 'action'}"
            )
        return key

    @property
    def failure(self) -> Mapping[str, Any] | None:
        """The failure event (or participant fault) that last failed a message step of this saga, if any.

        A mapping with ``step``, ``event`` (its wire type name), ``payload``
        (its fields: a reason, a code) and ``fault`` (True when the
        participant's handler raised). Compensations read it to know why they run.
        """
        st = self._state
        if st is None:
            return None
        failure = st.meta.get("failure")
        return failure if isinstance(failure, Mapping) else None

    def update_data(self, changes: Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        """Change fields of the saga's data when this attempt succeeds, e.g. ``ctx.update_data(order_id=oid)``.

        Later steps, message commands built from the data, and the saga's
        outcome events see the new values. ``ctx.data`` shows them at once; the
        store gets them with the step's result, in the same write. With a state
        model the merged data is validated when the attempt ends: invalid data
        fails the step (not retried) and names the field.

        Raises:
            TypeError: the saga's data is not a mapping, or a key is not a string.
        """
        update = {**(changes or {}), **fields}
        bad = [k for k in update if not isinstance(k, str)]
        if bad:
            raise TypeError(f"update_data: keys must be strings, got {bad!r}")
        if not isinstance(self.data, Mapping):
            raise TypeError(f"update_data: the saga's data is a {type(self.data).__name__}, not a mapping")
        self.data = {**self.data, **update}
        self._updates = {**(self._updates or {}), **update}

    def __repr__(self) -> str:
        kind = "compensation" if self.compensation else "action"
        return f"StepContext(saga_id={self.saga_id!r}, step={self.step!r}, {kind}, attempt={self.attempt})"
