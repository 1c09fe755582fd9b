"""Exceptions raised by sagakit.

The tree (classes defined elsewhere name their module)::

    SagaError
    ├── DefinitionError (also ValueError)      a saga definition is invalid
    │   └── InvalidDefinition                  a definition file is invalid (declarative)
    ├── UnknownSagaType (also LookupError)     start() of a name that is not registered
    ├── SagaNotFound (also LookupError)        no saga with this id in the store
    ├── SagaStateError                         an admin action not allowed in the saga's status
    │   └── DefinitionMissing                  ... because its definition is not loaded (admin)
    ├── SagaBusy                               another worker holds the saga's lease
    ├── PayloadTooLarge (also ValueError)      saga data over the configured size limit
    ├── LeaseLost                              a fenced effect found the lease gone (stores.postgres.fenced)
    ├── DataEncodingError (also TypeError,     a value JSON cannot hold faithfully (NaN, a set),
    │   ValueError)                            or stored data that does not fit a model; names the path
    ├── StoreError                             the store cannot be opened or used
    │   └── NotASagaStore                      the file or database is not a sagakit store
    ├── TransportError                         the broker cannot be reached or used (transports)
    │   └── _NoProducerIds                     a Kafka broker grants no idempotent producer (transports.kafka)
    ├── MessageMappingError (also ValueError,  a command, event or state cannot be built from the
    │   NonRetryableError)                     data at hand (_messages)
    ├── EnvelopeError (also ValueError)        bytes that are not a sagakit envelope (_messages)
    ├── CorrelationError (also ValueError)     a correlation extractor failed (_messages)
    ├── GraphvizError (also RuntimeError)      Graphviz could not draw a graph (declarative)
    │   └── GraphvizNotFound (also FileNotFoundError)
    ├── GeneratedFileEdited (also FileExistsError)  generate would overwrite an edited file (declarative)
    ├── DefinitionsNotLoaded                   the dashboard has no definitions to act with (admin)
    ├── InvalidParameter (also ValueError)     a bad query parameter of the HTTP API (admin)
    │   └── AmbiguousSagaId                    an id prefix that several sagas' ids start with (admin)
    └── AccessDenied                           a request without the dashboard's token (admin)

    NonRetryableError (an Exception raised by step code: skip remaining retries)

A test (``tests/test_boundaries.py``) checks that this tree names every
subclass of ``SagaError`` in the package.
"""

from __future__ import annotations

__all__ = [
    "DataEncodingError",
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


class DataEncodingError(SagaError, TypeError, ValueError):
    """A value that JSON cannot hold faithfully, or stored data that cannot be read as the model asked for.

    The message names the path of the value (``data.items[3].price``) and why.
    """


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
