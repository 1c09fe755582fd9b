"""``sagakit validate``, ``generate`` and ``graph``: the declarative format on the command line.

Thin over ``sagakit.declarative``, which is imported when a command runs so
that the other commands do not pay for it.

Importing a module runs its code, and a definition file may come from
anyone, so ``validate`` and ``graph`` import nothing unless asked:
``--resolve`` with ``--allow-module PACKAGE`` imports the modules inside the
named packages, and refuses any other. ``generate`` imports every module
the definition names (the module it writes imports them too), unless
``--allow-module`` limits it. Module paths are resolved from the current
directory, each ``--path DIR`` and ``PYTHONPATH``, as other Python tools do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

import click

__all__ = ["commands"]

_path_option = click.option(
    "--path",
    "paths",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A directory to resolve the definition's modules from (repeatable); the current directory always is one.",
)


_allow_option = click.option(
    "--allow-module",
    "allow",
    multiple=True,
    metavar="PACKAGE",
    help="A package whose modules may be imported (repeatable), e.g. myapp; any other module is refused.",
)
_resolve_option = click.option(
    "--resolve",
    is_flag=True,
    help="Import the definition's modules (only inside the --allow-module packages) and check its classes.",
)


def _roots(resolve: bool, allow: Sequence[str]) -> tuple[str, ...] | None:
    """The packages to import from, or None to import nothing; --allow-module implies --resolve."""
    if not resolve and not allow:
        return None
    if not allow:
        raise click.UsageError(
            "--resolve imports the definition's modules, which runs their code: name the packages it may "
            "import from with --allow-module PACKAGE (repeatable), e.g. --allow-module myapp"
        )
    from ..declarative._loader import allowed_roots

    try:
        roots = allowed_roots(allow)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--allow-module") from None
    assert roots is not None
    return roots


def _search_path(paths: Sequence[Path]) -> list[str | os.PathLike[str]]:
    return [Path.cwd(), *paths]


def _load(file: Path, roots: tuple[str, ...] | None, paths: Sequence[Path]) -> Any:
    """FILE's definition: with stand-in classes (importing nothing) when *roots* is None."""
    from ..declarative._loader import build_definition_from, outline, read_definition

    dto = read_definition(file)
    if roots is None:
        return outline(dto, origin=str(file))
    return build_definition_from(dto, search_path=_search_path(paths), origin=str(file), allow_modules=roots)


def _fail(file: object, error: Exception) -> NoReturn:
    from ..declarative import InvalidDefinition

    lines = error.errors if isinstance(error, InvalidDefinition) else (str(error),)
    for line in lines:
        click.echo(f"{file}: {line}", err=True)
    raise SystemExit(1)


def _summary(file: object, definition: Any) -> str:
    steps = definition.steps
    compensations = sum(1 for s in steps if s.compensation is not None)
    orchestrator = definition.extras.get("orchestrator")
    parts = [
        f"{len(steps)} step{'s' if len(steps) != 1 else ''}",
        f"{len(definition.triggers)} trigger{'s' if len(definition.triggers) != 1 else ''}",
        f"{compensations} compensation{'s' if compensations != 1 else ''}",
    ]
    return (
        f"{file}: OK: saga {definition.name!r}"
        + (f" (orchestrator {orchestrator})" if orchestrator else "")
        + ": "
        + ", ".join(parts)
    )


@click.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@_resolve_option
@_allow_option
@_path_option
def validate(files: tuple[Path, ...], resolve: bool, allow: tuple[str, ...], paths: tuple[Path, ...]) -> None:
    """Check saga definitions in the declarative format (JSON or YAML).

    By default imports nothing: checks each FILE's fields, names, module
    paths, steps and correlation lambdas. With --resolve and --allow-module
    PACKAGE it also imports the modules the definition names, if they are
    inside the allowed packages (a module outside them is an error), and
    checks the classes. Prints a summary, or every problem on its own line
    as FILE: field.path: problem. Exits 1 when any file is invalid.
    """
    from ..declarative import InvalidDefinition

    roots = _roots(resolve, allow)
    failed = False
    for file in files:
        try:
            definition = _load(file, roots, paths)
        except InvalidDefinition as e:
            failed = True
            for line in e.errors:
                click.echo(f"{file}: {line}", err=True)
            continue
        note = "" if roots is not None else " (modules not imported; --resolve --allow-module PACKAGE checks them)"
        click.echo(_summary(file, definition) + note)
    if failed:
        raise SystemExit(1)


