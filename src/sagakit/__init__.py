"""sagakit: a durable saga orchestrator for Python services.

Define a saga in code with ``SagaBuilder`` (or load one with
``load_definition``), register it with a ``SagaEngine`` on a store
(``sqlite:///sagas.db`` by default, ``postgresql://…`` to scale out), and
start it: every step is retried, timed out, compensated on failure and
resumed after a crash. From synchronous code (Django, Flask, scripts),
``SagaClient`` starts, reads and steers sagas without an event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._child import child
from ._choreography import Choreography, choreography
from ._client import SagaClient
from ._context import StepContext
from ._definition import SagaBuilder, SagaDefinition, StepDefinition
from ._engine import SagaEngine
from ._errors import (
    DataEncodingError,
    DefinitionError,
    LeaseLost,
    NonRetryableError,
    NotASagaStore,
    PayloadTooLarge,
    SagaBusy,
    SagaError,
    SagaNotFound,
    SagaStateError,
    StoreError,
    UnknownSagaType,
)
from ._messages import message_name, send, wait_for
from ._observe import (
    AttemptInput,
    AttemptStart,
    BaseObserver,
    CommitInput,
    LoggingObserver,
    MessageInput,
    Observer,
    Tracer,
    TraceScope,
    TransitionInput,
)
from ._policy import RetryPolicy
from ._resources import Resource, ResourceUsage
from ._snapshot import ItemSnapshot, SagaSnapshot, StepSnapshot
from ._status import SagaStatus, StepStatus
from ._store import Store
from .machine import HistoryEntry

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence
    from typing import Any

__version__ = "0.1.0"


def load_definition(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    version: int = 1,
    search_path: Sequence[str | os.PathLike[str]] | None = None,
    allow_modules: Sequence[str] | None = None,
) -> SagaDefinition:
    """Load a saga definition in the declarative format (JSON or YAML file, or a mapping).

    See ``sagakit.declarative.load_definition``; imported on first use, so that
    ``import sagakit`` does not pay for the loader's dependencies.
    """
    from .declarative import load_definition as _load

    return _load(source, version=version, search_path=search_path, allow_modules=allow_modules)


__all__ = [
    "AttemptInput",
    "AttemptStart",
    "BaseObserver",
    "Choreography",
    "CommitInput",
    "DataEncodingError",
    "DefinitionError",
    "HistoryEntry",
    "ItemSnapshot",
    "LeaseLost",
    "LoggingObserver",
    "MessageInput",
    "NonRetryableError",
    "NotASagaStore",
    "Observer",
    "PayloadTooLarge",
    "Resource",
    "ResourceUsage",
    "RetryPolicy",
    "SagaBuilder",
    "SagaBusy",
    "SagaClient",
    "SagaDefinition",
    "SagaEngine",
    "SagaError",
    "SagaNotFound",
    "SagaSnapshot",
    "SagaStateError",
    "SagaStatus",
    "StepContext",
    "StepDefinition",
    "StepSnapshot",
    "StepStatus",
    "Store",
    "StoreError",
    "TraceScope",
    "Tracer",
    "TransitionInput",
    "UnknownSagaType",
    "__version__",
    "child",
    "choreography",
    "load_definition",
    "message_name",
    "send",
    "wait_for",
]
