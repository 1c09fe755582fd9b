"""``generate``: write a declarative definition out as a code-first orchestrator module.

Seed 000's naming and location rules: the class is the definition's ``name``
(PascalCase ending in ``Orchestrator``; anything else is refused), the file
is the snake_case of that name, and it lives in
``<root>/<app_root>/domain/<bounded_ctx>/sagas/``. The module imports the
commands, events, state DTO and repository from the modules the definition
names and builds the same ``SagaDefinition`` with ``SagaBuilder`` and
``send``, exposing ``definition`` and the orchestrator class, whose hooks
(command building, event merging, correlation) are there to be edited.

The output is deterministic, compiles, passes ruff's default formatting and
the lint rules sagakit itself uses, and type-checks with ``mypy --strict``.
The last line holds a checksum of the file: re-running ``generate`` replaces
an untouched file, but refuses to overwrite one that was edited unless
``force=True``.
"""

from __future__ import annotations

import hashlib
import keyword
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import SagaError
from ._loader import (
    InvalidDefinition,
    Source,
    _Resolver,
    build_definition_from,
    extended_sys_path,
    read_definition,
)
from ._models import SagaOrchestratorInputDTO, SagaStepInputDTO, success_events
from ._pysource import (
    LINE_LENGTH,
    Call,
    Chain,
    Imports,
    Layout,
    correlation_body,
    def_lines,
    docstring,
    flat_text,
    layout_lines,
    pystr,
    string_assignment,
)

__all__ = ["GeneratedFileEdited", "generate", "module_path", "render", "snake_case"]

_ORCHESTRATOR = re.compile(r"^[A-Z][A-Za-z0-9]*Orchestrator$")
_RULE = (
    "Class: PascalCase, typically ends with 'Orchestrator'. "
    "File: ${saga_orchestrator_name}.py. Location: app/domain/${bounded_ctx}/sagas"
)
_CHECKSUM = "# sagakit-checksum: "  # then the sha256 of everything above
_PACKAGE = re.compile(r"^[a-z_][a-z0-9_]*$")


class GeneratedFileEdited(SagaError, FileExistsError):
    """The file ``generate`` would write exists and was edited since it was generated."""


# ---------------------------------------------------------------- names


