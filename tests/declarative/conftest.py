"""Fixtures of the declarative-format tests.

``fixtures/`` holds test-local packages: ``app_root_name.*`` provides the
modules the seed example (``fixtures/order_processing_saga.json``, a copy of
``shared/spec``) names, ``decl_fixtures.*`` the odd modules the loader's
error paths and the property tests need. It is put on ``sys.path`` for every
test here.
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sagakit.declarative import _names

FIXTURES = Path(__file__).parent / "fixtures"
SEED = FIXTURES / "order_processing_saga.json"
SCHEMA = FIXTURES / "saga_orchestrator.schema.json"
SEED_DATA: dict[str, Any] = json.loads(SEED.read_text())


@pytest.fixture(autouse=True)
def fixture_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))


@pytest.fixture(autouse=True)
def fresh_wire_names() -> Iterator[None]:
    """Wire names given by a definition (``message_names: definition``) are process-wide: undo them after each test."""
    yield
    for cls in list(_names._GIVEN.keys()):
        del _names._GIVEN[cls]
        type.__delattr__(cls, "message_name")


@pytest.fixture
def seed() -> dict[str, Any]:
    """A fresh, mutable copy of the seed example definition."""
    return copy.deepcopy(SEED_DATA)


APP_MODULES = (
    "app_root_name.application.payments.commands",
    "app_root_name.application.shipping.commands",
    "app_root_name.domain.ordering.events.order_events",
    "app_root_name.domain.ordering.sagas.order_processing_saga_state",
    "app_root_name.domain.payments.events",
    "app_root_name.domain.shipping.events",
    "app_root_name.infrastructure.persistence.ordering.repositories.order_processing_saga_state_repository",
)


@pytest.fixture
def app(fixture_packages: None) -> SimpleNamespace:
    """Every class of the test-local ``app_root_name`` package, by name."""
    found: dict[str, Any] = {}
    for name in APP_MODULES:
        module = importlib.import_module(name)
        found.update({k: v for k, v in vars(module).items() if isinstance(v, type) and v.__module__ == name})
    return SimpleNamespace(**found)
