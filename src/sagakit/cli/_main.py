"""Command-line entry point."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="sagakit")
def cli() -> None:
    """sagakit: durable sagas for Python services."""