def snake_case(name: str) -> str:
    """``OrderProcessingSagaOrchestrator`` -> ``order_processing_saga_orchestrator``."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    s = re.sub(r"[^0-9A-Za-z_]+", "_", s).strip("_").lower()
    return re.sub(r"_+", "_", s)


def _ident(text: str, fallback: str) -> str:
    s = snake_case(text) or fallback
    if s[0].isdigit():
        s = f"{fallback}_{s}"
    if keyword.iskeyword(s) or keyword.issoftkeyword(s):
        s += "_"
    return s


def module_path(name: str, *, bounded_ctx: str, root: str | os.PathLike[str] = ".", app_root: str = "app") -> Path:
    """Where ``generate`` writes the orchestrator *name*: ``root/app_root/domain/ctx/sagas/<snake>.py``."""
    return Path(root, app_root, "domain", bounded_ctx, "sagas", f"{snake_case(name)}.py")


_SAFE_TEXT = re.compile(r"^[A-Za-z0-9_.\- ]*$")


def _safe(text: str) -> str:
    """Text for docstrings and comments: identifiers and file names only, else a placeholder."""
    return text if _SAFE_TEXT.match(text) else "(name not shown)"


# ---------------------------------------------------------------- rendering


@dataclass
class _Hooks:
    lines: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    def name(self, wanted: str) -> str:
        name, n = wanted, 2
        while name in self.used:
            name = f"{wanted}_{n}"
            n += 1
        self.used.add(name)
        return name


_MODULE_NAMES = {
    "annotations",
    "Any",
    "Mapping",
    "SagaBuilder",
    "SagaDefinition",
    "send",
    "default_command",
    "merge_event",
    "to_correlation_id",
    "definition",
    "str",
    "int",
    "float",
    "type",
    "cls",
    "state",
    "event",
    "version",
    "b",
}


def render(
    definition: SagaOrchestratorInputDTO,
    *,
    root: str | os.PathLike[str] = ".",
    origin: str | None = None,
) -> str:
    """The source of the orchestrator module for *definition* (``generate`` writes it).

    Modules are not imported, except to find compensation events given
    without a module (the schema has no field for theirs).

    Raises:
        InvalidDefinition: the orchestrator name breaks the naming rule, or a
            compensation event cannot be found.
    """
    dto = definition
    _check_name(dto.name)
    reserved = _MODULE_NAMES | {dto.name}
    imports = Imports(reserved)
    resolver = _Resolver()

    state = imports.add(dto.state_dto_module, dto.state_dto_name)
    repository = imports.add(dto.state_repository_module, dto.state_repository_name)

    hooks = _Hooks(used={"saga_type", "state_dto", "state_repository", "description", "build_definition"})
    builder: list[str] = []
    indent = 8
    builder += layout_lines(
        Call("SagaBuilder", [pystr(dto.saga_type), "version=version", "description=cls.description"]),
        indent,
        prefix="b = ",
    )
    builder.append(f"{' ' * indent}b.state(cls.state_dto)")

    for t in dto.triggering_events:
        event = imports.add(t.event_module, t.event_name)
        param, expr, is_str = correlation_body(t.correlation_id_provider_str)
        hook = hooks.name(_ident(f"correlate_{snake_case(t.event_name)}", "correlate"))
        ret: Layout = Call("to_correlation_id", [expr]) if not is_str else expr
        if isinstance(ret, Chain) and 15 + len(flat_text(ret)) > LINE_LENGTH:
            ret = Call("", [ret], group=True)  # split inside parentheses
        hooks.lines += [
            "",
            "    @staticmethod",
            *def_lines(4, hook, [f"{param}: {event}"], "str"),
            *docstring(8, f"Correlation id of {event} (the definition's lambda)."),
            *layout_lines(ret, 8, prefix="return "),
        ]
        builder += layout_lines(Call("b.trigger", [event, f"correlation=cls.{hook}"]), indent)

    for step in dto.steps:
        builder += _step(step, dto, imports, hooks, resolver)

    for kind, method in (("completion", "on_completed"), ("failure", "on_failed")):
        name = getattr(dto, f"{kind}_event_name")
        module = getattr(dto, f"{kind}_event_module")
        if name is not None and module is not None:
            builder.append(f"{' ' * indent}b.{method}({imports.add(module, name)})")

    custom = [imports.add(imp.module, n) for imp in dto.imports for n in imp.names]
    if resolver.errors:
        raise InvalidDefinition(resolver.errors, origin)

    extras = Call(
        "b.extras.update",
        [
            f"orchestrator={pystr(dto.name)}",
            "description=cls.description",
            "state_repository=cls.state_repository",
            "imports=" + flat_text(_imports_tuple(dto)),
            "compensating_transactions="
            + flat_text(Call("", [pystr(s.step_name) for s in dto.steps if s.is_compensating_transaction], tuple=True)),
        ],
    )
    # Keyword values are laid out flat inside; split the call itself one per line.
    extras_lines = layout_lines(extras, indent)
    if any(len(line) > LINE_LENGTH for line in extras_lines):
        extras_lines = _extras_exploded(dto, indent)
    builder += extras_lines
    builder.append(f"{' ' * indent}return b.build()")

    # --- assemble
    header = ["# Generated by `sagakit generate`."]
    if origin and len(origin) <= 60:
        header.append(f"# Source: {_safe(origin)}")
    header += [
        "# The hooks of the class are yours to edit: re-generating refuses to",
        "# overwrite a file edited since it was generated (unless --force).",
    ]
    out: list[str] = [
        *header,
        *docstring(
            0,
            f"{_safe(dto.name)}: orchestrates the {_safe(dto.saga_type)} saga.",
            "Built with sagakit's code-first API from a declarative definition: ``definition``\n"
            "is what ``sagakit.load_definition`` makes of the same file, with the hooks below\n"
            "in place of the default mapping.",
        ),
        "",
        "from __future__ import annotations",
        "",
        "from collections.abc import Mapping",
        "from typing import Any",
        "",
    ]
    # sagakit's own names go through the same table, so they sort with the rest.
    for name in ("SagaBuilder", "SagaDefinition", "send"):
        imports.local[("sagakit", name)] = name
    imports.local[("sagakit.declarative", "default_command")] = "default_command"
    imports.local[("sagakit.declarative", "merge_event")] = "merge_event"
    if any(not correlation_body(t.correlation_id_provider_str)[2] for t in dto.triggering_events):
        imports.local[("sagakit.declarative", "to_correlation_id")] = "to_correlation_id"
    out += imports.render(Path(root))
    out += [
        "",
        f'__all__ = ["{dto.name}", "definition"]',
        "",
        "",
        f"class {dto.name}:",
        *docstring(
            4,
            f"The {_safe(dto.saga_type)} saga: its state, triggers, steps and hooks.",
            "Edit the hooks to customise how commands are built from the saga state and how\n"
            "events change it; ``build_definition`` wires them into the saga.",
        ),
        "",
        f"    saga_type = {pystr(dto.saga_type)}",
        f"    state_dto = {state}",
        f"    state_repository = {repository}",
        *string_assignment(4, "description: str | None", dto.description),
    ]
    if custom:
        out += [
            "    # The definition's custom imports, at hand for the hooks.",
            *layout_lines(Call("", list(custom), tuple=True), 4, prefix="custom_imports = "),
        ]
    out += [
        "",
        "    # --- hooks: edit these ---------------------------------------------------",
        *hooks.lines,
        "",
        "    # --- the saga ------------------------------------------------------------",
        "",
        "    @classmethod",
        "    def build_definition(cls, version: int = 1) -> SagaDefinition:",
        '        """The saga definition, built from the class attributes and hooks."""',
        *builder,
        "",
        "",
        f"definition = {dto.name}.build_definition()",
    ]
    text = "\n".join(out) + "\n"
    return text + _CHECKSUM + _checksum(text) + "\n"


def _imports_tuple(dto: SagaOrchestratorInputDTO) -> Call:
    return Call(
        "",
        [
            Call("", [pystr(imp.module), Call("", [pystr(n) for n in imp.names], tuple=True)], tuple=True)
            for imp in dto.imports
        ],
        tuple=True,
    )


def _extras_exploded(dto: SagaOrchestratorInputDTO, indent: int) -> list[str]:
    pad = " " * (indent + 4)
    comp = Call("", [pystr(s.step_name) for s in dto.steps if s.is_compensating_transaction], tuple=True)
    lines = [
        f"{' ' * indent}b.extras.update(",
        f"{pad}orchestrator={pystr(dto.name)},",
        f"{pad}description=cls.description,",
        f"{pad}state_repository=cls.state_repository,",
    ]
    lines += layout_lines(_imports_tuple(dto), indent + 4, prefix="imports=", suffix=",")
    lines += layout_lines(comp, indent + 4, prefix="compensating_transactions=", suffix=",")
    lines.append(f"{' ' * indent})")
    return lines


def _step(
    step: SagaStepInputDTO,
    dto: SagaOrchestratorInputDTO,
    imports: Imports,
    hooks: _Hooks,
    resolver: _Resolver,
) -> list[str]:
    base = _ident(step.step_name, "step")
    command = imports.add(step.command_module, step.command_name)
    success = [imports.add(m, n) for m, n in success_events(step)]
    failure = (
        imports.add(step.failure_event_module, step.failure_event_name)
        if step.failure_event_name is not None and step.failure_event_module is not None
        else None
    )
    make = hooks.name(f"{base}_command")
    merge = hooks.name(f"{base}_succeeded")
    hooks.lines += _command_hook(make, step.step_name, command, "command")
    hooks.lines += _merge_hook(merge, step.step_name, success, "success event")
    args: list[Layout] = [command, _list_arg("success", success)]
    if failure is not None:
        args.append(f"failure={failure}")
    args += [f"to_command=cls.{make}", f"merge=cls.{merge}"]
    step_args: list[Layout] = [pystr(step.step_name), Call("action=send", args)]

    if step.compensation_command_name is not None and step.compensation_command_module is not None:
        comp = imports.add(step.compensation_command_module, step.compensation_command_name)
        comp_args: list[Layout] = [comp]
        outcomes: list[str] = []
        for field_name in ("compensation_success_event_name", "compensation_failure_event_name"):
            value = getattr(step, field_name)
            if value is None:
                outcomes.append("")
                continue
            found = resolver.locate_loose(field_name, value, step, dto.imports)
            outcomes.append(imports.add(*found) if found is not None else "")
        comp_success, comp_failure = outcomes
        make_comp = hooks.name(f"{base}_compensation_command")
        hooks.lines += _command_hook(make_comp, step.step_name, comp, "compensation command")
        if comp_success:
            comp_args.append(_list_arg("success", [comp_success]))
        if comp_failure:
            comp_args.append(f"failure={comp_failure}")
        comp_args.append(f"to_command=cls.{make_comp}")
        if comp_success:
            merge_comp = hooks.name(f"{base}_compensated")
            hooks.lines += _merge_hook(merge_comp, step.step_name, [comp_success], "compensation success event")
            comp_args.append(f"merge=cls.{merge_comp}")
        step_args.append(Call("compensation=send", comp_args))
    return layout_lines(Call("b.step", step_args), 8, suffix="")


def _list_arg(name: str, items: list[str]) -> str:
    return f"{name}=[{', '.join(items)}]"


def _command_hook(name: str, step_name: str, command: str, what: str) -> list[str]:
    return [
        "",
        "    @staticmethod",
        *def_lines(4, name, ["state: Mapping[str, Any]"], command),
        *docstring(8, f"The {what} of step {_safe(step_name)}, built from the saga state."),
        *layout_lines(Call("default_command", [command, "state"]), 8, prefix="return "),
    ]


def _merge_hook(name: str, step_name: str, events: list[str], what: str) -> list[str]:
    return [
        "",
        "    @staticmethod",
        *def_lines(4, name, ["state: Mapping[str, Any]", f"event: {' | '.join(events)}"], "Mapping[str, Any]"),
        *docstring(8, f"The saga state after a {what} of step {_safe(step_name)}."),
        *layout_lines(Call("merge_event", ["state", "event"]), 8, prefix="return "),
    ]


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_name(name: str) -> None:
    if not _ORCHESTRATOR.match(name) or keyword.iskeyword(name):
        raise InvalidDefinition(
            [
                f'name: {name!r} cannot name a generated orchestrator; 000\'s rule is "{_RULE}" — '
                "sagakit requires PascalCase ending in 'Orchestrator', e.g. "
                "'OrderProcessingSagaOrchestrator'"
            ]
        )


# ---------------------------------------------------------------- writing


def generate(
    definition: SagaOrchestratorInputDTO | Source,
    *,
    bounded_ctx: str,
    root: str | os.PathLike[str] = ".",
    app_root: str = "app",
    force: bool = False,
    version: int = 1,
    search_path: Sequence[str | os.PathLike[str]] | None = None,
) -> Path:
    """Write the orchestrator module of *definition* and return its path.

    The file is ``root/app_root/domain/<bounded_ctx>/sagas/<snake_case(name)>.py``;
    missing package ``__init__.py`` files on the way are created. The
    definition is fully loaded first (modules resolved from *root*,
    *search_path* and ``sys.path``), so a broken definition writes nothing.

    Args:
        definition: a validated model, a definition file, or a mapping.
        bounded_ctx: the bounded context, a lower-case Python package name.
        root: the project directory.
        app_root: the application package under *root* (seed 000: ``app``).
        force: overwrite the file even if it was edited since it was generated.

    Raises:
        InvalidDefinition: the definition is invalid or breaks the naming rule.
        ValueError: *bounded_ctx* or *app_root* is not a package name.
        GeneratedFileEdited: the file exists and was edited (pass ``force=True``).
    """
    if isinstance(definition, SagaOrchestratorInputDTO):
        dto, origin = definition, None
    else:
        dto = read_definition(definition)
        origin = None if isinstance(definition, Mapping) else Path(definition).name
    for label, value in (("bounded_ctx", bounded_ctx), ("app_root", app_root)):
        if not _PACKAGE.match(value) or keyword.iskeyword(value):
            raise ValueError(
                f"{label} {value!r} is not a package name: use lower-case letters, digits and '_', e.g. 'ordering'"
            )
    _check_name(dto.name)
    root_path = Path(root)
    paths = [root_path, *(search_path or ())]
    build_definition_from(dto, version=version, search_path=paths, origin=origin)
    with extended_sys_path(paths):
        source = render(dto, root=root_path, origin=origin)
    target = module_path(dto.name, bounded_ctx=bounded_ctx, root=root_path, app_root=app_root)
    _write(target, source, force=force)
    package = target.parent
    while package not in (root_path, package.parent):
        init = package / "__init__.py"
        if not init.exists():
            init.touch()
        package = package.parent
    return target


def _write(target: Path, source: str, *, force: bool) -> None:
    if target.exists() and not force:
        current = target.read_text(encoding="utf-8")
        if current == source:
            return
        if not _untouched(current):
            raise GeneratedFileEdited(
                f"{target} was edited since sagakit generated it; not overwriting it. Move your "
                "changes aside, or pass --force (force=True) to replace it"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source, encoding="utf-8")


def _untouched(text: str) -> bool:
    body, sep, tail = text.rpartition(_CHECKSUM)
    return bool(sep) and tail.strip() == _checksum(body)
