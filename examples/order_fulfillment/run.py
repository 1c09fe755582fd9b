"""Run the whole example: start every process, place orders, wait for every saga, check and summarise.

    python -m examples.order_fulfillment.run --orders 300
    python -m examples.order_fulfillment.run --transport amqp://guest:guest@127.0.0.1/ --orchestrators 2
    python -m examples.order_fulfillment.run --transport redis://127.0.0.1:6379 --store sqlite:///of.db

Some orders are made to fail at one service (a sold-out SKU, a declined or a
stolen card, an address nobody ships to, an address whose label makes the
shipping service's handler raise), chosen at random with ``--seed``. Exits 1
when a saga does not end as its order's plan says (step statuses, and the
cancellation reason its compensation recorded), when the services' effects
do not match (an effect applied twice, a compensation missing or extra), or
when not every saga finished within ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table

from sagakit import SagaEngine, SagaSnapshot, SagaStatus, StepStatus
from sagakit.participant import Envelope
from sagakit.transports import TransportError, transport_from_url

from ._process import DEFAULT_TRANSPORT
from .messages import BROKEN_ADDRESS, DECLINED_CARD, SOLD_OUT_SKU, STOLEN_CARD, UNKNOWN_ADDRESS, OrderPlaced
from .orchestrator import DEFAULT_STORE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = ("open_order", "reserve_inventory", "charge_payment", "ship_order")
_C, _F, _P, _D = StepStatus.COMPENSATED, StepStatus.FAILED, StepStatus.PENDING, StepStatus.COMPLETED
SCENARIOS = {  # failing service -> (label, the saga's expected step statuses, the cancellation reason recorded)
    None: ("no failure", (_D, _D, _D, _D), None),
    "inventory": ("inventory fails", (_C, _F, _P, _P), f"{SOLD_OUT_SKU} is sold out"),
    "payment": ("card declined", (_C, _C, _F, _P), "card declined"),
    "fraud": ("card stolen", (_C, _C, _F, _P), "card reported stolen"),
    "shipping": ("shipping fails", (_C, _C, _C, _F), f"no route to {UNKNOWN_ADDRESS!r}"),
    "shipping_fault": ("shipping service faults", (_C, _C, _C, _F), "RuntimeError: label printer jammed"),
}
CARDS = {"payment": DECLINED_CARD, "fraud": STOLEN_CARD}
ADDRESSES = {"shipping": UNKNOWN_ADDRESS, "shipping_fault": BROKEN_ADDRESS}
console = Console(stderr=True)


@dataclass
class Order:
    order_id: str
    fail_at: str | None

    def event(self) -> OrderPlaced:
        return OrderPlaced(
            order_id=self.order_id,
            sku=SOLD_OUT_SKU if self.fail_at == "inventory" else "SKU-1",
            quantity=1,
            amount=42.0,
            card={"payment": DECLINED_CARD, "fraud": STOLEN_CARD}.get(self.fail_at or "", "4242-4242-4242-4242"),
            address={"shipping": UNKNOWN_ADDRESS, "shipping_fault": BROKEN_ADDRESS}.get(
                self.fail_at or "", "1 Main St"
            ),
        )

    @property
    def expected(self) -> SagaStatus:
        return SagaStatus.COMPLETED if self.fail_at is None else SagaStatus.COMPENSATED


@dataclass
class Process:
    name: str
    proc: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)

    async def read_until(self, kind: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), max(0.1, end - time.monotonic()))
            if not line:
                raise RuntimeError(f"{self.name} exited (status {await self.proc.wait()}) before '{kind}'")
            msg = json.loads(line)
            self.lines.append(msg)
            if msg.get("kind") == kind:
                return msg


def plan(n: int, rates: dict[str, float], seed: int, run_id: str) -> list[Order]:
    rng = random.Random(seed)
    orders = []
    for i in range(n):
        r, fail_at, edge = rng.random(), None, 0.0
        for service, rate in rates.items():
            edge += rate
            if r < edge:
                fail_at = service
                break
        orders.append(Order(f"{run_id}-{i:05d}", fail_at))
    return orders


def fresh_store(url: str, run_id: str) -> tuple[str, str | None]:
    """The store URL to use: on PostgreSQL without ``?schema=``, a new schema for this run (returned too)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if not url.startswith(("postgresql", "postgres")) or "schema" in query:
        return url, None
    schema = f"order_fulfillment_{run_id}"
    return urlunsplit(parts._replace(query=urlencode({**query, "schema": schema}))), schema


