"""NATS JetStream transport (``nats://host:4222``; needs ``pip install 'sagakit[nats]'``).

- One stream per prefix (file storage, interest retention) holds the
  subjects ``<prefix>.<destination>``: by default the prefix upper-cased
  (``SAGAKIT`` for the default prefix ``sagakit``, ``APP1`` for ``app1``), so
  applications with different prefixes share a server without sharing a
  stream; a stream that already holds exactly ``<prefix>.>`` is used as it
  is. A stream or consumer that belongs to another prefix is refused with an
  error saying what to set. A message stays in the stream until every
  consumer group whose subscription covers it has acknowledged it.
- A group is a durable push consumer per (group, destination) with a deliver
  group, so the members of a group compete for its messages and it survives
  restarts of both the clients and the server. A new group starts with the
  messages published after it was created.
- Acknowledged when the handler returned; a handler that raises gets a
  delayed ``NAK`` (back-off doubling per attempt), a consumer that vanished
  gets its messages again after ``ack_timeout``. Long handlers send progress
  acks so they keep their message.
- The broker drops a repeated publish of the same message id within the
  stream's duplicate window (``Nats-Msg-Id``).
- After ``max_deliveries`` the message goes to the dead-letter destination,
  with the reason in its headers, and is acknowledged.

URL options (query string): ``stream``, ``prefix``, ``max_deliveries``,
``redelivery_delay``, ``ack_timeout``, ``concurrency``, ``dead_letter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlunsplit

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js import api
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"the NATS transport needs nats-py: pip install 'sagakit[nats]' ({e})") from e

from .._transport import Delivery, Handler, TransportError
from . import _base
from ._base import DEAD_LETTER_GROUP

__all__ = ["DEAD_LETTER_GROUP", "NatsTransport", "stream_for", "subject_for"]

log = logging.getLogger("sagakit.transport.nats")

_MSG_ID = "Nats-Msg-Id"
_OPTIONS = {
    "stream": str,
    "prefix": str,
    "dead_letter": str,
    "max_deliveries": int,
    "concurrency": int,
    "redelivery_delay": float,
    "ack_timeout": float,
}


def subject_for(prefix: str, destination: str) -> str:
    """The subject of *destination*: its dot-separated words percent-encoded, so no wildcard can appear.

    Raises:
        TransportError: the destination is empty.
    """
    # quote() keeps dots: escaped here, for the one-token form of a destination with empty words.
    return prefix + "." + _base.encode_words(destination, lambda w: quote(w, safe="-_").replace(".", "%2E"))


def stream_for(prefix: str) -> str:
    """The default stream of *prefix*: the prefix upper-cased, characters a stream name cannot hold as ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", prefix).upper()


def _check_prefix(prefix: str) -> str:
    words = prefix.split(".")
    if not all(words) or any(w in ("*", ">") or re.search(r"\s", w) for w in words):
        raise TransportError(
            f"NATS prefix {prefix!r} is not a subject prefix: use dot-separated words "
            "without spaces, '*' or '>' (e.g. 'app1' or 'shop.orders')"
        )
    return prefix


def _covers(pattern: str, subjects: str) -> bool:
    """Whether a stream subject *pattern* takes every subject of *subjects* (a ``<prefix>.>`` pattern)."""
    return pattern in (">", subjects) or (pattern.endswith(".>") and subjects.startswith(pattern[:-1]))


