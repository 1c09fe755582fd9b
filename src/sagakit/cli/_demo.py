"""``sagakit demo``: the order-fulfilment saga, embedded on a SQLite file.

It plans a few hundred orders (a share of them failing at a random step, a
few hitting a transient error first), starts them all on one engine, shows a
live progress bar, and then a table of outcomes checked against the plan.
The saga and its in-memory services live in ``sagakit.examples.order_fulfillment``.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .._engine import SagaEngine
from .._errors import StoreError
from .._snapshot import SagaSnapshot
from .._status import SagaStatus, StepStatus
from .._store import Store, store_from_url
from ..examples.order_fulfillment import (
    SAGA_NAME,
    STEPS,
    Ledger,
    OrderPlan,
    OrderServices,
    plan_orders,
)
from ..stores.sqlite import SQLiteStore
from ._render import EXIT_FAILED, EXIT_STORE, console, fail

__all__ = ["DemoResult", "commands", "demo_command", "run_demo"]

_SQLITE_HEADER = b"SQLite format 3\x00"
_TERMINAL = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.ABORTED)
_START_CONCURRENCY = 100


@dataclass
class DemoResult:
    """What a demo run did, order by order."""

    plans: list[OrderPlan]
    sagas: dict[str, SagaSnapshot]  # by order id; missing if the saga never finished
    ledger: Ledger
    elapsed: float
    timed_out: bool = False
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.timed_out and not self.mismatches


def failed_step(snap: SagaSnapshot) -> str | None:
    """The step whose action failed, if any."""
    return next((s.name for s in snap.steps.values() if s.status is StepStatus.FAILED), None)


def _check(result: DemoResult) -> list[str]:
    problems = []
    for p in result.plans:
        snap = result.sagas.get(p.order_id)
        expected = SagaStatus.COMPENSATED if p.fail_at else SagaStatus.COMPLETED
        if snap is None:
            problems.append(f"order {p.order_id}: its saga did not finish")
        elif snap.status is not expected:
            problems.append(
                f"order {p.order_id} (saga {snap.id}): {snap.status.value}, expected "
                f"{expected.value}" + (f" ({snap.error})" if snap.error else "")
            )
        elif failed_step(snap) != p.fail_at:
            problems.append(f"order {p.order_id} (saga {snap.id}): failed at {failed_step(snap)}, expected {p.fail_at}")
    problems.extend(result.ledger.check(result.plans))
    return problems


# ---------------------------------------------------------------- store


def _is_sagakit_only(path: str) -> bool:
    """True if the file at *path* is empty or a SQLite database holding only sagakit tables."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return True
    if head != _SQLITE_HEADER:
        return False
    try:
        conn = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    names = {r[0] for r in rows}
    return "sagakit_meta" in names and all(n.startswith("sagakit_") for n in names)


def prepare_store(url: str, keep: bool) -> Store:
    """The demo's store; a SQLite file is deleted first unless *keep*.

    Only a file that holds nothing but sagakit's tables is deleted; anything
    else is refused with exit status 4.
    """
    try:
        store = store_from_url(url)
    except StoreError as e:
        fail(str(e), EXIT_STORE)
    if keep or not isinstance(store, SQLiteStore) or store.path == ":memory:":
        return store
    path = store.path
    if os.path.exists(path):
        if not _is_sagakit_only(path):
            fail(
                f"{os.path.abspath(path)} is not a sagakit demo database (it is not SQLite, or "
                "holds other tables); the demo will not delete it. Pass another --store.",
                EXIT_STORE,
            )
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    return store


# ---------------------------------------------------------------- run


async def _terminal_count(engine: SagaEngine) -> int:
    return sum([await engine.count(status, SAGA_NAME) for status in _TERMINAL])


async def _start_all(engine: SagaEngine, plans: Sequence[OrderPlan], run_tag: str) -> list[str]:
    gate = asyncio.Semaphore(_START_CONCURRENCY)

    async def start(p: OrderPlan) -> str:
        async with gate:
            return await engine.start(
                SAGA_NAME,
                p.as_data(),
                idempotency_key=f"{p.order_id}@{run_tag}",
                correlation_id=p.order_id,
            )

    return list(await asyncio.gather(*(start(p) for p in plans)))


async def _collect(engine: SagaEngine, ids: Sequence[str]) -> dict[str, SagaSnapshot]:
    """Snapshots of the sagas *ids*, read page by page (newest first) and then one by one."""
    wanted = set(ids)
    found: dict[str, SagaSnapshot] = {}
    offset, page = 0, 500
    while len(found) < len(wanted):
        batch = await engine.list(name=SAGA_NAME, limit=page, offset=offset)
        found.update((s.id, s) for s in batch if s.id in wanted)
        if len(batch) < page or offset > len(wanted) * 2:
            break
        offset += page
    for sid in wanted - found.keys():
        found[sid] = await engine.get(sid)
    return found


