"""What a step function receives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from ._json import from_json
from .machine import SagaState, step_results

__all__ = ["ItemContext", "StepContext"]

T = TypeVar("T")


class StepContext:
    """The context of one step attempt.

    Attributes:
        saga_id: id of the saga.
        saga_name: name of the saga's definition.
        step: the step's name.
        attempt: 1-based attempt number of this action (or compensation).
        data: the saga's data as stored (JSON: dicts, lists, strings, numbers);
            ``data_as(Model)`` reads it as a model.
        results: outputs of finished steps, by step name; a step whose action is
            annotated to return a pydantic model or a dataclass (``-> Receipt``)
            appears as an instance of it.
        idempotency_key: stable across retries and crash re-runs, unique per saga,
            step and direction (action or compensation). Use it to make the
            step's side effect happen once downstream.
        correlation_id: the saga's correlation id, if any.
        compensation: True in a compensation.
        result: in a compensation, the step's own output (an instance of the model
            its action is annotated to return, if any).
        worker_id: the worker that holds the saga's lease and runs this attempt
            (None outside an engine); ``sagakit.stores.postgres.fenced`` checks it.
        item: in a for-each step, the item this attempt is for (None in other steps).
        item_index: in a for-each step, the item's position in the list (None in other steps).
    """

    __slots__ = (
        "_idempotency_key",
        "_results",
        "_state",
        "_types",
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
        self._types: Mapping[str, type] | None = None
        self.correlation_id = correlation_id
        self.compensation = compensation
        self.result = result
        self.worker_id = worker_id
        self._updates: dict[str, Any] | None = None

    @classmethod
    def _of(
        cls,
        st: SagaState,
        step: str,
        attempt: int,
        compensation: bool,
        worker_id: str | None = None,
        types: Mapping[str, type] | None = None,
    ) -> StepContext:
        """The context of an attempt of *step* in the saga *st* (a state the machine no longer changes).

        ``results`` and ``idempotency_key`` are worked out when first read.
        *types* maps steps to the model their results are read as.
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
        ctx._types = types or None
        ctx.result = None
        if compensation:
            result = st.steps[step].result
            model = types.get(step) if types else None
            ctx.result = (
                result if model is None or result is None else from_json(model, result, f"the result of step {step!r}")
            )
        ctx.worker_id = worker_id
        ctx._updates = None
        return ctx

    @property
    def results(self) -> Mapping[str, Any]:
        """Outputs of the steps that completed (or were skipped) before this attempt, by step name."""
        results = self._results
        if results is None:
            assert self._state is not None
            results = step_results(self._state)
            types = self._types
            if types:
                results = dict(results)
                for name, model in types.items():
                    value = results.get(name)
                    if value is not None:
                        results[name] = from_json(model, value, f"the result of step {name!r}")
            self._results = results
        return results

    def data_as(self, model: type[T]) -> T:
        """The saga's data read as *model* (a pydantic model, a dataclass, or any type pydantic validates).

        ``Decimal``, ``datetime``, ``UUID`` and ``Enum`` fields come back as
        those types, from the JSON strings and values they are stored as.

        Raises:
            DataEncodingError: the data does not fit *model*; names each field.
        """
        return from_json(model, self.data, "the saga's data")

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

    @property
    def item(self) -> Any:
        """In a for-each step, the item this attempt is for; None in other steps."""
        return None

    @property
    def item_index(self) -> int | None:
        """In a for-each step, the item's position in the step's list; None in other steps."""
        return None

    def __repr__(self) -> str:
        kind = "compensation" if self.compensation else "action"
        return f"StepContext(saga_id={self.saga_id!r}, step={self.step!r}, {kind}, attempt={self.attempt})"


class ItemContext(StepContext):
    """The context of an attempt for one item of a for-each step.

    As ``StepContext``, and: ``item`` (the item, as stored: JSON), ``item_index``
    (its position in the list), ``item_key`` (the definition's ``key`` of the
    item, or its index, as a string); ``idempotency_key`` is
    ``saga id:step:item key:action`` (or ``:compensation``), the same for
    every attempt of this item's side; in a compensation ``result`` is the
    item's own result.
    """

    __slots__ = ("_item", "_item_index", "item_key")
    _item: Any
    _item_index: int
    item_key: str

    @classmethod
    def _of_item(
        cls,
        st: SagaState,
        step: str,
        index: int,
        attempt: int,
        compensation: bool,
        worker_id: str | None = None,
        types: Mapping[str, type] | None = None,
    ) -> ItemContext:
        """The context of an attempt of item *index* of for-each step *step* in the saga *st*.

        *types* maps the saga's other steps to the model their results are read as.
        """
        items = st.steps[step].items
        assert items is not None
        it = items[index]
        ctx = cls.__new__(cls)
        ctx.saga_id = st.id
        ctx.saga_name = st.name
        ctx.step = step
        ctx.attempt = attempt
        ctx.data = st.data
        ctx._results = None
        ctx._idempotency_key = None
        ctx._state = st
        ctx._types = types or None
        ctx.correlation_id = st.correlation_id
        ctx.compensation = compensation
        ctx.result = it.result if compensation else None
        ctx.worker_id = worker_id
        ctx._updates = None
        ctx._item = it.value
        ctx._item_index = index
        ctx.item_key = it.key
        return ctx

    @property
    def item(self) -> Any:
        return self._item

    @property
    def item_index(self) -> int | None:
        return self._item_index

    @property
    def idempotency_key(self) -> str:
        """``saga id:step:item key:action`` (or ``:compensation``): the same for every attempt of this item's side."""
        key = self._idempotency_key
        if key is None:
            key = self._idempotency_key = (
                f"{self.saga_id}:{self.step}:{self.item_key}:{'compensation' if self.compensation else 'action'}"
            )
        return key

    def __repr__(self) -> str:
        kind = "compensation" if self.compensation else "action"
        return (
            f"ItemContext(saga_id={self.saga_id!r}, step={self.step!r}, item={self._item_index}, {kind}, "
            f"attempt={self.attempt})"
        )
