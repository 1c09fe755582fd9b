"""The ``x-sagakit`` extension of the declarative format: per-step retries and timeouts, known events, wire names.

The seed schema sets no ``additionalProperties``, so a definition carrying
the block still validates against it (checked with ``jsonschema``). Every
setting is validated with its field path, step and value, and the loaded saga
runs with it on a real store (SQLite, or PostgreSQL under SAGAKIT_TEST_DB)
over the in-memory transport and the real brokers.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from sagakit import RetryPolicy, SagaEngine, SagaStatus, StepStatus
from sagakit._messages import message_type_name
from sagakit._transport import Delivery, Transport
from sagakit.cli._main import cli
from sagakit.declarative import InvalidDefinition, check_definition, load_definition, name_messages
from sagakit.participant import Participant
from sagakit.transports.memory import MemoryBroker, MemoryTransport
from tests.conftest import require_service
from tests.transports.brokers import NAMES, Broker

from .conftest import APP_MODULES, SCHEMA, SEED_DATA

MakeTransport = Callable[[], Transport]
PAYMENTS = "app_root_name.domain.payments.events"


def seed_with(**steps: dict[str, Any]) -> dict[str, Any]:
    """The seed example with an x-sagakit block on the named steps (and ``_top`` for the top level)."""
    data = copy.deepcopy(SEED_DATA)
    top = steps.pop("_top", None)
    if top is not None:
        data["x-sagakit"] = top
    for step in data["steps"]:
        if step["step_name"] in steps:
            step["x-sagakit"] = steps[step["step_name"]]
    return data


def seed_schema_errors(data: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    return [e.message for e in validator.iter_errors(data)]


def problems(source: Any) -> list[str]:
    with pytest.raises(InvalidDefinition) as e:
        load_definition(source)
    return list(e.value.errors)


# ---------------------------------------------------------------- the format


def test_a_definition_with_the_extension_still_validates_against_the_seed_schema() -> None:
    data = seed_with(
        _top={"deadline": 3600, "message_names": "definition", "message_namespace": "shop"},
        ProcessPayment={"retry": {"max_attempts": 5, "initial_delay": 0.5}, "reply_timeout": 30},
        ShipOrder={"timeout": 60, "compensation_retry": {"max_attempts": 2}, "compensation_reply_timeout": 10},
    )
    assert seed_schema_errors(data) == []
    # the schema does check what it declares: the block does not switch validation off
    broken = copy.deepcopy(data)
    broken["steps"][0]["command_name"] = 7
    assert seed_schema_errors(broken) == ["7 is not of type 'string'"]


def test_the_settings_reach_the_loaded_saga() -> None:
    defn = load_definition(
        seed_with(
            _top={"deadline": 3600},
            ProcessPayment={"retry": {"max_attempts": 5, "initial_delay": 0.5, "jitter": 0}, "reply_timeout": 30},
            ShipOrder={"timeout": 60, "compensation_retry": {"max_attempts": 2}, "compensation_reply_timeout": 10},
        )
    )
    pay, ship = defn.step("ProcessPayment"), defn.step("ShipOrder")
    assert defn.deadline == 3600
    assert pay.retry == RetryPolicy(max_attempts=5, initial_delay=0.5, jitter=0.0)
    assert pay.action.reply_timeout == 30  # type: ignore[union-attr]
    assert pay.attempt_timeouts == (30, None)
    assert ship.timeout == 60 and ship.attempt_timeouts == (60, 10)
    # the compensation's retry keeps the compensation defaults for the fields not given
    assert ship.compensation_retry == RetryPolicy(max_attempts=2, initial_delay=0.1, max_delay=60.0)
    assert ship.retry == RetryPolicy()  # nothing given: sagakit's defaults


def test_without_the_extension_nothing_changes() -> None:
    defn = load_definition(copy.deepcopy(SEED_DATA))
    assert defn.deadline is None
    assert all(s.retry == RetryPolicy() and s.attempt_timeouts == (None, None) for s in defn.steps)


BAD_SETTINGS = [
    (
        {"retry": {"max_attempts": 0}},
        "steps[1].x-sagakit.retry.max_attempts (step 'ShipOrder'): must be between 1 and 1,000,000 "
        "(attempts in all, the first one included; 1 means no retry), got 0",
    ),
    (
        {"retry": {"max_attempts": "3"}},
        "steps[1].x-sagakit.retry.max_attempts (step 'ShipOrder'): must be a whole number of attempts "
        "(the first one included), got '3'",
    ),
    (
        {"retry": {"jitter": 2}},
        "steps[1].x-sagakit.retry.jitter (step 'ShipOrder'): must be a number between 0 and 1 "
        "(the fraction of each delay added or removed at random), got 2",
    ),
    (
        {"reply_timeout": -5},
        "steps[1].x-sagakit.reply_timeout (step 'ShipOrder'): must be a number of seconds > 0, got -5",
    ),
    (
        {"reply_timeout": True},
        "steps[1].x-sagakit.reply_timeout (step 'ShipOrder'): must be a number of seconds, got True",
    ),
    (
        {"timeout": float("nan")},
        "steps[1].x-sagakit.timeout (step 'ShipOrder'): must be a finite number of seconds, got nan",
    ),
    (
        {"reply_timeout": 1e12},
        "steps[1].x-sagakit.reply_timeout (step 'ShipOrder'): must be at most 3.1536e+08 seconds, got 1000000000000.0",
    ),
    (
        {"retries": {}},
        "steps[1].x-sagakit.retries (step 'ShipOrder'): unknown field (did you mean 'retry'?)",
    ),
    (
        {"retry": {"max_attempt": 3}},
        "steps[1].x-sagakit.retry.max_attempt (step 'ShipOrder'): unknown field (did you mean 'max_attempts'?)",
    ),
    (
        {"timeout": 5, "reply_timeout": 10},
        "steps[1].x-sagakit.reply_timeout (step 'ShipOrder'): set together with timeout: a message step's "
        "attempt ends when its reply comes, so both bound the same wait: give one of them, got timeout 5.0 "
        "and reply_timeout 10.0",
    ),
]


@pytest.mark.parametrize(("settings", "expected"), BAD_SETTINGS, ids=[e[1].split(":")[0] for e in BAD_SETTINGS])
def test_a_bad_setting_is_one_clear_line(settings: dict[str, Any], expected: str) -> None:
    data = seed_with(ShipOrder=settings)
    assert problems(data) == [expected]
    # the same line without importing anything
    with pytest.raises(InvalidDefinition) as e:
        check_definition(data)
    assert list(e.value.errors) == [expected]


def test_settings_that_only_the_build_can_check() -> None:
    data = seed_with(
        ProcessPayment={"retry": {"max_delay": 0.05}, "compensation_retry": {"max_attempts": 2}},
    )
    assert problems(data) == [
        "steps[0].x-sagakit.retry (step 'ProcessPayment'): max_delay (0.05) must be >= initial_delay (0.1) "
        "(the defaults of the fields not given: initial_delay 0.1, max_delay 30.0)",
        "steps[0].x-sagakit.compensation_retry (step 'ProcessPayment'): set for a step without "
        "compensation_command_name, so there is no compensation to apply it to; remove it or add the compensation",
    ]


def test_a_bad_top_level_setting() -> None:
    data = seed_with(_top={"deadline": 0, "message_names": "short", "message_namespace": "a b"})
    assert problems(data) == [
        "x-sagakit.deadline: must be a number of seconds > 0, got 0",
        "x-sagakit.message_names: must be 'python' (wire names are module.ClassName) or 'definition' "
        "(the class names the definition gives), got 'short'",
        "x-sagakit.message_namespace: must be dotted words of letters, digits, '_' or '-' "
        "(e.g. 'shop' or 'acme.orders'), got 'a b'",
    ]


def test_the_command_line_names_the_file_step_field_and_value(tmp_path: Path) -> None:
    path = tmp_path / "saga.json"
    path.write_text(json.dumps(seed_with(ProcessPayment={"retry": {"max_attempts": -1}})))
    out = CliRunner().invoke(cli, ["validate", str(path)])
    assert out.exit_code == 1
    assert (
        f"{path}: steps[0].x-sagakit.retry.max_attempts (step 'ProcessPayment'): must be between 1 and "
        "1,000,000 (attempts in all, the first one included; 1 means no retry), got -1"
    ) in out.output


# ---------------------------------------------------------------- running: retries and timeouts


class Silent:
    """A participant that takes the commands of *destinations* and never answers (counts them)."""

    def __init__(self, transport: Transport, destinations: list[str]) -> None:
        self.transport = transport
        self.destinations = destinations
        self.received: list[str] = []

    async def __aenter__(self) -> Silent:
        await self.transport.start()

        async def take(d: Delivery) -> None:
            self.received.append(json.loads(d.body)["message_id"])

        await self.transport.subscribe(self.destinations, "silent", take)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()


async def finished(engine: SagaEngine, order_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await engine.list(correlation_id=order_id)
        if found and found[0].status.terminal:
            return await engine.get(found[0].id)
        await asyncio.sleep(0.02)
    raise AssertionError(f"the saga of {order_id} did not finish within {timeout}s")


def payments(transport: Transport, app: Any, *, decline: bool = False) -> Participant:
    p = Participant(transport, name="payments")

    @p.handles(app.ProcessPaymentCommand)
    def pay(cmd: Any) -> Any:
        if decline:
            return app.PaymentFailedEvent(order_id=cmd.order_id, reason="card declined")
        return app.PaymentProcessedEvent(order_id=cmd.order_id, payment_id=f"pay-{cmd.order_id}")

    @p.handles(app.RefundPaymentCommand)
    def refund(cmd: Any) -> Any:
        return app.PaymentRefundedEvent(order_id=cmd.order_id)

    return p


async def test_a_step_retries_and_times_out_as_configured(store_url: str, app: Any) -> None:
    """Shipping never answers: each attempt waits reply_timeout, max_attempts attempts, then the rollback."""
    data = seed_with(
        ShipOrder={"retry": {"max_attempts": 3, "initial_delay": 0, "max_delay": 0}, "reply_timeout": 0.3},
    )
    pay = data["steps"][0]
    pay.update(
        compensation_command_name="RefundPaymentCommand",
        compensation_command_module="app_root_name.application.payments.commands",
        compensation_success_event_name="PaymentRefundedEvent",
    )
    defn = load_definition(data)
    broker = MemoryBroker()
    silent = Silent(MemoryTransport(broker), [message_type_name(app.ShipOrderCommand)])
    async with (
        silent,
        payments(MemoryTransport(broker), app),
        SagaEngine(store_url, transport=MemoryTransport(broker)) as engine,
    ):
        engine.register(defn)
        await engine.publish(app.OrderCreatedEvent(order_id="o-1", amount=3.0, address="1 Main St"))
        snap = await finished(engine, "o-1")
    assert snap.status is SagaStatus.COMPENSATED
    ship = snap.steps["ShipOrder"]
    assert ship.attempts == 3
    timeouts = [h for h in snap.history if h.step == "ShipOrder" and "timed out after 0.3s" in h.message]
    assert len(timeouts) == 3
    # every attempt resent the same command (same message id), as the participant's inbox needs
    assert len(silent.received) == 3 and len(set(silent.received)) == 1
    assert snap.steps["ProcessPayment"].status is StepStatus.COMPENSATED


async def test_timeout_and_the_compensation_settings_apply(store_url: str, app: Any) -> None:
    """``timeout`` bounds a message step's wait too; the compensation's retry and reply timeout apply to it."""
    data = seed_with(
        ProcessPayment={"retry": {"max_attempts": 2, "initial_delay": 0, "max_delay": 0}, "timeout": 0.3},
    )
    ship = data["steps"][1]
    ship["x-sagakit"] = {
        "compensation_retry": {"max_attempts": 2, "initial_delay": 0, "max_delay": 0},
        "compensation_reply_timeout": 0.3,
    }
    ship["failure_event_name"] = "ShipmentFailedEvent"
    ship["failure_event_module"] = "app_root_name.domain.shipping.events"
    defn = load_definition(data)
    assert defn.step("ProcessPayment").attempt_timeouts == (0.3, None)

    broker = MemoryBroker()
    silent = Silent(MemoryTransport(broker), [message_type_name(app.ProcessPaymentCommand)])
    async with silent, SagaEngine(store_url, transport=MemoryTransport(broker)) as engine:
        engine.register(defn)
        await engine.publish(app.OrderCreatedEvent(order_id="o-2", amount=3.0, address="1 Main St"))
        snap = await finished(engine, "o-2")
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["ProcessPayment"].attempts == 2
    assert sum("timed out after 0.3s" in h.message for h in snap.history if h.step == "ProcessPayment") == 2

    # The compensation of ShipOrder (CancelShipmentCommand) is never answered: two attempts of 0.3 s.
    data2 = seed_with(
        ShipOrder={
            "compensation_retry": {"max_attempts": 2, "initial_delay": 0, "max_delay": 0},
            "compensation_reply_timeout": 0.3,
        }
    )
    data2["steps"][1]["compensation_success_event_name"] = "ShipmentCancelledEvent"
    data2["steps"].append(
        {
            "step_name": "Notify",
            "command_name": "ProcessPaymentCommand",
            "command_module": "app_root_name.application.payments.commands",
            "success_event_name": "PaymentProcessedEvent",
            "success_event_module": PAYMENTS,
            "failure_event_name": "PaymentFailedEvent",
            "failure_event_module": PAYMENTS,
        }
    )
    data2["saga_type"] = "OrderProcessingSaga2"
    defn2 = load_definition(data2)
    broker = MemoryBroker()
    shipping = Participant(MemoryTransport(broker), name="shipping")

    @shipping.handles(app.ShipOrderCommand)
    def ship_it(cmd: Any) -> Any:
        return app.OrderShippedEvent(order_id=cmd.order_id, tracking_number="t")

    calls = {"pay": 0}
    pay_and_decline = Participant(MemoryTransport(broker), name="payments")

    @pay_and_decline.handles(app.ProcessPaymentCommand)
    def pay_then_fail(cmd: Any) -> Any:
        calls["pay"] += 1
        if calls["pay"] == 1:
            return app.PaymentProcessedEvent(order_id=cmd.order_id, payment_id="p")
        return app.PaymentFailedEvent(order_id=cmd.order_id, reason="second charge refused")

    silent = Silent(MemoryTransport(broker), [message_type_name(app.CancelShipmentCommand)])
    async with (
        silent,
        shipping,
        pay_and_decline,
        SagaEngine(store_url, transport=MemoryTransport(broker)) as engine,
    ):
        engine.register(defn2)
        await engine.publish(app.OrderCreatedEvent(order_id="o-3", amount=3.0, address="1 Main St"))
        snap = await finished(engine, "o-3")
    assert snap.status is SagaStatus.FAILED  # the compensation gave up
    assert snap.steps["ShipOrder"].compensation_attempts == 2
    assert len(silent.received) == 2
    assert any("compensation of step 'ShipOrder' gave up" in h.message for h in snap.history)


# ---------------------------------------------------------------- events no step declares


def test_the_undeclared_events_of_the_event_modules_are_known(app: Any) -> None:
    defn = load_definition(copy.deepcopy(SEED_DATA))
    # payments.events and shipping.events hold events the seed's steps do not declare
    assert defn.known_events == (
        app.PaymentFailedEvent,
        app.PaymentRefundedEvent,
        app.ShipmentFailedEvent,
        app.ShipmentCancelledEvent,
        app.ShipmentCancellationFailedEvent,
    )
    off = load_definition(seed_with(_top={"scan_event_modules": False}))
    assert off.known_events == ()
    listed = load_definition(
        seed_with(
            _top={
                "scan_event_modules": False,
                "known_events": [{"event_name": "PaymentFailedEvent", "event_module": PAYMENTS}],
            }
        )
    )
    assert listed.known_events == (app.PaymentFailedEvent,)
    assert problems(
        seed_with(_top={"known_events": [{"event_name": "PaymentProcessedEvent", "event_module": PAYMENTS}]})
    ) == [
        "x-sagakit.known_events[0].event_name: app_root_name.domain.payments.events.PaymentProcessedEvent is "
        "already one of the saga's commands or events; list here only events no step declares"
    ]
    assert problems(
        seed_with(_top={"known_events": [{"event_name": "PaymentDeclined", "event_module": PAYMENTS}]})
    ) == [
        "x-sagakit.known_events[0].event_name: module 'app_root_name.domain.payments.events' has no "
        "'PaymentDeclined' (did you mean 'PaymentRefundedEvent'?)"
    ]


async def undeclared_event_is_dead_lettered(store_url: str, make: MakeTransport, app: Any) -> None:
    """The seed as it is: ProcessPayment declares no failure event, and the payment service declines."""
    defn = load_definition(copy.deepcopy(SEED_DATA))
    async with payments(make(), app, decline=True), SagaEngine(store_url, transport=make()) as engine:
        engine.register(defn)
        await engine.publish(app.OrderCreatedEvent(order_id="o-9", amount=3.0, address="1 Main St"))
        deadline = time.monotonic() + 30
        letters: list[Any] = []
        while not letters and time.monotonic() < deadline:
            letters = [
                d for d in await engine.dead_letters() if d.type_name == message_type_name(app.PaymentFailedEvent)
            ]
            await asyncio.sleep(0.05)
        assert letters, "the undeclared event was not dead-lettered"
        [snap] = await engine.list(correlation_id="o-9")
        [letter] = letters
        assert letter.saga_id == snap.id
        assert letter.reason == (
            f"saga {snap.id} (OrderProcessingSaga): {message_type_name(app.PaymentFailedEvent)} is not an event "
            f"the waiting step declares (step 'ProcessPayment' waits for "
            f"{message_type_name(app.PaymentProcessedEvent)}); not applied"
        )
        assert "card declined" in letter.body
        # Not applied: the step still waits for the events it declares (or its reply timeout).
        snap = await engine.get(snap.id)
        assert snap.status is SagaStatus.RUNNING
        assert snap.steps["ProcessPayment"].status is StepStatus.RUNNING

        # The same event without saga headers is matched by the trigger's correlation, and explained.
        await engine.publish(app.PaymentFailedEvent(order_id="o-9", reason="again"))
        deadline = time.monotonic() + 30
        while len(letters) < 2 and time.monotonic() < deadline:
            letters = [
                d for d in await engine.dead_letters() if d.type_name == message_type_name(app.PaymentFailedEvent)
            ]
            await asyncio.sleep(0.05)
        [late] = [d for d in letters if "again" in d.body]
        assert late.saga_id == snap.id
        assert "step 'ProcessPayment' waits for" in late.reason and f"saga {snap.id}" in late.reason


async def test_an_undeclared_event_is_dead_lettered_memory(store_url: str, app: Any) -> None:
    broker = MemoryBroker()
    await undeclared_event_is_dead_lettered(store_url, partial(MemoryTransport, broker), app)


@pytest.fixture(params=NAMES)
async def real_broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    b = Broker(request.param)
    require_service(b.missing())
    if b.name == "kafka":
        b.address = request.getfixturevalue("tansu")  # tests/conftest.py starts one Tansu per session
    try:
        yield b
    finally:
        await b.cleanup()


async def test_an_undeclared_event_is_dead_lettered_on_a_broker(store_url: str, real_broker: Broker, app: Any) -> None:
    await undeclared_event_is_dead_lettered(store_url, real_broker.transport, app)


async def test_a_reply_timeout_ends_the_wait_for_a_declared_event(store_url: str, app: Any) -> None:
    """With a reply timeout, the step whose participant only sends undeclared events fails in time."""
    defn = load_definition(seed_with(ProcessPayment={"retry": {"max_attempts": 1}, "reply_timeout": 0.5}))
    broker = MemoryBroker()
    async with (
        payments(MemoryTransport(broker), app, decline=True),
        SagaEngine(store_url, transport=MemoryTransport(broker)) as engine,
    ):
        engine.register(defn)
        await engine.publish(app.OrderCreatedEvent(order_id="o-8", amount=3.0, address="1 Main St"))
        snap = await finished(engine, "o-8")
    assert snap.status is SagaStatus.COMPENSATED
    assert "timed out after 0.5s" in (snap.steps["ProcessPayment"].error or "")


# ---------------------------------------------------------------- wire names


def named_seed(namespace: str | None = "shop") -> dict[str, Any]:
    top: dict[str, Any] = {"message_names": "definition"}
    if namespace is not None:
        top["message_namespace"] = namespace
    data = seed_with(_top=top)
    data["steps"][1].update(
        failure_event_name="ShipmentFailedEvent", failure_event_module="app_root_name.domain.shipping.events"
    )
    return data


def test_the_definition_names_its_messages(app: Any) -> None:
    load_definition(named_seed())
    assert message_type_name(app.ProcessPaymentCommand) == "shop.ProcessPaymentCommand"
    assert message_type_name(app.PaymentProcessedEvent) == "shop.PaymentProcessedEvent"
    assert message_type_name(app.OrderCreatedEvent) == "shop.OrderCreatedEvent"
    assert message_type_name(app.OrderProcessingCompletedEvent) == "shop.OrderProcessingCompletedEvent"
    # the known (undeclared) events of the event modules are named the same way
    assert message_type_name(app.PaymentFailedEvent) == "shop.PaymentFailedEvent"
    # not messages: untouched
    assert "message_name" not in vars(app.OrderProcessingSagaState)
    # loading again gives the same names; another namespace for the same classes is refused
    load_definition(named_seed())
    other = named_seed("billing")
    other["saga_type"] = "Billing"
    errors = problems(other)
    assert errors[0] == (
        "x-sagakit.message_names: triggering_events[0].event_name: "
        "app_root_name.domain.ordering.events.order_events.OrderCreatedEvent already has the wire name "
        "'shop.OrderCreatedEvent', given by saga 'OrderProcessingSaga'; a class has one wire name, so it "
        "cannot also be 'billing.OrderCreatedEvent': use the same message_namespace in both definitions"
    )
    assert message_type_name(app.OrderCreatedEvent) == "shop.OrderCreatedEvent"  # nothing was renamed


def test_without_a_namespace_the_name_is_the_class_name(app: Any) -> None:
    load_definition(named_seed(None))
    assert message_type_name(app.ShipOrderCommand) == "ShipOrderCommand"


def test_two_classes_cannot_share_a_wire_name(tmp_path: Path) -> None:
    pkg = tmp_path / "twins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from pydantic import BaseModel\n\nclass Paid(BaseModel):\n    order_id: str\n\n"
        "class Pay(BaseModel):\n    order_id: str\n\nclass State(BaseModel):\n    order_id: str\n\n"
        "class Repo:\n    pass\n"
    )
    (pkg / "b.py").write_text(
        "from pydantic import BaseModel\n\nclass Paid(BaseModel):\n    order_id: str\n\n"
        "class Odd(BaseModel):\n    message_name: str\n"
    )
    data = {
        "name": "TwinsOrchestrator",
        "saga_type": "Twins",
        "state_dto_name": "State",
        "state_dto_module": "twins.a",
        "state_repository_name": "Repo",
        "state_repository_module": "twins.a",
        "steps": [
            {
                "step_name": "One",
                "command_name": "Pay",
                "command_module": "twins.a",
                "success_event_name": "Paid",
                "success_event_module": "twins.a",
            },
            {
                "step_name": "Two",
                "command_name": "Pay",
                "command_module": "twins.a",
                "success_event_name": "Paid",
                "success_event_module": "twins.b",
                "failure_event_name": "Odd",
                "failure_event_module": "twins.b",
            },
        ],
        "x-sagakit": {"message_names": "definition", "scan_event_modules": False},
    }
    with pytest.raises(InvalidDefinition) as e:
        load_definition(data, search_path=[tmp_path])
    assert list(e.value.errors) == [
        "x-sagakit.message_names: steps[1].failure_event_name: twins.b.Odd has a field called 'message_name', "
        "the attribute that holds a class's wire name; rename the field, or set message_names to 'python'",
        "x-sagakit.message_names: steps[1].success_event_name: twins.b.Paid would have the wire name 'Paid', "
        "which is already that of twins.a.Paid (steps[0].success_event_name); two classes cannot share one: "
        "set message_name on one of them, or set message_namespace / message_names 'python'",
    ]
    # the same without importing anything: the stand-ins are told apart by module too
    with pytest.raises(InvalidDefinition) as e:
        check_definition(data)
    assert [line for line in e.value.errors if "would have the wire name 'Paid'" in line]


def test_a_class_that_names_itself_keeps_its_name(tmp_path: Path) -> None:
    pkg = tmp_path / "selfnamed"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text(
        "from typing import ClassVar\nfrom pydantic import BaseModel\n\n"
        "class Pay(BaseModel):\n    message_name: ClassVar[str] = 'payments.Pay'\n    order_id: str\n\n"
        "class Paid(BaseModel):\n    order_id: str\n\nclass State(BaseModel):\n    order_id: str\n\n"
        "class Repo:\n    pass\n"
    )
    data = {
        "name": "SelfOrchestrator",
        "saga_type": "Self",
        "state_dto_name": "State",
        "state_dto_module": "selfnamed.m",
        "state_repository_name": "Repo",
        "state_repository_module": "selfnamed.m",
        "steps": [
            {
                "step_name": "One",
                "command_name": "Pay",
                "command_module": "selfnamed.m",
                "success_event_name": "Paid",
                "success_event_module": "selfnamed.m",
            },
        ],
        "x-sagakit": {"message_names": "definition", "message_namespace": "x"},
    }
    defn = load_definition(data, search_path=[tmp_path])
    action: Any = defn.step("One").action
    assert message_type_name(action.command) == "payments.Pay"
    assert message_type_name(action.success[0]) == "x.Paid"


def test_name_messages_is_what_generated_modules_call(app: Any) -> None:
    name_messages({app.ShipOrderCommand: "ship.Order"}, origin="test")
    assert message_type_name(app.ShipOrderCommand) == "ship.Order"
    with pytest.raises(InvalidDefinition, match="already has the wire name 'ship.Order', given by test"):
        name_messages({app.ShipOrderCommand: "ship.Other"}, origin="another")


class Foreign:
    """A shipping service that knows no Python class: it reads and writes the envelope as plain JSON."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.seen: list[str] = []

    async def __aenter__(self) -> Foreign:
        await self.transport.start()

        async def on_command(d: Delivery) -> None:
            cmd = json.loads(d.body)
            self.seen.append(cmd["type_name"])
            reply_id = uuid.uuid4().hex
            reply = {
                "sagakit_envelope": 1,
                "message_id": reply_id,
                "type_name": "shop.OrderShippedEvent",
                "saga_id": cmd["saga_id"],
                "step": cmd["step"],
                "token": cmd["token"],
                "correlation_id": cmd["correlation_id"],
                "causation_id": cmd["message_id"],
                "timestamp": time.time(),
                "headers": {},
                "payload": {"order_id": cmd["payload"]["order_id"], "tracking_number": "trk-foreign"},
            }
            await self.transport.publish("shop.OrderShippedEvent", json.dumps(reply).encode(), message_id=reply_id)

        await self.transport.subscribe(["shop.ShipOrderCommand"], "foreign-shipping", on_command)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()


