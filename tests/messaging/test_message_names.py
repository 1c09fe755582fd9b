"""Stable message names: a class's wire name can be set, is validated, and names one class per engine.

The scenario ``moved_class_routes`` (a command and its reply whose classes live
in one module for the participant and in another for the orchestrator, with
the same wire names) also runs on every real broker in tests/transports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from sagakit import DefinitionError, SagaBuilder, SagaEngine, SagaStatus, message_name, send, wait_for
from sagakit._messages import Envelope, message_type_name
from sagakit._transport import Transport
from sagakit.participant import Participant
from sagakit.transports.memory import MemoryBroker, MemoryTransport
from tests.messaging import moved_v1, moved_v2

MakeTransport = Callable[[], Transport]


# ------------------------------------------------------------ the name of a class


def test_the_decorator_sets_the_wire_name_and_envelopes_carry_it() -> None:
    @message_name("billing.InvoiceSent")
    class InvoiceSent(BaseModel):
        invoice_id: str

    assert message_type_name(InvoiceSent) == "billing.InvoiceSent"
    env = Envelope.wrap(InvoiceSent(invoice_id="i-1"), message_id="m", timestamp=0.0)
    assert env.type_name == "billing.InvoiceSent"
    assert env.unwrap(InvoiceSent) == InvoiceSent(invoice_id="i-1")


def test_a_class_without_a_name_travels_under_its_python_path() -> None:
    class Plain(BaseModel):
        x: int

    assert message_type_name(Plain) == f"{__name__}.{Plain.__qualname__}"


def test_the_class_attribute_and_the_decorator_agree() -> None:
    assert message_type_name(moved_v1.CardCharged) == message_type_name(moved_v2.CardCharged) == "payments.CardCharged"
    assert message_type_name(moved_v1.ChargeCard) == message_type_name(moved_v2.ChargeCard) == "payments.ChargeCard"


def test_a_subclass_does_not_inherit_its_parents_wire_name() -> None:
    class Special(moved_v2.CardCharged):
        pass

    assert message_type_name(Special) == f"{__name__}.{Special.__qualname__}"


def test_a_dataclass_field_called_message_name_is_not_a_wire_name() -> None:
    @dataclasses.dataclass
    class Note:
        message_name: str = "hello there"

    assert message_type_name(Note) == f"{__name__}.{Note.__qualname__}"


@pytest.mark.parametrize("bad", ["", " ", "payments. PaymentProcessed", "a\tb", "line\nbreak", 42, None])
def test_the_decorator_refuses_a_name_that_is_empty_or_holds_whitespace(bad: Any) -> None:
    with pytest.raises(DefinitionError, match=r"must be a non-empty string without whitespace.*payments\."):
        message_name(bad)


def test_the_decorator_decorates_classes_only() -> None:
    with pytest.raises(DefinitionError, match="decorates a class"):
        message_name("a.b")(lambda: None)  # type: ignore[arg-type]


def test_a_bad_class_attribute_is_refused_by_the_definition() -> None:
    class Spaced(BaseModel):
        message_name: ClassVar[str] = "payments processed"

    with pytest.raises(DefinitionError, match=r"Spaced\.message_name: .*got 'payments processed'"):
        b = SagaBuilder("spaced")
        b.step("pay", action=send(moved_v2.ChargeCard, success=Spaced))
        SagaEngine("memory://").register(b.build())
    with pytest.raises(DefinitionError, match="without whitespace"):
        message_type_name(Spaced)


def test_a_dataclass_may_set_its_name_as_a_class_variable() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Shipped:
        message_name: ClassVar[str] = "shipping.Shipped"
        order_id: str

    assert message_type_name(Shipped) == "shipping.Shipped"


# ------------------------------------------------------------ one class per name in an engine


class Approved(BaseModel):
    message_name: ClassVar[str] = "orders.Approved"
    order_id: str


class ApprovedElsewhere(BaseModel):
    message_name: ClassVar[str] = "orders.Approved"
    order_id: str


def waiting_saga(name: str, event: type) -> Any:
    b = SagaBuilder(name)
    b.step("approval", action=wait_for(event, correlation=lambda e: e.order_id))
    return b.build()


async def test_two_classes_under_one_name_in_one_engine_are_refused(store_url: str) -> None:
    engine = SagaEngine(store_url, transport=MemoryTransport(MemoryBroker()))
    engine.register(waiting_saga("first", Approved))
    with pytest.raises(DefinitionError) as e:
        engine.register(waiting_saga("second", ApprovedElsewhere))
    text = str(e.value)
    assert "'orders.Approved'" in text
    assert f"{__name__}.Approved" in text and f"{__name__}.ApprovedElsewhere" in text
    assert "saga 'second'" in text
    assert [d.name for d in engine.definitions] == ["first"]  # nothing of the refused one is registered
    assert "orders.Approved" in engine._messaging.destinations


def test_two_classes_under_one_name_in_one_definition_are_refused() -> None:
    b = SagaBuilder("mixed")
    b.step("pay", action=send(moved_v1.ChargeCard, success=moved_v1.CardCharged))
    b.step("again", action=send(moved_v2.ChargeCard, success=moved_v1.CardCharged))
    engine = SagaEngine("memory://")
    with pytest.raises(DefinitionError, match=r"'payments\.ChargeCard' is both .*moved_v1\.ChargeCard and .*moved_v2"):
        engine.register(b.build())


def test_one_class_in_several_definitions_and_separate_engines_are_fine() -> None:
    one = SagaEngine("memory://")
    one.register(waiting_saga("first", Approved), waiting_saga("second", Approved))
    two = SagaEngine("memory://")
    two.register(waiting_saga("third", ApprovedElsewhere))
    assert {d.name for d in one.definitions} == {"first", "second"}


# ------------------------------------------------------------ routing after a move


def charging_saga() -> Any:
    """The orchestrator's saga, written against the classes' new module."""
    b = SagaBuilder("charging")
    b.step("charge", action=send(moved_v2.ChargeCard, success=moved_v2.CardCharged))
    return b.build()


async def moved_class_routes(store_url: str, make_transport: MakeTransport) -> None:
    """The participant still imports the classes from their old module, the orchestrator from the new one."""
    payments = Participant(make_transport(), name="payments")
    seen: list[Any] = []

    @payments.handles(moved_v1.ChargeCard)
    async def charge(cmd: moved_v1.ChargeCard) -> moved_v1.CardCharged:
        seen.append(cmd)
        return moved_v1.CardCharged(order_id=cmd.order_id, charge_id=f"c-{cmd.order_id}")

    async with payments, SagaEngine(store_url, transport=make_transport()) as engine:
        engine.register(charging_saga())
        sid = await engine.start("charging", {"order_id": "o-m", "amount": 12.5})
        snap = await engine.wait(sid, timeout=30)
        letters = await engine.dead_letters()
    assert snap.status is SagaStatus.COMPLETED, snap
    assert snap.data["charge_id"] == "c-o-m"
    assert [type(c) for c in seen] == [moved_v1.ChargeCard] and seen[0].amount == 12.5
    assert letters == []


async def test_routing_survives_a_class_moving_between_modules(store_url: str) -> None:
    await moved_class_routes(store_url, partial(MemoryTransport, MemoryBroker()))
