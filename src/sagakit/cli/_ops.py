"""``sagakit list`` and ``sagakit show``: read sagas from any store.

Both are thin over ``SagaEngine``'s read API (``list``, ``count``, ``get``);
the engine is opened for reading only: no definitions, no workers. What they
print goes through the masking policy (``sagakit._masking``) that the HTTP API
and the dashboard use: ``--mask`` and ``--mask-extra`` change it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from rich.table import Table
from rich.text import Text

from .._engine import SagaEngine
from .._errors import SagaNotFound, StoreError
from .._masking import DEFAULT_MASK_PATTERN, Masker, hide_password
from .._snapshot import SagaSnapshot
from .._status import SagaStatus, StepStatus
from .._store import store_from_url
from ..stores.sqlite import SQLiteStore
from ._render import EXIT_NOT_FOUND, EXIT_STORE, console, echo_json, fail, iso, short, status_text

__all__ = ["commands", "list_command", "mask_options", "masker", "show_command", "store_option"]

T = TypeVar("T")

DEFAULT_STORE = "sqlite:///sagas.db"

# Step statuses whose action finished successfully at some point.
_ACTION_DONE = frozenset(
    {
        StepStatus.COMPLETED,
        StepStatus.SKIPPED,
        StepStatus.COMPENSATING,
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATION_FAILED,
    }
)

store_option = click.option(
    "--store",
    "store_url",
    envvar="SAGAKIT_STORE",
    default=DEFAULT_STORE,
    show_default=True,
    show_envvar=True,
    metavar="URL",
    help="Store URL: sqlite:///relative.db, sqlite:////absolute.db, postgresql://…",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")


def mask_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--mask`` and ``--mask-extra``: the keys whose values are masked in what a command prints or serves."""
    fn = click.option(
        "--mask-extra",
        "mask_extra",
        multiple=True,
        envvar="SAGAKIT_MASK_EXTRA",
        show_envvar=True,
        metavar="REGEX",
        help="Also mask the values of keys matching REGEX (case-insensitive; repeatable; "
        "in the variable, separated by spaces).",
    )(fn)
    return click.option(
        "--mask",
        default=None,
        envvar="SAGAKIT_MASK",
        show_envvar=True,
        metavar="REGEX",
        help=f"Keys whose values are masked, instead of the default ({DEFAULT_MASK_PATTERN}); "
        "'' masks nothing. Card numbers, IBANs and tokens are masked wherever they appear.",
    )(fn)


def masker(mask: str | None, mask_extra: tuple[str, ...]) -> Masker:
    """The masking policy that ``--mask`` and ``--mask-extra`` ask for; a usage error for a bad pattern."""
    try:
        if mask == "":
            return Masker(None)  # an explicit "mask nothing", for an operator who needs the raw values
        return Masker(DEFAULT_MASK_PATTERN if mask is None else mask, extra=mask_extra)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--mask/--mask-extra") from None


def read_engine(url: str) -> SagaEngine:
    """An engine on *url* for reading; exits with status 4 when the store cannot be used.

    A SQLite file that does not exist is an error here rather than a new, empty store.
    """
    try:
        store = store_from_url(url)
    except StoreError as e:
        fail(str(e), EXIT_STORE)
    if isinstance(store, SQLiteStore) and store.path != ":memory:" and not os.path.exists(store.path):
        fail(
            f"no SQLite store at {os.path.abspath(store.path)} (from {url!r}); check --store or SAGAKIT_STORE",
            EXIT_STORE,
        )
    return SagaEngine(store)


def run_read(url: str, read: Callable[[SagaEngine], Awaitable[T]]) -> T:
    """Run *read* on a read-only engine for *url*, mapping errors to exit statuses."""

    async def main() -> T:
        engine = read_engine(url)
        try:
            return await read(engine)
        finally:
            await engine.close()

    try:
        return asyncio.run(main())
    except SagaNotFound as e:
        fail(f"{e} in store {url}", EXIT_NOT_FOUND)
    except (StoreError, sqlite3.Error, OSError) as e:
        fail(f"cannot read store {url}: {e}", EXIT_STORE)


def steps_done(snap: SagaSnapshot) -> int:
    """Steps whose action completed (including those undone since)."""
    return sum(1 for s in snap.steps.values() if s.status in _ACTION_DONE)


# ---------------------------------------------------------------- list


