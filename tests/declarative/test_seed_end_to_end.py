"""The seed example (shared/spec/order_processing_saga.json) run end to end over the in-memory transport.

Loaded with load_definition and, separately, generated with ``sagakit generate``
and imported; fake payment and shipping participants answer the commands.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import importlib.util
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sagakit import RetryPolicy, SagaDefinition, SagaEngine, SagaStatus, StepStatus
from sagakit._definition import build_definition
from sagakit._messages import Envelope, message_type_name
from sagakit.cli._main import cli
from sagakit.declarative import load_definition
from sagakit.transports.memory import MemoryBroker, MemoryTransport
from tests.messaging.test_message_saga import MakeTransport, Outcomes, Participants, saga_for

from .conftest import FIXTURES, SEED_DATA

EVENTS = "app_root_name.domain.ordering.events.order_events"
PAYMENTS = "app_root_name.domain.payments.events"
SHIPPING = "app_root_name.domain.shipping.events"


def with_failures(seed: dict[str, Any]) -> dict[str, Any]:
    """The seed plus a refund for the payment and a failure event for shipping."""
    data = copy.deepcopy(seed)
    pay, ship = data["steps"]
    pay.update(
        compensation_command_name="RefundPaymentCommand",
        compensation_command_module="app_root_name.application.payments.commands",
        compensation_success_event_name="PaymentRefundedEvent",
    )
    ship.update(failure_event_name="ShipmentFailedEvent", failure_event_module=SHIPPING)
    return data


def fast(defn: SagaDefinition, *, reply_timeout: float | None = None, attempts: int = 2) -> SagaDefinition:
    """The same definition with short retries (and a reply timeout) for tests."""
    retry = RetryPolicy(max_attempts=attempts, initial_delay=0.01, max_delay=0.02)
    steps = []
    for s in defn.steps:
        action = s.action
        if reply_timeout is not None:
            action = dataclasses.replace(action, reply_timeout=reply_timeout)  # type: ignore[type-var]
        steps.append(dataclasses.replace(s, action=action, retry=retry, compensation_retry=retry))
    return build_definition(
        defn.name,
        defn.version,
        steps,
        extras=defn.extras,
        triggers=defn.triggers,
        state_model=defn.state_model,
        completion_event=defn.completion_event,
        failure_event=defn.failure_event,
    )


class Services(Participants):
    """Fake payment and shipping services for the seed's commands (*app*: its message classes)."""

    def __init__(self, make_transport: MakeTransport, app: Any) -> None:
        super().__init__(make_transport)
        self.refunds: list[str] = []

        @self.payments.handles(app.ProcessPaymentCommand)
        def pay(cmd: Any) -> Any:
            return app.PaymentProcessedEvent(order_id=cmd.order_id, payment_id=f"pay-{cmd.order_id}")

        @self.payments.handles(app.RefundPaymentCommand)
        def refund(cmd: Any) -> Any:
            self.refunds.append(cmd.payment_id)
            return app.PaymentRefundedEvent(order_id=cmd.order_id)

        @self.shipping.handles(app.ShipOrderCommand)
        def ship(cmd: Any) -> Any:
            if cmd.address == "nowhere":
                return app.ShipmentFailedEvent(order_id=cmd.order_id, reason="no such address")
            return app.OrderShippedEvent(order_id=cmd.order_id, tracking_number=f"trk-{cmd.order_id}")


