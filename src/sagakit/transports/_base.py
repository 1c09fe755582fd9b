"""Helpers the broker transports share: URL options, back-off, handler retries, dead letters, names.

Nothing here imports a broker's client library: each transport imports its
own, in its own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Generic, TypeVar
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

from .._transport import Delivery, Handler, TransportError

_T = TypeVar("_T")

DEAD_LETTER_GROUP = "dead-letters"  # the group that keeps dead letters until someone reads them
MESSAGE_ID_HEADER = "x-sagakit-message-id"  # the message id, where the broker has no field for it


# ------------------------------------------------------------ URLs and names


def url_options(
    url: str, options: Mapping[str, Callable[[str], Any]], *, strict: str | None = None
) -> tuple[SplitResult, dict[str, Any], str]:
    """Split *url* into its parts, sagakit's *options* (converted) and the query left for the client library.

    Args:
        strict: the broker's name, where an option not in *options* is an error instead of the client's.

    Raises:
        TransportError: *strict* and an unknown option.
    """
    parts = urlsplit(url)
    opts: dict[str, Any] = {}
    rest = []
    for key, value in parse_qsl(parts.query):
        if key in options:
            opts[key] = options[key](value)
        elif strict is not None:
            raise TransportError(f"unknown option {key!r} in {strict} URL {url!r}: use one of {sorted(options)}")
        else:
            rest.append((key, value))
    return parts, opts, urlencode(rest)


def safe_url(url: str, default_port: int) -> str:
    """*url* without its credentials and query, for logs and errors."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}:{parts.port or default_port}{parts.path}"


def check_destination(destination: str) -> str:
    """*destination*, when it is a valid name.

    Raises:
        TransportError: the destination is empty.
    """
    if not destination:
        raise TransportError("a destination name must not be empty")
    return destination


def encode_words(destination: str, encode: Callable[[str], str]) -> str:
    """*destination* with each dot-separated word encoded by *encode*, so no broker wildcard can appear.

    Empty words (leading, trailing or doubled dots) are not valid words: the
    whole destination is then encoded as one.

    Raises:
        TransportError: the destination is empty.
    """
    words = check_destination(destination).split(".")
    if all(words):
        return ".".join(encode(w) for w in words)
    return encode(destination)


def fit_name(name: str, limit: int, sep: str) -> str:
    """*name*, or when longer than *limit* bytes its start, *sep* and a digest of the whole (*limit* bytes)."""
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:24]
    return name[: limit - len(sep) - len(digest)] + sep + digest


# ------------------------------------------------------------ back-off