def _consumer_name(group: str, destination: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", f"{group}__{destination.rsplit('.', 1)[-1]}")[:48]
    digest = hashlib.sha256(f"{group}\0{destination}".encode()).hexdigest()[:16]
    return f"{readable}_{digest}"


class NatsTransport:
    """A Transport on NATS JetStream.

    Args:
        url: ``nats://[user:pass@]host:port`` (several servers: comma-separated).
        stream: the JetStream stream that holds the prefix's subjects (created if missing);
            default: the stream that holds exactly ``<prefix>.>``, else ``stream_for(prefix)``.
        prefix: the first subject token(s) of every destination; one per application on a server.
        max_deliveries: failed deliveries before a message is dead-lettered.
        redelivery_delay: delay before the first redelivery of a failed message; doubles per attempt.
        ack_timeout: seconds an unacknowledged message stays with a silent consumer.
        concurrency: handlers running at once per destination subscribed.
        dead_letter: the destination of dead letters.
        close_grace: seconds ``close`` waits for handlers in progress before cancelling them.
        connect_timeout: seconds ``start`` keeps trying to connect.
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        stream: str | None = None,
        prefix: str = "sagakit",
        max_deliveries: int = 5,
        redelivery_delay: float = 0.2,
        ack_timeout: float = 30.0,
        concurrency: int = 16,
        dead_letter: str = "sagakit.dead_letter",
        close_grace: float = 10.0,
        connect_timeout: float = 30.0,
        publish_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.prefix = _check_prefix(prefix)
        self.stream = stream or stream_for(prefix)
        self._stream_given = stream is not None
        self.max_deliveries = max_deliveries
        self.redelivery_delay = redelivery_delay
        self.ack_timeout = ack_timeout
        self.concurrency = concurrency
        self.dead_letter = dead_letter
        self.close_grace = close_grace
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self._nc: Any = None
        self._js: Any = None
        self._subs: list[Any] = []
        self._handling: set[asyncio.Task[None]] = set()
        self._dead_letter_ready = False
        self._subjects: dict[str, str] = {}  # destination -> subject, for publishing

    @classmethod
    def from_url(cls, url: str) -> NatsTransport:
        parts, opts, _ = _base.url_options(url, _OPTIONS, strict="NATS")
        return cls(urlunsplit((parts.scheme, parts.netloc, "", "", "")), **opts)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._nc is not None:
            return
        # nats-py retries an unreachable server on its own, forever with these reconnect
        # settings: each attempt is bounded here so connect_timeout can take effect.
        self._nc = await _base.connect_with_retries(
            lambda: asyncio.wait_for(self._connect(), 5.0),
            broker="NATS",
            where=self.url,
            log=log,
            timeout=self.connect_timeout,
        )
        self._js = self._nc.jetstream(timeout=self.publish_timeout)
        try:
            await self._ensure_stream()
        except Exception:
            await self.close()
            raise

    async def _connect(self) -> Any:
        return await nats.connect(
            self.url.split(","),
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )

    async def close(self) -> None:
        nc = self._nc
        if nc is None:
            return
        for sub in self._subs:  # no new deliveries; handlers in progress may still publish and ack
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        await _base.drain(self._handling, self.close_grace)  # a cancelled handler naks: another member gets it now
        self._nc = self._js = None
        self._dead_letter_ready = False
        with contextlib.suppress(Exception):
            await nc.close()

    async def _on_error(self, e: Exception) -> None:
        log.debug("NATS: %s", e)

    async def _on_disconnected(self) -> None:
        if self._nc is not None and not self._nc.is_closed:  # not our own close()
            log.warning("NATS: disconnected from %s; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        log.warning("NATS: reconnected to %s", self.url)

    async def _ensure_stream(self) -> None:
        """Find or create the prefix's stream; refuse one that belongs to another prefix."""
        subjects = f"{self.prefix}.>"
        try:
            info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            info = await self._create_stream(subjects)
            if info is None:
                return
        held = list(info.config.subjects or [])
        if not any(_covers(p, subjects) for p in held):
            fix = (
                "set ?stream= to a stream of this application's own"
                if self._stream_given
                else f"prefix {self.prefix!r} and that stream's prefix map to one stream name: set ?stream= "
                "to a stream name of this application's own, or choose another prefix"
            )
            raise TransportError(
                f"NATS stream {self.stream!r} holds the subjects {held}, not {subjects!r} of prefix "
                f"{self.prefix!r}: it belongs to another application; {fix}"
            )

    async def _create_stream(self, subjects: str) -> Any:
        """Create the stream (None), or return the info of the one that holds *subjects* already."""
        try:
            await self._js.add_stream(
                api.StreamConfig(
                    name=self.stream,
                    subjects=[subjects],
                    retention=api.RetentionPolicy.INTEREST,
                    storage=api.StorageType.FILE,
                    duplicate_window=120.0,
                    max_age=7 * 24 * 3600.0,
                )
            )
            return None
        except nats.js.errors.BadRequestError as e:
            refused = e
        with contextlib.suppress(nats.js.errors.NotFoundError):
            return await self._js.stream_info(self.stream)  # created concurrently by another member
        # The subjects overlap another stream's: this prefix's, under another name, or another application's.
        owner = None
        with contextlib.suppress(Exception):
            owner = await self._js.find_stream_name_by_subject(subjects)
        if owner is not None:
            info = await self._js.stream_info(owner)
            if not self._stream_given and list(info.config.subjects or []) == [subjects]:
                log.info("NATS: prefix %r uses the stream %r, which holds its subjects", self.prefix, owner)
                self.stream = owner
                return info
            raise TransportError(
                f"cannot create NATS stream {self.stream!r} for the subjects {subjects!r} of prefix "
                f"{self.prefix!r}: stream {owner!r} holds {list(info.config.subjects or [])}, which overlap them. "
                f"Set ?stream={owner} if that stream is this application's; otherwise choose a prefix that "
                "no other application's prefix starts with"
            ) from refused
        raise TransportError(
            f"cannot create NATS stream {self.stream!r} for the subjects {subjects!r}: {refused}"
        ) from refused

    # ------------------------------------------------------------ publishing

    async def publish(
        self, destination: str, body: bytes, *, message_id: str, headers: dict[str, str] | None = None
    ) -> None:
        subject = self._subjects.get(destination)
        if subject is None:
            if len(self._subjects) >= 4096:
                self._subjects.clear()
            subject = self._subjects[destination] = subject_for(self.prefix, destination)
        await self._publish(subject, body, message_id, headers or {}, message_id)

    async def _publish(self, subject: str, body: bytes, mid: str, headers: dict[str, str], dedup_id: str) -> None:
        if self._js is None:
            raise TransportError("NATS transport is not started")
        if not self._nc.is_connected:
            raise TransportError(f"NATS at {self.url} is unreachable (reconnecting)")
        hdrs = {**headers, _base.MESSAGE_ID_HEADER: mid, _MSG_ID: dedup_id}
        try:
            await self._js.publish(subject, body, headers=hdrs, timeout=self.publish_timeout)
        except Exception as e:
            raise TransportError(f"NATS did not accept the message for {subject}: {type(e).__name__}: {e}") from e

    # ------------------------------------------------------------ consuming

    async def subscribe(self, destinations: Sequence[str], group: str, handler: Handler) -> None:
        if self._js is None:
            raise TransportError("NATS transport is not started")
        try:
            await self._ensure_dead_letter_group()
            for destination in destinations:
                await self._subscribe(destination, group, handler)
        except TransportError:
            raise
        except Exception as e:
            raise TransportError(f"cannot subscribe {group!r} on NATS: {type(e).__name__}: {e}") from e

    async def _ensure_consumer(self, destination: str, group: str) -> tuple[str, Any]:
        name = _consumer_name(group, destination)
        try:
            info = await self._js.consumer_info(self.stream, name)
        except nats.js.errors.NotFoundError:
            config = api.ConsumerConfig(
                durable_name=name,
                description=f"sagakit group {group!r} on {destination!r}",
                # The same subject whoever creates the consumer: members that create it at once
                # (each having found none) then agree, where each one's own inbox would leave all
                # but the last creator bound to a subject that no longer receives anything.
                deliver_subject=f"_INBOX.sagakit.{self.stream}.{name}",
                deliver_group=name,
                deliver_policy=api.DeliverPolicy.NEW,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self.ack_timeout,
                max_deliver=-1,  # dead-lettering is ours, with the reason
                max_ack_pending=max(1000, self.concurrency * 4),
                filter_subject=subject_for(self.prefix, destination),
            )
            try:
                info = await self._js.add_consumer(self.stream, config)
            except nats.js.errors.BadRequestError:  # another member created it first
                info = await self._js.consumer_info(self.stream, name)
        expected = subject_for(self.prefix, destination)
        if info.config.filter_subject != expected:
            raise TransportError(
                f"NATS consumer {name!r} of stream {self.stream!r} reads {info.config.filter_subject!r}, "
                f"not {expected!r}: another prefix uses this stream; give each prefix a stream of its own "
                f"(?stream=, default {stream_for(self.prefix)!r} for prefix {self.prefix!r})"
            )
        return name, info.config

    async def _ensure_dead_letter_group(self) -> None:
        # Interest retention keeps a message only for existing consumers: give dead letters one.
        if not self._dead_letter_ready:
            await self._ensure_consumer(self.dead_letter, DEAD_LETTER_GROUP)
            self._dead_letter_ready = True

    async def _subscribe(self, destination: str, group: str, handler: Handler) -> None:
        name, config = await self._ensure_consumer(destination, group)
        slots = asyncio.Semaphore(self.concurrency)

        async def on_message(msg: Any) -> None:
            await slots.acquire()
            task = asyncio.create_task(self._handle(msg, destination, handler))
            self._handling.add(task)
            task.add_done_callback(done)

        def done(task: asyncio.Task[None]) -> None:
            self._handling.discard(task)
            slots.release()

        sub = await self._js.subscribe_bind(
            stream=self.stream, config=config, consumer=name, cb=on_message, manual_ack=True
        )
        self._subs.append(sub)

    async def _handle(self, msg: Any, destination: str, handler: Handler) -> None:
        headers = dict(msg.headers or {})
        mid = headers.pop(_base.MESSAGE_ID_HEADER, None) or headers.get(_MSG_ID, "")
        headers.pop(_MSG_ID, None)
        attempt = msg.metadata.num_delivered
        delivery = Delivery(destination, msg.data, mid, attempt, headers)
        if attempt > self.max_deliveries:  # its consumers kept vanishing while handling it
            await self._give_up(msg, delivery, _base.unacknowledged_reason(attempt))
            return
        beat = _base.Heartbeat(self.ack_timeout / 3, msg.in_progress)
        try:
            await _base.call_handler(handler, delivery, self.redelivery_delay, log)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception as e:
            if attempt >= self.max_deliveries:
                await self._give_up(msg, delivery, _base.failed_reason(attempt, e))
            else:
                log.info("NATS: handling %s failed (delivery %d): %s", mid, attempt, e)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=_base.backoff_delay(self.redelivery_delay, attempt))
        else:
            with contextlib.suppress(Exception):  # a lost ack means one more delivery, no loss
                await msg.ack()
        finally:
            beat.cancel()

    async def _give_up(self, msg: Any, delivery: Delivery, reason: str) -> None:
        log.warning("NATS: message %s on %s dead-lettered: %s", delivery.message_id, delivery.destination, reason)
        try:
            await self._publish(
                subject_for(self.prefix, self.dead_letter),
                delivery.body,
                delivery.message_id,
                _base.dead_letter_headers(delivery, reason),
                f"{delivery.message_id}:dead-letter",
            )
        except TransportError as e:
            log.warning("NATS: cannot dead-letter %s yet: %s", delivery.message_id, e)
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.redelivery_delay)
            return
        with contextlib.suppress(Exception):
            await msg.ack()
