"""Saga definitions: the immutable description of a saga's steps, built by SagaBuilder."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, Sequence, ValuesView
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from ._errors import DefinitionError
from ._policy import RetryPolicy
from ._resources import Resource

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "LOCK_POLICIES",
    "ChoreographySpec",
    "ForEach",
    "LockSettings",
    "ReplyRead",
    "SagaBuilder",
    "SagaDefinition",
    "StepDefinition",
    "Trigger",
    "is_message_type",
]

DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_DEFAULT_RETRY = RetryPolicy()
_DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=10, initial_delay=0.1, max_delay=60.0)
# What a saga does when a lock it needs is held by another saga: queue for it, or fail at once.
LOCK_POLICIES = ("wait", "fail")


class ReplyRead(NamedTuple):
    """What a reply does to its step: it fails it (``failure`` says why) or completes it.

    ``result`` is the step's result (the reply's fields), ``size`` its size in
    bytes as stored, ``data`` the saga's data after the reply was merged in.
    """

    failure: str | None
    result: Any = None
    size: int = 0
    data: Any = None
    fault: bool = False  # the failure is a participant's fault (its handler raised), not a failure event


# The wire name of the reply a participant sends when its handler raised (``sagakit._messages.Fault``).
FAULT_TYPE_NAME = "sagakit.Fault"


class StepAction:
    """Base of step actions that are not plain callables (message steps).

    ``local`` is False for actions that send a command or wait for an event:
    their attempt ends when a reply arrives, not when a function returns.
    ``sends`` is True for actions whose attempt sends a command, and so may
    have an effect elsewhere before its outcome is known.
    """

    local: ClassVar[bool] = False
    sends: ClassVar[bool] = False
    starts_child: ClassVar[bool] = False  # a child saga (``sagakit._child.ChildSaga``)
    reply_timeout: float | None = None

    def validate(self, where: str) -> None:
        """Check the action when the definition is built; raise DefinitionError naming *where*."""

    @property
    def reply_types(self) -> Mapping[str, type]:
        """The events that end an attempt, by wire type name (none: the action needs no reply)."""
        return {}

    def expects(self, type_name: str) -> bool:
        """Whether an event of *type_name* ends an attempt of this action (a reply type, or a fault)."""
        return type_name in self.reply_types

    def read_reply(
        self, type_name: str, payload: Mapping[str, Any], data: Any, state_model: type | None, merge: bool
    ) -> ReplyRead:
        """What an event of *type_name* with *payload* does to the step, given the saga's *data*.

        With *merge*, a success is merged into the data (validated against
        *state_model*, if any). Raises ValueError when the event or the merged
        data is invalid.
        """
        raise NotImplementedError


def is_message_type(obj: object) -> bool:
    """True for a class usable as a command or event: a pydantic model or a dataclass.

    Pydantic is recognised by shape (``model_fields`` and ``model_validate``) so
    that the pure core does not import it.
    """
    if not isinstance(obj, type):
        return False
    if dataclasses.is_dataclass(obj):
        return True
    return hasattr(obj, "model_fields") and callable(getattr(obj, "model_validate", None))


def _message_type_problem(where: str, obj: object, fix: str) -> DefinitionError:
    if isinstance(obj, type):
        got = f"class {obj.__module__}.{obj.__qualname__}, which is neither"
    elif is_message_type(type(obj)):
        got = f"an instance of {type(obj).__qualname__}; pass the class itself"
    else:
        got = f"{obj!r}"
    return DefinitionError(f"{where} must be a pydantic model or dataclass class, got {got} ({fix})")


@dataclass(frozen=True, slots=True)
class LockSettings:
    """A saga's semantic locks: the business keys it holds, and what it does when they are taken.

    ``keys`` (or None: only steps declare locks) reads the saga-level keys from
    the saga's data; they are held from the start until the saga ends, or until
    step ``release_after`` has completed (a step's own keys stay until the end). ``policy`` is ``"wait"`` (queue,
    first come first served, for at most ``timeout`` seconds when given) or
    ``"fail"`` (the saga fails at once when a key is held by another saga).
    """

    keys: Callable[[Any], Any] | None = None
    policy: str = "wait"
    timeout: float | None = None
    release_after: str | None = None


class Trigger(NamedTuple):
    """An event type that starts the saga, and how to read the correlation id from it."""

    event: type
    correlation: Callable[[Any], str]


@dataclass(frozen=True, slots=True)
class ForEach:
    """What makes a step a for-each step: its item list, each item's key, and how many items run at once.

    ``items(data, results)`` is called once, when the step is dispatched, with
    the saga's data and the results of the finished steps; it returns the
    list of items. ``key(item)`` gives the part of an item's idempotency key
    that tells it from the others (default: its index in the list).
    """

    items: Callable[[Any, Mapping[str, Any]], Any]
    key: Callable[[Any], Any] | None = None
    parallelism: int = 10


@dataclass(frozen=True, slots=True)
class ChoreographySpec:
    """What makes a definition a choreographed saga: the events it observes and what each one means.

    Each stage of the flow is a step whose action waits for the stage's event
    and sends nothing; the machine reads these lookups by wire name (the pure
    core does not import the message module that computes wire names).
    """

    stages: Mapping[str, str]
    """Wire name of an observed event -> the stage (step) it belongs to: the stage's event or one of its failures."""
    failures: frozenset[str]
    """Wire names of the stages' failure events (a subset of ``stages``)."""
    flow_failures: frozenset[str]
    """Wire names of events that fail the whole flow at once, whatever stage it is at."""
    events: Mapping[str, tuple[type, Callable[[Any], Any]]]
    """Wire name -> (event class, its correlation extractor), for every observed event."""
    correlate: Callable[[Any], Any]
    """The start event's correlation extractor: also reads replies to compensation commands that lack headers."""
    start: str = ""
    """Wire name of the event that starts the flow."""
    keep_before_start: bool = True
    """An event that comes before its flow's start event opens the saga (True) or is dead-lettered (False)."""


