"""Rendering helpers shared by the CLI commands: times, statuses, values, errors."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
import orjson
from rich.console import Console
from rich.text import Text

from .._masking import hide_password
from .._status import SagaStatus, StepStatus

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_STORE",
    "console",
    "echo_json",
    "fail",
    "iso",
    "short",
    "status_text",
]

EXIT_FAILED = 1  # the command ran, but its outcome is not what was expected
EXIT_NOT_FOUND = 3  # no saga with the given id
EXIT_STORE = 4  # the store cannot be opened or read

_STYLES = {
    SagaStatus.PENDING: "dim",
    SagaStatus.RUNNING: "cyan",
    SagaStatus.COMPENSATING: "yellow",
    SagaStatus.COMPLETED: "green",
    SagaStatus.COMPENSATED: "yellow",
    SagaStatus.FAILED: "bold red",
    SagaStatus.ABORTED: "magenta",
    StepStatus.SKIPPED: "magenta",
    StepStatus.COMPENSATION_FAILED: "bold red",
}


def console() -> Console:
    """A console on the current stdout (looked up per call, so test runners can capture it).

    Output that goes to a file or a pipe gets 200 columns (unless ``COLUMNS``
    says otherwise) rather than rich's 80, so that tables keep whole ids.
    """
    out = Console(file=sys.stdout, highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(file=sys.stdout, highlight=False, width=200)
    return out


def iso(ts: float | None) -> str:
    """A Unix time as ISO 8601 in UTC with milliseconds; empty for None."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_text(status: SagaStatus | StepStatus) -> Text:
    """A status coloured by what it means (green done, yellow undone, red needs an operator)."""
    style = _STYLES.get(status)
    if style is None and isinstance(status, StepStatus):
        style = {"completed": "green", "failed": "red", "running": "cyan"}.get(status.value, "")
    return Text(status.value, style=style or "")


def short(value: Any, width: int = 60) -> str:
    """Compact JSON of *value*, cut to *width* characters; empty for None."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def echo_json(value: Any) -> None:
    """Print *value* as indented JSON on stdout."""
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` on stderr (passwords in URLs masked) and exit with *code*."""
    click.echo(f"error: {hide_password(message)}", err=True)
    raise click.exceptions.Exit(code)
