"""Exceptions raised by sagakit.

The tree::

    SagaError
    ├── DefinitionError (also ValueError)      a saga definition is invalid
    ├── UnknownSagaType (also LookupError)     start() of a name that is not registered
    ├── SagaNotFound (also LookupError)        no saga with this id in the store
    ├── SagaStateError                         an admin action not allowed in the saga's status
    ├── SagaBusy                               another worker holds the saga's lease
    ├── PayloadTooLarge (also ValueError)      saga data over the configured size limit
    └── StoreError                             the store cannot be opened or used
        └── NotASagaStore                      the file or database is not a sagakit store

    NonRetryableError (an Exception raised by step code: skip remaining retries)

Signals that steer a running step derive from BaseException, so that a step's
``except Exception`` cannot swallow them.
"""

from __future__ import annotations

__all__ = [
    "DefinitionError",
    "LeaseLost",
    "NonRetryableError",
    "NotASagaStore",
    "PayloadTooLarge",
    "SagaBusy",
    "SagaError",
    "SagaNotFound",
    "SagaStateError",
    "StoreError",
    "UnknownSagaType",
]


class SagaError(Exception):
    """Root of every error sagakit raises."""


class DefinitionError(SagaError, ValueError):
    """A saga definition is invalid; the message names the step or field and the problem."""


class UnknownSagaType(SagaError, LookupError):
    """A saga name (or name and version) that is not registered with the engine."""


class SagaNotFound(SagaError, LookupError):
    """No saga with the given id exists in the store."""

    def __init__(self, saga_id: str) -> None:
        super().__init__(f"no saga with id {saga_id!r}")
        self.saga_id = saga_id


class SagaStateError(SagaError):
    """An admin action is not allowed in the saga's current status."""

    def __init__(self, saga_id: str, message: str) -> None:
        super().__init__(f"saga {saga_id}: {message}")
        self.saga_id = saga_id
        self.reason = message


class SagaBusy(SagaError):
    """Another worker holds the saga's lease; retry the action later."""


class PayloadTooLarge(SagaError, ValueError):
    """Saga data or a step result is larger than the configured limit."""


class StoreError(SagaError):
    """The store cannot be opened or used."""


class NotASagaStore(StoreError):
    """The file or database exists but is not a sagakit store; it was left untouched."""


class LeaseLost(SagaError):
    """This worker no longer holds the saga's lease, so a fenced effect was not applied.

    Another worker may already run the step again; the attempt fails (and is
    retried by whoever holds the saga) instead of applying its effect twice.
    """


class NonRetryableError(Exception):
    """Raised by a step to fail its attempt without further retries."""
