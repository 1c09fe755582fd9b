"""The public API is the curated __all__ of sagakit; changing it is a deliberate act."""

from __future__ import annotations

import types

import sagakit

EXPECTED = {
    # the contract of DESIGN.md
    "SagaBuilder", "SagaEngine", "RetryPolicy", "StepContext", "SagaStatus", "StepStatus", "SagaSnapshot",
    "NonRetryableError", "DefinitionError", "SagaNotFound", "send", "wait_for", "load_definition", "message_name",
    # what users need beside it
    "SagaDefinition", "StepDefinition", "StepSnapshot", "ItemSnapshot", "HistoryEntry", "Store",
    "SagaError", "SagaBusy", "SagaStateError", "PayloadTooLarge", "StoreError", "NotASagaStore", "UnknownSagaType",
    "LeaseLost", "SagaClient", "DataEncodingError", "child",
    "Observer", "BaseObserver", "LoggingObserver", "TransitionInput", "AttemptInput", "CommitInput",
    "Tracer", "TraceScope", "AttemptStart", "MessageInput",
    "Resource", "ResourceUsage",
    "choreography", "Choreography",
    "__version__",
}  # fmt: skip


def test_all_is_pinned() -> None:
    assert set(sagakit.__all__) == EXPECTED


def test_all_is_exactly_the_public_names_of_the_package() -> None:
    """Nothing leaks (an ``os`` or ``Any`` imported for the package's own use), nothing public is left out."""
    language = {"annotations", "TYPE_CHECKING"}  # `from __future__ import annotations`, the typing guard
    public = {
        name
        for name, value in vars(sagakit).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name not in language
    }
    assert public == set(sagakit.__all__) - {"__version__"}


def test_every_exported_name_exists_and_errors_share_one_root() -> None:
    for name in sagakit.__all__:
        assert hasattr(sagakit, name), name
    for name in ("DefinitionError", "SagaNotFound", "SagaBusy", "SagaStateError", "PayloadTooLarge", "StoreError",
                 "NotASagaStore", "UnknownSagaType"):  # fmt: skip
        assert issubclass(getattr(sagakit, name), sagakit.SagaError), name
    assert issubclass(sagakit.DefinitionError, ValueError)
    assert issubclass(sagakit.SagaNotFound, LookupError)
