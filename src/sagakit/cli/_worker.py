"""(commands added in their own change)"""

from __future__ import annotations

import click

commands: list[click.Command] = []
