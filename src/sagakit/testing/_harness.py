"""What the failure, crash, idempotency and delivery harnesses share.

A harness run is one saga on a fresh store, on an engine made for it, with the
definition's step functions wrapped (to fail, hang, or run twice) and a fake
participant answering its ``send`` steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .._definition import SagaDefinition, StepDefinition, build_definition
from .._engine import SagaEngine
from .._messages import SendCommand, WaitFor, message_type_name
from .._observe import BaseObserver, TransitionInput
from .._snapshot import SagaSnapshot
from ..transports.memory import MemoryBroker, MemoryTransport
from ._env import SagaTestEnv, settle
from ._participant import FakeParticipant

__all__ = ["KILLED", "InjectedFailure", "Mode", "Run", "check_replies", "instrument", "one_run"]

Mode = Literal["fail", "hang", "twice"]
# Engines stopped by testing.kill(): dead processes are not closed.
KILLED: weakref.WeakSet[SagaEngine] = weakref.WeakSet()
Replies = Mapping[type, Any]


class InjectedFailure(Exception):
    """The error a step or compensation raises when sagakit.testing makes it fail."""


@dataclass(slots=True)
class Calls:
    """What the wrapped step functions did, in order: (step, "action" | "compensation", attempt)."""

    log: list[tuple[str, str, int]] = field(default_factory=list)


class Twice(Protocol):
    """Runs a step function twice for the idempotency check."""

    def run_sync(self, fn: Callable[..., Any], ctx: Any) -> Any: ...

    async def run_async(self, fn: Callable[..., Any], ctx: Any) -> Any: ...


class _Once:
    def run_sync(self, fn: Callable[..., Any], ctx: Any) -> Any:
        return fn(ctx)

    async def run_async(self, fn: Callable[..., Any], ctx: Any) -> Any:
        return await fn(ctx)


def _wrap(
    name: str, compensation: bool, fn: Callable[..., Any], mode: Mode | None, calls: Calls, twice: Twice
) -> Callable[..., Any]:
    """*fn* wrapped; the wrapper takes what *fn* takes: ``(ctx)``, or ``(item, ctx)`` in a for-each step."""
    direction = "compensation" if compensation else "action"
    what = f"{direction} of step {name!r}"
    if mode == "hang":

        async def hang(*args: Any) -> Any:
            calls.log.append((name, direction, args[-1].attempt))
            await asyncio.Event().wait()  # until the attempt's timeout cancels it

        return functools.update_wrapper(hang, fn)
    if inspect.iscoroutinefunction(fn):

        async def run_async(*args: Any) -> Any:
            ctx = args[-1]
            calls.log.append((name, direction, ctx.attempt))
            if mode == "fail":
                raise InjectedFailure(f"{what} failed (injected)")
            if mode == "twice":
                return await twice.run_async(functools.partial(fn, *args[:-1]), ctx)
            return await fn(*args)

        return functools.update_wrapper(run_async, fn)

    def run_sync(*args: Any) -> Any:
        ctx = args[-1]
        calls.log.append((name, direction, ctx.attempt))
        if mode == "fail":
            raise InjectedFailure(f"{what} failed (injected)")
        if mode == "twice":
            return twice.run_sync(functools.partial(fn, *args[:-1]), ctx)
        return fn(*args)

    return functools.update_wrapper(run_sync, fn)


def instrument(
    definition: SagaDefinition,
    modes: Mapping[tuple[str, bool], Mode],
    calls: Calls,
    twice: Twice | None = None,
) -> SagaDefinition:
    """*definition* with its local functions wrapped: ``modes[(step, compensation)]`` fails, hangs or doubles one."""
    doubler = twice or _Once()
    steps: list[StepDefinition] = []
    for s in definition.steps:
        action, comp = s.action, s.compensation
        if s.local:
            action = _wrap(s.name, False, action, modes.get((s.name, False)), calls, doubler)  # type: ignore[arg-type]
        if comp is not None and s.compensation_local:
            comp = _wrap(s.name, True, comp, modes.get((s.name, True)), calls, doubler)  # type: ignore[arg-type]
        steps.append(dataclasses.replace(s, action=action, compensation=comp))
    d = definition
    return build_definition(
        d.name,
        d.version,
        steps,
        deadline=d.deadline,
        max_payload_bytes=d.max_payload_bytes,
        description=d.description,
        extras=d.extras,
        triggers=d.triggers,
        state_model=d.state_model,
        completion_event=d.completion_event,
        failure_event=d.failure_event,
    )


def message_actions(definition: SagaDefinition) -> list[tuple[StepDefinition, bool, SendCommand | WaitFor]]:
    """The message actions of the definition: (step, compensation, action)."""
    found = []
    for s in definition.steps:
        for comp, action in ((False, s.action), (True, s.compensation)):
            if isinstance(action, SendCommand | WaitFor):
                found.append((s, comp, action))
    return found


def check_replies(definition: SagaDefinition, replies: Replies, events: Replies) -> None:
    """Every ``send`` that waits for a reply has one in *replies*, every ``wait_for`` an event in *events*.

    Raises:
        ValueError: naming the step and the type to add.
    """
    for s, comp, action in message_actions(definition):
        where = f"{'compensation of ' if comp else ''}step {s.name!r}"
        if isinstance(action, SendCommand):
            if action.awaits_reply and action.command not in replies:
                raise ValueError(
                    f"{where} sends {message_type_name(action.command)} and waits for a reply: give the reply "
                    f"the participant sends in replies={{{action.command.__name__}: ...}} (an event or cmd -> event)"
                )
        elif action.event not in events:
            raise ValueError(
                f"{where} waits for {message_type_name(action.event)} (wait_for): give the event to deliver in "
                f"events={{{action.event.__name__}: ...}} (an event or saga_id -> event)"
            )


class _Deliver(BaseObserver):
    """Hands the configured event to a ``wait_for`` step when it starts (or one with a fault)."""

    def __init__(self, definition: SagaDefinition, events: Replies, silent: set[tuple[str, bool]]) -> None:
        self.engine: SagaEngine | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self._waits: dict[tuple[str, bool], WaitFor] = {
            (s.name, comp): a for s, comp, a in message_actions(definition) if isinstance(a, WaitFor)
        }
        self._events = events
        self._silent = silent

    def on_transition(self, event: TransitionInput) -> None:
        for h in event.history:
            if h.kind in ("step_started", "compensation_started") and h.step is not None:
                key = (h.step, h.kind == "compensation_started")
                action = self._waits.get(key)
                if action is None or key in self._silent:
                    continue
                answer = self._events[action.event]
                task = asyncio.ensure_future(self._deliver(event.saga_id, h.step, answer))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _deliver(self, saga_id: str, step: str, answer: Any) -> None:
        assert self.engine is not None
        await asyncio.sleep(0)
        ev = answer(saga_id) if callable(answer) and not isinstance(answer, type) else answer
        with contextlib.suppress(Exception):  # a saga that moved on refuses it: that is its business
            await self.engine.notify(saga_id, ev, step=step)


@dataclass(slots=True)
class Run:
    """One harness run: the engine, its participant, and what the wrapped functions did."""

    env: SagaTestEnv
    engine: SagaEngine
    participant: FakeParticipant | None
    calls: Calls
    store: Any
    broker: MemoryBroker

    async def finish(self, saga_id: str, timeout: float | None = None) -> SagaSnapshot:
        return await settle(self.engine, saga_id, timeout=timeout)


@contextlib.asynccontextmanager
async def one_run(
    env: SagaTestEnv,
    definition: SagaDefinition,
    *,
    modes: Mapping[tuple[str, bool], Mode] | None = None,
    replies: Replies | None = None,
    events: Replies | None = None,
    twice: Twice | None = None,
    participant_options: Mapping[str, Any] | None = None,
    engine_options: Mapping[str, Any] | None = None,
    store: Any = None,
    duplicate_commands: bool = False,
) -> AsyncIterator[Run]:
    """A fresh store, an engine running the instrumented *definition*, and a participant answering its commands.

    ``modes`` also applies to message actions: ``"fail"`` answers the command
    with a fault, ``"hang"`` not at all (a ``wait_for`` step gets no event).
    """
    modes = dict(modes or {})
    replies = dict(replies or {})
    events = dict(events or {})
    calls = Calls()
    inst = instrument(definition, modes, calls, twice)
    store = env.new_store() if store is None else store
    silent = {k for k, m in modes.items() if m in ("hang", "fail")}
    deliver = _Deliver(definition, events, silent)
    broker = MemoryBroker()  # a run of its own: no message of another run reaches it
    if duplicate_commands:
        for _, _, a in message_actions(definition):
            if isinstance(a, SendCommand):
                broker.duplicate_next[a.destination or a.type_name] = 1 << 30
    engine = env.engine(
        inst, store=store, transport=MemoryTransport(broker), observers=[deliver], **dict(engine_options or {})
    )
    deliver.engine = engine
    participant: FakeParticipant | None = None
    sends = [(s, c, a) for s, c, a in message_actions(definition) if isinstance(a, SendCommand) and a.awaits_reply]
    if sends:
        participant = FakeParticipant(
            broker, name="participant", clock=env.clock.time, **dict(participant_options or {})
        )
        for s, comp, a in sends:
            mode = modes.get((s.name, comp))
            if mode == "fail":
                participant.fault(a.command, f"{'compensation of ' if comp else ''}step {s.name!r} failed (injected)")
            elif mode == "hang":
                participant.ignore(a.command)
            else:
                participant.reply(a.command, replies[a.command])
        await participant.start()
    try:
        await engine.run()
        try:
            yield Run(env, engine, participant, calls, store, broker)
        finally:
            if engine not in KILLED:
                await engine.close()
            for t in list(deliver.tasks):
                t.cancel()
            await asyncio.gather(*deliver.tasks, return_exceptions=True)
    finally:
        if participant is not None:
            await participant.close()