async def named_messages_end_to_end(store_url: str, make: MakeTransport, app: Any) -> list[str]:
    """A Python participant and a foreign one, over the definition's wire names; returns the saga's destinations."""
    defn = load_definition(named_seed())
    async with payments(make(), app), Foreign(make()) as foreign, SagaEngine(store_url, transport=make()) as engine:
        engine.register(defn)
        assert set(engine._messaging.destinations) >= {  # type: ignore[attr-defined]
            "shop.OrderCreatedEvent",
            "shop.PaymentProcessedEvent",
            "shop.OrderShippedEvent",
            "shop.ShipmentFailedEvent",
            "shop.PaymentFailedEvent",  # known, not declared: consumed to be dead-lettered
        }
        await engine.publish(app.OrderCreatedEvent(order_id="o-5", amount=3.0, address="1 Main St"))
        snap = await finished(engine, "o-5")
        assert snap.status is SagaStatus.COMPLETED, snap.error
        assert snap.data["payment_id"] == "pay-o-5" and snap.data["tracking_number"] == "trk-foreign"
        assert foreign.seen == ["shop.ShipOrderCommand"]
        return list(engine._messaging.destinations)  # type: ignore[attr-defined]


async def test_named_messages_end_to_end_memory(store_url: str, app: Any) -> None:
    broker = MemoryBroker()
    await named_messages_end_to_end(store_url, partial(MemoryTransport, broker), app)
    sent = {m.destination for m in broker.published}
    assert {
        "shop.OrderCreatedEvent",
        "shop.ProcessPaymentCommand",
        "shop.PaymentProcessedEvent",
        "shop.ShipOrderCommand",
        "shop.OrderShippedEvent",
        "shop.OrderProcessingCompletedEvent",
    } <= sent
    assert not [d for d in sent if d.startswith("app_root_name.")]  # no Python module path on the wire


async def test_named_messages_end_to_end_on_a_broker(store_url: str, real_broker: Broker, app: Any) -> None:
    await named_messages_end_to_end(store_url, real_broker.transport, app)


def test_the_app_modules_are_the_fixture_ones() -> None:
    assert "app_root_name.domain.payments.events" in APP_MODULES
