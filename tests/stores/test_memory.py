"""The store contract on the in-memory store."""

from __future__ import annotations

import pytest

from sagakit._store import Store
from sagakit.stores.memory import MemoryStore

from .contract import StoreContract, StoreFactory


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def make_store(self) -> StoreFactory:
        shared = MemoryStore()  # "the same database" is the same object

        def make() -> Store:
            return shared

        return make
