"""SagaClient: start, read and steer sagas from blocking code (Django and Flask views, scripts, task queues)."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from ._definition import SagaDefinition
from ._engine import SagaEngine, _start_time
from ._snapshot import SagaSnapshot
from ._status import SagaStatus
from ._store import DeadLetter, Schedule, Store

__all__ = ["SagaClient"]

T = TypeVar("T")


class SagaClient:
    """A blocking client of a saga store: start, get, list, wait, notify, the operator actions, schedules.

    Every method is a plain function that returns when the store has answered;
    no event loop is needed in the caller. The client keeps one private event
    loop on a daemon thread (started on first use, so a client made at import
    time survives a pre-forking server's fork) and runs an engine there that
    **never claims or runs sagas**, like an API process: sagas it starts are
    run by the workers (``sagakit worker``, or any running ``SagaEngine`` on
    the same store). It is safe to share between threads; calls from several
    threads run concurrently on its loop.

    Args:
        store: a store URL (``sqlite:///sagas.db``, ``postgresql://…``) or a store object.
        definitions: the saga definitions to start and act on (``start`` needs the
            definition; so do ``retry`` and ``compensate``). More with ``register``.
        lease_seconds: how long an operator action may hold a saga while it applies.

    Use it as a context manager, or call ``close()``::

        with SagaClient("sqlite:///sagas.db", [order_saga]) as client:
            saga_id = client.start("order", {"order_id": "o-1"}, idempotency_key="o-1")
            snap = client.wait(saga_id, timeout=30)
    """

    def __init__(
        self,
        store: str | Store = "sqlite:///sagas.db",
        definitions: Iterable[SagaDefinition] = (),
        *,
        lease_seconds: float = 30.0,
    ) -> None:
        self._store_arg = store
        self._definitions = list(definitions)
        self._lease_seconds = lease_seconds
        self._lock = threading.Lock()
        self._closed = False
        self._engine = self._new_engine()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._opened: asyncio.Future[None] | None = None
        self._finalizer: weakref.finalize[Any, SagaClient] | None = None

    def _new_engine(self) -> SagaEngine:
        engine = SagaEngine(self._store_arg, lease_seconds=self._lease_seconds)
        engine.register(*self._definitions)
        return engine

    @property
    def engine(self) -> SagaEngine:
        """The engine behind the client (not running: it stores and reads, it runs no steps)."""
        return self._engine

    def register(self, *definitions: SagaDefinition) -> None:
        """Register more definitions (see ``SagaEngine.register``), best before other threads use the client."""
        with self._lock:
            self._definitions.extend(definitions)
            self._engine.register(*definitions)

    # ------------------------------------------------------------ the private loop

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        """The client's loop, started on first use (and anew in a forked child)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this SagaClient is closed; make a new one")
            if self._pid != os.getpid():
                # A forked child: the parent's loop thread and connections did not come along.
                if not isinstance(self._store_arg, str):
                    raise RuntimeError(
                        "a SagaClient made from a store object cannot be used after fork(); "
                        "make it from a store URL, or make it in the child"
                    )
                self._pid = os.getpid()
                if self._finalizer is not None:
                    self._finalizer.detach()  # the parent's loop is not this process's to close
                self._loop = self._thread = self._opened = self._finalizer = None
                self._engine = self._new_engine()
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(target=_run_loop, args=(loop, ready), name="sagakit-client", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
                self._finalizer = weakref.finalize(self, _shutdown, loop, thread, self._engine)
            return self._loop

    def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run the coroutine *make* returns on the client's loop and wait for its outcome here."""
        loop = self._loop_now()
        if threading.current_thread() is self._thread:
            raise RuntimeError("SagaClient methods cannot be called from the client's own loop")
        fut = asyncio.run_coroutine_threadsafe(self._opened_then(make), loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # KeyboardInterrupt, or the caller's own timeout: stop waiting there too
            raise

    async def _opened_then(self, make: Callable[[], Awaitable[T]]) -> T:
        # The store is opened once, by the first call; concurrent first calls wait for it.
        if self._opened is None:
            self._opened = asyncio.get_running_loop().create_future()
            try:
                await self._engine.count(statuses=())
            except BaseException as e:
                self._opened.set_exception(e)
                self._opened.exception()  # retrieved: the waiting callers re-raise it
                self._opened = None
                raise
            self._opened.set_result(None)
        elif not self._opened.done():
            await asyncio.shield(self._opened)
        return await make()

    def close(self) -> None:
        """Close the store's connections and stop the client's thread. Further calls raise ``RuntimeError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            if self._pid == os.getpid():
                finalizer()
            else:
                finalizer.detach()  # a forked child that never used the client: the loop is the parent's

    def __enter__(self) -> SagaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the API

    def start(
        self,
        name: str,
        data: Any = None,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        version: int | None = None,
        at: float | datetime.datetime | None = None,
        delay: float | datetime.timedelta | None = None,
        connection: Any = None,
    ) -> str:
        """Store a new saga for the workers to run and return its id (see ``SagaEngine.start``).

        With *at* or *delay* it begins then instead of now.

        With *connection* (a ``sqlite3`` connection, or a SQLAlchemy ``Connection``
        or ``Session``, with a transaction open), the saga is written in the
        calling thread inside that transaction: it exists if and only if the
        application commits.
        """
        if connection is not None:
            engine = self._engine
            start_at = _start_time(at, delay, engine.clock) if at is not None or delay is not None else None
            write = engine._new_write(name, data, idempotency_key, correlation_id, version, start_at)
            return str(engine._store_writes_in(connection).write_in_sync(connection, write))
        return self._call(
            lambda: self._engine.start(
                name,
                data,
                idempotency_key=idempotency_key,
                correlation_id=correlation_id,
                version=version,
                at=at,
                delay=delay,
            )
        )

    def get(self, saga_id: str) -> SagaSnapshot:
        """The saga with its history. Raises ``SagaNotFound``."""
        return self._call(lambda: self._engine.get(saga_id))

    def list(
        self,
        status: SagaStatus | str | None = None,
        name: str | None = None,
        correlation_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        **filters: Any,
    ) -> builtins.list[SagaSnapshot]:
        """Sagas matching the filters, newest first, without history (the filters of ``SagaEngine.list``)."""
        return self._call(lambda: self._engine.list(status, name, correlation_id, limit, offset, **filters))

    def count(self, status: SagaStatus | str | None = None, name: str | None = None, **filters: Any) -> int:
        """How many sagas match the filters (those of ``SagaEngine.count``)."""
        return self._call(lambda: self._engine.count(status, name, **filters))

    def wait(self, saga_id: str, timeout: float | None = None) -> SagaSnapshot:
        """Block until the saga reaches a terminal status and return it.

        Raises:
            SagaNotFound: no such saga.
            TimeoutError: *timeout* seconds passed first.
        """
        return self._call(lambda: self._engine.wait(saga_id, timeout))

    def notify(self, saga_id: str, event: object, *, step: str | None = None, message_id: str | None = None) -> None:
        """Hand *event* (a pydantic model or dataclass) to a waiting step of the saga (see ``SagaEngine.notify``)."""
        self._call(lambda: self._engine.notify(saga_id, event, step=step, message_id=message_id))

    def retry(self, saga_id: str, *, reason: str = "", actor: str = "operator") -> SagaSnapshot:
        """Re-run a failed step or compensation, or a step waiting for its retry, now."""
        return self._call(lambda: self._engine.retry(saga_id, reason=reason, actor=actor))

    def skip(
        self, saga_id: str, step: str, result: Any = None, *, reason: str = "", actor: str = "operator"
    ) -> SagaSnapshot:
        """Mark a waiting or failed step SKIPPED with *result* (later steps see it) and move on."""
        return self._call(lambda: self._engine.skip(saga_id, step, result, reason=reason, actor=actor))

    def compensate(self, saga_id: str, *, reason: str = "", actor: str = "operator") -> SagaSnapshot:
        """Start compensating a pending or running saga now."""
        return self._call(lambda: self._engine.compensate(saga_id, reason=reason, actor=actor))

    def abort(self, saga_id: str, *, reason: str = "", actor: str = "operator") -> SagaSnapshot:
        """Stop the saga where it stands, without compensation."""
        return self._call(lambda: self._engine.abort(saga_id, reason=reason, actor=actor))

    def fork(self, saga_id: str, from_step: str, *, data: Any = None, reason: str = "", actor: str = "operator") -> str:
        """Start a new saga that re-runs *saga_id* from *from_step* on; returns the new id."""
        return self._call(lambda: self._engine.fork(saga_id, from_step, data=data, reason=reason, actor=actor))

    def schedule(
        self, name: str, data: Any = None, *, cron: str, key: str | None = None, version: int | None = None
    ) -> Schedule:
        """Start a saga *name* once per period of *cron* (UTC), from any running worker (``SagaEngine.schedule``)."""
        return self._call(lambda: self._engine.schedule(name, data, cron=cron, key=key, version=version))

    def unschedule(self, key: str) -> bool:
        """Stop a recurring start; False if there was none."""
        return self._call(lambda: self._engine.unschedule(key))

    def schedules(self) -> builtins.list[Schedule]:
        """Every recurring start with its next and last period, the next due first."""
        # A lambda, as in every method: the engine is looked up when the call runs (a forked child has its own).
        return self._call(lambda: self._engine.schedules())  # noqa: PLW0108

    def dead_letters(self, limit: int = 100, offset: int = 0) -> builtins.list[DeadLetter]:
        """Received messages that reached no saga, with the reason, newest first."""
        return self._call(lambda: self._engine.dead_letters(limit, offset))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"SagaClient({self._engine.store!r}, {state})"


def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()


def _shutdown(loop: asyncio.AbstractEventLoop, thread: threading.Thread, engine: SagaEngine) -> None:
    """Close the engine on the loop, then stop the loop and its thread (also at interpreter exit)."""
    if loop.is_closed():
        return
    if thread.is_alive():
        fut = asyncio.run_coroutine_threadsafe(engine.close(), loop)
        with contextlib.suppress(Exception):  # closing is best effort: the store may be gone already
            fut.result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
    if not thread.is_alive() and not loop.is_running():
        loop.close()
