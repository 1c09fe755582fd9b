"""The message side of the runtime: commands into the outbox, replies and triggers in.

- ``outbox_for`` turns a message step's attempt into an outbox row, written in
  the same transaction as the transition that dispatched it; the saga's
  completion or failure event likewise.
- The **relay** claims committed outbox rows and publishes them; a row is
  deleted only once the broker accepted it, so a broker outage loses nothing.
- The **consumer** receives events: trigger events start sagas (one per
  correlation id), replies are matched to their saga by the envelope headers
  or a correlation extractor and applied through the engine; a reply that
  reaches no waiting step is recorded as a dead letter with the reason. The
  delivery is acknowledged only after that is committed.

Every command a saga sends for one step and direction carries the same message
id on every attempt, so the receiver's inbox recognises a resend after a reply
timeout; the outbox row id adds the attempt token, which brokers with
de-duplication use to drop a repeated publish of the same row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .._context import StepContext
from .._definition import SagaDefinition, StepDefinition, Trigger
from .._errors import DefinitionError, SagaNotFound
from .._messages import (
    FAULT_TYPE_NAME,
    CorrelationError,
    Envelope,
    EnvelopeError,
    MessageMappingError,
    SendCommand,
    WaitFor,
    command_view,
    default_command,
    from_payload,
    message_id,
    message_type_name,
    to_correlation_id,
    validate_state,
)
from .._observe import MessageInput, Tracer, open_scope
from .._snapshot import SagaSnapshot
from .._status import SagaStatus
from .._store import DeadLetter, OutboxMessage, OutboxRecord, Store
from .._transport import Delivery, Transport, TransportError
from ..machine import FAILURE, Event, Reply, RunStep, SagaState, step_results
from ._base import Batcher, Held

__all__ = ["Messaging"]

log = logging.getLogger("sagakit")


def traceparent(saga_id: str) -> str:
    """The W3C traceparent of a saga's messages: the saga's id is its trace id (see sagakit.otel)."""
    try:
        trace_id = int(saga_id, 16)
    except ValueError:
        return ""
    if not 0 < trace_id < 1 << 128:
        return ""
    return f"00-{trace_id:032x}-{(trace_id & ((1 << 64) - 1)) or 1:016x}-01"


CONSUMER_GROUP = "sagakit"


class Host(Protocol):
    """What the message side needs of the engine it serves (``SagaEngine``)."""

    store: Store
    worker_id: str

    @property
    def _tracers(self) -> tuple[Tracer, ...]: ...

    def clock(self) -> float: ...

    async def start(
        self,
        name: str,
        data: Any = None,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        version: int | None = None,
    ) -> str: ...

    async def list(
        self,
        status: Any = None,
        name: str | None = None,
        correlation_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[SagaSnapshot]: ...

    lease_seconds: float

    async def _inbox_seen(self, message_id: str) -> bool: ...

    async def _act(
        self,
        saga_id: str,
        make: Callable[[Held], Event | str],
        *,
        inbox: str | None = None,
        busy_timeout: float = 5.0,
        admin: Event | None = None,
    ) -> str | None: ...


@dataclass(frozen=True, slots=True)
class _Expect:
    """A step of a registered definition that waits for events of one type."""

    definition: SagaDefinition
    step: StepDefinition
    compensation: bool
    action: SendCommand | WaitFor


class Messaging:
    """Outbox rows for message steps, the relay, and the consumer of replies and triggers."""

    def __init__(self, engine: Host, transport: Transport | None) -> None:
        self.engine = engine
        self.transport = transport
        self.relay_batch = 100
        self.relay_concurrency = 32  # sagas whose messages are published at once
        # Longest sleep of an idle relay between looks at the outbox (commits poke it at once).
        self.relay_poll = 0.5
        self._triggers: dict[str, list[tuple[SagaDefinition, Trigger]]] = {}
        self._expects: dict[str, list[_Expect]] = {}
        # Events a definition knows but no step declares (SagaDefinition.known_events): consumed so that
        # the machine can say why no step takes them, and the reason goes with the dead letter.
        self._known: dict[str, list[tuple[SagaDefinition, type]]] = {}
        # Events observed for choreographed sagas: wire name -> the newest registered version of each
        # choreography that observes it (a saga of an older version is found by its correlation id all the same).
        self._observed: dict[str, dict[str, SagaDefinition]] = {}
        # One observed event at a time per saga here: events of one flow often arrive together, and
        # claiming the saga for each at once would only make them fence each other's transitions.
        self._observing: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        # The saga of a flow's business key never changes (one per key, ever): the recent ones are
        # remembered, so that a flow's later events need no insert attempt to find it.
        self._flows: dict[tuple[str, str], str] = {}
        self.flows_remembered = 10_000
        self._tasks: list[asyncio.Task[None]] = []
        self._poke = asyncio.Event()
        self._running = False
        self._subscribed: set[str] = set()
        self._subscriber: asyncio.Task[None] | None = None  # subscribes what was registered after start
        self._names: dict[str, type] = {}  # wire name -> the one class registered under it
        self._lookups: Batcher[tuple[str, str], str | None] | None = None  # (name, correlation id) -> saga

    # ------------------------------------------------------------ registration

    def register(self, d: SagaDefinition) -> None:
        """Consume *d*'s triggers and replies.

        Raises:
            DefinitionError: one of *d*'s message names is another class's, here or
                in a definition registered before; nothing of *d* is registered.
        """
        self._names.update(_wire_names(d, self._names))
        for t in d.triggers:
            self._triggers.setdefault(message_type_name(t.event), []).append((d, t))
        spec = d.choreography
        if spec is not None:
            for name in spec.events:
                known = self._observed.setdefault(name, {})
                if d.name not in known or known[d.name].version <= d.version:
                    known[d.name] = d
        for s in d.steps:
            for comp, action in ((False, s.action), (True, s.compensation)):
                if spec is not None and not comp:
                    continue  # a stage's events are observed (_observe), not replies
                if isinstance(action, SendCommand | WaitFor):
                    names = list(action.reply_types)
                    if isinstance(action, SendCommand) and action.awaits_reply:
                        names.append(FAULT_TYPE_NAME)  # a participant whose handler raised says so
                    for name in names:
                        self._expects.setdefault(name, []).append(_Expect(d, s, comp, action))
        for cls in d.known_events:
            self._known.setdefault(message_type_name(cls), []).append((d, cls))
        if self._running and (self._subscriber is None or self._subscriber.done()):
            # Registered after start: consume its events too. Until that subscription is
            # live the relay holds every command (see ready()), so no reply is lost.
            self._subscriber = asyncio.ensure_future(self._keep_subscribing())

    async def _subscribe(self) -> None:
        """Subscribe to the registered destinations not yet subscribed to.

        Raises:
            TransportError: the broker refused or could not be reached.
        """
        assert self.transport is not None
        new = [d for d in self.destinations if d not in self._subscribed]
        if new:
            await self.transport.subscribe(new, CONSUMER_GROUP, self._on_delivery)
            self._subscribed.update(new)

    async def _keep_subscribing(self) -> None:
        """Subscribe to what was registered after start (and is registered meanwhile), retrying through outages."""
        backoff = 0.05
        while self._running and any(d not in self._subscribed for d in self.destinations):
            try:
                await self._subscribe()
                backoff = 0.05
            except Exception as e:
                log.warning("sagakit: subscribing to new event types failed (%s); retrying in %.2fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def ready(self) -> None:
        """Wait until every registered definition's events are subscribed to.

        Returns at once when they are: the relay calls it before each batch.
        """
        while (task := self._subscriber) is not None and not task.done():
            await asyncio.wait([task])

    @property
    def destinations(self) -> list[str]:
        """Event types this engine consumes: replies of its message steps and its triggers."""
        return sorted({*self._triggers, *self._expects, *self._known, *self._observed})

    # ------------------------------------------------------------ outgoing

    def outbox_for(self, st: SagaState, defn: SagaDefinition, eff: RunStep) -> OutboxMessage | None:
        """The command one attempt of a message step sends (None for a ``wait_for`` step).

        Raises:
            MessageMappingError: the command cannot be built from the saga's data.
        """
        sdef = defn.by_name[eff.step]
        action = sdef.compensation if eff.compensation else sdef.action
        if not isinstance(action, SendCommand):
            return None
        ctx = StepContext._of(st, eff.step, eff.attempt, eff.compensation, self.engine.worker_id)
        command = action.build_command(st.data if isinstance(st.data, Mapping) else {}, ctx)
        direction = "compensation" if eff.compensation else "action"
        mid = message_id(st.id, eff.step, 0, direction)
        now = self.engine.clock()
        destination = action.destination or action.type_name
        headers = {"traceparent": traceparent(st.id)}
        tracers = self.engine._tracers
        if tracers:
            sent = MessageInput(action.type_name, mid, destination, st.id, st.name, eff.step, eff.compensation, {}, now)
            for t in tracers:
                try:
                    headers.update(t.send_headers(sent))
                except Exception:
                    log.exception("sagakit: tracer %r failed in send_headers", t)
        env = Envelope.wrap(
            command,
            message_id=mid,
            timestamp=now,
            saga_id=st.id,
            step=eff.step,
            token=eff.token,
            correlation_id=st.correlation_id,
            headers=headers,
        )
        return OutboxMessage(
            id=f"{mid}/{eff.token}",
            saga_id=st.id,
            destination=destination,
            payload=env.to_bytes(),
            headers={"message_id": mid},
        )

    @staticmethod
    def fire_and_forget(defn: SagaDefinition, eff: RunStep) -> bool:
        """True for a ``send`` that waits for no reply: it completes once its command is committed."""
        sdef = defn.by_name[eff.step]
        action = sdef.compensation if eff.compensation else sdef.action
        return isinstance(action, SendCommand) and not action.awaits_reply

    def outcome_event(self, st: SagaState, defn: SagaDefinition) -> OutboxMessage | None:
        """The saga's completion or failure event, built from its data, when it has one."""
        if defn.completion_event is None and defn.failure_event is None:
            return None

        if st.status is SagaStatus.COMPLETED:
            cls, label = defn.completion_event, "completed"
        else:
            cls, label = defn.failure_event, "failed"
        if cls is None:
            return None
        failure = st.meta.get(FAILURE)
        extra: dict[str, Any] = {"saga_id": st.id, "results": dict(step_results(st))}
        if st.error is not None:
            extra["reason"] = extra["error"] = st.error
        if isinstance(failure, Mapping):
            extra["failed_step"] = failure.get("step")
            extra["failure_event"] = failure.get("event")
            extra["failure"] = failure.get("payload")
        data = st.data if isinstance(st.data, Mapping) else {}
        event: Any = default_command(cls, command_view(data, step_results(st), failure, extra))
        mid = message_id(st.id, "", 0, label)
        env = Envelope.wrap(
            event,
            message_id=mid,
            timestamp=self.engine.clock(),
            saga_id=st.id,
            correlation_id=st.correlation_id,
        )
        return OutboxMessage(mid, st.id, env.type_name, env.to_bytes(), {"message_id": mid})

    async def publish(self, event: object, *, destination: str | None = None) -> str:
        """Publish an application event (a trigger, an approval) now; returns its message id."""
        if self.transport is None:
            raise TransportError("publish() needs a transport: SagaEngine(store, transport=URL)")
        await self.ready()
        mid = uuid.uuid4().hex
        env = Envelope.wrap(event, message_id=mid, timestamp=self.engine.clock())
        await self.transport.publish(
            destination or env.type_name, env.to_bytes(), message_id=mid, headers={"message_id": mid}
        )
        return mid

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.transport is None:
            return
        await self.transport.start()
        # Before the relay runs, so that no command goes out before its replies are consumed
        # (and again for what was registered meanwhile).
        while any(d not in self._subscribed for d in self.destinations):
            await self._subscribe()
        self._running = True
        self._tasks.append(asyncio.create_task(self._relay_loop(), name="sagakit-relay"))

    async def close(self) -> None:
        if self.transport is None:
            return
        self._running = False
        self._poke.set()
        if self._subscriber is not None:
            self._subscriber.cancel()
            await asyncio.wait([self._subscriber])
            self._subscriber = None
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(t, 5.0)
        self._tasks.clear()
        await self.transport.close()

    def poke(self) -> None:
        """Wake the relay: new rows were committed."""
        self._poke.set()

    # ------------------------------------------------------------ relay

    async def _relay_loop(self) -> None:
        transport = self.transport
        assert transport is not None
        store = self.engine.store
        owner = self.engine.worker_id
        backoff = 0.05
        while self._running:
            if self._subscriber is not None and not self._subscriber.done():
                # A definition was registered after start: no command goes out before its
                # replies are consumed. Otherwise nothing is awaited here.
                await self.ready()
                continue
            self._poke.clear()
            try:
                now = self.engine.clock()
                batch = await store.outbox_claim(owner, now, now + 30.0, self.relay_batch)
            except Exception:
                log.exception("sagakit: reading the outbox failed; retrying in %.2fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            await self.ready()  # in case a definition was registered while the batch was claimed
            done, retry = await self._publish(transport, batch)
            try:
                if done:
                    await store.outbox_done(owner, done)
                if retry:
                    await store.outbox_retry(owner, retry, self.engine.clock() + backoff)
            except Exception:
                log.exception("sagakit: updating the outbox failed")
            if retry:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            if len(batch) == self.relay_batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.relay_poll)

    async def _publish(self, transport: Transport, batch: list[OutboxRecord]) -> tuple[list[str], list[str]]:
        """Publish a batch: each saga's messages in order, different sagas' concurrently.

        Returns the ids published and the ids to try again (a failed message and
        the messages of its saga after it).
        """
        by_saga: dict[str, list[OutboxRecord]] = {}
        for rec in batch:
            by_saga.setdefault(rec.saga_id, []).append(rec)
        done: list[str] = []
        retry: list[str] = []
        gate = asyncio.Semaphore(self.relay_concurrency)

        async def one_saga(records: list[OutboxRecord]) -> None:
            async with gate:
                for i, rec in enumerate(records):
                    try:
                        await transport.publish(rec.destination, rec.payload, message_id=rec.id, headers=rec.headers)
                    except Exception as e:
                        log.warning("sagakit: publishing %s failed: %s", rec.id, e)
                        retry.extend(r.id for r in records[i:])
                        return
                    done.append(rec.id)

        await asyncio.gather(*(one_saga(records) for records in by_saga.values()))
        return done, retry

    # ------------------------------------------------------------ incoming

    async def _on_delivery(self, delivery: Delivery) -> None:
        try:
            env = Envelope.from_bytes(delivery.body)
        except EnvelopeError as e:
            await self._dead(delivery.message_id, None, "?", delivery.body, f"unreadable: {e}")
            return
        handled = False
        for defn, trigger in self._triggers.get(env.type_name, ()):
            handled = True
            await self._start_from_trigger(env, defn, trigger)
        for defn in self._observed.get(env.type_name, {}).values():
            handled = True
            await self._observe(env, defn)
        if env.type_name in self._expects or env.type_name in self._known:
            handled = True
            await self._reply(env)
        if not handled:
            await self._dead(
                env.message_id, env.saga_id, env.type_name, delivery.body, "no registered saga consumes this event type"
            )

    async def _start_from_trigger(self, env: Envelope, defn: SagaDefinition, trigger: Trigger) -> None:
        try:
            event: Any = from_payload(trigger.event, env.payload)
            cid = to_correlation_id(trigger.correlation(event), source=defn.name)
        except Exception as e:
            await self._dead(env.message_id, None, env.type_name, env, f"trigger of {defn.name} v{defn.version}: {e}")
            return
        data: dict[str, Any] = dict(env.payload)
        if defn.state_model is not None:
            try:
                data = validate_state(defn.state_model, data)
            except MessageMappingError as e:
                await self._dead(
                    env.message_id, None, env.type_name, env, f"trigger of {defn.name}: initial state is invalid: {e}"
                )
                return
        # One saga per correlation id: the id is the idempotency key.
        await self.engine.start(defn.name, data, correlation_id=cid, idempotency_key=cid, version=defn.version)

    async def _observe(self, env: Envelope, defn: SagaDefinition) -> None:
        """Hand an event a choreographed saga observes to the saga of its correlation id.

        The saga is opened by the first event of its flow that arrives (the start
        event, or one that overtook it), so that none is lost; the machine
        decides what the event does. The envelope's saga headers are ignored:
        participants' events are matched by their business key only.
        """
        spec = defn.choreography
        assert spec is not None
        # One event may be observed by several flows: each records it under its own key.
        key = f"{env.message_id}:{defn.name}"
        if await self.engine._inbox_seen(key):
            await self._dead(env.message_id, None, env.type_name, env, "duplicate: already observed")
            return
        cls, correlate = spec.events[env.type_name]
        try:
            event: Any = from_payload(cls, env.payload)
            cid = to_correlation_id(correlate(event), source=defn.name)
        except Exception as e:
            await self._dead(env.message_id, None, env.type_name, env, f"choreography {defn.name}: {e}")
            return
        saga_id = self._flows.get((defn.name, cid))
        if saga_id is None:
            if not spec.keep_before_start and env.type_name != spec.start:
                found = await self.engine.list(correlation_id=cid, name=defn.name, limit=1)
                if not found:
                    why = f"choreography {defn.name}: no flow {cid!r} has started (its start event has not come)"
                    await self._dead(env.message_id, None, env.type_name, env, why)
                    return
                saga_id = found[0].id
            else:
                saga_id = await self.engine.start(
                    defn.name, {}, correlation_id=cid, idempotency_key=cid, version=defn.version
                )
            if len(self._flows) >= self.flows_remembered:
                del self._flows[next(iter(self._flows))]
            self._flows[(defn.name, cid)] = saga_id
        observed = Reply(env.type_name, dict(env.payload))
        wait = self.engine.lease_seconds + 5.0
        reason: str | None
        scope = None
        if self.engine._tracers:
            received = MessageInput(
                env.type_name, env.message_id, env.type_name, saga_id, defn.name, None, False, env.headers,
                self.engine.clock(),
            )  # fmt: skip
            scope = open_scope(self.engine._tracers, "receive_scope", received)
        lock, users = self._observing.setdefault(saga_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                if scope is None:
                    reason = await self.engine._act(
                        saga_id, lambda held: observed, inbox=key, admin=observed, busy_timeout=wait
                    )
                else:
                    with scope:
                        reason = await self.engine._act(
                            saga_id, lambda held: observed, inbox=key, admin=observed, busy_timeout=wait
                        )
        except SagaNotFound:
            reason = f"unknown saga {saga_id}"
        except BaseException as e:
            if scope is not None:
                scope.end("failed", error=str(e), exception=e, at=self.engine.clock())
            raise
        finally:
            users[0] -= 1
            if not users[0]:
                del self._observing[saga_id]
        if scope is not None:
            scope.end("applied" if reason is None else "dead_lettered", error=reason, at=self.engine.clock())
        if reason is not None:
            await self._dead(env.message_id, saga_id, env.type_name, env, reason)

    async def _reply(self, env: Envelope) -> None:
        """Hand an event to the saga it is for; the machine decides which step it completes, if any."""
        if await self.engine._inbox_seen(env.message_id):
            await self._dead(
                env.message_id,
                env.saga_id,
                env.type_name,
                env,
                "duplicate: this message's effect is already committed",
            )
            return
        saga_id = env.saga_id
        if saga_id is None:
            try:
                saga_id = await self._correlate(env)
            except CorrelationError as e:
                await self._dead(env.message_id, None, env.type_name, env, f"no saga matched: {e}")
                return
            if saga_id is None:
                await self._dead(
                    env.message_id,
                    None,
                    env.type_name,
                    env,
                    "no saga waits for this event (no saga headers, no correlation match)",
                )
                return
        event = Reply(env.type_name, env.payload, env.step, env.token)
        scope = None
        if self.engine._tracers:
            received = MessageInput(
                env.type_name, env.message_id, env.type_name, saga_id, None, env.step, False, env.headers,
                self.engine.clock(),
            )  # fmt: skip
            scope = open_scope(self.engine._tracers, "receive_scope", received)
        # When another worker holds the saga, the event is left for it as a request (it applies
        # it within a fraction of a second); should that worker be gone, its lease runs out and
        # this engine applies the event itself. The delivery is acknowledged only then.
        wait = self.engine.lease_seconds + 5.0
        try:
            if scope is None:
                reason = await self.engine._act(
                    saga_id, lambda held: event, inbox=env.message_id, admin=event, busy_timeout=wait
                )
            else:
                with scope:
                    reason = await self.engine._act(
                        saga_id, lambda held: event, inbox=env.message_id, admin=event, busy_timeout=wait
                    )
        except SagaNotFound:
            reason = f"unknown saga {saga_id}"
        except BaseException as e:
            if scope is not None:
                scope.end("failed", error=str(e), exception=e, at=self.engine.clock())
            raise
        if scope is not None:
            outcome = "applied" if reason is None else "dead_lettered"
            scope.end(outcome, error=reason, at=self.engine.clock())
        if reason is not None:
            await self._dead(env.message_id, saga_id, env.type_name, env, reason)

    async def _correlate(self, env: Envelope) -> str | None:
        """Find the saga a header-less event is for, by correlation id.

        The extractor is the waiting step's own (``wait_for(..., correlation=)``),
        else the saga's trigger extractors applied to the reply (replies usually
        carry the same business key as the event that started the saga).

        Raises:
            CorrelationError: no saga matched and an extractor raised (its error is the reason).
        """
        errors: list[str] = []
        for exp in self._expects.get(env.type_name, ()):
            own: Callable[[Any], Any] | None = getattr(exp.action, "correlation", None)
            extractors = [own] if own is not None else [t.correlation for t in exp.definition.triggers]
            if own is None and exp.definition.choreography is not None:
                extractors.append(exp.definition.choreography.correlate)
            cls = exp.action.reply_types.get(env.type_name)
            if cls is None:
                continue
            try:
                event: Any = from_payload(cls, env.payload)
            except Exception as e:
                errors.append(f"{exp.definition.name}.{exp.step.name}: {e}")
                continue
            for extract in extractors:
                try:
                    cid = to_correlation_id(extract(event))
                except Exception as e:
                    errors.append(
                        f"{exp.definition.name}.{exp.step.name}: the correlation extractor raised "
                        f"{type(e).__name__}: {e}"
                    )
                    log.warning(
                        "sagakit: correlation of %s for %s failed", env.type_name, exp.definition.name, exc_info=True
                    )
                    continue
                found = await self._correlated(exp.definition.name, cid)
                if found is not None:
                    return found
        # An event no step declares: the saga is found by its trigger extractors, to say why it was not taken.
        for defn, known_cls in self._known.get(env.type_name, ()):
            try:
                known: Any = from_payload(known_cls, env.payload)
            except Exception:
                continue
            for t in defn.triggers:
                try:
                    cid = to_correlation_id(t.correlation(known))
                except Exception:
                    continue
                found = await self._correlated(defn.name, cid)
                if found is not None:
                    return found
        if errors:
            raise CorrelationError("; ".join(errors))
        return None

    async def _correlated(self, name: str, cid: str) -> str | None:
        """The newest unfinished saga *name* of correlation id *cid*; lookups made together go in one store call."""
        many = getattr(self.engine.store, "correlated", None)
        if many is None:
            for snap in await self.engine.list(correlation_id=cid, name=name, limit=10):
                if not snap.status.terminal:
                    return snap.id
            return None
        if self._lookups is None:

            async def fetch(keys: list[tuple[str, str]]) -> Mapping[tuple[str, str], str | None]:
                by_name: dict[str, list[str]] = {}
                for n, c in keys:
                    by_name.setdefault(n, []).append(c)
                got: dict[tuple[str, str], str | None] = {}
                for n, cids in by_name.items():
                    for c, sid in (await many(n, cids)).items():
                        got[(n, c)] = sid
                return got

            self._lookups = Batcher(fetch, None)
        return await self._lookups.get((name, cid))

    async def _dead(
        self, mid: str, saga_id: str | None, type_name: str, body: bytes | str | Envelope, reason: str
    ) -> None:
        if isinstance(body, Envelope):
            body = _body(body)  # serialised again only here: a dead letter is the rare case
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        log.info("sagakit: message %s (%s) dead-lettered: %s", mid, type_name, reason)
        await self.engine.store.dead_letter(DeadLetter(mid, self.engine.clock(), saga_id, type_name, text, reason))


def _wire_names(d: SagaDefinition, known: Mapping[str, type]) -> dict[str, type]:
    """The message classes of *d* by wire name: its triggers, commands, replies, known and outcome events.

    Raises:
        DefinitionError: two different classes of *d*, or one of *d* and one of *known*, share a wire name.
    """
    found: dict[str, type] = {}

    def add(cls: object) -> None:
        if isinstance(cls, tuple):
            for c in cls:
                add(c)
            return
        if not isinstance(cls, type):
            return
        try:
            name = message_type_name(cls)
        except DefinitionError as e:
            raise DefinitionError(f"saga {d.name!r} v{d.version}: {e}") from None
        other = found.get(name) or known.get(name)
        if other is not None and other is not cls:
            raise DefinitionError(
                f"saga {d.name!r} v{d.version}: the message name {name!r} is both "
                f"{other.__module__}.{other.__qualname__} and {cls.__module__}.{cls.__qualname__}; "
                "a name routes to one class only: give one of them another name (message_name) or use one class"
            )
        found[name] = cls

    for t in d.triggers:
        add(t.event)
    for s in d.steps:
        for action in (s.action, s.compensation):
            if isinstance(action, SendCommand | WaitFor):
                for attr in ("command", "event", "success", "failure"):
                    add(getattr(action, attr, None))
    add(d.known_events)
    if d.choreography is not None:
        add(tuple(cls for cls, _ in d.choreography.events.values()))
    add(d.completion_event)
    add(d.failure_event)
    return found


def _body(env: Envelope) -> str:
    try:
        return env.to_bytes().decode()
    except EnvelopeError:
        return repr(env)
