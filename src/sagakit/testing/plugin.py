"""The pytest plugin of sagakit.testing (registered through the ``pytest11`` entry point).

Fixtures, all prefixed ``saga_``:

- ``saga_env``: a ``SagaTestEnv`` entered on the test's event loop (virtual
  clock installed, skipping idle time); its store is memory, or SQLite with
  ``--saga-store=sqlite`` or a ``saga_store_kind`` fixture of your own.
- ``saga_clock``: its ``VirtualClock``.
- ``saga_engine``: a running engine of ``saga_env``; register definitions on it.

The async fixtures need pytest-asyncio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .._engine import SagaEngine
from ._clock import VirtualClock
from ._env import SagaTestEnv

_KINDS = ("memory", "sqlite")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sagakit", "sagakit.testing")
    group.addoption(
        "--saga-store",
        choices=_KINDS,
        default=None,
        help="store of the saga_env and saga_engine fixtures: memory (default) or sqlite (a file per test)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "saga_store(kind): the store of saga_env for this test: memory or sqlite")


@pytest.fixture
def saga_store_kind(request: pytest.FixtureRequest) -> str:
    """The store kind of ``saga_env``: the ``saga_store`` marker, else ``--saga-store``, else memory."""
    marker = request.node.get_closest_marker("saga_store")
    if marker is not None:
        kind = str(marker.args[0]) if marker.args else "memory"
        if kind not in _KINDS:
            raise pytest.UsageError(f"@pytest.mark.saga_store takes one of {', '.join(_KINDS)}, got {kind!r}")
        return kind
    return str(request.config.getoption("--saga-store", None) or "memory")


def _async_fixture(fn: Any) -> Any:
    """An async fixture through pytest-asyncio; without it, a fixture that says it is needed."""
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - exercised without pytest-asyncio only
        pass
    else:
        return pytest_asyncio.fixture(fn)

    @pytest.fixture(name=fn.__name__)
    def unavailable() -> None:
        raise pytest.UsageError(f"the {fn.__name__} fixture of sagakit.testing needs pytest-asyncio")

    return unavailable


@_async_fixture
async def saga_env(saga_store_kind: str, tmp_path: Path) -> AsyncIterator[SagaTestEnv]:
    """A ``SagaTestEnv`` on the test's loop: virtual time, a store, a memory broker."""
    async with SagaTestEnv(saga_store_kind, directory=tmp_path) as env:
        yield env


@_async_fixture
async def saga_clock(saga_env: SagaTestEnv) -> VirtualClock:
    """The virtual clock of ``saga_env`` (``await saga_clock.advance(3600)``)."""
    return saga_env.clock


@_async_fixture
async def saga_engine(saga_env: SagaTestEnv) -> SagaEngine:
    """A running engine on ``saga_env`` with no definition yet: ``saga_engine.register(definition)``."""
    return await saga_env.start_engine()