class Backoff:
    """An exponential back-off: *first* seconds, doubled per wait up to *cap*."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.delay = first

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)

    def reset(self) -> None:
        self.delay = self.first


def backoff_delay(first: float, attempt: int) -> float:
    """The wait before redelivering a message whose delivery *attempt* failed: *first*, doubling per attempt."""
    return first * 2.0 ** (attempt - 1)


async def connect_with_retries(
    connect: Callable[[], Awaitable[_T]],
    *,
    broker: str,
    where: str,
    log: logging.Logger,
    timeout: float | None,
    errors: tuple[type[Exception], ...] = (Exception,),
    what: str = "",
) -> _T:
    """Await ``connect()`` until it succeeds, retrying its *errors* with back-off for *timeout* seconds.

    A TransportError from *connect* is final. *timeout* None: retry forever.

    Raises:
        TransportError: still failing after *timeout* seconds (the last error chained).
    """
    loop = asyncio.get_running_loop()
    give_up = None if timeout is None else loop.time() + timeout
    backoff = Backoff()
    while True:
        try:
            return await connect()
        except TransportError:
            raise
        except errors as e:
            if give_up is not None and loop.time() + backoff.delay > give_up:
                who = f" {what}" if what else ""
                raise TransportError(f"cannot connect{who} to {broker} at {where}: {e}") from e
            log.warning("%s at %s unreachable (%s); retrying in %.1fs", broker, where, e, backoff.delay)
            await backoff.wait()


# ------------------------------------------------------------ handling


async def call_handler(handler: Handler, delivery: Delivery, delay: float, log: logging.Logger) -> None:
    """Run *handler*; while it fails with TransportError (its own publish hit a broker outage), retry it in place.

    Such a failure says nothing about the message, so it does not count
    towards ``max_deliveries``: the message is neither redelivered nor dead-lettered for it.
    """
    backoff = Backoff(delay)
    while True:
        try:
            await handler(delivery)
            return
        except TransportError as e:
            log.warning("handling %s: %s; retrying in %.1fs", delivery.message_id, e, backoff.delay)
            await backoff.wait()


class Heartbeat:
    """Calls ``beat()`` every *interval* seconds until cancelled (its errors ignored): a handler's progress signal.

    A timer rather than a task per message: most handlers are done long before
    the first beat, and a timer costs less to set and cancel.
    """

    __slots__ = ("_beat", "_handle", "_interval", "_loop", "_task")

    def __init__(self, interval: float, beat: Callable[[], Awaitable[Any]]) -> None:
        self._loop = asyncio.get_running_loop()
        self._interval = interval
        self._beat = beat
        self._task: asyncio.Task[None] | None = None
        self._handle = self._loop.call_later(interval, self._fire)

    def _fire(self) -> None:
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._send())
        self._handle = self._loop.call_later(self._interval, self._fire)

    async def _send(self) -> None:
        with contextlib.suppress(Exception):  # a lost beat costs at most a redelivery, which the inbox absorbs
            await self._beat()

    def cancel(self) -> None:
        self._handle.cancel()
        if self._task is not None:
            self._task.cancel()


class Grouped(Generic[_T]):
    """Hands items to ``send(items)`` in groups: one call at a time, for every item added while the last one ran.

    Like a group commit: acknowledgements of messages handled at about the same
    time go to the broker in one command instead of one each.
    """

    __slots__ = ("_done", "_items", "_running", "_send")

    def __init__(self, send: Callable[[list[_T]], Awaitable[None]]) -> None:
        self._send = send
        self._items: list[_T] = []
        self._done: asyncio.Future[None] | None = None
        self._running: asyncio.Task[None] | None = None

    async def add(self, item: _T) -> None:
        """Wait until the call that takes *item* has returned (raising what it raised)."""
        loop = asyncio.get_running_loop()
        self._items.append(item)
        if self._done is None:
            self._done = loop.create_future()
        done = self._done
        if self._running is None:
            self._running = loop.create_task(self._run())
        await asyncio.shield(done)  # a waiter cancelled leaves the others waiting

    async def _run(self) -> None:
        try:
            while self._items:
                items, done = self._items, self._done
                self._items, self._done = [], None
                assert done is not None
                try:
                    await self._send(items)
                except BaseException as e:
                    done.set_exception(e)
                    done.exception()  # retrieved: each waiter raises it
                    if not isinstance(e, Exception):
                        raise
                else:
                    done.set_result(None)
        finally:
            self._running = None


async def drain(tasks: Collection[asyncio.Task[Any]], grace: float) -> None:
    """Wait up to *grace* seconds for the handlers in *tasks* to finish, then cancel the late ones."""
    if tasks:
        _, late = await asyncio.wait(set(tasks), timeout=grace)
        for t in late:
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)


def failed_reason(attempt: int, error: BaseException) -> str:
    """The dead-letter reason of a message whose delivery *attempt* raised *error*."""
    return f"delivery {attempt} failed: {type(error).__name__}: {error}"


def unacknowledged_reason(attempt: int) -> str:
    """The dead-letter reason of a message whose consumers kept vanishing while handling it."""
    return f"delivered {attempt} times without being acknowledged"


def dead_letter_headers(delivery: Delivery, reason: str) -> dict[str, str]:
    """The headers of *delivery*'s dead letter: its own plus why, from where and after how many deliveries."""
    return {
        **delivery.headers,
        "x-sagakit-reason": reason,
        "x-sagakit-destination": delivery.destination,
        "x-sagakit-deliveries": str(delivery.attempt),
    }
