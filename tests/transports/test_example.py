"""The multi-service example end to end: separate processes over a real broker, saga state in a real store.

``python -m examples.order_fulfillment.run`` starts the inventory, payment and
shipping services and the orchestrator workers, places orders (some made to
fail at each service), waits for every saga and checks each against its plan
and the services' effect ledgers; it exits non-zero on any difference.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from sagakit import SagaEngine
from tests.conftest import PG_DSN, pg_available, require_service

from .brokers import Broker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _subscriptions() -> set[tuple[str, str]]:
    """(group, destination) of every process of the example, for the broker cleanup."""
    from examples.order_fulfillment import messages as m
    from examples.order_fulfillment.saga import definition

    from sagakit._messages import message_type_name as name

    engine = SagaEngine("memory://")
    engine.register(definition())
    pairs = {("sagakit", d) for d in engine._messaging.destinations}
    for group, commands in {
        "inventory": [m.ReserveInventory, m.ReleaseInventory],
        "payments": [m.ChargePayment, m.RefundPayment],
        "shipping": [m.ShipOrder],
    }.items():
        pairs |= {(group, name(c)) for c in commands}
    return pairs


def run_example(broker: Broker, store: str, orders: int, *extra: str) -> dict:
    broker.subscribed |= _subscriptions()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.order_fulfillment.run",
            "--orders",
            str(orders),
            "--transport",
            broker.url(),
            "--store",
            store,
            "--fail-inventory",
            "0.1",
            "--fail-payment",
            "0.1",
            "--fail-shipping",
            "0.1",
            "--timeout",
            "150",
            "--json",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert proc.stdout.strip(), f"no report; stderr:\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, f"not as planned: {report['wrong'][:10]}\nstderr:\n{proc.stderr[-3000:]}"
    return report


def check(report: dict, orders: int) -> None:
    assert report["ok"] and report["wrong"] == []
    rows = report["scenarios"]
    assert sum(r["orders"] for r in rows.values()) == orders
    assert rows["no failure"]["completed"] == rows["no failure"]["orders"] > 0
    failing = ("inventory fails", "card declined", "card stolen", "shipping fails", "shipping service faults")
    for label in failing:
        assert rows[label]["compensated"] == rows[label]["orders"] > 0, label
    for service, e in report["effects"].items():
        assert e["actual"] == e["expected"], service
        assert e["twice"] == [], service
    # Compensations match the failures injected: every failure after the reservation releases it, every
    # failure after the charge refunds it.
    inv, pay = report["effects"]["inventory"]["actual"], report["effects"]["payments"]["actual"]
    assert inv["released"] == sum(rows[label]["orders"] for label in failing[1:])
    assert pay["refunded"] == rows["shipping fails"]["orders"] + rows["shipping service faults"]["orders"]


@pytest.mark.parametrize("broker", ["nats", "rabbitmq"], indirect=True)
async def test_example_on_postgresql(broker: Broker) -> None:
    require_service(pg_available())
    orders = 120
    report = await asyncio.to_thread(
        run_example, broker, PG_DSN, orders, "--orchestrators", "2"
    )  # a fresh schema, dropped after
    check(report, orders)


@pytest.mark.parametrize("broker", ["redis", "kafka"], indirect=True)
async def test_example_single_machine_on_sqlite(broker: Broker, tmp_path: os.PathLike[str]) -> None:
    orders = 80
    report = await asyncio.to_thread(run_example, broker, f"sqlite:///{os.fspath(tmp_path)}/of.db", orders)
    check(report, orders)
