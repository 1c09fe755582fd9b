"""A fake participant: answers a saga's commands with the replies, failures or faults a test gives it.

It can also misbehave the way brokers and services do: answer twice (with the
same message id, or a new one), answer late, keep replies and let them go in
another order, or not answer at all.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .._messages import Envelope, Fault, message_type_name
from .._transport import Delivery
from ..transports.memory import MemoryBroker, MemoryTransport

__all__ = ["FakeParticipant", "Received"]

_REPLY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://sagakit.dev/testing-reply")
Answer = Any  # an event instance, a Fault, None (no reply), or cmd -> one of those
Duplicates = Literal["same_id", "new_id"]


@dataclass(frozen=True, slots=True)
class Received:
    """A command the participant received."""

    command: Any
    type_name: str
    saga_id: str | None
    step: str | None
    token: int | None
    message_id: str
    delivery: int  # 1 on first delivery, more on a redelivery or duplicate


class FakeParticipant:
    """Answers commands from sagas on a ``MemoryBroker``, as a test says.

    Args:
        broker: the broker the engine's ``MemoryTransport`` uses (``SagaTestEnv.broker``).
        name: the consumer group.
        duplicates: publish every reply twice, with the same message id
            (``"same_id"``: a broker redelivery) or a new one (``"new_id"``:
            the service answered twice); None answers once.
        delay: seconds (of the loop's clock) before each reply goes out.
        reverse: keep the replies of commands that arrive together (within
            *delay*, or the same moment) and send them in reverse order.

    Say what to answer with ``reply`` (an event, or ``cmd -> event``),
    ``fault`` (a ``Fault``: the step fails at once) and ``ignore`` (no reply).
    Configure every command type before ``start()``: the participant
    subscribes to those (by their wire names) when it starts.
    """

    def __init__(
        self,
        broker: MemoryBroker,
        *,
        name: str = "participant",
        clock: Callable[[], float] | None = None,
        duplicates: Duplicates | None = None,
        delay: float = 0.0,
        reverse: bool = False,
    ) -> None:
        if duplicates not in (None, "same_id", "new_id"):
            raise ValueError(f"duplicates must be None, 'same_id' or 'new_id', got {duplicates!r}")
        if not delay >= 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        self.broker = broker
        self.name = name
        self.clock = clock
        self.duplicates = duplicates
        self.delay = delay
        self.reverse = reverse
        self.received: list[Received] = []
        self.replies_sent = 0
        self._answers: dict[str, tuple[type, Answer]] = {}
        self._transport = MemoryTransport(broker, concurrency=1)
        self._held: list[tuple[Envelope, Any]] = []
        self._flush: asyncio.TimerHandle | None = None
        self._ids = itertools.count(1)
        self._started = False
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ configuring

    def reply(self, command: type, answer: Answer) -> FakeParticipant:
        """Answer *command* with *answer*: an event instance, ``None`` (no reply), or ``cmd -> event``.

        Raises:
            RuntimeError: the participant runs already and *command* is a new type.
        """
        name = message_type_name(command)
        if self._started and name not in self._answers:
            raise RuntimeError(f"{self.name}: configure {name} before start(); it subscribes to its commands then")
        self._answers[name] = (command, answer)
        return self

    def fault(
        self, command: type, message: str = "injected fault", error_type: str = "RuntimeError"
    ) -> FakeParticipant:
        """Answer *command* with a ``Fault``, as a participant whose handler raised: the step fails at once."""

        def make(cmd: Any) -> Fault:
            return Fault(error_type=error_type, message=message, command_type=message_type_name(type(cmd)))

        return self.reply(command, make)

    def ignore(self, command: type) -> FakeParticipant:
        """Receive *command* and never answer (the step's reply timeout, if any, runs out)."""
        return self.reply(command, None)

    def count(self, command: type | None = None, *, step: str | None = None) -> int:
        """How many commands (of *command*, for *step*) were received, duplicates included."""
        name = None if command is None else message_type_name(command)
        return sum(
            1 for r in self.received if (name is None or r.type_name == name) and (step is None or r.step == step)
        )

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if not self._started:
            await self._transport.start()
            await self._transport.subscribe(list(self._answers), self.name, self._on_delivery)
            self._started = True

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._transport.close()
        self._started = False

    async def __aenter__(self) -> FakeParticipant:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ answering

    async def _on_delivery(self, delivery: Delivery) -> None:
        env = Envelope.from_bytes(delivery.body)
        command_cls, answer = self._answers[delivery.destination]
        command: Any = env.unwrap(command_cls)
        seen = Received(command, env.type_name, env.saga_id, env.step, env.token, env.message_id, delivery.attempt)
        self.received.append(seen)
        if callable(answer) and not isinstance(answer, type):
            event = answer(command)
            if inspect.isawaitable(event):
                event = await event
        else:
            event = answer
        if event is None:
            return
        if self.delay == 0 and not self.reverse:
            await self._send(env, event)
            return
        self._held.append((env, event))
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(self.delay, self._release)

    def _release(self) -> None:
        self._flush = None
        held, self._held = self._held, []
        if self.reverse:
            held.reverse()
        task = asyncio.ensure_future(self._send_all(held))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_all(self, held: Sequence[tuple[Envelope, Any]]) -> None:
        for env, event in held:
            await self._send(env, event)

    async def _send(self, env: Envelope, event: Any) -> None:
        reply_id = str(uuid.uuid5(_REPLY_NAMESPACE, f"{env.message_id}:{env.token}:{self.name}"))
        ids = [reply_id]
        if self.duplicates == "same_id":
            ids.append(reply_id)
        elif self.duplicates == "new_id":
            ids.append(f"{reply_id}/{next(self._ids)}")
        now = self.clock() if self.clock is not None else asyncio.get_running_loop().time()
        for mid in ids:
            reply = env.reply(event, message_id=mid, timestamp=now)
            await self._transport.publish(
                reply.type_name, reply.to_bytes(), message_id=mid, headers={"message_id": mid}
            )
            self.replies_sent += 1
