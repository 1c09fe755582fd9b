"""A thread of its own for a store's blocking calls, handing each result back to the event loop.

The SQLite store's writer and reader each run on one. A call is a queue put on
the way in and one ``call_soon_threadsafe`` on the way out: about half the
cost of ``loop.run_in_executor`` with a one-thread ``ThreadPoolExecutor``,
which chains a ``concurrent.futures.Future`` to an asyncio one, and that
round trip is paid by every commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["THREAD_WORK", "CallThread"]

# The name of an optional callable on the event loop, given each call's future while the call is
# under way: sagakit.testing's VirtualClock sets it, so that time does not skip while a thread works.
THREAD_WORK = "sagakit_thread_work"

T = TypeVar("T")
_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class CallThread:
    """Runs calls one at a time, in the order given, on a thread named *name*.

    ``await thread.call(fn, *args)`` returns what *fn* returned or raises what
    it raised. A call whose caller was cancelled before it began is not run;
    one that has begun runs to its end. ``shutdown()`` runs what was given
    before it, then ends the thread. The thread is a daemon: a process that
    exits without closing its store is not kept waiting by it (what it had not
    committed is not committed, as after a crash).
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._given = 0  # calls given and not answered yet (counted on the event loop's thread)

    @property
    def idle(self) -> bool:
        """Whether every call given has been answered: the thread is using nothing of its caller's."""
        return self._given == 0

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, fut, fn, args))
        self._given += 1
        track = getattr(loop, THREAD_WORK, None)
        if track is not None:
            track(fut)
        return fut

    def _answer(self, fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        self._given -= 1
        if fut.done():  # its caller was cancelled meanwhile
            return
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)

    def _main(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            loop, fut, fn, args = item
            result: Any = None
            error: BaseException | None = None
            if not fut.cancelled():
                try:
                    result = fn(*args)
                except BaseException as e:  # handed to the caller, whatever it is
                    error = e
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for the answer
                loop.call_soon_threadsafe(self._answer, fut, result, error)
            del item, loop, fut, fn, args, result, error  # nothing kept alive while the thread waits

    def shutdown(self) -> None:
        """Run the calls already given, then end the thread (waiting for it)."""
        self._queue.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join()
