"""Command-line entry point: the ``sagakit`` group; each command lives in its own module."""

from __future__ import annotations

import click

from . import _actions, _bench, _declarative, _demo, _ops, _prune, _schedules, _serve, _worker


@click.group()
@click.version_option(package_name="sagakit")
def cli() -> None:
    """sagakit: durable sagas for Python services."""


for _module in (_demo, _ops, _actions, _prune, _schedules, _worker, _serve, _bench, _declarative):
    for _command in _module.commands:
        cli.add_command(_command)
