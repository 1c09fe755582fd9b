"""What callers see at the package's boundaries: sagakit's own errors, and public homes for backend authors."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest

import sagakit.stores
import sagakit.transports
from sagakit import SagaBuilder, SagaEngine, SagaError, StoreError
from sagakit.stores.sqlite import SQLiteStore
from sagakit.transports import TransportError


async def test_a_sqlite_error_reaches_the_caller_as_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    b = SagaBuilder("s")
    b.step("a", lambda ctx: None)
    async with SagaEngine(f"sqlite:///{path}") as engine:
        engine.register(b.build())
        sid = await engine.start("s", {})
        await engine.wait(sid, timeout=10)
        other = sqlite3.connect(path)
        other.execute("DROP TABLE sagakit_history")  # broken behind the store's back
        other.close()
        with pytest.raises(StoreError, match="no such table") as e:
            await engine.get(sid)
    assert isinstance(e.value, SagaError)
    assert isinstance(e.value.__cause__, sqlite3.OperationalError)


async def test_publish_without_a_transport_is_a_transport_error() -> None:
    async with SagaEngine("memory://") as engine:
        with pytest.raises(TransportError, match="needs a transport"):
            await engine.publish(object())
    assert issubclass(TransportError, SagaError)


def test_backend_authors_find_the_protocols_and_records_in_public_modules() -> None:
    for name in ("Store", "Write", "SagaQuery", "DeadLetter", "OutboxMessage", "OutboxRecord", "Pruned",
                 "SagaState", "HistoryEntry", "StoreError", "NotASagaStore", "store_from_url", "WorkerInfo",
                 "Lease", "Handling"):  # fmt: skip
        assert hasattr(sagakit.stores, name), name
    for name in ("Transport", "Delivery", "Handler", "TransportError", "transport_from_url"):
        assert hasattr(sagakit.transports, name), name
    assert isinstance(SQLiteStore(":memory:"), sagakit.stores.Store)


def test_the_repositorys_examples_import_only_public_modules() -> None:
    """The examples are what users copy: every sagakit name they use comes from a public module."""
    root = Path(__file__).resolve().parent.parent / "examples"
    files = sorted(root.rglob("*.py"))
    assert files, "no examples found"
    private = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            for module in modules:
                parts = module.split(".")
                if parts[0] == "sagakit" and any(part.startswith("_") for part in parts[1:]):
                    private.append(f"{path.relative_to(root)}:{node.lineno}: {module}")
    assert not private, private
    # What they needed from private modules has a public home.
    from sagakit.participant import Envelope, EnvelopeError, message_type_name  # noqa: F401


def test_the_error_tree_in_the_docs_names_every_sagakit_error() -> None:
    import importlib
    import pkgutil

    import sagakit
    from sagakit import _errors

    for mod in pkgutil.walk_packages(sagakit.__path__, "sagakit."):
        if mod.name.startswith(("sagakit.__main__", "sagakit.testing")):
            continue
        try:
            importlib.import_module(mod.name)
        except ImportError:  # an optional client that is not installed
            continue

    def subclasses(cls: type) -> set[type]:
        out = set()
        for sub in cls.__subclasses__():
            out |= {sub} | subclasses(sub)
        return out

    doc = _errors.__doc__ or ""
    missing = sorted(
        c.__name__ for c in subclasses(SagaError) if c.__module__.startswith("sagakit") and c.__name__ not in doc
    )
    assert not missing, f"classes missing from the tree in sagakit/_errors.py: {missing}"
