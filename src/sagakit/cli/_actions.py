"""``sagakit retry/skip/compensate/abort/fork``: fix sagas on any store, one by id or many by filters.

Thin over ``sagakit.admin.Operations``. The saga's definition must be
registered (the state machine needs it): ``--app module:attr`` or
``--definitions module`` imports it. A bulk action (filters instead of an id)
shows how many sagas it matches and asks for confirmation (``--yes`` skips it).

Exit statuses: 0 done, 1 rejected (all or some; or confirmation declined),
2 usage, 3 saga not found, 4 store error.
"""

from __future__ import annotations

import asyncio
import getpass
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from .._errors import SagaBusy, SagaNotFound, SagaStateError, StoreError
from .._masking import hide_password
from ..admin import (
    ActionOutcome,
    DefinitionsNotLoaded,
    InvalidParameter,
    Operations,
    SagaFilter,
    load_definitions,
)
from ..admin._operations import MAX_BULK, json_value
from ._ops import filter_options, filter_params, mask_options, masker, parse_cli_filter, read_engine, store_option
from ._render import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_STORE, console, echo_json, fail

__all__ = ["commands", "definitions_options", "load_app"]

EXIT_USAGE = 2
_PAST = {"retry": "retried", "skip": "skipped", "compensate": "compensating", "abort": "aborted", "fork": "forked"}


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def definitions_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--app`` and ``--definitions``: where the saga definitions come from."""
    fn = click.option(
        "--definitions",
        "definition_modules",
        multiple=True,
        metavar="MODULE",
        help="A module whose SagaDefinition attributes are registered (or a .json/.yaml definition). Repeatable.",
    )(fn)
    return click.option(
        "--app",
        "apps",
        multiple=True,
        metavar="MODULE[:ATTR]",
        help="Import the saga definitions: MODULE:ATTR (a SagaDefinition or a list) or MODULE. Repeatable.",
    )(fn)


def load_app(apps: tuple[str, ...], modules: tuple[str, ...]) -> list[Any]:
    """The definitions named by ``--app``/``--definitions``; a usage error (exit 2) when they cannot load."""
    try:
        return load_definitions([*apps, *modules])
    except DefinitionsNotLoaded as e:
        raise click.UsageError(str(e)) from None


@dataclass(frozen=True, slots=True)
class _Common:
    store_url: str
    apps: tuple[str, ...]
    definition_modules: tuple[str, ...]
    reason: str
    actor: str
    yes: bool
    as_json: bool
    limit: int
    params: dict[str, list[str]]
    mask: str | None
    mask_extra: tuple[str, ...]


def _action_command(name: str, help_text: str, extra: list[Callable[..., Any]]) -> click.Command:
    def command(saga_id: str | None, **kw: Any) -> None:
        common = _Common(
            store_url=kw.pop("store_url"),
            apps=kw.pop("apps"),
            definition_modules=kw.pop("definition_modules"),
            reason=kw.pop("reason"),
            actor=kw.pop("actor"),
            yes=kw.pop("yes"),
            as_json=kw.pop("as_json"),
            limit=kw.pop("limit"),
            params=filter_params(kw),
            mask=kw.pop("mask"),
            mask_extra=kw.pop("mask_extra"),
        )
        step = kw.pop("step", None) or kw.pop("from_step", None)
        payload: dict[str, Any] = {"step": step}
        if "result" in kw:
            payload["result"] = None if kw["result"] is None else _json_option("--result", kw["result"])
        if "data" in kw:
            payload["data"] = None if kw["data"] is None else _json_option("--data", kw["data"])
        _run(name, saga_id, common, payload)

    command.__doc__ = help_text
    decorators: list[Callable[..., Any]] = [
        click.command(name, help=help_text),
        click.argument("saga_id", required=False),
        *extra,
        store_option,
        definitions_options,
        click.option("--reason", default="", help="Why: recorded in the saga's history."),
        click.option(
            "--actor",
            default=_default_actor,
            show_default="the OS user",
            help="Who: recorded in the saga's history.",
        ),
        filter_options("Bulk: act on"),
        click.option("--limit", type=click.IntRange(1, MAX_BULK), default=1000, show_default=True,
                     help="Bulk: act on at most this many sagas (newest first)."),
        click.option("--yes", "-y", is_flag=True, help="Bulk: do not ask for confirmation."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables."),
        mask_options,
    ]  # fmt: skip
    for decorate in reversed(decorators[1:]):
        command = decorate(command)
    result: click.Command = decorators[0](command)
    return result


def _json_option(option: str, text: str) -> Any:
    try:
        return json_value(text, option)
    except InvalidParameter as e:
        raise click.BadParameter(str(e), param_hint=option) from None


def _run(action: str, saga_id: str | None, c: _Common, payload: dict[str, Any]) -> None:
    f = parse_cli_filter(c.params)
    if saga_id is not None and not f.empty:
        raise click.UsageError("give a saga id or filters (--status, --name, …), not both")
    if saga_id is None and f.empty:
        raise click.UsageError(f"give a saga id, or filters for a bulk {action} (--status failed, --name …)")
    policy = masker(c.mask, c.mask_extra)
    definitions = load_app(c.apps, c.definition_modules)
    engine = read_engine(c.store_url)
    engine.register(*definitions)
    ops = Operations(
        engine,
        mask=policy,
        owns_engine=True,
        definitions_hint="pass --app module:attr (or --definitions module) so that the CLI can import it",
    )

    async def main() -> int:
        try:
            if saga_id is not None:
                return await _single(ops, action, saga_id, c, payload)
            return await _bulk(ops, action, f, c, payload)
        finally:
            await ops.close()

    try:
        code = asyncio.run(main())
    except InvalidParameter as e:
        fail(policy.text(str(e)), EXIT_USAGE)
    except SagaNotFound as e:
        fail(f"{e} in store {c.store_url}", EXIT_NOT_FOUND)
    except (StoreError, sqlite3.Error, OSError) as e:
        fail(f"store {c.store_url}: {e}", EXIT_STORE)
    if code:
        raise click.exceptions.Exit(code)


async def _single(ops: Operations, action: str, saga_id: str, c: _Common, payload: dict[str, Any]) -> int:
    saga_id = await ops.resolve(saga_id)
    try:
        outcome = await ops.act(action, saga_id, reason=c.reason, actor=c.actor, **payload)
    except (SagaStateError, SagaBusy) as e:
        from ..admin._operations import rejection

        outcome = ops.mask_outcome(rejection(saga_id, action, e))
    _report([outcome], c.as_json, single=True)
    return 0 if outcome.ok else EXIT_FAILED


async def _bulk(ops: Operations, action: str, f: SagaFilter, c: _Common, payload: dict[str, Any]) -> int:
    ids, total = await ops.matching_ids(f, c.limit)
    described = ops.masker.text(f.describe())
    if not ids:
        if c.as_json:
            echo_json({"action": action, "filter": described, "matched": 0, "outcomes": []})
        else:
            click.echo(f"no sagas match {described}")
        return 0
    more = f" (the newest {len(ids)} of {total} matching; raise --limit for more)" if total > len(ids) else ""
    if not c.yes:
        question = f"{action} {len(ids)} saga(s) matching {described}{more} in {hide_password(c.store_url)}?"
        if not click.confirm(question, default=False, err=True):
            click.echo("nothing done", err=True)
            return EXIT_FAILED
    outcomes = await ops.act_many(action, ids, reason=c.reason, actor=c.actor, **payload)
    if c.as_json:
        echo_json(
            {
                "action": action,
                "filter": described,
                "matched": total,
                "ok": sum(1 for o in outcomes if o.ok),
                "rejected": sum(1 for o in outcomes if not o.ok),
                "outcomes": [o.to_dict() for o in outcomes],
            }
        )
    else:
        _report(list(outcomes), False, single=False)
    return 0 if all(o.ok for o in outcomes) else EXIT_FAILED


def _report(outcomes: list[ActionOutcome], as_json: bool, *, single: bool) -> None:
    if as_json:
        echo_json(outcomes[0].to_dict() if single else [o.to_dict() for o in outcomes])
        return
    out = console()
    if single:
        o = outcomes[0]
        if o.ok:
            extra = f": new saga {o.new_id}" if o.new_id else (f"; it is now {o.status}" if o.status else "")
            out.print(f"{_PAST[o.action]} saga {o.saga_id}{extra}")
        else:
            out.print(Text(f"{o.action} of saga {o.saga_id} rejected ({o.code}): {o.reason}", style="red"))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("SAGA", no_wrap=True)
    table.add_column("OUTCOME")
    table.add_column("DETAIL", overflow="fold")
    for o in outcomes:
        detail = (f"new saga {o.new_id}" if o.new_id else f"now {o.status}") if o.ok else f"{o.code}: {o.reason}"
        table.add_row(o.saga_id, Text(o.outcome, style="green" if o.ok else "red"), detail)
    out.print(table)
    ok = sum(1 for o in outcomes if o.ok)
    out.print(f"{outcomes[0].action}: {ok} ok, {len(outcomes) - ok} rejected")


retry_command = _action_command(
    "retry",
    "Re-run the failed step or failed compensation (or a step waiting for its retry) of a saga, "
    "or of every saga the filters match.",
    [],
)
skip_command = _action_command(
    "skip",
    "Mark a waiting or failed step SKIPPED with a result (later steps see it) and move on.",
    [
        click.option("--step", required=True, help="The step to skip."),
        click.option("--result", metavar="JSON", help="The step's result as JSON (default: null)."),
    ],
)
compensate_command = _action_command(
    "compensate", "Start compensating a pending or running saga (or every saga the filters match) now.", []
)
abort_command = _action_command(
    "abort", "Stop a saga (or every saga the filters match) where it stands, without compensation.", []
)
fork_command = _action_command(
    "fork",
    "Start a new saga that re-runs this one from a step on, with the results of the steps before it.",
    [
        click.option("--from-step", "from_step", required=True, help="The first step to run again."),
        click.option("--data", metavar="JSON", help="The new saga's data as JSON (default: the old saga's)."),
    ],
)

commands: list[click.Command] = [retry_command, skip_command, compensate_command, abort_command, fork_command]
