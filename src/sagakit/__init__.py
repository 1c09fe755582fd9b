"""sagakit: a durable saga orchestrator for Python services.

Define a saga in code with ``SagaBuilder`` (or load one with
``load_definition``), register it with a ``SagaEngine`` on a store
(``sqlite:///sagas.db`` by default, ``postgresql://…`` to scale out), and
start it: every step is retried, timed out, compensated on failure and
resumed after a crash.
"""

from __future__ import annotations

from ._context import StepContext
from ._definition import SagaBuilder, SagaDefinition, StepDefinition
from ._engine import SagaEngine
from ._errors import (
    DefinitionError,
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
from ._policy import RetryPolicy
from ._snapshot import SagaSnapshot, StepSnapshot
from ._status import SagaStatus, StepStatus
from ._store import Store
from .machine import HistoryEntry

__version__ = "0.1.0"

__all__ = [
    "DefinitionError",
    "HistoryEntry",
    "NonRetryableError",
    "NotASagaStore",
    "PayloadTooLarge",
    "RetryPolicy",
    "SagaBuilder",
    "SagaBusy",
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
    "UnknownSagaType",
    "__version__",
]
