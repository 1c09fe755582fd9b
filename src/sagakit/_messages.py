"""Message steps as data: ``send`` a command and wait for its reply, or ``wait_for`` an event.

This module describes message-driven steps and the envelope they travel in;
it performs no I/O. The runtime (outbox relay, transports, reply correlation)
builds on these types:

- ``SendCommand`` / ``WaitFor``: step actions (``local`` is False) holding the
  command and event *types*, the per-step reply timeout and the optional
  mapping hooks. ``SendCommand.build_command(state)`` and
  ``apply_reply(state, event)`` apply the hooks or the defaults.
- ``default_command`` fills a command's fields from the saga state by name;
  ``merge_event`` merges an event's fields back into the state.
- ``Envelope``: what goes over the wire (``to_bytes``/``from_bytes``, orjson),
  with a deterministic ``message_id`` so a resend is recognised as the same
  message by the inbox and by brokers that de-duplicate.

Commands and events are pydantic models; dataclasses are accepted too.
Pydantic is imported lazily, only when a dataclass must be (de)serialised.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import re
import uuid
import weakref
from collections import ChainMap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, cast

import orjson

from ._definition import FAULT_TYPE_NAME, ReplyRead, StepAction, _message_type_problem, is_message_type
from ._errors import DefinitionError, NonRetryableError, SagaError
from ._json import is_pydantic
from ._tracebacks import format_traceback

__all__ = [
    "FAULT_TYPE_NAME",
    "CorrelationError",
    "Envelope",
    "EnvelopeError",
    "Fault",
    "MessageMappingError",
    "ReplyKind",
    "SendCommand",
    "WaitFor",
    "command_view",
    "default_command",
    "from_payload",
    "merge_event",
    "message_id",
    "message_name",
    "message_type_name",
    "send",
    "to_correlation_id",
    "to_payload",
    "validate_state",
    "wait_for",
]

T = TypeVar("T")
ReplyKind = Literal["success", "failure"]
ToCommand = Callable[..., Any]  # (state) -> command, or (state, ctx) -> command
Merge = Callable[[Mapping[str, Any], Any], Mapping[str, Any]]

# The namespace of sagakit's deterministic message ids; never change it, or
# resends after an upgrade would get new ids.
MESSAGE_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://sagakit.dev/message-id")
ENVELOPE_FORMAT = 1


class MessageMappingError(NonRetryableError, SagaError, ValueError):
    """A command, event or saga state could not be built from the data at hand.

    Deterministic, so retrying cannot help: it derives from NonRetryableError.
    ``traceback`` is where a user's hook (``to_command``, ``merge``, the state
    model) raised, formatted for the failed step's history entry, or None.
    """

    traceback: str | None = None


def _hook_failed(error: MessageMappingError, cause: BaseException) -> MessageMappingError:
    """*error* carrying the traceback of *cause*, the exception of a user's hook or model."""
    error.traceback = format_traceback(cause)
    return error


class EnvelopeError(SagaError, ValueError):
    """Bytes that are not a sagakit message envelope, or an envelope that cannot be encoded."""


class CorrelationError(SagaError, ValueError):
    """A correlation extractor failed on an event or produced no usable id."""


# ---------------------------------------------------------------- type helpers


def message_type_name(cls: type) -> str:
    """The wire name of a command or event type.

    A class's own ``message_name`` attribute (``message_name: ClassVar[str] =
    "payments.PaymentProcessed"``, or the ``@message_name(...)`` decorator) when
    it sets one, else ``"module.QualName"``. Only the class's own attribute
    counts: a subclass does not inherit its parent's wire name.

    Raises:
        DefinitionError: the class's ``message_name`` is not a valid name.
    """
    name = cls.__dict__.get("message_name")
    if name is not None and not _is_field(cls, "message_name"):
        if isinstance(name, str) and _WIRE_NAME.fullmatch(name):
            return name
        raise DefinitionError(f"{cls.__module__}.{cls.__qualname__}.message_name: {_name_problem(name)}")
    return f"{cls.__module__}.{cls.__qualname__}"


_WIRE_NAME = re.compile(r"\S+")


def _is_field(cls: type, attribute: str) -> bool:
    """Whether *attribute* of a dataclass is one of its fields (its class attribute is then a default)."""
    return "__dataclass_fields__" in cls.__dict__ and any(f.name == attribute for f in dataclasses.fields(cls))


