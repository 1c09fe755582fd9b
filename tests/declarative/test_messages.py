"""Message steps as data: send/wait_for, command and state mapping, the envelope, message ids."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, Field

from sagakit import DefinitionError, NonRetryableError, SagaBuilder, send, wait_for
from sagakit._definition import StepAction, Trigger, is_message_type
from sagakit._messages import (
    CorrelationError,
    Envelope,
    EnvelopeError,
    MessageMappingError,
    SendCommand,
    WaitFor,
    default_command,
    from_payload,
    merge_event,
    message_id,
    message_type_name,
    to_correlation_id,
    to_payload,
    validate_state,
)


class ProcessPayment(BaseModel):
    order_id: str
    amount: float
    currency: str = "EUR"


class PaymentProcessed(BaseModel):
    order_id: str
    payment_id: str
    at: datetime | None = None


class PaymentFailed(BaseModel):
    order_id: str
    reason: str


class Refund(BaseModel):
    order_id: str
    payment_id: str


class Refunded(BaseModel):
    order_id: str


class Aliased(BaseModel):
    customer: str = Field(alias="customerId")


@dataclasses.dataclass
class ShipOrder:
    order_id: str
    address: str = "unknown"
    items: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class OrderShipped:
    order_id: str
    tracking: uuid.UUID


class OrderState(BaseModel):
    order_id: str
    amount: float = 0
    payment_id: str | None = None


class NotAMessage:
    pass


def noop(ctx: Any) -> None:
    return None


# ---------------------------------------------------------------- send / wait_for


def test_send_returns_a_frozen_non_local_step_action() -> None:
    a = send(ProcessPayment, success=PaymentProcessed, failure=PaymentFailed, reply_timeout=5)
    assert isinstance(a, SendCommand)
    assert isinstance(a, StepAction)
    assert a.local is False
    assert a.command is ProcessPayment
    assert a.success == (PaymentProcessed,)
    assert a.failure == (PaymentFailed,)
    assert a.reply_timeout == 5
    assert a.to_command is None and a.merge is None and a.destination is None
    assert a.awaits_reply
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.command = Refund  # type: ignore[misc]


def test_send_accepts_a_list_of_success_events_and_no_success_at_all() -> None:
    a = send(ShipOrder, success=[OrderShipped, PaymentProcessed])
    assert a.success == (OrderShipped, PaymentProcessed)
    fire_and_forget = send(ShipOrder)
    assert fire_and_forget.success == () and not fire_and_forget.awaits_reply


def test_send_and_wait_for_build_into_a_definition() -> None:
    b = SagaBuilder("orders")
    b.step(
        "pay",
        action=send(ProcessPayment, success=PaymentProcessed),
        compensation=send(Refund, success=Refunded),
    )
    b.step("approve", action=wait_for(PaymentProcessed, failure=PaymentFailed, timeout=60))
    d = b.build()
    assert not d.step("pay").local and not d.step("pay").compensation_local
    w = d.step("approve").action
    assert isinstance(w, WaitFor)
    assert w.event is PaymentProcessed and w.failure == (PaymentFailed,) and w.reply_timeout == 60
    assert w.local is False


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (
            lambda: send(NotAMessage, success=PaymentProcessed),
            "step 'pay': action: the command must be a pydantic model or dataclass class, got class",
        ),
        (
            lambda: send(ProcessPayment(order_id="o", amount=1)),
            "an instance of ProcessPayment; pass the class itself",
        ),  # type: ignore[arg-type]
        (lambda: send(ProcessPayment, success=NotAMessage), "step 'pay': action: success event 0 must be"),
        (lambda: send(ProcessPayment, success=[PaymentProcessed, "Nope"]), "success event 1 must be"),  # type: ignore[list-item]
        (lambda: send(ProcessPayment, success="PaymentProcessed"), "success event 0 must be"),  # type: ignore[arg-type]
        (lambda: send(ProcessPayment, success=PaymentProcessed, failure=42), "failure event 0 must be"),  # type: ignore[arg-type]
        (lambda: send(ProcessPayment, success=[PaymentProcessed, PaymentProcessed]), "listed twice"),
        (
            lambda: send(ProcessPayment, success=PaymentProcessed, failure=PaymentProcessed),
            "both a success and a failure",
        ),
        (lambda: send(ProcessPayment, failure=PaymentFailed), "a failure event without a success event"),
        (
            lambda: send(ProcessPayment, success=PaymentProcessed, reply_timeout=0),
            "reply_timeout must be a number of seconds > 0, got 0",
        ),
        (lambda: send(ProcessPayment, success=PaymentProcessed, reply_timeout=True), "reply_timeout must be"),
        (
            lambda: send(ProcessPayment, success=PaymentProcessed, to_command=3),
            "to_command must be a function",
        ),  # type: ignore[arg-type]
        (lambda: send(ProcessPayment, success=PaymentProcessed, merge="x"), "merge must be a function"),  # type: ignore[arg-type]
        (
            lambda: send(ProcessPayment, success=PaymentProcessed, destination=""),
            "destination must be a non-empty string",
        ),
        (lambda: wait_for(NotAMessage), "step 'pay': action: success event 0 must be"),
        (lambda: wait_for(PaymentProcessed, failure=dict), "failure event 0 must be"),
        (lambda: wait_for(PaymentProcessed, timeout=-1), "reply_timeout must be"),
        (lambda: wait_for(PaymentProcessed, correlation=5), "correlation must be a function"),  # type: ignore[arg-type]
    ],
)
def test_bad_message_steps_are_rejected_at_build_naming_the_step(action: Any, expected: str) -> None:
    b = SagaBuilder("orders").step("pay", action=action())
    with pytest.raises(DefinitionError) as e:
        b.build()
    assert expected in str(e.value)


def test_a_bad_compensation_names_the_compensation() -> None:
    b = SagaBuilder("orders").step("pay", action=noop, compensation=send(NotAMessage))
    with pytest.raises(DefinitionError, match="step 'pay': compensation: the command must be"):
        b.build()


def test_dataclasses_are_message_types() -> None:
    assert is_message_type(ShipOrder) and is_message_type(ProcessPayment)
    assert not is_message_type(NotAMessage) and not is_message_type(ShipOrder("o"))
    assert not is_message_type(dict) and not is_message_type("x")
    SagaBuilder("s").step("ship", action=send(ShipOrder, success=OrderShipped)).build()


def test_reply_kind_and_types() -> None:
    a = send(ProcessPayment, success=[PaymentProcessed, Refunded], failure=PaymentFailed)
    assert a.reply_kind(message_type_name(PaymentProcessed)) == "success"
    assert a.reply_kind(message_type_name(Refunded)) == "success"
    assert a.reply_kind(message_type_name(PaymentFailed)) == "failure"
    assert a.reply_kind(message_type_name(Refund)) is None
    assert a.reply_types == {
        message_type_name(PaymentProcessed): PaymentProcessed,
        message_type_name(Refunded): Refunded,
        message_type_name(PaymentFailed): PaymentFailed,
    }
    assert a.type_name == message_type_name(ProcessPayment)
    w = wait_for(PaymentProcessed, failure=PaymentFailed)
    assert w.reply_kind(message_type_name(PaymentFailed)) == "failure"
    assert w.reply_kind(message_type_name(PaymentProcessed)) == "success"
    assert set(w.reply_types) == {message_type_name(PaymentProcessed), message_type_name(PaymentFailed)}


def test_message_type_name_is_module_and_qualname() -> None:
    class Inner(BaseModel):
        x: int

    assert message_type_name(ProcessPayment) == f"{__name__}.ProcessPayment"
    assert message_type_name(Inner) == f"{__name__}.test_message_type_name_is_module_and_qualname.<locals>.Inner"


# ---------------------------------------------------------------- triggers, state, outcome events


def test_builder_trigger_state_and_outcome_events() -> None:
    corr = lambda e: str(e.order_id)  # noqa: E731
    b = SagaBuilder("orders")
    assert b.trigger(PaymentProcessed, correlation=corr) is b
    assert b.state(OrderState) is b
    assert b.on_completed(Refunded) is b
    assert b.on_failed(PaymentFailed) is b
    b.step("pay", action=send(ProcessPayment, success=PaymentProcessed))
    d = b.build()
    assert d.triggers == (Trigger(PaymentProcessed, corr),)
    assert d.triggers[0].event is PaymentProcessed and d.triggers[0].correlation is corr
    event, fn = d.triggers[0]
    assert event is PaymentProcessed and fn is corr
    assert d.state_model is OrderState
    assert d.completion_event is Refunded and d.failure_event is PaymentFailed


def test_builder_defaults_have_no_messaging() -> None:
    d = SagaBuilder("plain").step("a", action=noop).build()
    assert d.triggers == () and d.state_model is None
    assert d.completion_event is None and d.failure_event is None


@pytest.mark.parametrize(
    ("configure", "expected"),
    [
        (
            lambda b: b.trigger(NotAMessage, correlation=str),
            "trigger 0: the event type must be a pydantic model or dataclass",
        ),
        (lambda b: b.trigger(PaymentProcessed, correlation="order_id"), "must be a function of the event"),
        (
            lambda b: b.trigger(PaymentProcessed, correlation=lambda a, b: a),
            "must accept one argument (the event)",
        ),
        (
            lambda b: b.trigger(PaymentProcessed, correlation=str).trigger(PaymentProcessed, correlation=repr),
            "trigger 1: event type PaymentProcessed is already the trigger 0",
        ),
        (lambda b: b.state(dict), "the state model must be a pydantic model or dataclass"),
        (lambda b: b.state(OrderState(order_id="x")), "an instance of OrderState; pass the class itself"),
        (lambda b: b.on_completed(NotAMessage), "the completion event must be"),
        (lambda b: b.on_failed(3), "the failure event must be"),
    ],
)
def test_bad_messaging_configuration_is_rejected_at_build(configure: Any, expected: str) -> None:
    b = SagaBuilder("orders").step("pay", action=noop)
    configure(b)
    with pytest.raises(DefinitionError) as e:
        b.build()
    assert expected in str(e.value)
    assert "saga 'orders'" in str(e.value)


# ---------------------------------------------------------------- default mapping


def test_default_command_fills_fields_by_name() -> None:
    cmd = default_command(ProcessPayment, {"order_id": "o-1", "amount": 9.5, "other": True})
    assert cmd == ProcessPayment(order_id="o-1", amount=9.5, currency="EUR")
    ship = default_command(ShipOrder, {"order_id": "o-1", "items": ["a"]})
    assert ship == ShipOrder(order_id="o-1", address="unknown", items=["a"])


def test_default_command_accepts_a_state_model_instance_and_aliases() -> None:
    cmd = default_command(ProcessPayment, OrderState(order_id="o-2", amount=3))
    assert cmd.order_id == "o-2" and cmd.amount == 3
    assert default_command(Aliased, {"customer": "c-1"}).customer == "c-1"
    assert default_command(Aliased, {"customerId": "c-2"}).customer == "c-2"
    dc_state = ShipOrder("o-3")
    assert default_command(ShipOrder, dc_state) == ShipOrder("o-3")


def test_default_command_missing_field_names_command_field_and_state_keys() -> None:
    with pytest.raises(MessageMappingError) as e:
        default_command(ProcessPayment, {"order_id": "o-1", "customer": "c"})
    msg = str(e.value)
    assert message_type_name(ProcessPayment) in msg
    assert "'amount'" in msg and "state keys: 'customer', 'order_id'" in msg
    assert "to_command=" in msg
    assert isinstance(e.value, NonRetryableError) and isinstance(e.value, ValueError)


def test_default_command_invalid_value_names_the_field() -> None:
    with pytest.raises(MessageMappingError, match=r"ProcessPayment: amount: Input should be a valid number"):
        default_command(ProcessPayment, {"order_id": "o", "amount": "lots"})
    with pytest.raises(MessageMappingError, match="not a message type"):
        default_command(NotAMessage, {})


def test_merge_event_returns_a_new_state_with_the_event_fields_in_json_form() -> None:
    state = {"order_id": "o-1", "amount": 5}
    at = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    merged = merge_event(state, PaymentProcessed(order_id="o-1", payment_id="p-1", at=at))
    assert merged == {"order_id": "o-1", "amount": 5, "payment_id": "p-1", "at": "2024-01-02T03:04:05Z"}
    assert state == {"order_id": "o-1", "amount": 5}
    tracking = uuid.uuid4()
    assert merge_event({}, OrderShipped("o", tracking)) == {"order_id": "o", "tracking": str(tracking)}
    assert merge_event(OrderState(order_id="x"), Refunded(order_id="y"))["order_id"] == "y"


def test_build_command_and_apply_reply_use_hooks_or_defaults() -> None:
    a = send(ProcessPayment, success=PaymentProcessed)
    assert a.build_command({"order_id": "o", "amount": 1}) == ProcessPayment(order_id="o", amount=1)
    ev = PaymentProcessed(order_id="o", payment_id="p")
    assert a.apply_reply({"x": 1}, ev) == {"x": 1, "order_id": "o", "payment_id": "p", "at": None}

    hooked = send(
        ProcessPayment,
        success=PaymentProcessed,
        to_command=lambda s: ProcessPayment(order_id=s["id"], amount=s["total"] * 2),
        merge=lambda s, e: {**s, "paid": e.payment_id},
    )
    assert hooked.build_command({"id": "o", "total": 2}).amount == 4
    assert hooked.apply_reply({"x": 1}, ev) == {"x": 1, "paid": "p"}

    wrong = send(ProcessPayment, success=PaymentProcessed, to_command=lambda s: Refund(order_id="o", payment_id="p"))
    with pytest.raises(MessageMappingError, match="to_command returned Refund, expected a"):
        wrong.build_command({})

    w = wait_for(PaymentProcessed)
    assert w.apply_reply({}, ev)["payment_id"] == "p"
    w2 = wait_for(PaymentProcessed, merge=lambda s, e: {"only": e.order_id})
    assert w2.apply_reply({}, ev) == {"only": "o"}


def test_payload_round_trip_and_validate_state() -> None:
    ship = ShipOrder("o", "street", ["a", "b"])
    assert from_payload(ShipOrder, to_payload(ship)) == ship
    pay = ProcessPayment(order_id="o", amount=2)
    assert from_payload(ProcessPayment, to_payload(pay)) == pay
    with pytest.raises(MessageMappingError, match="is not a message"):
        to_payload(NotAMessage())
    with pytest.raises(MessageMappingError, match="not a message type"):
        from_payload(NotAMessage, {})
    assert validate_state(OrderState, {"order_id": "o", "amount": "2.5"}) == {
        "order_id": "o",
        "amount": 2.5,
        "payment_id": None,
    }
    with pytest.raises(MessageMappingError, match="OrderState: order_id: Field required"):
        validate_state(OrderState, {})


def test_to_correlation_id() -> None:
    assert to_correlation_id("a") == "a"
    assert to_correlation_id(12) == "12"
    u = uuid.uuid4()
    assert to_correlation_id(u) == str(u)
    for bad in (None, ""):
        with pytest.raises(CorrelationError, match="must be a non-empty value"):
            to_correlation_id(bad, source="lambda e: e.x")


# ---------------------------------------------------------------- message ids and envelope


def test_message_id_is_deterministic_and_distinguishes_every_part() -> None:
    base = message_id("saga-1", "pay", 1, "action")
    assert base == message_id("saga-1", "pay", 1, "action")
    uuid.UUID(base)  # a valid UUID string
    others = {
        message_id("saga-2", "pay", 1, "action"),
        message_id("saga-1", "ship", 1, "action"),
        message_id("saga-1", "pay", 2, "action"),
        message_id("saga-1", "pay", 1, "compensation"),
        # no ambiguity when parts contain separators
        message_id("saga-1|pay", "", 1, "action"),
        message_id("saga-1", "pay|1", 1, "action"),
    }
    assert base not in others and len(others) == 6
    # pinned: changing the namespace or the key format would give resends new ids
    assert message_id("s", "a", 1, "action") == message_id("s", "a", 1, "action")
    assert base == str(uuid.UUID(base))


def test_message_id_is_stable_across_releases() -> None:
    ns = uuid.uuid5(uuid.NAMESPACE_URL, "https://sagakit.dev/message-id")
    expected = uuid.uuid5(ns, orjson.dumps(["saga-1", "pay", 1, "action"]).decode())
    assert message_id("saga-1", "pay", 1, "action") == str(expected)


def _envelope() -> Envelope:
    return Envelope.wrap(
        ProcessPayment(order_id="o-1", amount=3),
        message_id=message_id("saga-1", "pay", 1, "action"),
        timestamp=1700000000.5,
        saga_id="saga-1",
        step="pay",
        token=7,
        correlation_id="o-1",
        causation_id="trigger-1",
        headers={"traceparent": "00-abc-def-01"},
    )


def test_envelope_wrap_carries_everything() -> None:
    env = _envelope()
    assert env.type_name == message_type_name(ProcessPayment)
    assert env.payload == {"order_id": "o-1", "amount": 3.0, "currency": "EUR"}
    assert env.saga_id == "saga-1" and env.step == "pay" and env.token == 7
    assert env.correlation_id == "o-1" and env.causation_id == "trigger-1"
    assert env.timestamp == 1700000000.5
    assert env.headers == {"traceparent": "00-abc-def-01"}
    assert env.unwrap(ProcessPayment) == ProcessPayment(order_id="o-1", amount=3)
    with pytest.raises(MessageMappingError, match="not a"):
        env.unwrap(Refund)


def test_envelope_bytes_round_trip_and_are_deterministic() -> None:
    env = _envelope()
    data = env.to_bytes()
    assert isinstance(data, bytes)
    assert Envelope.from_bytes(data) == env
    assert Envelope.from_bytes(data.decode()) == env
    assert _envelope().to_bytes() == data
    minimal = Envelope(message_id="m", type_name="t", timestamp=1)
    assert Envelope.from_bytes(minimal.to_bytes()) == minimal


def test_envelope_reply_copies_correlation() -> None:
    env = _envelope()
    reply = env.reply(
        PaymentProcessed(order_id="o-1", payment_id="p"),
        message_id="r-1",
        timestamp=1700000001.0,
        headers={"x": "y"},
    )
    assert reply.saga_id == "saga-1" and reply.step == "pay" and reply.token == 7
    assert reply.correlation_id == "o-1"
    assert reply.causation_id == env.message_id
    assert reply.headers == {"traceparent": "00-abc-def-01", "x": "y"}
    assert reply.type_name == message_type_name(PaymentProcessed)


def test_envelope_with_dataclass_payload() -> None:
    tracking = uuid.uuid4()
    env = Envelope.wrap(OrderShipped("o", tracking), message_id="m", timestamp=0)
    back = Envelope.from_bytes(env.to_bytes()).unwrap(OrderShipped)
    assert back == OrderShipped("o", tracking)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"not json", "invalid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"message_id": "m"}', "'sagakit_envelope' is None"),
        (b'{"sagakit_envelope": 99}', "'sagakit_envelope' is 99"),
        (b'{"sagakit_envelope": 1}', "lacks 'message_id'"),
        (
            b'{"sagakit_envelope": 1, "message_id": 5, "type_name": "t", "timestamp": 0}',
            "'message_id' has the wrong type: 5",
        ),
        (
            b'{"sagakit_envelope": 1, "message_id": "m", "type_name": "t", "timestamp": 0, "saga_id": null,'
            b' "step": null, "correlation_id": null, "causation_id": null, "token": true, "headers": {},'
            b' "payload": {}}',
            "'token' has the wrong type: True",
        ),
        (
            b'{"sagakit_envelope": 1, "message_id": "m", "type_name": "t", "timestamp": 0, "saga_id": null,'
            b' "step": null, "correlation_id": null, "causation_id": null, "token": 1, "headers": {"a": 1},'
            b' "payload": {}}',
            "header(s) ['a'] are not strings",
        ),
    ],
)
def test_envelope_from_bad_bytes_names_the_problem(data: bytes, expected: str) -> None:
    with pytest.raises(EnvelopeError) as e:
        Envelope.from_bytes(data)
    assert expected in str(e.value)


def test_envelope_that_cannot_be_encoded() -> None:
    env = Envelope(message_id="m", type_name="t", timestamp=0, payload={"x": object()})
    with pytest.raises(EnvelopeError, match="envelope m \\(t\\) cannot be encoded"):
        env.to_bytes()
