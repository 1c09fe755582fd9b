"""Operations: find, inspect and fix sagas from Python, the command line, HTTP and a dashboard.

``Operations`` is the one API; ``sagakit retry/skip/compensate/abort/fork``
and ``sagakit serve`` (``create_app``) are thin layers over it. The HTTP app
needs the ``dashboard`` extra (``pip install 'sagakit[dashboard]'``) and is
imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._masking import DEFAULT_MASK_PATTERN, Masker
from ._filters import InvalidParameter, SagaFilter, parse_filter
from ._fleet import DefinitionInfo, WorkerReport, WorkersPage
from ._graph import GraphNode, SagaGraph
from ._loader import DefinitionsNotLoaded, load_definitions
from ._operations import (
    ACTIONS,
    ActionOutcome,
    AmbiguousSagaId,
    BulkResult,
    DefinitionMissing,
    Operations,
    Overview,
    SagaPage,
)
from ._timeline import AdminAction, Attempt, Timeline

if TYPE_CHECKING:
    from ._app import AccessDenied, AuthInput, create_app

__all__ = [
    "ACTIONS",
    "DEFAULT_MASK_PATTERN",
    "AccessDenied",
    "ActionOutcome",
    "AdminAction",
    "AmbiguousSagaId",
    "Attempt",
    "AuthInput",
    "BulkResult",
    "DefinitionInfo",
    "DefinitionMissing",
    "DefinitionsNotLoaded",
    "GraphNode",
    "InvalidParameter",
    "Masker",
    "Operations",
    "Overview",
    "SagaFilter",
    "SagaGraph",
    "SagaPage",
    "Timeline",
    "WorkerReport",
    "WorkersPage",
    "create_app",
    "load_definitions",
    "parse_filter",
]


def __getattr__(name: str) -> Any:
    # The HTTP app imports starlette: only when it is asked for.
    if name in ("create_app", "AuthInput", "AccessDenied"):
        from . import _app

        return getattr(_app, name)
    raise AttributeError(f"module 'sagakit.admin' has no attribute {name!r}")
