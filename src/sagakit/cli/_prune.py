"""``sagakit prune``: delete finished sagas older than a given age, with their rows, and old dead letters.

Thin over ``sagakit._store.prune``: the same batches a running engine with a
``retention`` deletes, one transaction each, so workers keep running meanwhile.

Exit statuses: 0 done, 2 usage, 4 store error.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time

import click

from .._errors import StoreError
from .._masking import hide_password
from .._status import SagaStatus
from .._store import PRUNABLE, PRUNED_BY_DEFAULT, Pruned, prune, prune_statuses
from ._ops import read_engine, store_option
from ._render import EXIT_STORE, echo_json, fail

__all__ = ["commands", "parse_age", "prune_command"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_age(text: str) -> float:
    """Seconds in an age such as ``30d``, ``12h``, ``90m``, ``2w`` or ``1d12h``.

    Raises:
        ValueError: not such an age, or zero.
    """
    spec = text.strip().lower()
    pos, total = 0, 0.0
    for m in _AGE.finditer(spec):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not spec or pos != len(spec) or total <= 0:
        raise ValueError(
            f"bad age {text!r}: use a number and a unit (s, m, h, d, w), e.g. 30d, 12h or 1d12h, greater than zero"
        )
    return total


def _age(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_age(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command("prune")
@click.option(
    "--older-than",
    "age",
    metavar="AGE",
    required=True,
    callback=_age,
    help="Prune sagas last updated longer ago: 30d, 12h, 90m, 2w, 1d12h.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in PRUNABLE], case_sensitive=False),
    help="Prune sagas in this status (repeatable); default: "
    + ", ".join(s.value for s in PRUNED_BY_DEFAULT)
    + ". FAILED sagas are pruned only when named.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--batch", type=click.IntRange(min=1), default=500, show_default=True, help="Sagas per transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@store_option
def prune_command(
    age: float, statuses: tuple[str, ...], dry_run: bool, batch: int, as_json: bool, store_url: str
) -> None:
    """Delete finished sagas older than --older-than, with their history, inbox and outbox rows, and older dead letters.

    Unfinished sagas are never deleted. Progress goes to stderr.
    """
    chosen: tuple[SagaStatus, ...] = prune_statuses(statuses or None)
    before = time.time() - age
    store = read_engine(store_url).store

    async def main() -> Pruned:
        await store.open()
        total = Pruned()
        shown = time.monotonic()
        try:
            async for counts in prune(store, before, chosen, batch=batch, dry_run=dry_run):
                total += counts
                if time.monotonic() - shown >= 1.0:
                    shown = time.monotonic()
                    click.echo(f"... {total.sagas} sagas, {total.dead_letters} dead letters so far", err=True)
        finally:
            await store.close()
        return total

    try:
        total = asyncio.run(main())
    except (StoreError, sqlite3.Error, OSError) as e:
        fail(f"cannot prune store {hide_password(store_url)}: {e}", EXIT_STORE)
    if as_json:
        echo_json({"dry_run": dry_run, "before": before, **_fields(total)})
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {total.sagas} sagas ({', '.join(s.value for s in chosen)}) last updated before "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(before))}, {total.history} history rows, "
        f"{total.inbox} inbox rows, {total.outbox} outbox rows and {total.dead_letters} dead letters"
    )


def _fields(p: Pruned) -> dict[str, int]:
    return {
        "sagas": p.sagas,
        "history": p.history,
        "inbox": p.inbox,
        "outbox": p.outbox,
        "dead_letters": p.dead_letters,
    }


commands: list[click.Command] = [prune_command]