async def drop_schema(url: str, schema: str) -> None:
    import asyncpg

    parts = urlsplit(url)
    conn = await asyncpg.connect(urlunsplit(parts._replace(query="")))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def spawn(module: str, args: list[str], log_level: str) -> Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"examples.order_fulfillment.{module}",
        *args,
        "--log-level",
        log_level,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    return Process(module, proc)


async def place(url: str, orders: list[Order]) -> None:
    """Publish every order's OrderPlaced event, as the shop would (retrying while the broker is away)."""
    transport = transport_from_url(url)
    await transport.start()
    try:
        for order in orders:
            mid = f"placed-{order.order_id}"
            env = Envelope.wrap(order.event(), message_id=mid, timestamp=time.time())
            for attempt in range(100):
                try:
                    await transport.publish(env.type_name, env.to_bytes(), message_id=mid, headers={"message_id": mid})
                    break
                except TransportError:
                    if attempt == 99:
                        raise
                    await asyncio.sleep(0.2)
    finally:
        await transport.close()


async def wait_terminal(engine: SagaEngine, n: int, since: float, timeout: float) -> int:
    """Wait until *n* sagas created since *since* are terminal; returns how many are."""
    terminal = [SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.ABORTED]
    end = time.monotonic() + timeout
    last = 0.0
    while True:
        done = await engine.count(statuses=terminal, created_after=since)
        if done >= n or time.monotonic() > end:
            return done
        if time.monotonic() - last > 2:
            console.print(f"  {done}/{n} sagas finished", highlight=False)
            last = time.monotonic()
        await asyncio.sleep(0.25)


async def snapshots(engine: SagaEngine, since: float) -> dict[str, SagaSnapshot]:
    out: dict[str, SagaSnapshot] = {}
    offset = 0
    while True:
        page = await engine.list(name="order_fulfillment", created_after=since, limit=500, offset=offset)
        for snap in page:
            if snap.correlation_id:
                # A failed shipping step's faults are in the history, which list() leaves out.
                failed = snap.steps["ship_order"].status is StepStatus.FAILED
                out[snap.correlation_id] = await engine.get(snap.id) if failed else snap
        if len(page) < 500:
            return out
        offset += 500


