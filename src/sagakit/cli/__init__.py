"""The ``sagakit`` command line."""

from __future__ import annotations


def main() -> None:
    from ._main import cli

    cli()