@dataclass(frozen=True, slots=True)
class StepDefinition:
    """One step of a saga definition.

    With ``for_each`` set the step runs its action (and compensation) once per
    item of a list, each item with its own attempts; the functions then take
    ``(item, ctx)``.
    """

    name: str
    action: Callable[..., Any] | StepAction
    compensation: Callable[..., Any] | StepAction | None = None
    after: tuple[str, ...] = ()
    retry: RetryPolicy = _DEFAULT_RETRY
    compensation_retry: RetryPolicy = _DEFAULT_COMPENSATION_RETRY
    timeout: float | None = None
    compensation_timeout: float | None = None
    pivot: bool = False
    compensate_failed: bool = False
    """Compensate the step on rollback even when it failed (for steps that can half-fail)."""
    for_each: ForEach | None = None
    """Set on a for-each step (``SagaBuilder.for_each``)."""
    resource: str | None = None
    """The resource whose limit each attempt (action or compensation) of the step runs under."""
    locks: Callable[[Any], Any] | None = None
    """Reads the business keys the saga must hold from this step on, from the saga's data."""
    # Derived from the fields above when the definition is made; the state
    # machine and the runtime read them on every attempt.
    local: bool = field(init=False, repr=False, compare=False)
    """True when the action is a Python function run by the engine."""
    compensation_local: bool = field(init=False, repr=False, compare=False)
    """True when the compensation (if any) is a Python function run by the engine."""
    attempt_timeouts: tuple[float | None, float | None] = field(init=False, repr=False, compare=False)
    """Seconds one attempt of the action, and of the compensation, may take (see ``attempt_timeout``)."""
    effectful: bool = field(init=False, repr=False, compare=False)
    """True when an attempt of the action may have an effect of its own (a function runs, a command is sent)."""
    child: bool = field(init=False, repr=False, compare=False)
    """True when the action runs a child saga (``sagakit.child``)."""

    def __post_init__(self) -> None:
        def limit(action: object, own: float | None) -> float | None:
            if isinstance(action, StepAction) and action.reply_timeout is not None:
                return action.reply_timeout
            return own

        setattr_ = object.__setattr__
        setattr_(self, "local", not isinstance(self.action, StepAction))
        setattr_(self, "compensation_local", not isinstance(self.compensation, StepAction))
        setattr_(self, "effectful", not isinstance(self.action, StepAction) or self.action.sends)
        setattr_(self, "child", isinstance(self.action, StepAction) and self.action.starts_child)
        setattr_(
            self,
            "attempt_timeouts",
            (limit(self.action, self.timeout), limit(self.compensation, self.compensation_timeout)),
        )


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    """An immutable, validated saga definition. Make one with SagaBuilder or load_definition."""

    name: str
    version: int
    steps: tuple[StepDefinition, ...]
    deadline: float | None = None
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    description: str | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    # Message-driven sagas: events that start the saga (with their correlation
    # extractor), the saga state model, and the events announcing the outcome.
    triggers: tuple[Trigger, ...] = ()
    state_model: type | None = None
    completion_event: type | None = None
    failure_event: type | None = None
    # State migration: the shape version of the saga data this definition reads, and the
    # upcasters that turn data of an older shape version v into shape v + 1.
    state_version: int = 1
    upcasters: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]] = field(default_factory=dict, compare=False)
    # Events the saga knows that none of its steps declares: consumed all the
    # same, so that one arriving is dead-lettered with the reason, not left unread.
    known_events: tuple[type, ...] = ()
    # Semantic locks (None: the saga and its steps declare none).
    locks: LockSettings | None = None
    # A choreographed saga (sagakit.choreography): its stages observe events; None for any other saga.
    choreography: ChoreographySpec | None = field(default=None, compare=False)
    # Derived lookups, filled by build(); the state machine reads these.
    by_name: Mapping[str, StepDefinition] = field(default_factory=dict, compare=False)
    order: tuple[str, ...] = field(default=(), compare=False)
    dependents: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    descendants: Mapping[str, frozenset[str]] = field(default_factory=dict, compare=False)
    ancestors: Mapping[str, frozenset[str]] = field(default_factory=dict, compare=False)
    pivots: tuple[str, ...] = field(default=(), compare=False)  # the pivot steps, in order
    for_each: tuple[str, ...] = field(default=(), compare=False)  # the for-each steps, in order
    # Limits declared with the definition (SagaBuilder.resource), and the steps that name a resource.
    resources: tuple[Resource, ...] = ()
    resource_steps: tuple[str, ...] = field(default=(), compare=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)

    def step(self, name: str) -> StepDefinition:
        return self.by_name[name]