def check(orders: list[Order], snaps: dict[str, SagaSnapshot], services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Compare each saga and the services' ledgers with the plan; the report the table and --json show."""
    rows: dict[str, dict[str, Any]] = {}
    wrong: list[str] = []
    for order in orders:
        label, steps, reason = SCENARIOS[order.fail_at]
        row = rows.setdefault(label, {"orders": 0, "completed": 0, "compensated": 0, "other": 0, "ok": True})
        row["orders"] += 1
        snap = snaps.get(order.order_id)
        status = snap.status if snap is not None else None
        key = {SagaStatus.COMPLETED: "completed", SagaStatus.COMPENSATED: "compensated"}.get(status, "other")  # type: ignore[arg-type]
        row[key] += 1
        got = tuple(snap.steps[s].status for s in STEPS) if snap is not None else None
        recorded = snap.data.get("cancel_reason") if snap is not None else None
        faults = sum(h.kind == "fault" for h in snap.history) if snap is not None else 0
        expected_faults = 3 if order.fail_at == "shipping_fault" else 0  # one per attempt of ship_order
        if status is not order.expected or got != steps or recorded != reason or faults != expected_faults:
            row["ok"] = False
            wrong.append(f"{order.order_id} ({label}): {status} {got}, reason {recorded!r}, faults {faults}")
    fails = Counter(o.fail_at for o in orders)
    n = len(orders)
    charged = n - fails["inventory"] - fails["payment"] - fails["fraud"]
    expected_effects = {
        "inventory": {"reserved": n - fails["inventory"], "released": n - fails["inventory"] - fails[None]},
        "payments": {"charged": charged, "refunded": fails["shipping"] + fails["shipping_fault"]},
        "shipping": {"shipped": fails[None]},
    }  # fmt: skip
    effects = {}
    for name, expected in expected_effects.items():
        got_effects = {k: services.get(name, {}).get("effects", {}).get(k, 0) for k in expected}
        twice = services.get(name, {}).get("twice", ["(no summary)"])
        ok = got_effects == expected and not twice
        effects[name] = {"expected": expected, "actual": got_effects, "twice": twice, "ok": ok}
        if not ok:
            wrong.append(f"{name}: effects {got_effects}, expected {expected}, applied twice: {twice}")
    return {"scenarios": rows, "effects": effects, "wrong": wrong, "ok": not wrong}


def show(report: dict[str, Any], elapsed: float, n: int, services: dict[str, dict[str, Any]]) -> None:
    out = Console()
    table = Table(title=f"{n} orders in {elapsed:.1f}s ({n / elapsed:.0f} sagas/s)")
    for col in ("orders", "completed", "compensated", "other", "as planned"):
        table.add_column(col, justify="right")
    table.add_column("scenario", justify="left")
    for label, row in report["scenarios"].items():
        mark = "[green]yes[/]" if row["ok"] else "[red]NO[/]"
        table.add_row(*(str(row[k]) for k in ("orders", "completed", "compensated", "other")), mark, label)
    out.print(table)
    effects = Table(title="service effects (each order at most once)")
    for col in ("service", "effect", "expected", "actual", "duplicates absorbed"):
        effects.add_column(col)
    for name, e in report["effects"].items():
        for k, v in e["expected"].items():
            style = "" if e["ok"] else "[red]"
            dup = str(services.get(name, {}).get("duplicates", "?"))
            effects.add_row(name, k, str(v), f"{style}{e['actual'][k]}", dup)
    out.print(effects)
    for line in report["wrong"][:20]:
        out.print(f"[red]not as planned:[/] {line}")


async def main(args: argparse.Namespace) -> int:
    run_id = uuid.uuid4().hex[:8]
    store, schema = fresh_store(args.store, run_id)
    rates = {
        "inventory": args.fail_inventory,
        "payment": args.fail_payment,
        "fraud": args.fail_fraud,
        "shipping": args.fail_shipping,
        "shipping_fault": args.fault_shipping,
    }
    orders = plan(args.orders, rates, args.seed, run_id)
    transport = ["--transport", args.transport]
    processes: list[Process] = []
    engine = SagaEngine(store)
    try:
        console.print(f"starting the services and {args.orchestrators} orchestrator(s) on {args.transport}")
        for module in ("inventory", "payment", "shipping"):
            processes.append(await spawn(module, transport, args.log_level))
        for p in processes:
            await p.read_until("ready", 60)
        workers = [await spawn("orchestrator", [*transport, "--store", store], args.log_level)]
        for _ in range(args.orchestrators - 1):
            workers.append(await spawn("orchestrator", [*transport, "--store", store], args.log_level))
        for p in workers:
            await p.read_until("ready", 60)
        processes += workers
        since = time.time() - 1
        started = time.monotonic()
        console.print(f"placing {len(orders)} orders ({dict(Counter(o.fail_at or 'ok' for o in orders))})")
        await place(args.transport, orders)
        done = await wait_terminal(engine, len(orders), since, args.timeout)
        elapsed = time.monotonic() - started
        if done < len(orders):
            console.print(f"[red]only {done} of {len(orders)} sagas finished within {args.timeout}s[/]")
    finally:
        services: dict[str, dict[str, Any]] = {}
        for p in processes:
            if p.proc.returncode is None:
                p.proc.terminate()
        for p in processes:
            try:
                summary = await p.read_until("summary", 30)
                services[summary["process"]] = summary
            except Exception as e:
                console.print(f"[red]{p.name}: no summary ({e})[/]")
            if p.proc.returncode is None:
                p.proc.kill()
            await p.proc.wait()
    snaps = await snapshots(engine, since)
    await engine.close()
    report = check(orders, snaps, services)
    report.update(orders=len(orders), seconds=round(elapsed, 2), transport=args.transport, store=store)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        show(report, elapsed, len(orders), services)
    if schema is not None and not args.keep_store:
        await drop_schema(store, schema)
    return 0 if report["ok"] else 1


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=300)
    p.add_argument("--transport", default=DEFAULT_TRANSPORT, help="nats://…, amqp://… or redis://…")
    p.add_argument("--store", default=DEFAULT_STORE, help="postgresql://… (a fresh schema per run) or sqlite:///…")
    p.add_argument("--orchestrators", type=int, default=None, help="worker processes (default: 2, 1 on SQLite)")
    p.add_argument("--fail-inventory", type=float, default=0.05, help="share of orders whose SKU is sold out")
    p.add_argument("--fail-payment", type=float, default=0.05, help="share of orders whose card is declined")
    p.add_argument("--fail-fraud", type=float, default=0.05, help="share of orders paid with a stolen card")
    p.add_argument("--fail-shipping", type=float, default=0.05, help="share of orders nobody can ship")
    p.add_argument("--fault-shipping", type=float, default=0.05, help="share of orders the shipping handler raises on")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for every saga to finish")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep-store", action="store_true", help="keep the run's PostgreSQL schema")
    p.add_argument("--log-level", default="WARNING", help="of the child processes (stderr)")
    args = p.parse_args()
    if args.orchestrators is None:
        args.orchestrators = 1 if args.store.startswith("sqlite") else 2
    sys.exit(asyncio.run(main(args)))


if __name__ == "__main__":
    cli()
