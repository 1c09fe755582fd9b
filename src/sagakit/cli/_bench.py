"""``sagakit bench``: runs the benchmark harness of a sagakit checkout (``benchmarks/harness.py``).

The harness (workloads, raw baselines, worker processes, peers) is not part of
the installed package: it lives in the repository beside the figures it
produced (docs/benchmarks.md). This command finds it in the current
directory, or in the repository an editable install runs from, and passes
its arguments on (``sagakit bench --help`` shows the harness's options).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from ._render import EXIT_FAILED, fail

__all__ = ["bench_command", "commands"]


def _harness() -> Any:
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (root / "benchmarks" / "harness.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return importlib.import_module("benchmarks.harness")
    return None


@click.command(
    "bench",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_command(args: tuple[str, ...]) -> None:
    """Measure sagas/s against raw baselines (the harness of a sagakit checkout; --help for its options)."""
    harness = _harness()
    if harness is None:
        fail(
            "sagakit bench runs the benchmark harness of a sagakit checkout (benchmarks/harness.py): "
            "run it from the repository's root directory",
            EXIT_FAILED,
        )
    harness.bench_command.main(args=list(args), prog_name="sagakit bench")


commands: list[click.Command] = [bench_command]