class SagaBuilder:
    """Collects steps and builds a validated SagaDefinition.

    Example::

        b = SagaBuilder("order_fulfillment", version=1)
        b.step("reserve", action=reserve, compensation=release)
        b.step("charge", action=charge, compensation=refund)   # after "reserve"
        definition = b.build()
    """

    def __init__(
        self,
        name: str,
        version: int = 1,
        *,
        deadline: float | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        description: str | None = None,
        locks: Callable[[Any], Any] | None = None,
        lock_policy: str = "wait",
        lock_timeout: float | None = None,
        release_locks_after: str | None = None,
    ) -> None:
        """Start a definition.

        *locks* reads the business keys the saga holds while it runs from its data
        (``locks=lambda data: [f"order:{data['order_id']}"]``): no two sagas hold
        one key at once. *lock_policy* ``"wait"`` queues for a taken key (first
        come, first served; at most *lock_timeout* seconds when given), ``"fail"``
        fails the saga at once. *release_locks_after* names the step after whose
        completion the saga's own keys are released (default: when the saga ends;
        keys that steps declare are held until then in any case).
        Steps may declare keys of their own (``b.step(..., locks=...)``).
        """
        self.name = name
        self.version = version
        self.deadline = deadline
        self.max_payload_bytes = max_payload_bytes
        self.description = description
        self.locks = locks
        self.lock_policy = lock_policy
        self.lock_timeout = lock_timeout
        self.release_locks_after = release_locks_after
        self.extras: dict[str, Any] = {}
        self._steps: list[StepDefinition] = []
        self._triggers: list[Trigger] = []
        self._state_model: type | None = None
        self._state_version = 1
        self._upcasters: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self._completion_event: type | None = None
        self._failure_event: type | None = None
        self._known_events: list[type] = []
        self._resources: list[Resource] = []

    def resource(
        self, resource: Resource | str, *, concurrency: int | None = None, rate: int | None = None, per: float = 1.0
    ) -> SagaBuilder:
        """Declare a resource limit with the definition: ``b.resource("payments", concurrency=5)``.

        An engine that registers the definition enforces it; the same limit may
        be declared on the engine instead (``SagaEngine(resources=[...])``).
        """
        if not isinstance(resource, Resource):
            resource = Resource(resource, concurrency, rate, per)
        self._resources.append(resource)
        return self

    def step(
        self,
        name: str,
        action: Callable[..., Any] | StepAction,
        compensation: Callable[..., Any] | StepAction | None = None,
        *,
        after: Sequence[str] | None = None,
        retry: RetryPolicy | None = None,
        compensation_retry: RetryPolicy | None = None,
        timeout: float | None = None,
        compensation_timeout: float | None = None,
        pivot: bool = False,
        compensate_failed: bool = False,
        resource: str | None = None,
        locks: Callable[[Any], Any] | None = None,
    ) -> SagaBuilder:
        """Add a step. ``after=None`` runs it after the previous step; ``after=[]`` makes it a root.

        With *resource*, each attempt of the step (and of its compensation) first
        waits for a permit of that resource (see ``sagakit.Resource``).

        A step whose outcome is uncertain (cancelled, timed out, result lost) is
        compensated on rollback; one that failed outright is not, unless
        *compensate_failed* says it can fail half-way. *locks* reads business
        keys from the saga's data that the saga acquires before the step's first
        attempt and holds from then on (see ``SagaBuilder(locks=...)``).

        Returns the builder, so calls can be chained.
        """
        if isinstance(action, StepAction) and action.starts_child:
            if compensation is not None:
                raise DefinitionError(
                    f"step {name!r}: a child saga step takes no compensation: rolling the parent back "
                    "rolls the child back (child(..., compensate=False) turns that off)"
                )
            if getattr(action, "compensate", True):
                compensation = action  # the child's own rollback
        if after is None:
            deps: tuple[str, ...] = (self._steps[-1].name,) if self._steps else ()
        elif isinstance(after, str):
            deps = (after,)
        else:
            deps = tuple(after)
        self._steps.append(
            StepDefinition(
                name=name,
                action=action,
                compensation=compensation,
                after=deps,
                retry=retry if retry is not None else _DEFAULT_RETRY,
                compensation_retry=(
                    compensation_retry if compensation_retry is not None else _DEFAULT_COMPENSATION_RETRY
                ),
                timeout=timeout,
                compensation_timeout=compensation_timeout,
                pivot=pivot,
                compensate_failed=compensate_failed,
                resource=resource,
                locks=locks,
            )
        )
        return self

    def for_each(
        self,
        name: str,
        items: Callable[[Any, Mapping[str, Any]], Any],
        action: Callable[..., Any],
        compensation: Callable[..., Any] | None = None,
        *,
        key: Callable[[Any], Any] | None = None,
        parallelism: int = 10,
        after: Sequence[str] | None = None,
        retry: RetryPolicy | None = None,
        compensation_retry: RetryPolicy | None = None,
        timeout: float | None = None,
        compensation_timeout: float | None = None,
        compensate_failed: bool = False,
    ) -> SagaBuilder:
        """Add a for-each step: *action* runs once per item of a list, at most *parallelism* items at a time.

        ``items(data, results)`` returns the list (for example
        ``lambda data, results: data["lines"]``); it is called once, when the
        step is due, and the list is stored with the saga, so a restart sees
        the same items. *action* and *compensation* take ``(item, ctx)``;
        ``ctx.item_index`` is the item's position and ``ctx.idempotency_key``
        is ``saga id:step:key:action`` (or ``:compensation``), where the key is
        ``key(item)`` or the item's index. Each item has its own attempts,
        *retry* policy and *timeout*. The step's result is the list of the
        items' results, in the order of the items; an empty list completes the
        step at once with ``[]``. An item that fails for good fails the step;
        a rollback then cancels the items in flight and compensates, in reverse
        order, the items that completed or whose outcome is uncertain.

        Returns the builder, so calls can be chained.
        """
        self.step(
            name,
            action,
            compensation,
            after=after,
            retry=retry,
            compensation_retry=compensation_retry,
            timeout=timeout,
            compensation_timeout=compensation_timeout,
            compensate_failed=compensate_failed,
        )
        self._steps[-1] = dataclasses.replace(
            self._steps[-1], for_each=ForEach(items=items, key=key, parallelism=parallelism)
        )
        return self

    def trigger(self, event_type: type, correlation: Callable[[Any], str]) -> SagaBuilder:
        """Start a saga when an *event_type* event arrives; *correlation* reads its correlation id.

        One saga runs per correlation id: a second trigger event with the same id
        does not start another.
        """
        self._triggers.append(Trigger(event_type, correlation))
        return self

    def state(
        self,
        model: type | None,
        *,
        version: int = 1,
        upcasters: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
    ) -> SagaBuilder:
        """Use *model* (a pydantic model or dataclass, or None) as the saga's state, validated on every change.

        When the shape of the data changes (a new required field, a renamed
        one), raise *version* and give an upcaster per older version:
        ``upcasters={1: lambda d: {**d, "currency": "EUR"}}`` turns data of
        shape 1 into shape 2. A saga whose data has an older shape is upcast,
        step by step, and validated against *model* the first time a worker
        with this definition handles it; sagas keep their definition version.
        """
        self._state_model = model
        self._state_version = version
        self._upcasters = dict(upcasters or {})
        return self

    def on_completed(self, event_type: type) -> SagaBuilder:
        """Publish an *event_type* event, built from the saga state, when the saga completes."""
        self._completion_event = event_type
        return self

    def on_failed(self, event_type: type) -> SagaBuilder:
        """Publish an *event_type* event, built from the saga state, when the saga ends unsuccessfully."""
        self._failure_event = event_type
        return self

    def known_events(self, *event_types: type) -> SagaBuilder:
        """Events the saga knows though no step declares them: consumed, and dead-lettered with the reason.

        Without this, an event of a type no step declares is never read by the
        engine (it subscribes to the types its steps and triggers name).
        """
        self._known_events.extend(event_types)
        return self

    def build(self) -> SagaDefinition:
        """Validate the steps and return the immutable definition.

        Raises:
            DefinitionError: naming the step and the problem (duplicate name,
                unknown or cyclic dependency, bad policy or timeout, compensation
                after a pivot step).
        """
        return build_definition(
            self.name,
            self.version,
            self._steps,
            deadline=self.deadline,
            max_payload_bytes=self.max_payload_bytes,
            description=self.description,
            extras=dict(self.extras),
            triggers=self._triggers,
            state_model=self._state_model,
            completion_event=self._completion_event,
            failure_event=self._failure_event,
            state_version=self._state_version,
            upcasters=self._upcasters,
            known_events=self._known_events,
            resources=self._resources,
            locks=LockSettings(self.locks, self.lock_policy, self.lock_timeout, self.release_locks_after),
        )


