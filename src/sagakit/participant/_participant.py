"""The participant: handles commands, records them, replies (or faults)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
import traceback
import typing
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from .._messages import Envelope, Fault, MessageMappingError, message_type_name, name_uuid, to_payload
from .._store import Handling, Store, store_from_url
from .._trace_context import handling as traced
from .._transport import Delivery, Transport, transport_from_url
from ._context import MessageContext

__all__ = ["Participant", "fault_of"]

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("sagakit")
_REPLY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://sagakit.dev/reply-id")
# A fault carries the end of the handler's traceback (the innermost frames and the
# error) and the start of its message, each at most this many characters.
TRACEBACK_LIMIT = 4000
MESSAGE_LIMIT = 2000


def fault_of(error: BaseException, command_type: str) -> Fault:
    """The fault reply for a command whose handler raised *error*; message and traceback bounded.

    The traceback keeps its innermost frames (where the error was raised) and
    ends with the error's type and the start of its message.
    """
    text = _clip(str(error), MESSAGE_LIMIT)
    last = f"{type(error).__qualname__}: {_clip(text, 300)}\n"
    frames = "".join(traceback.format_tb(error.__traceback__))
    room = TRACEBACK_LIMIT - len(last) - len(_TRACEBACK_HEAD)
    if len(frames) > room:
        frames = "…(outer frames cut)…\n" + frames[-(room - 22) :]
    return Fault(
        error_type=type(error).__name__,
        message=text,
        command_type=command_type,
        traceback=_TRACEBACK_HEAD + frames + last,
    )


_TRACEBACK_HEAD = "Traceback (most recent call last):\n"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 14] + " …(truncated)"


@dataclass(frozen=True, slots=True)
class _Handler:
    command: type
    fn: Callable[..., Any]
    wants_context: bool


class _Faulted(Exception):
    """The handler raised: its transaction rolls back and a fault is replied instead."""

    def __init__(self, error: Exception, trace_headers: dict[str, str]) -> None:
        super().__init__(str(error))
        self.error = error
        self.trace_headers = trace_headers


class _RecentCommands:
    """The record of handled commands without a store: the last *remember* of them, in this process."""

    def __init__(self, remember: int) -> None:
        self.remember = remember
        self._replies: OrderedDict[tuple[str, str], str | None] = OrderedDict()

    @contextlib.asynccontextmanager
    async def handling(self, participant: str, message_id: str, at: float) -> AsyncIterator[Handling]:
        # The participant holds a lock per message id around this: no two at once.
        key = (participant, message_id)
        if key in self._replies:
            yield Handling(True, self._replies[key])
            return
        h = Handling(False)
        yield h
        self._replies[key] = h.reply
        while len(self._replies) > self.remember:
            self._replies.popitem(last=False)


def _wants_context(fn: Callable[..., Any], command: type) -> bool:
    """Whether *fn* takes ``(command, ctx)`` rather than ``(command)``.

    The context goes to a second positional parameter without a default, or
    with one when it is annotated ``MessageContext``: a closure's
    ``def answer(cmd, reply=reply)`` keeps getting the command only.

    Raises:
        TypeError: it takes neither.
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False  # a callable whose signature cannot be read: called with the command only
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = any(p.kind is p.VAR_POSITIONAL for p in params)
    required = [p for p in positional if p.default is p.empty]
    keyword_only = [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if (positional or star) and len(required) <= 2 and not keyword_only:
        if len(positional) >= 2:
            second = positional[1]
            ann = second.annotation
            if isinstance(ann, str):
                annotated = re.search(r"\bMessageContext\b", ann) is not None
            else:
                annotated = ann is MessageContext or MessageContext in typing.get_args(ann)
            return second.default is second.empty or annotated
        return star
    name = getattr(fn, "__qualname__", repr(fn))
    raise TypeError(
        f"handler {name} of {message_type_name(command)} must take the command, or the command and a "
        f"MessageContext: (cmd) or (cmd, ctx); its signature is {inspect.signature(fn)}"
    )


def _encode_reply(event: object, trace_headers: dict[str, str]) -> str:
    """A reply as recorded: its wire name, its payload and the trace headers it carries (if any)."""
    doc: dict[str, Any] = {"type_name": message_type_name(type(event)), "payload": to_payload(event)}
    if trace_headers:
        doc["headers"] = trace_headers
    return orjson.dumps(doc).decode()


class Participant:
    """Handles commands from sagas and publishes the reply events.

    Args:
        transport: a transport or its URL.
        name: the consumer group: instances with the same name share the
            commands; with a store, also the name its handled commands are
            recorded under.
        store: a store or its URL (``sqlite:///participant.db``,
            ``postgresql://…``, ``memory://``) that records each handled command
            and its reply, in the transaction the handler's own writes on
            ``ctx.connection`` go into. None keeps the last *remember* commands
            in this process only.
        remember: without a store, how many handled commands' replies to keep.
        clock: seconds since the epoch (timestamps of replies and records).
        tracer_provider: the OpenTelemetry tracer provider of the handlers' spans
            (default: the global one).
    """

    def __init__(
        self,
        transport: Transport | str,
        *,
        name: str,
        store: Store | str | None = None,
        remember: int = 100_000,
        clock: Callable[[], float] = time.time,
        tracer_provider: Any = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a participant's name must be a non-empty string, got {name!r}")
        self.transport = transport_from_url(transport) if isinstance(transport, str) else transport
        self.name = name
        self._owns_store = isinstance(store, str)
        self.store: Store | None = store_from_url(store) if isinstance(store, str) else store
        self.remember = remember
        self.clock = clock
        self.tracer_provider = tracer_provider
        self.handled = 0  # commands handled (not counting duplicates or faults)
        self.duplicates = 0  # commands answered from the record of an earlier handling
        self.faults = 0  # commands whose handler raised
        self._handlers: dict[str, _Handler] = {}
        self._recent = _RecentCommands(remember)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def handles(self, command: type, *, destination: str | None = None) -> Callable[[F], F]:
        """Register the decorated function as the handler of *command*; it returns the reply event.

        The handler takes the command, or the command and a ``MessageContext``;
        it may be a coroutine function. It returns the reply event (a success or
        failure event of the step), or None to reply nothing. An exception is
        replied as a ``Fault``.

        Raises:
            TypeError: the function takes neither ``(cmd)`` nor ``(cmd, ctx)``.
        """

        def register(fn: F) -> F:
            self._handlers[destination or message_type_name(command)] = _Handler(
                command, fn, _wants_context(fn, command)
            )
            return fn

        return register

    async def start(self) -> None:
        """Open the store (a store object passed in is opened too, and stays the caller's to close),
        connect and subscribe to the commands of the registered handlers."""
        if self.store is not None:
            await self.store.open()
        try:
            await self.transport.start()
            if self._handlers:
                await self.transport.subscribe(list(self._handlers), self.name, self._on_delivery)
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped the start is the one to see
                await self.transport.close()
                if self.store is not None and self._owns_store:
                    await self.store.close()
            raise

    async def close(self) -> None:
        await self.transport.close()
        if self.store is not None and self._owns_store:
            await self.store.close()

    async def __aenter__(self) -> Participant:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def forget(self, older_than: float, *, batch: int = 1000) -> int:
        """Forget the commands handled more than *older_than* seconds ago; returns how many.

        A command delivered again after it is forgotten is handled again: keep
        them for longer than any saga may resend a command.

        Raises:
            RuntimeError: the participant has no store.
        """
        if self.store is None:
            raise RuntimeError("forget() needs a store: Participant(..., store=URL)")
        before = self.clock() - older_than
        total = 0
        while True:
            n = await self.store.prune_handled(self.name, before, limit=batch)
            total += n
            if n < batch:
                return total

    # ------------------------------------------------------------ handling

    async def _on_delivery(self, delivery: Delivery) -> None:
        env = Envelope.from_bytes(delivery.body)
        handler = self._handlers[delivery.destination]
        try:
            command: Any = env.unwrap(handler.command)
        except MessageMappingError as e:
            await self._fault(env, e)
            return
        lock, users = self._locks.get(env.message_id) or (asyncio.Lock(), 0)
        self._locks[env.message_id] = (lock, users + 1)
        try:
            async with lock:
                reply = await self._handle(env, delivery, handler, command)
        except _Faulted as f:
            await self._fault(env, f.error, f.trace_headers)
            return
        finally:
            lock, users = self._locks[env.message_id]
            if users == 1:
                del self._locks[env.message_id]
            else:
                self._locks[env.message_id] = (lock, users - 1)
        if reply is not None:
            await self._reply(env, reply)

    async def _handle(self, env: Envelope, delivery: Delivery, handler: _Handler, command: Any) -> str | None:
        """Handle the command once, in the record's transaction; the reply to publish (encoded) or None.

        Raises:
            _Faulted: the handler raised (nothing was recorded).
            StoreError: the record failed: the command was not handled, it will be delivered again.
        """
        ledger = self.store if self.store is not None else self._recent
        handled_now = False
        async with ledger.handling(self.name, env.message_id, self.clock()) as h:
            if not h.handled:
                trace_headers: dict[str, str] = {}
                try:
                    # A span continuing the saga's trace (with OpenTelemetry installed); the
                    # reply carries its context.
                    attributes = _span_attributes(env)
                    with traced(f"{env.type_name} process", env.headers, attributes, self.tracer_provider) as th:
                        trace_headers = th
                        if handler.wants_context:
                            ctx = MessageContext.of(env, delivery_count=delivery.attempt, connection=h.connection)
                            result = handler.fn(command, ctx)
                        else:
                            result = handler.fn(command)
                        event = await result if inspect.isawaitable(result) else result
                        h.reply = None if event is None else _encode_reply(event, trace_headers)
                except Exception as e:
                    raise _Faulted(e, trace_headers) from e
                handled_now = True
        if handled_now:
            self.handled += 1
        else:
            self.duplicates += 1
        return h.reply

    async def _reply(self, env: Envelope, encoded: str) -> None:
        """Publish a reply (as recorded) to the command in *env*, with its correlation copied."""
        doc = orjson.loads(encoded)
        reply_id = name_uuid(_REPLY_NAMESPACE, f"{env.message_id}:{env.token}")
        reply = _reply_envelope(env, doc["type_name"], doc["payload"], doc.get("headers"), reply_id, self.clock())
        await self._publish(reply)

    async def _fault(self, env: Envelope, error: Exception, trace_headers: dict[str, str] | None = None) -> None:
        self.faults += 1
        fault = fault_of(error, env.type_name)
        log.warning(
            "sagakit: participant %s: handling %s (%s) failed: %s: %s; replying with a fault",
            self.name,
            env.message_id,
            env.type_name,
            fault.error_type,
            _clip(fault.message, 300),
            exc_info=error,
        )
        reply_id = name_uuid(_REPLY_NAMESPACE, f"{env.message_id}:{env.token}:fault")
        await self._publish(env.reply(fault, message_id=reply_id, timestamp=self.clock(), headers=trace_headers))

    async def _publish(self, reply: Envelope) -> None:
        await self.transport.publish(
            reply.type_name,
            reply.to_bytes(),
            message_id=reply.message_id,
            headers={"message_id": reply.message_id},
        )


def _reply_envelope(
    env: Envelope, type_name: str, payload: Any, headers: dict[str, str] | None, reply_id: str, now: float
) -> Envelope:
    """What ``env.reply(event, headers=headers)`` makes, from an event recorded as its type name and payload."""
    return Envelope(
        message_id=reply_id,
        type_name=type_name,
        timestamp=now,
        saga_id=env.saga_id,
        step=env.step,
        token=env.token,
        correlation_id=env.correlation_id,
        causation_id=env.message_id,
        headers={**env.headers, **(headers or {})},
        payload=payload,
    )


def _span_attributes(env: Envelope) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.operation.type": "process",
        "messaging.destination.name": env.type_name,
        "messaging.message.id": env.message_id,
    }
    if env.saga_id:
        attributes["sagakit.saga_id"] = env.saga_id
    if env.step:
        attributes["sagakit.step"] = env.step
    return attributes