@click.command("generate")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--bounded-ctx", required=True, help="The bounded context: app/domain/CTX/sagas/.")
@click.option(
    "--root",
    "--out",
    "root",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The project directory to write under.",
)
@click.option("--app-root", default="app", show_default=True, help="The application package under --root.")
@click.option(
    "--scaffold",
    is_flag=True,
    help="Also create the state DTO and state repository modules the definition names, if they do not exist.",
)
@click.option("--force", is_flag=True, help="Overwrite generated files even if they were edited.")
@_allow_option
@_path_option
def generate(
    file: Path,
    bounded_ctx: str,
    root: Path,
    app_root: str,
    scaffold: bool,
    force: bool,
    allow: tuple[str, ...],
    paths: tuple[Path, ...],
) -> None:
    """Write FILE's orchestrator as a Python module and print the paths written.

    Follows the format's naming and location rules: the class is the
    definition's name (PascalCase ending in Orchestrator), the file its
    snake_case, under ROOT/APP_ROOT/domain/BOUNDED_CTX/sagas/. Re-running
    replaces the module unless it was edited since (then --force).

    With --scaffold, the state DTO and state repository modules the
    definition names are created first where their module paths say
    (a.b.c: ROOT/a/b/c.py) when they do not exist yet: a pydantic model with
    the fields of the definition's events, and a small repository over a
    SagaEngine. Their paths are printed before the orchestrator's; modules
    you wrote are never touched, and scaffolded ones you edited only with
    --force.

    The definition's modules are imported (they must exist for the module
    written to import them), which runs their code; with --allow-module
    PACKAGE only modules inside the named packages are, and a definition
    naming any other is refused before anything is written.
    """
    from ..declarative import GeneratedFileEdited, InvalidDefinition
    from ..declarative._generate import generate_files

    roots = _roots(bool(allow), allow)
    try:
        target, scaffolded = generate_files(
            file,
            bounded_ctx=bounded_ctx,
            root=root,
            app_root=app_root,
            force=force,
            search_path=_search_path(paths),
            scaffold=scaffold,
            allow_modules=roots,
        )
    except (InvalidDefinition, GeneratedFileEdited) as e:
        _fail(file, e)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    for s in scaffolded:
        classes = ", ".join(s.classes)
        if s.action in ("created", "updated"):
            click.echo(str(s.path))
        elif s.action == "kept":
            click.echo(f"{s.path}: kept: edited since sagakit generated it ({classes}); --force replaces it", err=True)
        elif s.action == "exists":
            where = f" ({s.path})" if s.path is not None else ""
            click.echo(f"{s.module}{where}: exists, not scaffolded ({classes})", err=True)
    click.echo(str(target))


@click.command("graph")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot", "svg"]),
    default="mermaid",
    show_default=True,
    help="Mermaid flowchart, Graphviz DOT, or SVG (laid out by Graphviz's dot, which must be installed).",
)
@_resolve_option
@_allow_option
@_path_option
def graph(
    file: Path,
    fmt: Literal["mermaid", "dot", "svg"],
    resolve: bool,
    allow: tuple[str, ...],
    paths: tuple[Path, ...],
) -> None:
    """Print FILE's saga as a flowchart of steps, dependencies and compensations.

    Draws from the names in FILE and imports nothing, unless --resolve with
    --allow-module PACKAGE (then as validate --resolve). --format svg pipes
    the DOT text through Graphviz (dot -Tsvg); without Graphviz installed it
    exits 1 and says so.
    """
    from ..declarative import GraphvizError, InvalidDefinition
    from ..declarative import graph as draw

    roots = _roots(resolve, allow)
    try:
        definition = _load(file, roots, paths)
    except InvalidDefinition as e:
        _fail(file, e)
    try:
        text = draw(definition, fmt)
    except GraphvizError as e:
        _fail(file, e)
    click.echo(text, nl=False)


commands: list[click.Command] = [validate, generate, graph]
