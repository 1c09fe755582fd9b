"""``sagakit schedules`` and ``sagakit unschedule``: what is due to start later, and stopping a recurring start."""

from __future__ import annotations

import click
from rich.table import Table

from ..admin._operations import Operations
from ..admin._schedules import SchedulesPage
from ._ops import json_option, mask_options, masker, run_read, store_option
from ._render import EXIT_NOT_FOUND, console, echo_json, fail, iso, short

__all__ = ["commands"]


@click.command("schedules")
@store_option
@json_option
@mask_options
def schedules_command(store_url: str, as_json: bool, mask: str | None, mask_extra: tuple[str, ...]) -> None:
    """List recurring schedules and the sagas waiting for their start time (data masked)."""
    policy = masker(mask, mask_extra)

    async def read(ops: Operations) -> SchedulesPage:
        return await ops.schedules()

    page = run_read(store_url, policy, read)
    if as_json:
        echo_json(page.to_dict())
        return
    out = console()
    recurring = Table(title="recurring schedules", title_justify="left", header_style="bold")
    for col in ("KEY", "SAGA", "CRON", "NEXT", "LAST", "LAST SAGA", "DATA"):
        recurring.add_column(col, overflow="fold")
    for s in page.schedules:
        recurring.add_row(
            s.key,
            s.name if s.version is None else f"{s.name} v{s.version}",
            s.cron,
            iso(s.next_at),
            iso(s.last_at) if s.last_at is not None else "never",
            s.last_saga or "",
            short(policy.value(s.data), 60),
        )
    out.print(recurring if page.schedules else "no recurring schedule")
    waiting = Table(title="sagas waiting to begin", title_justify="left", header_style="bold")
    for col in ("SAGA", "DEFINITION", "BEGINS", "CREATED"):
        waiting.add_column(col, overflow="fold")
    rows = page.to_dict()["scheduled_sagas"]
    for r in rows:
        waiting.add_row(r["id"], f"{r['name']} v{r['version']}", iso(r["start_at"]), iso(r["created_at"]))
    out.print(waiting if rows else "no saga is waiting for its start time")
    if page.scheduled_truncated:
        out.print("only the first 500 pending sagas were looked at")


@click.command("unschedule")
@click.argument("key")
@store_option
def unschedule_command(key: str, store_url: str) -> None:
    """Stop the recurring schedule KEY; the sagas it started are not touched."""

    async def remove(ops: Operations) -> bool:
        return await ops.unschedule(key)

    if not run_read(store_url, masker(None, ()), remove):
        fail(f"no recurring schedule with key {key!r} in store {store_url}", EXIT_NOT_FOUND)
    click.echo(f"schedule {key} stopped")


commands: list[click.Command] = [schedules_command, unschedule_command]
