"""Finding the user's saga definitions from the command line."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable

import click

from .._definition import SagaDefinition

__all__ = ["load_definitions"]

_FILES = (".json", ".yaml", ".yml")


def load_definitions(targets: Iterable[str], *, path: Iterable[str] = (".",)) -> list[SagaDefinition]:
    """Definitions from modules (``myapp.sagas``, ``myapp.sagas:definition``) or definition files.

    A module contributes every SagaDefinition among its attributes (or the
    named attribute: a definition, or a list/tuple of them); a ``.json`` /
    ``.yaml`` file is loaded with ``load_definition``.

    Raises:
        click.UsageError: naming the target that cannot be loaded and why.
    """
    for p in path:
        full = os.path.abspath(p)
        if full not in sys.path:
            sys.path.insert(0, full)
    found: list[SagaDefinition] = []
    for target in targets:
        if target.endswith(_FILES):
            from ..declarative import load_definition

            try:
                found.append(load_definition(target))
            except Exception as e:
                raise click.UsageError(f"cannot load definition file {target}: {e}") from e
            continue
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise click.UsageError(f"cannot import {module_name!r}: {e}") from e
        if attr:
            try:
                value = getattr(module, attr)
            except AttributeError:
                raise click.UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
            values = list(value) if isinstance(value, list | tuple) else [value]
            bad = [v for v in values if not isinstance(v, SagaDefinition)]
            if bad:
                raise click.UsageError(f"{target} is not a SagaDefinition (or a list of them): {bad[0]!r}")
            found.extend(values)
        else:
            defs = [v for v in vars(module).values() if isinstance(v, SagaDefinition)]
            if not defs:
                raise click.UsageError(
                    f"module {module_name!r} defines no SagaDefinition; name one with {module_name}:attribute"
                )
            found.extend(defs)
    return found