def _name_problem(name: object) -> str:
    return (
        f"a message name must be a non-empty string without whitespace, got {name!r} (e.g. 'payments.PaymentProcessed')"
    )


def message_name(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: give a command or event type a stable wire name.

    ``@message_name("payments.PaymentProcessed")`` on a class is the same as
    ``message_name: ClassVar[str] = "payments.PaymentProcessed"`` in its body:
    messages of the class travel under that name instead of its Python path,
    so another service (in any language) need not mirror the module, and moving
    the class to another module does not change its routing.

    Raises:
        DefinitionError: *name* is empty or holds whitespace.
    """
    if not isinstance(name, str) or not _WIRE_NAME.fullmatch(name):
        raise DefinitionError(f"message_name({name!r}): {_name_problem(name)}")

    def named(cls: type[T]) -> type[T]:
        if not isinstance(cls, type):
            raise DefinitionError(f"@message_name({name!r}) decorates a class, not {cls!r}")
        cls.message_name = name  # type: ignore[attr-defined]
        return cls

    return named


@dataclass(frozen=True, slots=True)
class Fault:
    """A participant's reply when its handler raised: the command was not handled.

    A fault fails the step's attempt at once (its retry policy applies); it is
    not a business failure event. The engine consumes faults for every step that
    waits for a reply.

    Attributes:
        error_type: the exception's class name.
        message: the exception's text.
        command_type: the wire name of the command that failed.
        traceback: the handler's traceback, bounded, or "".
    """

    message_name: ClassVar[str] = FAULT_TYPE_NAME

    error_type: str
    message: str
    command_type: str
    traceback: str = ""


@functools.lru_cache(maxsize=512)
def _adapter(cls: type) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


def to_payload(message: object) -> dict[str, Any]:
    """The JSON-ready fields of a command or event instance (pydantic model or dataclass)."""
    cls = type(message)
    if is_pydantic(cls):
        return cast("dict[str, Any]", message.model_dump(mode="json"))  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(cls):
        return cast("dict[str, Any]", _adapter(cls).dump_python(message, mode="json"))
    raise MessageMappingError(
        f"{message!r} is not a message: commands and events must be pydantic model or dataclass instances"
    )


def from_payload(cls: type[T], payload: Mapping[str, Any]) -> T:
    """Validate *payload* into an instance of *cls* (pydantic model or dataclass).

    Raises:
        MessageMappingError: naming the type and each invalid field.
    """
    from pydantic import ValidationError

    try:
        if is_pydantic(cls):
            return cast("T", cls.model_validate(dict(payload)))  # type: ignore[attr-defined]
        if dataclasses.is_dataclass(cls):
            return cast("T", _adapter(cls).validate_python(dict(payload)))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors())
        raise MessageMappingError(f"cannot build {message_type_name(cls)}: {problems}") from e
    raise MessageMappingError(f"{cls!r} is not a message type: use a pydantic model or a dataclass class")


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    key: str  # the key the type's validation expects (its alias, if it has one)
    alias: str | None
    required: bool


_FIELDS: weakref.WeakKeyDictionary[type, tuple[_Field, ...]] = weakref.WeakKeyDictionary()


def _fields(cls: type) -> tuple[_Field, ...]:
    """The fields of a message type (computed once per type)."""
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = tuple(_read_fields(cls))
    return found


def _read_fields(cls: type) -> list[_Field]:
    if is_pydantic(cls):
        out = []
        for name, info in cls.model_fields.items():  # type: ignore[attr-defined]
            alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
            out.append(_Field(name, alias or name, alias, bool(info.is_required())))
        return out
    if dataclasses.is_dataclass(cls):
        return [
            _Field(
                f.name,
                f.name,
                None,
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
            if f.init
        ]
    raise MessageMappingError(f"{cls!r} is not a message type: use a pydantic model or a dataclass class")


def _state_mapping(state: object) -> Mapping[str, Any]:
    if isinstance(state, Mapping):
        return state
    cls = type(state)
    if is_pydantic(cls):
        return cast("dict[str, Any]", state.model_dump())  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(cls):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(cls)}
    raise MessageMappingError(f"saga state must be a mapping or a state model instance, got {state!r}")


def default_command(command_cls: type[T], state: Mapping[str, Any] | object) -> T:
    """Build a *command_cls* instance, filling each field from the saga state key of the same name.

    Fields the state lacks keep their default.

    Raises:
        MessageMappingError: a required field has no value in the state (the
            message names the command, the fields and the state's keys), or a
            value does not validate.
    """
    data = _state_mapping(state)
    values: dict[str, Any] = {}
    missing: list[str] = []
    for f in _fields(command_cls):
        if f.name in data:
            values[f.key] = data[f.name]
        elif f.alias is not None and f.alias in data:
            values[f.key] = data[f.alias]
        elif f.required:
            missing.append(f.name)
    if missing:
        fields = ", ".join(repr(m) for m in missing)
        keys = ", ".join(repr(k) for k in sorted(data, key=str)) or "none"
        raise MessageMappingError(
            f"cannot build command {message_type_name(command_cls)}: required field(s) {fields} "
            f"have no value in the saga state (state keys: {keys}); add them to the saga state "
            "(the trigger event or an earlier step's success event) or pass to_command= to send()"
        )
    return from_payload(command_cls, values)


def command_view(
    data: Mapping[str, Any] | object,
    results: Mapping[str, Any] | None = None,
    failure: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Mapping[str, Any]:
    """What a default command or an outcome event is filled from, looked up in this order.

    The saga's data; then the fields of finished steps' results that are
    objects (a later step's before an earlier one's); then the fields of the
    failure event that failed a step (``ctx.failure``); then *extra*.
    """
    layers: list[Mapping[str, Any]] = [_state_mapping(data) if data is not None else {}]
    if results:
        layers.extend(r for r in reversed(list(results.values())) if isinstance(r, Mapping))
    if failure:
        payload = failure.get("payload")
        if isinstance(payload, Mapping):
            layers.append(payload)
    if extra:
        layers.append(extra)
    return ChainMap(*cast("list[dict[str, Any]]", layers))


@functools.lru_cache(maxsize=256)
def _takes_context(hook: Callable[..., Any]) -> bool:
    """Whether a command builder takes ``(data, ctx)`` rather than ``(data)``."""
    try:
        params = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


def merge_event(state: Mapping[str, Any] | object, event: object) -> dict[str, Any]:
    """A new state: *state* updated with the event's fields (in their JSON form, as they travel)."""
    merged = dict(_state_mapping(state))
    merged.update(to_payload(event))
    return merged


def validate_state(model: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate *data* against the saga state *model* and return it in JSON form.

    Raises:
        MessageMappingError: naming the model and each invalid field.
    """
    return to_payload(from_payload(model, data))


def to_correlation_id(value: object, *, source: str | None = None) -> str:
    """Turn what a correlation extractor returned into a correlation id (``str(value)``).

    Raises:
        CorrelationError: the value is None or empty: every saga of the
            definition would share one id, so only the first would ever start.
    """
    if value is None or value == "":
        where = f"correlation {source!r}" if source else "the correlation extractor"
        raise CorrelationError(
            f"{where} returned {value!r}: a correlation id must be a non-empty value; "
            "check that the event carries the field the extractor reads"
        )
    return value if isinstance(value, str) else str(value)


# ---------------------------------------------------------------- step actions


def _check_type(where: str, obj: object, fix: str) -> None:
    if not is_message_type(obj):
        raise _message_type_problem(where, obj, fix)


def _check_timeout(where: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise DefinitionError(f"{where}: reply_timeout must be a number of seconds > 0, got {value!r}")


def _check_hook(where: str, name: str, hook: object) -> None:
    if hook is not None and not callable(hook):
        raise DefinitionError(f"{where}: {name} must be a function or None, got {hook!r}")


def _check_outcomes(where: str, success: tuple[type, ...], failure: tuple[type, ...]) -> None:
    if not isinstance(failure, tuple):
        raise DefinitionError(f"{where}: failure must be a tuple of event types, got {failure!r}")
    both = set(success) & set(failure)
    if both:
        t = next(iter(both))
        raise DefinitionError(
            f"{where}: {t.__qualname__} is both a success and a failure event; a reply must mean one or the other"
        )
    seen: dict[str, type] = {}
    for kind, types in (("success", success), ("failure", failure)):
        for i, t in enumerate(types):
            _check_type(
                f"{where}: {kind} event {i}", t, f"e.g. {kind}=Payment{'Processed' if kind == 'success' else 'Failed'}"
            )
            name = message_type_name(t)
            if name == FAULT_TYPE_NAME:
                raise DefinitionError(
                    f"{where}: {t.__qualname__} has the wire name {FAULT_TYPE_NAME!r}, which sagakit keeps for "
                    "participant faults; give it another message_name"
                )
            other = seen.get(name)
            if other is not None:
                if other is t:
                    raise DefinitionError(f"{where}: {t.__qualname__} is listed twice among the outcome events")
                raise DefinitionError(
                    f"{where}: {other.__qualname__} and {t.__qualname__} have the same wire name {name!r}; "
                    "a reply must mean one thing"
                )
            seen[name] = t


def _failure_types(failure: type | Sequence[type] | None) -> tuple[type, ...]:
    """``failure=`` as given (None, one type, or several) as a tuple; other values are reported by validate()."""
    if failure is None:
        return ()
    if isinstance(failure, list | tuple):
        return tuple(failure)
    return (cast("type", failure),)


def _reply_kind(success: tuple[type, ...], failure: tuple[type, ...], type_name: str) -> ReplyKind | None:
    for s in success:
        if message_type_name(s) == type_name:
            return "success"
    for f in failure:
        if message_type_name(f) == type_name:
            return "failure"
    return None


def _reply_types(success: tuple[type, ...], failure: tuple[type, ...]) -> dict[str, type]:
    types = {message_type_name(s): s for s in success}
    for f in failure:
        types[message_type_name(f)] = f
    return types


@dataclass(frozen=True, slots=True)
class SendCommand(StepAction):
    """A step (or compensation) that sends a command and waits for a success or failure event.

    With no success and no failure event the step completes once the command
    is committed to the outbox (fire and forget).

    Attributes:
        command: the command type (pydantic model or dataclass).
        success: the event types that complete the step (any one of them).
        failure: the event types that fail the step (any one of them).
        reply_timeout: seconds to wait for the reply per attempt; None waits forever.
        to_command: ``state -> command`` instead of ``default_command``.
        merge: ``(state, event) -> state`` instead of ``merge_event``, applied to a success event.
        destination: where to send the command (topic, queue, subject); None lets
            the transport derive it from the command's type name.
    """

    sends: ClassVar[bool] = True

    command: type
    success: tuple[type, ...] = ()
    failure: tuple[type, ...] = ()
    reply_timeout: float | None = None
    to_command: ToCommand | None = None
    merge: Merge | None = None
    destination: str | None = None

    def validate(self, where: str) -> None:
        """Check the types and hooks; raise DefinitionError naming *where* (the step)."""
        _check_type(f"{where}: the command", self.command, "e.g. send(ProcessPayment, ...)")
        if not isinstance(self.success, tuple):
            raise DefinitionError(f"{where}: success must be a tuple of event types, got {self.success!r}")
        _check_outcomes(where, self.success, self.failure)
        if self.failure and not self.success:
            raise DefinitionError(
                f"{where}: a failure event without a success event: the step could never "
                "complete; add success=... or drop failure="
            )
        _check_timeout(where, self.reply_timeout)
        _check_hook(where, "to_command", self.to_command)
        _check_hook(where, "merge", self.merge)
        if self.destination is not None and (not isinstance(self.destination, str) or not self.destination):
            raise DefinitionError(f"{where}: destination must be a non-empty string or None, got {self.destination!r}")

    @property
    def type_name(self) -> str:
        """The command's wire type name."""
        return message_type_name(self.command)

    @property
    def awaits_reply(self) -> bool:
        """False for fire-and-forget sends, which complete when the command is committed."""
        return bool(self.success) or bool(self.failure)

    @property
    def reply_types(self) -> dict[str, type]:
        """Success and failure event types by wire type name."""
        return _reply_types(self.success, self.failure)

    def reply_kind(self, type_name: str) -> ReplyKind | None:
        """Whether an event of *type_name* completes ("success") or fails ("failure") the step."""
        return _reply_kind(self.success, self.failure, type_name)

    def expects(self, type_name: str) -> bool:
        """A reply type, or a participant's fault when the command awaits a reply."""
        return type_name in self.reply_types or (type_name == FAULT_TYPE_NAME and self.awaits_reply)

    def build_command(self, state: Mapping[str, Any], ctx: Any = None) -> Any:
        """The command to send: ``to_command(state)`` or ``to_command(state, ctx)``, else ``default_command``.

        *ctx* is the attempt's ``StepContext`` (``results`` of finished steps,
        ``failure``, ``saga_id``, ``idempotency_key``). Without a hook, the
        command's fields are looked up by name in ``command_view``: the saga's
        data, then finished steps' results, then the failure event's fields.

        Raises:
            MessageMappingError: the command cannot be built, the hook raised, or
                it returned another type.
        """
        if self.to_command is None:
            view = state if ctx is None else command_view(state, ctx.results, ctx.failure)
            return default_command(self.command, view)
        hook = self.to_command
        try:
            cmd = hook(state, ctx) if _takes_context(hook) else hook(state)
        except MessageMappingError as e:
            _hook_failed(e, e)
            raise
        except Exception as e:
            raise _hook_failed(MessageMappingError(f"to_command raised {type(e).__name__}: {e}"), e) from e
        if not isinstance(cmd, self.command):
            raise MessageMappingError(
                f"to_command returned {type(cmd).__qualname__}, expected a {message_type_name(self.command)} instance"
            )
        return cmd

    def apply_reply(self, state: Mapping[str, Any], event: object) -> Mapping[str, Any]:
        """The new state after a success event: ``merge(state, event)`` or ``merge_event``."""
        if self.merge is None:
            return merge_event(state, event)
        return self.merge(state, event)

    def read_reply(
        self, type_name: str, payload: Mapping[str, Any], data: Any, state_model: type | None, merge: bool
    ) -> ReplyRead:
        return _read_reply(self, type_name, payload, data, state_model, merge)


@dataclass(frozen=True, slots=True)
class WaitFor(StepAction):
    """A step that sends nothing and waits for an external event (an approval, a callback).

    Attributes:
        event: the event type that completes the step.
        failure: the event types that fail the step (any one of them).
        reply_timeout: seconds to wait per attempt; None waits forever.
        correlation: ``event -> correlation id`` to match an event that does not
            carry the saga's envelope headers; None matches by headers only.
        merge: ``(state, event) -> state`` instead of ``merge_event``.
    """

    event: type
    failure: tuple[type, ...] = ()
    reply_timeout: float | None = None
    correlation: Callable[[Any], str] | None = None
    merge: Merge | None = None

    def validate(self, where: str) -> None:
        """Check the types and hooks; raise DefinitionError naming *where* (the step)."""
        _check_outcomes(where, (self.event,), self.failure)
        _check_timeout(where, self.reply_timeout)
        _check_hook(where, "correlation", self.correlation)
        _check_hook(where, "merge", self.merge)

    @property
    def reply_types(self) -> dict[str, type]:
        """Success and failure event types by wire type name."""
        return _reply_types((self.event,), self.failure)

    def reply_kind(self, type_name: str) -> ReplyKind | None:
        """Whether an event of *type_name* completes ("success") or fails ("failure") the step."""
        return _reply_kind((self.event,), self.failure, type_name)

    def apply_reply(self, state: Mapping[str, Any], event: object) -> Mapping[str, Any]:
        """The new state after the success event: ``merge(state, event)`` or ``merge_event``."""
        if self.merge is None:
            return merge_event(state, event)
        return self.merge(state, event)

    def read_reply(
        self, type_name: str, payload: Mapping[str, Any], data: Any, state_model: type | None, merge: bool
    ) -> ReplyRead:
        return _read_reply(self, type_name, payload, data, state_model, merge)


def _read_reply(
    action: SendCommand | WaitFor,
    type_name: str,
    payload: Mapping[str, Any],
    data: Any,
    state_model: type | None,
    merge: bool,
) -> ReplyRead:
    """See ``StepAction.read_reply``."""
    if type_name == FAULT_TYPE_NAME and type_name not in action.reply_types:
        fault = from_payload(Fault, payload)
        return ReplyRead(f"participant fault: {fault.error_type}: {fault.message}", dict(payload), fault=True)
    cls = action.reply_types[type_name]
    event: Any = from_payload(cls, payload)
    if action.reply_kind(type_name) == "failure":
        return ReplyRead(f"{type_name}: {orjson.dumps(dict(payload)).decode()}", to_payload(event))
    if merge:
        try:
            data = dict(action.apply_reply(data if isinstance(data, Mapping) else {}, event))
            if state_model is not None:
                data = validate_state(state_model, data)
        except MessageMappingError as e:
            _hook_failed(e, e)
            raise
        except Exception as e:
            raise _hook_failed(
                MessageMappingError(f"merging {type_name} into the saga state failed: {type(e).__name__}: {e}"), e
            ) from e
    result = to_payload(event)
    return ReplyRead(None, result, len(orjson.dumps(result)), data)


def send(
    command: type,
    success: type | Sequence[type] | None = None,
    failure: type | Sequence[type] | None = None,
    *,
    reply_timeout: float | None = None,
    to_command: ToCommand | None = None,
    merge: Merge | None = None,
    destination: str | None = None,
) -> SendCommand:
    """A step action (or compensation) that sends *command* and waits for *success* or *failure*.

    Example::

        b.step("charge",
               action=send(ProcessPayment, success=PaymentProcessed, failure=PaymentFailed,
                           reply_timeout=30),
               compensation=send(RefundPayment, success=PaymentRefunded))

    Args:
        command: the command type; by default its fields are filled from the
            saga state by name (``default_command``).
        success: one event type or several; any of them completes the step and
            its fields are merged into the saga state (``merge_event``).
        failure: one event type or several; any of them fails the step (not
            retried: it is the participant's answer). The event is recorded as
            the step's error and shown to the compensations (``ctx.failure``).
        reply_timeout: seconds to wait for the reply per attempt.
        to_command: ``state -> command``, or ``(state, ctx) -> command`` with the
            attempt's ``StepContext`` (``ctx.results``, ``ctx.failure``), to
            build the command yourself.
        merge: ``(state, event) -> state`` to apply the success event yourself.
        destination: topic/queue/subject; None lets the transport decide.

    The types are checked when the definition is built (``DefinitionError``
    naming the step).
    """
    if success is None:
        outcomes: tuple[type, ...] = ()
    elif isinstance(success, list | tuple):
        outcomes = tuple(success)
    else:
        # A single type; anything else is reported by validate() with the step's name.
        outcomes = (cast("type", success),)
    return SendCommand(
        command=command,
        success=outcomes,
        failure=_failure_types(failure),
        reply_timeout=reply_timeout,
        to_command=to_command,
        merge=merge,
        destination=destination,
    )


def wait_for(
    event: type,
    failure: type | Sequence[type] | None = None,
    timeout: float | None = None,
    correlation: Callable[[Any], str] | None = None,
    *,
    merge: Merge | None = None,
) -> WaitFor:
    """A step action that waits for an external *event* (or *failure*) without sending anything.

    Example::

        b.step("approve", action=wait_for(Approved, failure=Rejected, timeout=86400,
                                          correlation=lambda e: e.order_id))

    ``timeout`` is the reply timeout of each attempt, in seconds.
    """
    return WaitFor(
        event=event, failure=_failure_types(failure), reply_timeout=timeout, correlation=correlation, merge=merge
    )


# ---------------------------------------------------------------- envelope


def message_id(saga_id: str, step: str, attempt: int, direction: str) -> str:
    """The deterministic id of the message a saga sends for one attempt of one step.

    The same (saga, step, attempt, direction) always gives the same id, so a
    resend after a crash or a reply timeout is recognised as the same message.
    *direction* is ``"action"`` or ``"compensation"`` for commands (other
    labels, e.g. ``"completed"``, name saga-level events).
    """
    return name_uuid(MESSAGE_ID_NAMESPACE, orjson.dumps([saga_id, step, attempt, direction]))


def name_uuid(namespace: uuid.UUID, name: str | bytes) -> str:
    """``str(uuid.uuid5(namespace, name))``, computed without the intermediate UUID object (once per message)."""
    data = name.encode() if isinstance(name, str) else name
    h = bytearray(hashlib.sha1(namespace.bytes + data, usedforsecurity=False).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


_ENVELOPE_KEYS = (
    "message_id",
    "type_name",
    "saga_id",
    "step",
    "token",
    "correlation_id",
    "causation_id",
    "timestamp",
    "headers",
    "payload",
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One command or event on the wire, with what is needed to route and correlate it.

    Attributes:
        message_id: unique id; deterministic for commands (``message_id()``).
        type_name: the wire type name of the payload (``message_type_name``).
        saga_id: the saga that sent the command or that the reply is for; None
            for events published by application code (e.g. a trigger).
        step: the step that sent the command / the reply is for.
        token: the attempt token of the step; a reply carrying a stale token is
            rejected.
        correlation_id: the saga's business correlation id.
        causation_id: the id of the message that caused this one (a reply's
            causation is the command's message id).
        timestamp: seconds since the epoch, given by the sender's clock.
        headers: string headers (trace context, broker routing, ...).
        payload: the message's fields in JSON form.
    """

    message_id: str
    type_name: str
    timestamp: float
    saga_id: str | None = None
    step: str | None = None
    token: int | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    payload: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def wrap(
        cls,
        message: object,
        *,
        message_id: str,
        timestamp: float,
        saga_id: str | None = None,
        step: str | None = None,
        token: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Envelope:
        """An envelope around a command or event instance."""
        return cls(
            message_id=message_id,
            type_name=message_type_name(type(message)),
            timestamp=timestamp,
            saga_id=saga_id,
            step=step,
            token=token,
            correlation_id=correlation_id,
            causation_id=causation_id,
            headers=dict(headers or {}),
            payload=to_payload(message),
        )

    def unwrap(self, cls: type[T]) -> T:
        """The payload as a *cls* instance.

        Raises:
            MessageMappingError: the envelope holds another type, or the payload does not validate.
        """
        expected = message_type_name(cls)
        if self.type_name != expected:
            raise MessageMappingError(f"envelope {self.message_id} holds a {self.type_name}, not a {expected}")
        return from_payload(cls, self.payload)

    def reply(
        self,
        event: object,
        *,
        message_id: str,
        timestamp: float,
        headers: Mapping[str, str] | None = None,
    ) -> Envelope:
        """The envelope of a reply to this message: correlation copied, causation = this id."""
        return Envelope.wrap(
            event,
            message_id=message_id,
            timestamp=timestamp,
            saga_id=self.saga_id,
            step=self.step,
            token=self.token,
            correlation_id=self.correlation_id,
            causation_id=self.message_id,
            headers={**self.headers, **(headers or {})},
        )

    def to_bytes(self) -> bytes:
        """Serialise with orjson (sorted keys, so equal envelopes give equal bytes).

        Raises:
            EnvelopeError: a header or payload value is not JSON-serialisable.
        """
        doc: dict[str, Any] = {"sagakit_envelope": ENVELOPE_FORMAT}
        for k in _ENVELOPE_KEYS:
            v = getattr(self, k)
            # A read-only mapping (headers, payload) is written as a dict; the common values
            # skip the (slow) abstract-class check.
            doc[k] = v if type(v) in _AS_IS or not isinstance(v, Mapping) else dict(v)
        try:
            return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        except TypeError as e:
            raise EnvelopeError(f"envelope {self.message_id} ({self.type_name}) cannot be encoded: {e}") from e

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview | str) -> Envelope:
        """Parse bytes written by ``to_bytes``.

        Raises:
            EnvelopeError: naming what is missing or malformed.
        """
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise EnvelopeError(f"not a sagakit envelope: invalid JSON ({e})") from e
        if not isinstance(doc, dict):
            raise EnvelopeError(f"not a sagakit envelope: expected a JSON object, got {type(doc).__name__}")
        fmt = doc.get("sagakit_envelope")
        if fmt != ENVELOPE_FORMAT:
            raise EnvelopeError(f"not a sagakit envelope of format {ENVELOPE_FORMAT}: 'sagakit_envelope' is {fmt!r}")
        _expect(doc, "message_id", str)
        _expect(doc, "type_name", str)
        _expect(doc, "timestamp", int | float)
        for k in ("saga_id", "step", "correlation_id", "causation_id"):
            _expect(doc, k, str, optional=True)
        _expect(doc, "token", int, optional=True)
        _expect(doc, "headers", dict)
        _expect(doc, "payload", dict)
        headers = doc["headers"]
        bad = [k for k, v in headers.items() if not isinstance(v, str)]
        if bad:
            raise EnvelopeError(f"envelope {doc['message_id']}: header(s) {bad} are not strings")
        return cls(**{k: doc[k] for k in _ENVELOPE_KEYS})


_AS_IS = frozenset((str, int, float, type(None), dict))


def _expect(doc: dict[str, Any], key: str, kind: Any, *, optional: bool = False) -> None:
    if key not in doc:
        raise EnvelopeError(f"sagakit envelope lacks {key!r}")
    value = doc[key]
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, kind):
        raise EnvelopeError(f"sagakit envelope: {key!r} has the wrong type: {value!r}")