async def run_demo(
    store: Store,
    plans: Sequence[OrderPlan],
    *,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> DemoResult:
    """Run one saga per planned order on *store* and check every outcome against the plan."""
    ledger = Ledger()
    services = OrderServices(ledger)
    engine = SagaEngine(store)
    engine.register(services.definition())
    run_tag = uuid.uuid4().hex[:8]
    timed_out = False
    async with engine:
        before = await _terminal_count(engine)
        task = progress.add_task("orders", total=len(plans)) if progress else None
        started_at = time.time()
        deadline = time.monotonic() + timeout
        starter = asyncio.create_task(_start_all(engine, plans, run_tag))
        while True:
            polled = time.monotonic()
            done = await _terminal_count(engine) - before
            if progress is not None and task is not None:
                progress.update(task, completed=done)
            if starter.done() and (starter.exception() or done >= len(plans)):
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            # Counting scans the table: poll less often as it grows, to leave the store
            # to the sagas.
            await asyncio.sleep(max(0.02, 4 * (time.monotonic() - polled)))
        ids = await starter
        by_id = await _collect(engine, ids)
    sagas = {p.order_id: by_id[sid] for p, sid in zip(plans, ids, strict=True) if by_id[sid].status.terminal}
    last = max((s.updated_at for s in sagas.values()), default=started_at)
    result = DemoResult(list(plans), sagas, ledger, max(last - started_at, 1e-9), timed_out)
    result.mismatches = _check(result)
    return result


# ---------------------------------------------------------------- output


def outcome_table(result: DemoResult) -> Table:
    """The outcome of every order beside what the plan expected."""
    sagas = list(result.sagas.values())
    statuses = Counter(s.status for s in sagas)
    failed_at = Counter(failed_step(s) for s in sagas if s.status is SagaStatus.COMPENSATED)
    planned = Counter(p.fail_at for p in result.plans)
    attempts = sum(st.attempts for s in sagas for st in s.steps.values())
    retries = sum(max(st.attempts - 1, 0) for s in sagas for st in s.steps.values())
    compensations = sum(st.compensation_attempts for s in sagas for st in s.steps.values())
    unfinished = len(result.plans) - len(sagas)

    table = Table(title="outcomes", title_justify="left", header_style="bold")
    table.add_column("OUTCOME")
    table.add_column("SAGAS", justify="right")
    table.add_column("EXPECTED", justify="right")
    table.add_row("completed", str(statuses[SagaStatus.COMPLETED]), str(planned[None]))
    for step in STEPS:
        table.add_row(f"compensated, failed at {step}", str(failed_at[step]), str(planned[step]))
    table.add_row("failed (a compensation gave up)", str(statuses[SagaStatus.FAILED]), "0")
    table.add_row("aborted", str(statuses[SagaStatus.ABORTED]), "0")
    if unfinished:
        table.add_row("not finished", str(unfinished), "0", style="red")
    table.add_section()
    table.add_row("step attempts (incl. retries)", str(attempts), "")
    table.add_row("  of which retries after a transient error", str(retries), "")
    table.add_row("compensations run", str(compensations), "")
    table.add_row(
        "side effects (one per idempotency key)",
        str(len(result.ledger.effects)),
        "consistent" if not result.ledger.check(result.plans) else "[red]inconsistent[/red]",
    )
    if result.ledger.repeats:
        table.add_row("  repeated runs absorbed by the key", str(result.ledger.repeats), "")
    table.add_section()
    table.add_row("elapsed", f"{result.elapsed:.2f} s", "")
    table.add_row("throughput", f"{len(sagas) / result.elapsed:,.0f} sagas/s", "")
    return table


@click.command("demo")
@click.option(
    "--store",
    "store_url",
    default="sqlite:///sagakit-demo.db",
    show_default=True,
    metavar="URL",
    help="Where to keep the sagas; a SQLite file is recreated per run unless --keep.",
)
@click.option("--orders", type=click.IntRange(min=1), default=300, show_default=True)
@click.option(
    "--failure-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.2,
    show_default=True,
    help="Share of orders that fail at a random step with a business error.",
)
@click.option("--seed", type=int, help="Seed of the order plan (default: a random one, printed).")
@click.option("--keep", is_flag=True, help="Keep the sagas of earlier runs in the store.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=120.0,
    show_default=True,
    help="Seconds to wait for every saga to finish.",
)
def demo_command(
    store_url: str, orders: int, failure_rate: float, seed: int | None, keep: bool, timeout: float
) -> None:
    """Run the order-fulfilment saga on an embedded SQLite store and show the outcomes.

    Each order reserves inventory, processes the payment and ships; a share of
    the orders fails at a random step and is compensated in reverse order. The
    exit status is 0 when every saga ended as planned (completed, or
    compensated after failing at its planned step), 1 otherwise.
    """
    if seed is None:
        seed = random.randrange(1_000_000)
    plans = plan_orders(orders, failure_rate, seed)
    failing = sum(1 for p in plans if p.fail_at)
    out = console()
    store = prepare_store(store_url, keep)
    out.print(
        f"[bold]{SAGA_NAME}[/bold]: {orders} orders, {failing} planned to fail "
        f"(--failure-rate {failure_rate}, --seed {seed}), store {store_url}"
    )
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("finished"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=out) as progress:
            result = asyncio.run(run_demo(store, plans, timeout=timeout, progress=progress))
    except (StoreError, sqlite3.Error, OSError) as e:
        fail(f"cannot use store {store_url}: {e}", EXIT_STORE)
    out.print(outcome_table(result))
    if result.timed_out:
        out.print(f"[red]timed out after {timeout:g} s waiting for the sagas to finish[/red]")
    for line in result.mismatches[:10]:
        out.print(f"[red]unexpected:[/red] {line}")
    if len(result.mismatches) > 10:
        out.print(f"[red]… and {len(result.mismatches) - 10} more[/red]")
    example = next(
        (s for s in result.sagas.values() if s.status is SagaStatus.COMPENSATED),
        next(iter(result.sagas.values()), None),
    )
    if example is not None:
        out.print(f"inspect: sagakit list --store {store_url}\n         sagakit show {example.id} --store {store_url}")
    if not result.ok:
        raise click.exceptions.Exit(EXIT_FAILED)


commands: list[click.Command] = [demo_command]
