"""The test environment: a virtual clock, stores and a memory broker, and engines made on them.

``SagaTestEnv`` is what the pytest fixtures hand out; ``run_to_end`` and
``settle`` wait for a saga on virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import tempfile
import uuid
from typing import Any

from .._definition import SagaDefinition
from .._engine import SagaEngine
from .._snapshot import SagaSnapshot
from .._status import StepStatus
from .._store import Store
from ..stores.memory import MemoryStore
from ..stores.sqlite import SQLiteStore
from ..transports.memory import MemoryBroker, MemoryTransport
from ._clock import VirtualClock

__all__ = ["SagaTestEnv", "needs_operator", "run_to_end", "settle"]

# Idle polls of a test engine, in virtual seconds. The engine's own events (commits,
# replies, timers) wake it at once; polls only look for work of other processes, and
# each poll is a stop for a skipping clock.
_TEST_POLL = 300.0
_TEST_LEASE = 900.0
# How long run_to_end() waits by default, in virtual seconds.
DEFAULT_TIMEOUT = 7 * 86400.0
_KINDS = ("memory", "sqlite")


class SagaTestEnv:
    """A virtual clock, a store and a memory broker for testing sagas, and engines on them.

    Args:
        store: ``"memory"`` (default) or ``"sqlite"`` (a fresh file in *directory*).
        auto_skip: skip virtual time whenever the loop is idle (see ``VirtualClock``).
        directory: where SQLite files go; default a temporary directory removed on exit.
        start: the virtual wall-clock time when the environment is entered.

    Use it as an async context manager; the clock is installed on the running
    loop until exit, and every engine it started is closed then::

        async with SagaTestEnv() as env:
            engine = await env.start_engine(definition)
            snap = await run_to_end(engine, "order", {"order_id": "o-1"})
    """

    def __init__(
        self,
        store: str = "memory",
        *,
        auto_skip: bool = True,
        directory: str | os.PathLike[str] | None = None,
        start: float | None = None,
    ) -> None:
        if store not in _KINDS:
            raise ValueError(f"store must be one of {', '.join(map(repr, _KINDS))}, got {store!r}")
        self.kind = store
        self.clock = VirtualClock(auto_skip=auto_skip, start=start)
        self.broker = MemoryBroker()
        self._directory = None if directory is None else os.fspath(directory)
        self._own_directory: str | None = None
        self._files = itertools.count(1)
        self._engines: list[SagaEngine] = []
        self._store: MemoryStore | str | None = None  # the default store: an object, or a SQLite path

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> SagaTestEnv:
        self.clock.install()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            for engine in reversed(self._engines):
                with contextlib.suppress(Exception):
                    await engine.close()
            self._engines.clear()
        finally:
            self.clock.uninstall()
            if self._own_directory is not None:
                shutil.rmtree(self._own_directory, ignore_errors=True)
                self._own_directory = None

    # ------------------------------------------------------------ stores and engines

    def new_store(self) -> MemoryStore | str:
        """A fresh, empty store of the environment's kind: a ``MemoryStore``, or a SQLite file's path.

        Pass it to ``engine(store=…)``; engines made on the same one share its sagas.
        """
        if self.kind == "memory":
            return MemoryStore()
        directory = self._directory
        if directory is None:
            if self._own_directory is None:
                self._own_directory = tempfile.mkdtemp(prefix="sagakit-test-")
            directory = self._own_directory
        return os.path.join(directory, f"sagas-{next(self._files)}-{uuid.uuid4().hex[:6]}.db")

    @property
    def store(self) -> MemoryStore | str:
        """The environment's default store (made when first used); ``engine()`` uses it."""
        if self._store is None:
            self._store = self.new_store()
        return self._store

    def open_store(self, store: MemoryStore | str | None = None) -> Store:
        """A store object on *store* (default: the environment's): the shared ``MemoryStore``, or a new
        ``SQLiteStore`` on the file, as a restarted process would open it."""
        store = self.store if store is None else store
        if isinstance(store, MemoryStore):
            return store
        return SQLiteStore(store)

    def engine(
        self,
        *definitions: SagaDefinition,
        store: MemoryStore | str | Store | None = None,
        transport: Any = None,
        **options: Any,
    ) -> SagaEngine:
        """A new (not started) engine on the environment's clock, store and broker.

        *options* go to ``SagaEngine``. With a skipping clock the engine's idle
        polls are long (they only look for other processes' work, and each one
        is a stop of the clock) unless *options* set ``poll_interval``.
        """
        if store is None or isinstance(store, MemoryStore | str):
            store = self.open_store(store)
        options.setdefault("clock", self.clock.time)
        skipping = self.clock.auto_skip
        if skipping:
            options.setdefault("poll_interval", _TEST_POLL)
            options.setdefault("lease_seconds", _TEST_LEASE)
        engine = SagaEngine(
            store,
            transport=transport if transport is not None else MemoryTransport(self.broker),
            **options,
        )
        if skipping:
            engine._request_poll = engine._wait_poll = engine._messaging.relay_poll = engine.poll_interval
        engine.register(*definitions)
        return engine

    async def start_engine(self, *definitions: SagaDefinition, **options: Any) -> SagaEngine:
        """``engine(...)``, started; it is closed when the environment exits (or by ``engine.close()``)."""
        engine = self.engine(*definitions, **options)
        await engine.run()
        self._engines.append(engine)
        return engine

    async def advance(self, seconds: float) -> None:
        """Let *seconds* of virtual time pass (``VirtualClock.advance``)."""
        await self.clock.advance(seconds)

    def participant(self, name: str = "participant", **options: Any) -> Any:
        """A ``FakeParticipant`` on the environment's broker (start it with ``async with``)."""
        from ._participant import FakeParticipant

        return FakeParticipant(self.broker, name=name, clock=self.clock.time, **options)

    @contextlib.contextmanager
    def _skipping(self) -> Any:
        """Within the block, the clock skips whenever idle (the harnesses need it)."""
        before = self.clock.auto_skip
        self.clock.auto_skip = True
        try:
            yield
        finally:
            self.clock.auto_skip = before

    def __repr__(self) -> str:
        return f"SagaTestEnv(store={self.kind!r}, clock={self.clock!r})"


