"""``sagakit list`` and ``sagakit show``: read sagas from any store.

Both are thin over ``sagakit.admin.Operations``, as the HTTP API and the
dashboard are: the same filters (``list --status … --stuck … --key …``), the
same masking policy (``sagakit._masking``; ``--mask`` and ``--mask-extra``
change it), and ids given whole or by any unique prefix. The engine is opened
for reading only: no definitions, no workers, and a SQLite file that is not a
sagakit store is refused without being changed.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table
from rich.text import Text

from .._engine import SagaEngine
from .._errors import SagaNotFound, StoreError
from .._masking import DEFAULT_MASK_PATTERN, Masker, hide_password
from .._observe import Observer
from .._snapshot import SagaSnapshot
from .._status import SagaStatus, StepStatus
from .._store import store_from_url
from ..admin._filters import MAX_LIMIT, InvalidParameter, SagaFilter, parse_filter
from ..admin._locks import LocksPage
from ..admin._operations import Operations, SagaPage
from ..stores.sqlite import SQLiteStore
from ._render import EXIT_NOT_FOUND, EXIT_STORE, console, echo_json, fail, iso, short, status_text

__all__ = [
    "commands",
    "filter_options",
    "filter_params",
    "list_command",
    "locks_command",
    "mask_options",
    "masker",
    "parse_cli_filter",
    "show_command",
    "store_option",
]

EXIT_USAGE = 2

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


def filter_options(lead: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The search filters of the HTTP API as options (``--status``, ``--stuck``, ``--key``, …).

    *lead* starts each help text ("Only" for ``list``, "Bulk: act on" for the actions).
    """
    options = [
        click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in SagaStatus],
                     case_sensitive=False), help=f"{lead} sagas in this status (repeatable: any of them)."),
        click.option("--name", help=f"{lead} sagas of this definition name."),
        click.option("--version", "def_version", type=int, help=f"{lead} sagas of this definition version."),
        click.option("--correlation-id", help=f"{lead} sagas with this correlation id."),
        click.option("--key", "keys", multiple=True, metavar="NAME=VALUE",
                     help=f"{lead} sagas whose data has this top-level field value (a business key; repeatable)."),
        click.option("--created-after", metavar="TIME",
                     help=f"{lead} sagas created at or after TIME (ISO 8601 or Unix seconds)."),
        click.option("--created-before", metavar="TIME", help=f"{lead} sagas created before TIME."),
        click.option("--updated-after", metavar="TIME", help=f"{lead} sagas last changed at or after TIME."),
        click.option("--updated-before", metavar="TIME", help=f"{lead} sagas last changed before TIME."),
        click.option("--stuck", metavar="SECONDS",
                     help=f"{lead} stuck sagas: failed, pending or running and overdue by more than SECONDS, "
                          "or compensating and unchanged for that long."),
    ]  # fmt: skip

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def filter_params(kw: dict[str, Any]) -> dict[str, list[str]]:
    """The filter options of *kw* (popped) as the HTTP API's query parameters."""
    params: dict[str, list[str]] = {}
    statuses = kw.pop("statuses")
    if statuses:
        params["status"] = list(statuses)
    keys = kw.pop("keys")
    if keys:
        params["key"] = list(keys)
    version = kw.pop("def_version")
    if version is not None:
        params["version"] = [str(version)]
    for opt in ("name", "correlation_id", "created_after", "created_before", "updated_after", "updated_before",
                "stuck"):  # fmt: skip
        value = kw.pop(opt)
        if value is not None:
            params[opt] = [value]
    return params


def parse_cli_filter(params: dict[str, list[str]]) -> SagaFilter:
    """The filter the options ask for; a usage error naming the option for a bad value."""
    try:
        return parse_filter(params)
    except InvalidParameter as e:
        hint = f"--{e.parameter.replace('_', '-')}"
        raise click.BadParameter(f"{e.problem} (got {e.value!r})", param_hint=hint) from None