async def until(check: Callable[[], Any], timeout: float = 10) -> None:
    for _ in range(int(timeout * 100)):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def run_scenarios(defn: SagaDefinition, failing: SagaDefinition, app: Any, store: str) -> None:
    """The scenario of the issue, for one way of obtaining the definitions."""
    broker = MemoryBroker()
    transports = partial(MemoryTransport, broker)
    created = app.OrderCreatedEvent
    outcomes = Outcomes(transports, [f"{EVENTS}.OrderProcessingCompletedEvent", f"{EVENTS}.OrderProcessingFailedEvent"])
    async with outcomes:
        # Happy path: the trigger starts one saga per order; completion is announced.
        async with Services(transports, app), SagaEngine(store, transport=transports()) as engine:
            engine.register(defn)
            await engine.publish(created(order_id="o-1", amount=20.0, address="1 Main St"))
            await engine.publish(created(order_id="o-1", amount=20.0, address="1 Main St"))
            snap = await saga_for(engine, "o-1")
            assert snap.status is SagaStatus.COMPLETED
            assert snap.name == "OrderProcessingSaga"
            assert snap.data["payment_id"] == "pay-o-1" and snap.data["tracking_number"] == "trk-o-1"
            assert await engine.count(correlation_id="o-1") == 1
            await outcomes.wait_for(1, timeout=10)
            assert outcomes.events[0].type_name == f"{EVENTS}.OrderProcessingCompletedEvent"
            assert outcomes.events[0].payload == {"order_id": "o-1"}

        # A shipping failure: payment refunded, failure announced.
        async with Services(transports, app) as services, SagaEngine(store, transport=transports()) as engine:
            engine.register(failing)
            await engine.publish(created(order_id="o-2", amount=5.0, address="nowhere"))
            snap = await saga_for(engine, "o-2")
            assert snap.status is SagaStatus.COMPENSATED
            assert snap.steps["ShipOrder"].status is StepStatus.FAILED
            assert "no such address" in (snap.steps["ShipOrder"].error or "")
            assert snap.steps["ProcessPayment"].status is StepStatus.COMPENSATED
            assert services.refunds == ["pay-o-2"]
            await outcomes.wait_for(2, timeout=10)
            assert outcomes.events[1].type_name == f"{EVENTS}.OrderProcessingFailedEvent"

        # A lost reply: timed out, resent with the same message id; the shipment may have
        # happened (it did: the service handled the command), so it is compensated too.
        broker.drop_next[f"{SHIPPING}.OrderShippedEvent"] = 10
        async with Services(transports, app) as services, SagaEngine(store, transport=transports()) as engine:
            engine.register(fast(failing, reply_timeout=0.2, attempts=2))
            await engine.publish(created(order_id="o-3", amount=5.0, address="2 Side St"))
            snap = await saga_for(engine, "o-3")
            assert snap.status is SagaStatus.COMPENSATED
            assert snap.steps["ShipOrder"].uncertain
            assert snap.steps["ShipOrder"].status is StepStatus.COMPENSATED
            assert any(h.step == "ShipOrder" and "timed out" in h.message for h in snap.history)
            sent = [
                Envelope.from_bytes(m.body)
                for m in broker.published
                if m.destination == message_type_name(app.ShipOrderCommand)
                and Envelope.from_bytes(m.body).saga_id == snap.id
            ]
            assert len(sent) == 2 and sent[0].message_id == sent[1].message_id
            assert services.shipping.handled == 1 and services.shipping.duplicates == 1
            assert services.refunds == ["pay-o-3"]
        broker.drop_next.clear()

        # A duplicated reply: no second effect, recorded as a dead letter.
        broker.duplicate_next[f"{PAYMENTS}.PaymentProcessedEvent"] = 1
        async with Services(transports, app), SagaEngine(store, transport=transports()) as engine:
            engine.register(defn)
            await engine.publish(created(order_id="o-4", amount=5.0, address="3 Hill Rd"))
            snap = await saga_for(engine, "o-4")
            assert snap.status is SagaStatus.COMPLETED
            assert sum(h.kind == "step_completed" and h.step == "ProcessPayment" for h in snap.history) == 1

            async def duplicate_recorded() -> bool:
                return any(d.saga_id == snap.id for d in await engine.dead_letters())

            await until(duplicate_recorded)

            # A reply for an unknown saga: dead-lettered with the reason.
            stray = Envelope.wrap(
                app.PaymentProcessedEvent(order_id="zz", payment_id="p"),
                message_id="stray-1",
                timestamp=0.0,
                saga_id="0" * 32,
                step="ProcessPayment",
                token=1,
            )
            transport = transports()
            await transport.start()
            await transport.publish(stray.type_name, stray.to_bytes(), message_id="stray-1")
            await transport.close()

            async def stray_recorded() -> bool:
                return any(d.message_id == "stray-1" for d in await engine.dead_letters())

            await until(stray_recorded)
            [letter] = [d for d in await engine.dead_letters() if d.message_id == "stray-1"]
            assert f"unknown saga {'0' * 32}" in letter.reason


@pytest.fixture
def app_classes(app: Any) -> Any:
    return app


async def test_seed_example_loaded(tmp_path: Path, app_classes: Any) -> None:
    defn = load_definition(SEED_DATA)
    failing = load_definition(with_failures(SEED_DATA))
    await run_scenarios(defn, failing, app_classes, f"sqlite:///{tmp_path}/seed.db")


def _generate(data: dict[str, Any], root: Path, name: str) -> Any:
    import json

    source = root / f"{name}.json"
    source.write_text(json.dumps(data))
    out = CliRunner().invoke(
        cli, ["generate", str(source), "--bounded-ctx", "ordering", "--root", str(root / name), "--path", str(FIXTURES)]
    )
    assert out.exit_code == 0, out.output
    path = Path(out.output.strip().splitlines()[-1])
    assert path.exists() and path.name == "order_processing_saga_orchestrator.py"
    spec = importlib.util.spec_from_file_location(f"generated_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.definition


async def test_seed_example_generated(tmp_path: Path, app_classes: Any) -> None:
    defn = _generate(SEED_DATA, tmp_path, "plain")
    failing = _generate(with_failures(SEED_DATA), tmp_path, "failing")
    assert isinstance(defn, SagaDefinition) and defn.name == "OrderProcessingSaga"
    await run_scenarios(defn, failing, app_classes, f"sqlite:///{tmp_path}/generated.db")
