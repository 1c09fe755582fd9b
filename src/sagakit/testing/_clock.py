"""Virtual time for tests: the running event loop's clock, skipped forward when nothing is left to do.

Every timer of the engine runs on the event loop: retry back-offs and reply
deadlines (``loop.call_later``), attempt timeouts (``asyncio.timeout``), lease
renewals and polls (``asyncio.sleep``). ``VirtualClock`` gives the loop a clock
of its own, ``time.monotonic()`` plus an offset, and the engine a wall clock
that moves with it (``SagaEngine(clock=clock.time)``). When the loop has
nothing to run and no thread work in flight, the offset jumps to the next timer
instead of sleeping: a saga that waits an hour for a retry ends at once, with
every timer before it fired in order, as in Temporal's time-skipping test
environment. While a thread works (a store write, a plain ``def`` step) time
passes at the real rate, so a timer never fires early because work was slow.

Nothing in the engine changes: the clock is installed on the loop instance
(its ``time``, its selector's ``select``, its ``run_in_executor``, and the hook
through which a store's own thread reports its calls, ``stores._thread.THREAD_WORK``)
and removed again, so production code paths pay nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import selectors
import time
import weakref
from collections.abc import Iterator
from typing import Any

from ..stores._thread import THREAD_WORK

__all__ = ["VirtualClock"]


class _SkippingSelector:
    """The loop's selector, except that an idle wait skips virtual time instead of sleeping."""

    def __init__(self, inner: selectors.BaseSelector, clock: VirtualClock) -> None:
        self._inner = inner
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        clock = self._clock
        if timeout is not None and timeout <= 0:
            return self._inner.select(0)
        if clock._may_skip() and clock._busy == 0:
            events = self._inner.select(0)
            if events or timeout is None:
                # Nothing scheduled at all: only I/O (or a thread outside the executor) can wake the loop.
                return events or self._inner.select(None)
            clock._skip(timeout)
            return []
        return self._inner.select(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


_installed: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, VirtualClock] = weakref.WeakKeyDictionary()