def read_engine(url: str, observers: Iterable[Observer] = ()) -> SagaEngine:
    """An engine on *url* for reading; exits with status 4 when the store cannot be used.

    A SQLite file that does not exist is an error here rather than a new, empty
    store, and so is a SQLite database without sagakit's tables: it is looked
    at read-only and left as it is.
    """
    try:
        store = store_from_url(url)
    except StoreError as e:
        fail(str(e), EXIT_STORE)
    if isinstance(store, SQLiteStore) and store.path != ":memory:":
        if not os.path.exists(store.path):
            fail(
                f"no SQLite store at {os.path.abspath(store.path)} (from {url!r}); check --store or SAGAKIT_STORE",
                EXIT_STORE,
            )
        problem = _not_a_store(store.path)
        if problem:
            fail(f"{os.path.abspath(store.path)} (from {url!r}) {problem}; check --store or SAGAKIT_STORE", EXIT_STORE)
    return SagaEngine(store, observers=observers)


def _not_a_store(path: str) -> str | None:
    """Why the SQLite file at *path* is not a sagakit store (None if it is one), found without writing to it."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        finally:
            conn.close()
    except sqlite3.Error:
        return None  # not readable so: the store's own opening says what is wrong, and writes nothing either

    if "sagakit_sagas" in tables:
        return None
    shown = ", ".join(tables[:8]) + (f" and {len(tables) - 8} more" if len(tables) > 8 else "")
    has = f"its tables: {shown}" if tables else "it has no tables"
    return f"is not a sagakit store ({has}); it was left untouched"


def run_read(url: str, policy: Masker, read: Callable[[Operations], Awaitable[T]]) -> T:
    """Run *read* on read-only operations for *url*, mapping errors to exit statuses."""

    async def main() -> T:
        async with Operations(read_engine(url), mask=policy, owns_engine=True) as ops:
            return await read(ops)

    try:
        return asyncio.run(main())
    except SagaNotFound as e:
        fail(f"{e} in store {url}", EXIT_NOT_FOUND)
    except InvalidParameter as e:
        fail(policy.text(str(e)), EXIT_USAGE)
    except (StoreError, sqlite3.Error, OSError) as e:
        fail(f"cannot read store {url}: {e}", EXIT_STORE)


def steps_done(snap: SagaSnapshot) -> int:
    """Steps whose action completed (including those undone since)."""
    return sum(1 for s in snap.steps.values() if s.status in _ACTION_DONE)


# ---------------------------------------------------------------- list


@click.command("list")
@store_option
@filter_options("Only")
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@json_option
@mask_options
def list_command(
    store_url: str,
    limit: int,
    offset: int,
    as_json: bool,
    mask: str | None,
    mask_extra: tuple[str, ...],
    **filters: Any,
) -> None:
    """List sagas, newest first, with the filters of the HTTP API and the dashboard.

    STEPS counts the steps whose action completed, out of all steps. An id
    prefix long enough to be unique is accepted by show and the actions.
    """
    f = parse_cli_filter(filter_params(filters))
    policy = masker(mask, mask_extra)

    async def read(ops: Operations) -> SagaPage:
        return await ops.search(f, limit=limit, offset=offset)

    page = run_read(store_url, policy, read)
    sagas, total = list(page.items), page.total
    if as_json:
        echo_json([s.to_dict() for s in sagas])
        return
    out = console()
    if not sagas:
        where = f"at offset {offset} ({total} match)" if total else "match"
        matching = "" if f.empty else f" {policy.text(f.describe())}"
        out.print(f"no sagas{matching} {where} in {hide_password(store_url)}")
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
    """Show one saga: its fields, its steps and its history, secrets masked as in the dashboard.

    SAGA_ID is the whole id or any prefix of it that no other saga's id starts with.
    """
    policy = masker(mask, mask_extra)

    async def read(ops: Operations) -> SagaSnapshot:
        return await ops.get(await ops.resolve(saga_id))

    snap = run_read(store_url, policy, read)
    if as_json:
        echo_json(snap.to_dict())
        return
    out = console()
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    fields.add_row("saga", snap.id)
    fields.add_row("name", f"{snap.name} v{snap.version}" + (" (choreographed)" if snap.choreographed else ""))
    fields.add_row("status", status_text(snap.status))
    if snap.error:
        fields.add_row("error", Text(snap.error, style="red"))
    fields.add_row("correlation id", snap.correlation_id or "")
    fields.add_row("idempotency key", snap.idempotency_key or "")
    if snap.parent_id is not None:
        fields.add_row("parent saga", f"{snap.parent_id} (step {snap.parent_step})")
    for step, cid in snap.children:
        fields.add_row("child saga", f"{cid} (step {step})")
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
        status = status_text(s.status)
        if s.waiting_for is not None and not snap.status.terminal:
            status.append(f" (waiting for {s.waiting_for})", style="yellow")
        steps.add_row(
            s.name,
            status,
            str(s.attempts),
            str(s.compensation_attempts),
            short(s.result, 80),
            s.error or "",
        )
    out.print(steps)
    for s in snap.steps.values():
        if s.items is None:
            continue
        items = Table(title=f"items of {s.name}", title_justify="left", header_style="bold")
        items.add_column("#", justify="right")
        items.add_column("KEY", no_wrap=True)
        items.add_column("STATUS", no_wrap=True)
        items.add_column("ATTEMPTS", justify="right")
        items.add_column("COMP. ATTEMPTS", justify="right")
        items.add_column("RESULT", overflow="fold")
        items.add_column("ERROR", overflow="fold", style="red")
        for it in s.items:
            items.add_row(
                str(it.index),
                it.key,
                status_text(it.status) + (" (uncertain)" if it.uncertain else ""),
                str(it.attempts),
                str(it.compensation_attempts),
                short(it.result, 80),
                it.error or "",
            )
        out.print(items)

    history = Table(title="history", title_justify="left", header_style="bold")
    history.add_column("AT", no_wrap=True)
    history.add_column("EVENT", no_wrap=True)
    history.add_column("STEP", no_wrap=True)
    history.add_column("#", justify="right")
    history.add_column("MESSAGE", overflow="fold")
    for h in snap.history:
        history.add_row(iso(h.at), h.kind, h.step or "", "" if h.attempt is None else str(h.attempt), h.message)
    out.print(history)
    for h in snap.history:
        if h.traceback:
            what = "compensation of step" if h.kind == "compensation_failed" else "step"
            out.print(Text(f"\ntraceback of {what} {h.step!r} attempt {h.attempt} ({iso(h.at)}):", style="bold"))
            out.print(Text(h.traceback.rstrip(), style="red"), soft_wrap=True)


# ---------------------------------------------------------------- locks


@click.command("locks")
@click.option(
    "--saga", "saga_id", default=None, help="Only the keys this saga (id or unique prefix) holds or waits for."
)
@store_option
@json_option
def locks_command(saga_id: str | None, store_url: str, as_json: bool) -> None:
    """List semantic locks: each business key, the saga holding it, and the sagas queued for it in order."""

    async def read(ops: Operations) -> LocksPage:
        return await ops.locks(None if saga_id is None else await ops.resolve(saga_id))

    page = run_read(store_url, masker(None, ()), read)
    if as_json:
        echo_json(page.to_dict())
        return
    out = console()
    if not page.keys:
        out.print("no saga holds or waits for a lock")
        return
    table = Table(header_style="bold")
    table.add_column("KEY", no_wrap=True)
    table.add_column("HELD BY", no_wrap=True)
    table.add_column("SINCE", no_wrap=True)
    table.add_column("QUEUED (FIRST IN LINE FIRST)", overflow="fold")
    for k in page.keys:
        holder = k.holder
        table.add_row(
            k.key,
            "" if holder is None else f"{holder.saga_id} {holder.saga_name or ''}".rstrip(),
            "" if holder is None else iso(holder.since),
            ", ".join(e.saga_id for e in k.queue),
        )
    out.print(table)
    if page.truncated:
        out.print("only the first 1000 lock entries are shown")


commands: list[click.Command] = [list_command, show_command, locks_command]