@click.command("list")
@store_option
@click.option(
    "--status",
    type=click.Choice([s.value for s in SagaStatus], case_sensitive=False),
    help="Only sagas in this status.",
)
@click.option("--name", help="Only sagas of this definition name.")
@click.option("--correlation-id", help="Only sagas with this correlation id.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@json_option
@mask_options
def list_command(
    store_url: str,
    status: str | None,
    name: str | None,
    correlation_id: str | None,
    limit: int,
    offset: int,
    as_json: bool,
    mask: str | None,
    mask_extra: tuple[str, ...],
) -> None:
    """List sagas, newest first.

    STEPS counts the steps whose action completed, out of all steps.
    """
    saga_status = SagaStatus(status.lower()) if status else None
    policy = masker(mask, mask_extra)

    async def read(engine: SagaEngine) -> tuple[list[SagaSnapshot], int]:
        sagas = await engine.list(saga_status, name, correlation_id, limit=limit, offset=offset)
        total = await engine.count(saga_status, name, correlation_id)
        return sagas, total

    found, total = run_read(store_url, read)
    sagas = [policy.snapshot(s) for s in found]
    if as_json:
        echo_json([s.to_dict() for s in sagas])
        return
    out = console()
    if not sagas:
        where = f"at offset {offset} ({total} match)" if total else "match"
        out.print(f"no sagas {where} in {hide_password(store_url)}")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("NAME")
    table.add_column("V", justify="right")
    table.add_column("STATUS")
    table.add_column("STEPS", justify="right")
    table.add_column("CREATED", no_wrap=True)
    table.add_column("UPDATED", no_wrap=True)
    table.add_column("ERROR", overflow="ellipsis", no_wrap=True, max_width=60)
    for s in sagas:
        table.add_row(
            s.id,
            s.name,
            str(s.version),
            status_text(s.status),
            f"{steps_done(s)}/{len(s.steps)}",
            iso(s.created_at),
            iso(s.updated_at),
            Text(s.error or "", style="red"),
        )
    out.print(table)
    out.print(f"[dim]{offset + 1}-{offset + len(sagas)} of {total} (newest first); details: sagakit show ID[/dim]")


# ---------------------------------------------------------------- show


@click.command("show")
@click.argument("saga_id")
@store_option
@json_option
@mask_options
def show_command(saga_id: str, store_url: str, as_json: bool, mask: str | None, mask_extra: tuple[str, ...]) -> None:
    """Show one saga: its fields, its steps and its history (secrets masked)."""
    policy = masker(mask, mask_extra)
    snap = policy.snapshot(run_read(store_url, lambda engine: engine.get(saga_id)))
    if as_json:
        echo_json(snap.to_dict())
        return
    out = console()
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    fields.add_row("saga", snap.id)
    fields.add_row("name", f"{snap.name} v{snap.version}")
    fields.add_row("status", status_text(snap.status))
    if snap.error:
        fields.add_row("error", Text(snap.error, style="red"))
    fields.add_row("correlation id", snap.correlation_id or "")
    fields.add_row("idempotency key", snap.idempotency_key or "")
    fields.add_row("created", iso(snap.created_at))
    fields.add_row("updated", iso(snap.updated_at))
    if snap.wake_at is not None:
        fields.add_row("wakes at", iso(snap.wake_at))
    fields.add_row("data", short(snap.data, 200))
    out.print(fields)

    steps = Table(title="steps", title_justify="left", header_style="bold")
    steps.add_column("STEP", no_wrap=True)
    steps.add_column("STATUS", no_wrap=True)
    steps.add_column("ATTEMPTS", justify="right")
    steps.add_column("COMP. ATTEMPTS", justify="right")
    steps.add_column("RESULT", overflow="fold")
    steps.add_column("ERROR", overflow="fold", style="red")
    for s in snap.steps.values():
        steps.add_row(
            s.name,
            status_text(s.status),
            str(s.attempts),
            str(s.compensation_attempts),
            short(s.result, 80),
            s.error or "",
        )
    out.print(steps)

    history = Table(title="history", title_justify="left", header_style="bold")
    history.add_column("AT", no_wrap=True)
    history.add_column("EVENT", no_wrap=True)
    history.add_column("STEP", no_wrap=True)
    history.add_column("#", justify="right")
    history.add_column("MESSAGE", overflow="fold")
    for h in snap.history:
        history.add_row(iso(h.at), h.kind, h.step or "", "" if h.attempt is None else str(h.attempt), h.message)
    out.print(history)


commands: list[click.Command] = [list_command, show_command]