class VirtualClock:
    """A clock for the running event loop that skips ahead whenever the loop would wait.

    Args:
        auto_skip: skip to the next timer whenever the loop is idle (default).
            With False, time passes at the real rate except in ``advance()``.
        start: the virtual wall-clock time (seconds since the epoch) when the
            clock is installed; default: the real time then.

    Use it as an async context manager (``async with VirtualClock() as clock:``)
    or with ``install()`` and ``uninstall()``; give the engine its wall clock:
    ``SagaEngine(store, clock=clock.time)``. Only timers on the event loop are
    virtual: ``time.time()`` and ``datetime.now()`` inside a step stay real
    (read ``clock.time()`` where a step must agree with the engine).

    The loop must be a selector event loop (the default on Linux and macOS).
    Work the loop cannot see does not hold time back: an async step awaiting a
    socket lets time skip while it waits; stores and transports that work over
    sockets (PostgreSQL, brokers) are not for a skipping clock.
    """

    def __init__(self, *, auto_skip: bool = True, start: float | None = None) -> None:
        self.auto_skip = auto_skip
        self._start = start
        self._offset = 0.0  # virtual loop time minus time.monotonic()
        self._skipped = 0.0
        self._wall0 = 0.0  # virtual wall time at _mono0
        self._mono0 = 0.0
        self._busy = 0  # executor jobs in flight
        self._advancing = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._saved: dict[str, Any] = {}
        self._real_handles: list[asyncio.TimerHandle] = []

    # ------------------------------------------------------------ reading

    def time(self) -> float:
        """Virtual seconds since the epoch: the engine's ``clock``."""
        return self._wall0 + (time.monotonic() + self._offset - self._mono0)

    def monotonic(self) -> float:
        """The loop's virtual time (what ``loop.time()`` returns while installed)."""
        return time.monotonic() + self._offset

    @property
    def skipped(self) -> float:
        """Seconds skipped so far (virtual time that did not pass in reality)."""
        return self._skipped

    @property
    def installed(self) -> bool:
        return self._loop is not None

    @staticmethod
    def of(loop: asyncio.AbstractEventLoop | None = None) -> VirtualClock | None:
        """The clock installed on *loop* (default: the running loop), if any."""
        return _installed.get(loop or asyncio.get_running_loop())

    # ------------------------------------------------------------ moving

    async def advance(self, seconds: float) -> None:
        """Let *seconds* of virtual time pass now, firing every timer due meanwhile in order.

        Work a timer starts runs before time moves on to the next one. With
        ``auto_skip`` this is ``asyncio.sleep(seconds)``.

        Raises:
            ValueError: *seconds* is negative.
            RuntimeError: the clock is not installed on the running loop.
        """
        if not seconds >= 0:
            raise ValueError(f"advance() takes seconds >= 0, got {seconds!r}")
        if self._loop is not asyncio.get_running_loop():
            raise RuntimeError("this VirtualClock is not installed on the running event loop; use `async with clock:`")
        self._advancing += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self._advancing -= 1

    @contextlib.contextmanager
    def real_time(self) -> Iterator[None]:
        """Within the block, time passes at the real rate (no skipping), e.g. while a socket is awaited."""
        before = self.auto_skip
        self.auto_skip = False
        try:
            yield
        finally:
            self.auto_skip = before

    def _skip(self, seconds: float) -> None:
        self._skipped += seconds
        self._offset += seconds
        if self._real_handles:
            # Timers set before the clock was installed (a test runner's own timeouts) keep
            # their real deadlines: they move with the skip.
            moved = False
            for h in self._real_handles:
                if not h.cancelled() and getattr(h, "_scheduled", False):
                    h._when += seconds  # type: ignore[attr-defined]
                    moved = True
            if moved:
                heapq.heapify(self._loop._scheduled)  # type: ignore[union-attr]
            else:
                self._real_handles = []

    def _may_skip(self) -> bool:
        return self.auto_skip or self._advancing > 0

    # ------------------------------------------------------------ installing

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Put the clock on *loop* (default: the running loop).

        Raises:
            RuntimeError: already installed, or *loop* is not a selector event loop.
        """
        if self._loop is not None:
            raise RuntimeError("this VirtualClock is installed already")
        loop = loop or asyncio.get_running_loop()
        if loop in _installed or "time" in vars(loop):
            raise RuntimeError(f"the loop {loop!r} has a patched clock already (another VirtualClock?)")
        selector = getattr(loop, "_selector", None)
        if not isinstance(loop, asyncio.BaseEventLoop) or not isinstance(selector, selectors.BaseSelector):
            raise RuntimeError(
                f"VirtualClock needs a selector event loop (asyncio's default on Linux and macOS), got {loop!r}"
            )
        self._mono0 = time.monotonic()
        self._wall0 = time.time() if self._start is None else float(self._start)
        self._offset = 0.0
        original_run_in_executor = loop.run_in_executor

        def run_in_executor(executor: Any, func: Any, *args: Any) -> asyncio.Future[Any]:
            fut = original_run_in_executor(executor, func, *args)
            self._busy += 1
            fut.add_done_callback(self._done)
            return fut

        def thread_work(fut: asyncio.Future[Any]) -> None:  # a store's own thread (stores._thread.CallThread)
            self._busy += 1
            fut.add_done_callback(self._done)

        self._saved = {"selector": selector}
        self._real_handles = [h for h in getattr(loop, "_scheduled", ()) if not h.cancelled()]
        loop._selector = _SkippingSelector(selector, self)  # type: ignore[attr-defined]
        loop.time = self.monotonic  # type: ignore[method-assign]
        loop.run_in_executor = run_in_executor  # type: ignore[method-assign,assignment]
        setattr(loop, THREAD_WORK, thread_work)
        self._loop = loop
        _installed[loop] = self

    def uninstall(self) -> None:
        """Give the loop its real clock back; timers still scheduled keep their remaining delays."""
        loop = self._loop
        if loop is None:
            return
        self._loop = None
        _installed.pop(loop, None)
        vars(loop).pop("time", None)
        vars(loop).pop("run_in_executor", None)
        vars(loop).pop(THREAD_WORK, None)
        loop._selector = self._saved["selector"]  # type: ignore[attr-defined]
        # A timer due at virtual time T is due at real loop time T - offset (the heap keeps its order).
        for handle in getattr(loop, "_scheduled", ()):
            handle._when -= self._offset
        self._offset = 0.0
        self._real_handles = []

    def _done(self, _: object) -> None:
        self._busy -= 1

    async def __aenter__(self) -> VirtualClock:
        self.install()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.uninstall()

    def __repr__(self) -> str:
        mode = "auto-skip" if self.auto_skip else "manual"
        return f"VirtualClock({mode}, skipped={self._skipped:.3f}s, installed={self.installed})"
