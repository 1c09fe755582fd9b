"""The public API is the curated __all__ of sagakit; changing it is a deliberate act."""

from __future__ import annotations

import sagakit

EXPECTED = {
    # the contract of DESIGN.md
    "SagaBuilder", "SagaEngine", "RetryPolicy", "StepContext", "SagaStatus", "StepStatus", "SagaSnapshot",
    "NonRetryableError", "DefinitionError", "SagaNotFound", "send", "wait_for", "load_definition",
    # what users need beside it
    "SagaDefinition", "StepDefinition", "StepSnapshot", "HistoryEntry", "Store",
    "SagaError", "SagaBusy", "SagaStateError", "PayloadTooLarge", "StoreError", "NotASagaStore", "UnknownSagaType",
    "Observer", "BaseObserver", "LoggingObserver", "TransitionInput", "AttemptInput", "CommitInput",
    "__version__",
}  # fmt: skip


def test_all_is_pinned() -> None:
    assert set(sagakit.__all__) == EXPECTED


def test_every_exported_name_exists_and_errors_share_one_root() -> None:
    for name in sagakit.__all__:
        assert hasattr(sagakit, name), name
    for name in ("DefinitionError", "SagaNotFound", "SagaBusy", "SagaStateError", "PayloadTooLarge", "StoreError",
                 "NotASagaStore", "UnknownSagaType"):  # fmt: skip
        assert issubclass(getattr(sagakit, name), sagakit.SagaError), name
    assert issubclass(sagakit.DefinitionError, ValueError)
    assert issubclass(sagakit.SagaNotFound, LookupError)
