"""Importing the user's saga definitions for admin tools (``--app``, ``--definitions``)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable

from .._definition import SagaDefinition
from .._errors import SagaError

__all__ = ["DefinitionsNotLoaded", "load_definitions"]

_FILES = (".json", ".yaml", ".yml")


class DefinitionsNotLoaded(SagaError):
    """A ``--app``/``--definitions`` target that does not give saga definitions; says which and why."""


def load_definitions(
    targets: Iterable[str],
    *,
    path: Iterable[str] = (".",),
    allow_modules: Iterable[str] | None = None,
) -> list[SagaDefinition]:
    """The definitions that *targets* name.

    A target is ``module:attr`` (a SagaDefinition, or a list or tuple of them),
    ``module`` (every SagaDefinition among its attributes), or a ``.json`` /
    ``.yaml`` file in the declarative format. The directories in *path* are put
    on ``sys.path`` first, so that the application's modules import.
    *allow_modules* (package names) limits the modules a definition file may
    have imported, as for ``load_definition``; None allows any.

    Raises:
        DefinitionsNotLoaded: naming the target and the problem.
    """
    allow = None if allow_modules is None else list(allow_modules)
    for p in path:
        full = os.path.abspath(p)
        if full not in sys.path:
            sys.path.insert(0, full)
    found: list[SagaDefinition] = []
    for target in targets:
        if target.endswith(_FILES):
            found.append(_from_file(target, allow))
            continue
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # an application module may fail in any way while importing
            raise DefinitionsNotLoaded(f"cannot import {module_name!r} (from {target!r}): {e}") from e
        if attr:
            try:
                value = getattr(module, attr)
            except AttributeError:
                raise DefinitionsNotLoaded(f"module {module_name!r} has no attribute {attr!r}") from None
            values = list(value) if isinstance(value, list | tuple) else [value]
            bad = [v for v in values if not isinstance(v, SagaDefinition)]
            if bad or not values:
                raise DefinitionsNotLoaded(
                    f"{target} is not a SagaDefinition or a list of them (got {type(value).__name__}); "
                    "point at SagaBuilder(...).build()'s result"
                )
            found.extend(values)
        else:
            defs = [v for v in vars(module).values() if isinstance(v, SagaDefinition)]
            if not defs:
                raise DefinitionsNotLoaded(
                    f"module {module_name!r} has no SagaDefinition attributes; name one with {module_name}:attr"
                )
            found.extend(defs)
    unique: dict[tuple[str, int], SagaDefinition] = {}
    for d in found:
        unique.setdefault(d.key, d)
    return list(unique.values())


def _from_file(target: str, allow_modules: list[str] | None) -> SagaDefinition:
    from ..declarative import load_definition

    try:
        return load_definition(target, allow_modules=allow_modules)
    except (OSError, ValueError, SagaError) as e:
        raise DefinitionsNotLoaded(f"cannot load definition file {target}: {e}") from e