def validate_model_data(model: type, data: Any) -> dict[str, Any]:
    """*data* validated against the state *model* (pydantic model or dataclass), in JSON form.

    Raises:
        ValueError: naming the invalid fields.
    """
    from pydantic import TypeAdapter, ValidationError

    try:
        adapter: Any = TypeAdapter(model)
        return dict(adapter.dump_python(adapter.validate_python(data), mode="json"))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors())
        raise ValueError(f"{model.__qualname__}: {problems}") from None


def _check_upcasters(name: str, version: object, upcasters: Mapping[Any, Any]) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DefinitionError(f"saga {name!r}: state version must be an integer >= 1, got {version!r}")
    for v, fn in upcasters.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v < version:
            raise DefinitionError(
                f"saga {name!r}: upcaster key {v!r} must be an older state version, an integer from 1 to {version - 1}"
            )
        if not callable(fn):
            raise DefinitionError(f"saga {name!r}: the upcaster from state version {v} must be callable, got {fn!r}")
    if upcasters:
        missing = [v for v in range(min(upcasters), version) if v not in upcasters]
        if missing:
            raise DefinitionError(
                f"saga {name!r}: no upcaster from state version(s) {missing}: data of state version "
                f"{min(upcasters)} could not reach version {version}"
            )


def _check_locks(
    name: str, locks: LockSettings | None, steps: Sequence[StepDefinition], by_name: Mapping[str, StepDefinition]
) -> LockSettings | None:
    """The saga's lock settings, checked; None when neither the saga nor a step declares keys."""
    for s in steps:
        if s.locks is not None and not callable(s.locks):
            raise DefinitionError(
                f"step {s.name!r}: locks must be a function of the saga's data returning the keys, got {s.locks!r}"
            )
    stepped = any(s.locks is not None for s in steps)
    if locks is None:
        locks = LockSettings()
    if locks.keys is not None and not callable(locks.keys):
        raise DefinitionError(
            f"saga {name!r}: locks must be a function of the saga's data returning the keys "
            f"(locks=lambda data: [f\"order:{{data['order_id']}}\"]), got {locks.keys!r}"
        )
    if locks.policy not in LOCK_POLICIES:
        raise DefinitionError(f"saga {name!r}: lock_policy must be 'wait' or 'fail', got {locks.policy!r}")
    t = locks.timeout
    if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or not t > 0):
        raise DefinitionError(f"saga {name!r}: lock_timeout must be > 0 seconds or None, got {t!r}")
    if locks.release_after is not None and locks.release_after not in by_name:
        hint = difflib.get_close_matches(str(locks.release_after), list(by_name), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise DefinitionError(f"saga {name!r}: release_locks_after names unknown step {locks.release_after!r}{extra}")
    if locks.keys is None and not stepped:
        if locks.release_after is not None or locks.timeout is not None or locks.policy != "wait":
            raise DefinitionError(
                f"saga {name!r}: lock_policy, lock_timeout and release_locks_after need locks= on the saga or on a step"
            )
        return None
    return locks


def _check_callable(where: str, fn: object) -> None:
    if isinstance(fn, StepAction):
        fn.validate(where)
        return
    if not callable(fn):
        raise DefinitionError(f"{where} must be a function or a message action, got {fn!r}")
    _check_arity(where, fn, 1, "one argument (the StepContext)")


def _check_arity(where: str, fn: object, n: int, what: str) -> None:
    try:
        sig = inspect.signature(fn)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*[object()] * n)
    except TypeError:
        raise DefinitionError(f"{where} must accept {what}; {fn!r} has signature {sig}") from None


