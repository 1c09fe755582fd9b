"""The sagakit.testing fixtures for these tests, whether or not the installed package's pytest plugin is loaded."""

from __future__ import annotations

import pytest

from sagakit.testing.plugin import saga_clock, saga_engine, saga_env, saga_store_kind

__all__ = ["saga_clock", "saga_engine", "saga_env", "saga_store_kind"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "saga_store(kind): the store of saga_env for this test: memory or sqlite")