# ---------------------------------------------------------------- waiting for a saga


def needs_operator(snap: SagaSnapshot) -> bool:
    """True when an unfinished saga has nothing left to run or wait for: only an operator moves it on.

    That is a step failed past a pivot, or a saga whose definition is not
    registered; a step waiting for a reply with no timeout is not counted.
    """
    if snap.status.terminal or snap.wake_at is not None:
        return False
    busy = (StepStatus.RUNNING, StepStatus.COMPENSATING)
    return not any(s.status in busy for s in snap.steps.values())


async def settle(engine: SagaEngine, saga_id: str, *, timeout: float | None = None) -> SagaSnapshot:
    """Wait until the saga is finished or waits for an operator (``needs_operator``); return it with its history.

    *timeout* is in the engine's seconds: virtual ones on a virtual clock,
    where a week (the default) passes in a moment.

    Raises:
        TimeoutError: the saga still runs after *timeout*; the message says where it stands.
        SagaNotFound: no such saga.
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # A skipping clock makes a long poll free (the engine's own events end the wait at once);
    # on real time, poll often.
    clock = VirtualClock.of(loop)
    poll = _TEST_POLL if clock is not None and clock.auto_skip else 0.05
    while True:
        snap = await engine.get(saga_id)
        if snap.status.terminal or needs_operator(snap):
            return snap
        remaining = deadline - loop.time()
        if remaining <= 0:
            steps = ", ".join(f"{n}={s.status.value}" for n, s in snap.steps.items())
            raise TimeoutError(
                f"saga {saga_id} ({snap.name}) is still {snap.status.value} after {timeout:g}s "
                f"(steps: {steps}; next wake-up: {snap.wake_at})"
            )
        fut: asyncio.Future[Any] = loop.create_future()
        waiters = engine._waiters.setdefault(saga_id, [])
        waiters.append(fut)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, min(poll, remaining))
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(fut)
            if not waiters:
                engine._waiters.pop(saga_id, None)


async def run_to_end(
    engine: SagaEngine,
    name: str,
    data: Any = None,
    *,
    timeout: float | None = None,
    **start: Any,
) -> SagaSnapshot:
    """Start saga *name* with *data* and return its final snapshot (with history).

    Returns when the saga is finished, or when it waits for an operator (a
    step failed past a pivot): ``snap.status`` tells which. *start* goes to
    ``engine.start`` (``idempotency_key=``, ``correlation_id=``, ``version=``).

    Raises:
        TimeoutError: the saga still runs after *timeout* seconds (default: a
            week, which a skipping clock passes in a moment).
    """
    saga_id = await engine.start(name, data, **start)
    return await settle(engine, saga_id, timeout=timeout)