def _check_for_each(s: StepDefinition, fe: ForEach) -> None:
    where = f"for-each step {s.name!r}"
    if not callable(fe.items):
        raise DefinitionError(
            f"{where}: items must be a function of (data, results) returning the list, got {fe.items!r} "
            '(e.g. items=lambda data, results: data["lines"])'
        )
    _check_arity(f"{where}: items", fe.items, 2, "two arguments (the saga's data and the results)")
    if fe.key is not None:
        if not callable(fe.key):
            raise DefinitionError(f"{where}: key must be a function of the item, got {fe.key!r}")
        _check_arity(f"{where}: key", fe.key, 1, "one argument (the item)")
    p = fe.parallelism
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise DefinitionError(f"{where}: parallelism must be an integer >= 1, got {p!r}")
    if s.pivot:
        raise DefinitionError(f"{where} cannot be a pivot step")
    for label, fn in (("action", s.action), ("compensation", s.compensation)):
        if fn is None:
            continue
        if isinstance(fn, StepAction) or not callable(fn):
            raise DefinitionError(f"{where}: {label} must be a function of (item, ctx), got {fn!r}")
        _check_arity(f"{where}: {label}", fn, 2, "two arguments (the item and the StepContext)")


def build_definition(
    name: str,
    version: int,
    steps: Sequence[StepDefinition],
    *,
    deadline: float | None = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    description: str | None = None,
    extras: Mapping[str, Any] | None = None,
    triggers: Sequence[Trigger] = (),
    state_model: type | None = None,
    completion_event: type | None = None,
    failure_event: type | None = None,
    state_version: int = 1,
    upcasters: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
    known_events: Sequence[type] = (),
    resources: Sequence[Resource] = (),
    locks: LockSettings | None = None,
    choreography: ChoreographySpec | None = None,
) -> SagaDefinition:
    """Validate *steps* and derive the lookups the state machine uses."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(
            f"saga name {name!r} is invalid: use letters, digits, '_', '-' or '.', starting with a letter or '_'"
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DefinitionError(f"saga {name!r}: version must be an integer >= 1, got {version!r}")
    if not steps:
        raise DefinitionError(f"saga {name!r} has no steps")
    if deadline is not None and not deadline > 0:
        raise DefinitionError(f"saga {name!r}: deadline must be > 0 seconds, got {deadline!r}")
    if not isinstance(max_payload_bytes, int) or max_payload_bytes < 1:
        raise DefinitionError(f"saga {name!r}: max_payload_bytes must be a positive integer, got {max_payload_bytes!r}")

    by_name: dict[str, StepDefinition] = {}
    for s in steps:
        if not isinstance(s.name, str) or not _NAME.match(s.name):
            raise DefinitionError(f"saga {name!r}: step name {s.name!r} is invalid")
        if s.name in by_name:
            raise DefinitionError(f"saga {name!r}: duplicate step name {s.name!r}")
        by_name[s.name] = s
        where = f"step {s.name!r}"
        if s.for_each is not None:
            _check_for_each(s, s.for_each)
        else:
            _check_callable(f"{where}: action", s.action)
            if s.compensation is not None:
                _check_callable(f"{where}: compensation", s.compensation)
        s.retry.validate(f"{where}: retry")
        s.compensation_retry.validate(f"{where}: compensation_retry")
        for label, t in (("timeout", s.timeout), ("compensation_timeout", s.compensation_timeout)):
            if t is not None and not t > 0:
                raise DefinitionError(f"{where}: {label} must be > 0 seconds, got {t!r}")
        if s.resource is not None:
            _check_resource(where, s)

    for s in steps:
        for d in s.after:
            if d == s.name:
                raise DefinitionError(f"step {s.name!r} depends on itself")
            if d not in by_name:
                hint = difflib.get_close_matches(d, list(by_name), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise DefinitionError(f"step {s.name!r} depends on unknown step {d!r}{extra}")
        if len(set(s.after)) != len(s.after):
            raise DefinitionError(f"step {s.name!r} lists a dependency twice: {list(s.after)}")

    order = _topological_order(steps)
    dependents: dict[str, list[str]] = {s.name: [] for s in steps}
    for s in steps:
        for d in s.after:
            dependents[d].append(s.name)
    ancestors = _Closure({s.name: s.after for s in steps})
    descendants = _Closure(dependents)
    _check_pivots(steps, order, by_name, descendants)
    locks = _check_locks(name, locks, steps, by_name)

    checked_triggers = _check_messaging(name, triggers, state_model, completion_event, failure_event)
    ups = dict(upcasters or {})
    _check_upcasters(name, state_version, ups)
    for i, k in enumerate(known_events):
        if not is_message_type(k):
            raise _message_type_problem(f"saga {name!r}: known_events[{i}]", k, "an event no step declares")
    # Only the events the saga has no other use for: its own messages are consumed (or sent) as they are.
    declared: set[object] = {t.event for t in checked_triggers} | {state_model, completion_event, failure_event}
    for s in steps:
        for a in (s.action, s.compensation):
            if isinstance(a, StepAction):
                declared.update(a.reply_types.values())
                declared.add(getattr(a, "command", None))

    return SagaDefinition(
        name=name,
        version=version,
        steps=tuple(steps),
        deadline=deadline,
        max_payload_bytes=max_payload_bytes,
        description=description,
        extras=dict(extras or {}),
        triggers=checked_triggers,
        state_model=state_model,
        completion_event=completion_event,
        failure_event=failure_event,
        state_version=state_version,
        upcasters=ups,
        known_events=tuple(k for k in dict.fromkeys(known_events) if k not in declared),
        locks=locks,
        choreography=choreography,
        by_name=by_name,
        order=tuple(order),
        dependents={k: tuple(v) for k, v in dependents.items()},
        descendants=descendants,
        ancestors=ancestors,
        pivots=tuple(s.name for s in steps if s.pivot),
        for_each=tuple(n for n in order if by_name[n].for_each is not None),
        resources=_check_resources(name, resources),
        resource_steps=tuple(n for n in order if by_name[n].resource is not None),
    )


def _check_resource(where: str, s: StepDefinition) -> None:
    res = s.resource
    if not isinstance(res, str) or not res:
        raise DefinitionError(f"{where}: resource must be the name of a resource (a str), got {res!r}")
    if s.for_each is not None:
        raise DefinitionError(
            f"{where}: resource= is not supported on a for-each step (limit its items' calls instead)"
        )
    if not s.local:
        raise DefinitionError(
            f"{where}: resource={res!r} limits attempts the engine runs itself, but the step's action is a "
            "message action (the participant that handles the command limits its own work); "
            "drop resource= or make the action a function"
        )


def _check_resources(name: str, resources: Sequence[Resource]) -> tuple[Resource, ...]:
    seen: dict[str, Resource] = {}
    for r in resources:
        if not isinstance(r, Resource):
            raise DefinitionError(f"saga {name!r}: resources must be sagakit.Resource objects, got {r!r}")
        if r.name in seen and seen[r.name] != r:
            raise DefinitionError(f"saga {name!r}: resource {r.name!r} is declared twice with different limits")
        seen[r.name] = r
    return tuple(seen.values())


class _Closure(dict[str, frozenset[str]]):
    """Every step's transitive ancestors (or descendants), each worked out when first read.

    Storing them all up front takes memory quadratic in the number of steps (a
    chain of 20,000 steps holds 200 million names), while the engine reads
    only a few; after the first read a step's set is a plain dict lookup.
    Iteration, length and equality cover every step, as for a full dict.
    """

    __slots__ = ("_edges",)

    def __init__(self, edges: Mapping[str, Sequence[str]]) -> None:
        super().__init__()
        self._edges = edges

    def __missing__(self, key: str) -> frozenset[str]:
        edges = self._edges
        if key not in edges:
            raise KeyError(key)
        found: set[str] = set()
        stack = list(edges[key])
        while stack:
            n = stack.pop()
            if n in found:
                continue
            found.add(n)
            known = dict.get(self, n)
            if known is not None:
                found |= known  # n's own closure: no need to walk below it
            else:
                stack.extend(edges[n])
        value = frozenset(found)
        dict.__setitem__(self, key, value)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._edges)

    def __len__(self) -> int:
        return len(self._edges)

    def __contains__(self, key: object) -> bool:
        return key in self._edges

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self._edges else default

    def keys(self) -> KeysView[str]:  # type: ignore[override]
        return KeysView(self)

    def values(self) -> ValuesView[frozenset[str]]:  # type: ignore[override]
        return ValuesView(self)

    def items(self) -> ItemsView[str, frozenset[str]]:  # type: ignore[override]
        return ItemsView(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return len(self) == len(other) and all(k in other and other[k] == self[k] for k in self)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Closure, ({k: tuple(v) for k, v in self._edges.items()},))


def _check_pivots(
    steps: Sequence[StepDefinition],
    order: Sequence[str],
    by_name: Mapping[str, StepDefinition],
    descendants: Mapping[str, frozenset[str]],
) -> None:
    """No step after a pivot step may have a compensation."""
    # One pass in dependency order finds whether any step runs after a pivot
    # and has a compensation; only then are pivots' descendants read, to name
    # the first offending pair as before.
    after_pivot: set[str] = set()
    offending = False
    for n in order:
        s = by_name[n]
        if any(d in after_pivot or by_name[d].pivot for d in s.after):
            after_pivot.add(n)
            offending = offending or s.compensation is not None
    if not offending:
        return
    for s in steps:
        if s.pivot:
            for d in sorted(descendants[s.name]):
                if by_name[d].compensation is not None:
                    fix = "pass child(..., compensate=False)" if by_name[d].child else "remove the compensation"
                    raise DefinitionError(
                        f"step {d!r} has a compensation but runs after pivot step {s.name!r}: "
                        f"steps after a pivot cannot be rolled back; {fix}"
                    )


def _check_messaging(
    name: str,
    triggers: Sequence[Trigger],
    state_model: type | None,
    completion_event: type | None,
    failure_event: type | None,
) -> tuple[Trigger, ...]:
    seen: dict[type, int] = {}
    out: list[Trigger] = []
    for i, t in enumerate(triggers):
        event, correlation = t
        where = f"saga {name!r}: trigger {i}"
        if not is_message_type(event):
            raise _message_type_problem(f"{where}: the event type", event, "b.trigger(OrderCreated, ...)")
        if event in seen:
            raise DefinitionError(
                f"{where}: event type {event.__qualname__} is already the trigger {seen[event]}; "
                "give each event type one correlation"
            )
        seen[event] = i
        _check_correlation(f"{where} ({event.__qualname__}): correlation", correlation)
        out.append(Trigger(event, correlation))
    for label, obj, fix in (
        ("state model", state_model, "b.state(OrderState)"),
        ("completion event", completion_event, "b.on_completed(OrderCompleted)"),
        ("failure event", failure_event, "b.on_failed(OrderFailed)"),
    ):
        if obj is not None and not is_message_type(obj):
            raise _message_type_problem(f"saga {name!r}: the {label}", obj, fix)
    return tuple(out)


def _check_correlation(where: str, fn: object) -> None:
    if not callable(fn):
        raise DefinitionError(
            f"{where} must be a function of the event returning its correlation id, got {fn!r} "
            "(e.g. correlation=lambda e: str(e.order_id))"
        )
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(object())
    except TypeError:
        raise DefinitionError(f"{where} must accept one argument (the event); {fn!r} has signature {sig}") from None


def _topological_order(steps: Sequence[StepDefinition]) -> list[str]:
    """Kahn's algorithm in waves, each wave in declaration order; a cycle is reported by its path.

    Linear in steps and dependencies: a chain of 20,000 steps is one wave
    per step, so rescanning the remaining steps per wave would be quadratic.
    """
    position = {s.name: i for i, s in enumerate(steps)}
    waiting = {s.name: len(s.after) for s in steps}
    dependents: dict[str, list[str]] = {s.name: [] for s in steps}
    for s in steps:
        for d in s.after:
            dependents[d].append(s.name)
    order: list[str] = []
    wave = [s.name for s in steps if not s.after]
    while wave:
        order += wave
        ready: list[str] = []
        for n in wave:
            for m in dependents[n]:
                waiting[m] -= 1
                if not waiting[m]:
                    ready.append(m)
        wave = sorted(ready, key=position.__getitem__)
    if len(order) != len(steps):
        done = set(order)
        remaining = {s.name: set(s.after) - done for s in steps if s.name not in done}
        raise DefinitionError(f"steps form a dependency cycle: {_find_cycle(remaining)}")
    return order


def _find_cycle(graph: Mapping[str, set[str]]) -> str:
    start = next(iter(graph))
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = sorted(graph[node])[0]
    cycle = [*path[seen[node] :], node]
    return " -> ".join(repr(n) for n in cycle)
