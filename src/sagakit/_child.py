"""Child sagas: a step whose action is another saga (``child``).

The step starts the child saga (once, whatever crashes and re-runs happen),
waits for its end and takes its outcome: a child that completes completes the
step, with the child's data as its result; one that ends otherwise fails it.
Rolling the parent back rolls the child back; aborting the parent aborts it.
The rules are the state machine's (``sagakit.machine``); this module only
describes the step.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ._definition import StepAction
from ._errors import DefinitionError

__all__ = ["ChildData", "ChildSaga", "child"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")

# (parent's data, results of the parent's finished steps by name) -> the child's data.
ChildData = Callable[[Any, Mapping[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class ChildSaga(StepAction):
    """A step action that runs saga *name* as a child of the saga the step belongs to.

    Attributes:
        name: the child saga's definition name (registered with the engines that run the parent).
        data: ``(data, results) -> child data``; None gives the child the parent's data.
        version: the child definition's version; None takes the newest registered.
        check_every: seconds between the parent's own looks at the child while it waits
            (what brings the child's end to the parent should its worker die before telling it).
        compensate: whether rolling the parent back rolls the child back (the step's compensation).
    """

    starts_child: ClassVar[bool] = True
    sends: ClassVar[bool] = True  # the child may have had effects, whatever becomes of it

    name: str
    data: ChildData | None = None
    version: int | None = None
    check_every: float = 30.0
    compensate: bool = True

    def validate(self, where: str) -> None:
        """Check the child's name, version, data hook and check interval; raise DefinitionError naming *where*."""
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise DefinitionError(
                f"{where}: child saga name {self.name!r} is invalid: use the name of a saga definition "
                "(letters, digits, '_', '-' or '.')"
            )
        v = self.version
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise DefinitionError(f"{where}: child saga version must be an integer >= 1 or None, got {v!r}")
        c = self.check_every
        if isinstance(c, bool) or not isinstance(c, int | float) or not c > 0:
            raise DefinitionError(f"{where}: check_every must be a number of seconds > 0, got {c!r}")
        if self.data is not None:
            if not callable(self.data):
                raise DefinitionError(
                    f"{where}: data must be a function (data, results) -> the child's data, or None, got {self.data!r}"
                )
            try:
                sig = inspect.signature(self.data)
            except (TypeError, ValueError):
                return
            try:
                sig.bind(object(), object())
            except TypeError:
                raise DefinitionError(
                    f"{where}: data must accept two arguments (the parent's data and the results of its "
                    f"finished steps); {self.data!r} has signature {sig}"
                ) from None


def child(
    name: str,
    data: ChildData | None = None,
    *,
    version: int | None = None,
    check_every: float = 30.0,
    compensate: bool = True,
) -> ChildSaga:
    """A step action that runs the saga *name* as a child and waits for its end.

    Example::

        b.step("ship", action=child("shipping", data=lambda d, r: {"order_id": d["order_id"]}))

    The child is started once per attempt of the step, under an id derived from
    the parent, the step and the attempt (``ctx.results["ship"]["saga_id"]``
    later); its data is ``data(parent_data, results)`` or the parent's data.
    The step completes when the child completes, with ``{"saga_id", "data",
    "results"}`` of the child as its result; it fails, not retried, when the
    child is compensated, aborted or failed (a failed child leaves the step
    uncertain: a rollback asks it again). With *compensate*, the step's
    compensation is the child's own rollback: a running child compensates, a
    completed one is reopened and compensates its completed steps. Aborting the
    parent aborts a running child. See docs/child-sagas.md.
    """
    return ChildSaga(name=name, data=data, version=version, check_every=check_every, compensate=compensate)
