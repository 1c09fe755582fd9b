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

``scaffold`` (``generate(..., scaffold=True)``, ``sagakit generate --scaffold``)
also creates the state DTO and state repository modules the definition names
when they do not exist yet, under the same rules: deterministic, importable,
ruff- and mypy-clean, and never overwriting an edited file without ``force``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import importlib
import importlib.util
import keyword
import os
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._definition import is_message_type
from .._errors import SagaError
from .._policy import RetryPolicy
from ._loader import (
    COMPENSATION_RETRY,
    InvalidDefinition,
    Source,
    _Resolver,
    allowed_roots,
    build_definition_from,
    extended_sys_path,
    named_modules,
    read_definition,
    refuse_outside,
    retry_policy,
)
from ._models import SagaOptions, SagaOrchestratorInputDTO, SagaStepInputDTO, StepOptions, success_events
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

__all__ = ["GeneratedFileEdited", "Scaffolded", "generate", "module_path", "render", "scaffold", "snake_case"]

_ORCHESTRATOR = re.compile(r"^[A-Z][A-Za-z0-9]*Orchestrator$")
_RULE = (
    "Class: PascalCase, typically ends with 'Orchestrator'. "
    "File: ${saga_orchestrator_name}.py. Location: app/domain/${bounded_ctx}/sagas"
)
_CHECKSUM = "# sagakit-checksum: "  # then the sha256 of everything above
_PACKAGE = re.compile(r"^[a-z_][a-z0-9_]*$")
_MODULE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


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
    "built",
    "RetryPolicy",
    "name_messages",
    "events_defined_with",
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
    origin: str | None = None,
) -> str:
    """The source of the orchestrator module for *definition* (``generate`` writes it).

    Modules are not imported, except to find compensation events given
    without a module (the schema has no field for theirs). The text depends
    on the definition alone, not on where it is written: imports are sorted
    into isort's sections with the top-level packages of the modules the
    definition names as the first-party ones.

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
    options = dto.sagakit or SagaOptions()
    named: list[tuple[str, str]] = []  # (local class name, wire name) when the definition names its messages
    replies: list[str] = []  # the steps' events, whose modules hold the events the saga knows
    builder: list[str] = []
    indent = 8
    saga_args: list[Layout] = [pystr(dto.saga_type), "version=version", "description=cls.description"]
    if options.deadline is not None:
        saga_args.append(f"deadline={options.deadline!r}")
    builder += layout_lines(Call("SagaBuilder", saga_args), indent, prefix="b = ")
    builder.append(f"{' ' * indent}b.state(cls.state_dto)")

    for t in dto.triggering_events:
        event = imports.add(t.event_module, t.event_name)
        named.append((event, options.wire_name(t.event_name)))
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
        builder += _step(step, dto, imports, hooks, resolver, named, replies, options)

    for kind, method in (("completion", "on_completed"), ("failure", "on_failed")):
        name = getattr(dto, f"{kind}_event_name")
        module = getattr(dto, f"{kind}_event_module")
        if name is not None and module is not None:
            local = imports.add(module, name)
            named.append((local, options.wire_name(name)))
            builder.append(f"{' ' * indent}b.{method}({local})")

    known: list[Layout] = []
    for k in options.known_events:
        local = imports.add(k.event_module, k.event_name)
        named.append((local, options.wire_name(k.event_name)))
        known.append(local)
    if options.scan_event_modules and replies:
        known.append(Call("*events_defined_with", list(dict.fromkeys(replies))))
    if known:
        builder += layout_lines(Call("b.known_events", known), indent)

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
    origin_text = pystr(f"saga {dto.saga_type!r}")
    if options.names_from_definition:
        # The definition's wire names: its own classes first, then the events found beside them.
        naming = [f"{' ' * indent}name_messages(", f"{' ' * indent}    {{"]
        naming += [f"{' ' * indent}        {local}: {pystr(wire)}," for local, wire in dict(named).items()]
        naming += [f"{' ' * indent}    }},", f"{' ' * indent}    origin={origin_text},", f"{' ' * indent})"]
        builder[:0] = naming
        builder.append(f"{' ' * indent}built = b.build()")
        args: list[Layout] = ["built.known_events"]
        if options.message_namespace:
            args.append(f"namespace={pystr(options.message_namespace)}")
        args.append(f"origin={origin_text}")
        builder += layout_lines(Call("name_messages", args), indent)
        builder.append(f"{' ' * indent}return built")
    else:
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
    if any(s.sagakit is not None and (s.sagakit.retry or s.sagakit.compensation_retry) for s in dto.steps):
        imports.local[("sagakit", "RetryPolicy")] = "RetryPolicy"
    if options.names_from_definition:
        imports.local[("sagakit.declarative", "name_messages")] = "name_messages"
    if options.scan_event_modules and replies:
        imports.local[("sagakit.declarative", "events_defined_with")] = "events_defined_with"
    imports.local[("sagakit.declarative", "default_command")] = "default_command"
    imports.local[("sagakit.declarative", "merge_event")] = "merge_event"
    if any(not correlation_body(t.correlation_id_provider_str)[2] for t in dto.triggering_events):
        imports.local[("sagakit.declarative", "to_correlation_id")] = "to_correlation_id"
    out += imports.render(_first_party(dto))
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


def _first_party(dto: SagaOrchestratorInputDTO) -> frozenset[str]:
    """The packages generated modules sort as first-party: those of the modules *dto* names for its classes.

    Decided from the definition alone, so that a definition gives the same
    files whatever the output folder, the current directory, ``sys.path`` or
    a linter's settings. The definition's custom imports do not count: they
    name libraries as often as the project's own modules.
    """
    return frozenset(
        module.split(".", maxsplit=1)[0] for field, module in named_modules(dto) if not field.startswith("imports[")
    )


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


def _retry_call(keyword: str, policy: RetryPolicy) -> Call:
    return Call(
        f"{keyword}=RetryPolicy",
        [f"{f}={getattr(policy, f)!r}" for f in ("max_attempts", "initial_delay", "multiplier", "max_delay", "jitter")],
    )


def _step(
    step: SagaStepInputDTO,
    dto: SagaOrchestratorInputDTO,
    imports: Imports,
    hooks: _Hooks,
    resolver: _Resolver,
    named: list[tuple[str, str]],
    replies: list[str],
    options: SagaOptions,
) -> list[str]:
    base = _ident(step.step_name, "step")
    opts = step.sagakit or StepOptions()
    command = imports.add(step.command_module, step.command_name)
    named.append((command, options.wire_name(step.command_name)))
    success = [imports.add(m, n) for m, n in success_events(step)]
    named += [(local, options.wire_name(n)) for local, (_, n) in zip(success, success_events(step), strict=True)]
    replies += success
    failure = (
        imports.add(step.failure_event_module, step.failure_event_name)
        if step.failure_event_name is not None and step.failure_event_module is not None
        else None
    )
    if failure is not None and step.failure_event_name is not None:
        named.append((failure, options.wire_name(step.failure_event_name)))
        replies.append(failure)
    make = hooks.name(f"{base}_command")
    merge = hooks.name(f"{base}_succeeded")
    hooks.lines += _command_hook(make, step.step_name, command, "command")
    hooks.lines += _merge_hook(merge, step.step_name, success, "success event")
    args: list[Layout] = [command, _list_arg("success", success)]
    if failure is not None:
        args.append(f"failure={failure}")
    args += [f"to_command=cls.{make}", f"merge=cls.{merge}"]
    if opts.reply_timeout is not None:
        args.append(f"reply_timeout={opts.reply_timeout!r}")
    step_args: list[Layout] = [pystr(step.step_name), Call("action=send", args)]

    if step.compensation_command_name is not None and step.compensation_command_module is not None:
        comp = imports.add(step.compensation_command_module, step.compensation_command_name)
        named.append((comp, options.wire_name(step.compensation_command_name)))
        comp_args: list[Layout] = [comp]
        outcomes: list[str] = []
        for field_name in ("compensation_success_event_name", "compensation_failure_event_name"):
            value = getattr(step, field_name)
            if value is None:
                outcomes.append("")
                continue
            found = resolver.locate_loose(field_name, value, step, dto.imports)
            local = imports.add(*found) if found is not None else ""
            if found is not None:
                named.append((local, options.wire_name(found[1])))
                replies.append(local)
            outcomes.append(local)
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
        if opts.compensation_reply_timeout is not None:
            comp_args.append(f"reply_timeout={opts.compensation_reply_timeout!r}")
        step_args.append(Call("compensation=send", comp_args))
    if opts.retry is not None:
        step_args.append(_retry_call("retry", retry_policy(opts.retry, RetryPolicy())))
    if opts.compensation_retry is not None:
        step_args.append(_retry_call("compensation_retry", retry_policy(opts.compensation_retry, COMPENSATION_RETRY)))
    if opts.timeout is not None:
        step_args.append(f"timeout={opts.timeout!r}")
    if opts.compensation_timeout is not None:
        step_args.append(f"compensation_timeout={opts.compensation_timeout!r}")
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
    scaffold: bool = False,
    allow_modules: Sequence[str] | None = None,
) -> Path:
    """Write the orchestrator module of *definition* and return its path.

    The file is ``root/app_root/domain/<bounded_ctx>/sagas/<snake_case(name)>.py``;
    missing package ``__init__.py`` files on the way are created. The
    definition is fully loaded first (modules resolved from *root*,
    *search_path* and ``sys.path``), so a broken definition writes nothing.
    Loading imports the modules the definition names, which runs their code;
    *allow_modules* (package names) refuses, before anything is imported, a
    definition naming a module outside those packages.

    Args:
        definition: a validated model, a definition file, or a mapping.
        bounded_ctx: the bounded context, a lower-case Python package name.
        root: the project directory.
        app_root: the application package under *root* (seed 000: ``app``).
        force: overwrite the file even if it was edited since it was generated
            (with *scaffold*, the edited state modules sagakit generated too).
        scaffold: first create the state DTO and state repository modules the
            definition names if they do not exist yet (see ``scaffold``); the
            rest of the definition is checked before anything is written.
        allow_modules: the packages whose modules may be imported; None (the
            default) imports any module the definition names.

    Raises:
        InvalidDefinition: the definition is invalid, breaks the naming rule,
            or names a module outside *allow_modules*.
        ValueError: *bounded_ctx* or *app_root* is not a package name, or an
            *allow_modules* entry is not one.
        GeneratedFileEdited: the file exists and was edited (pass ``force=True``).
    """
    target, _ = generate_files(
        definition,
        bounded_ctx=bounded_ctx,
        root=root,
        app_root=app_root,
        force=force,
        version=version,
        search_path=search_path,
        scaffold=scaffold,
        allow_modules=allow_modules,
    )
    return target


def generate_files(
    definition: SagaOrchestratorInputDTO | Source,
    *,
    bounded_ctx: str,
    root: str | os.PathLike[str] = ".",
    app_root: str = "app",
    force: bool = False,
    version: int = 1,
    search_path: Sequence[str | os.PathLike[str]] | None = None,
    scaffold: bool = False,
    allow_modules: Sequence[str] | None = None,
) -> tuple[Path, list[Scaffolded]]:
    """``generate``, also returning what *scaffold* did with each state module (empty without it)."""
    roots = allowed_roots(allow_modules)
    dto, origin = _read(definition)
    if roots is not None:
        refuse_outside(dto, roots, origin)
    for label, value in (("bounded_ctx", bounded_ctx), ("app_root", app_root)):
        if not _PACKAGE.match(value) or keyword.iskeyword(value):
            raise ValueError(
                f"{label} {value!r} is not a package name: use lower-case letters, digits and '_', e.g. 'ordering'"
            )
    _check_name(dto.name)
    root_path = Path(root)
    paths = [root_path, *(search_path or ())]
    target = module_path(dto.name, bounded_ctx=bounded_ctx, root=root_path, app_root=app_root)
    scaffolded: list[Scaffolded] = []
    if scaffold:
        _check_writable(target, force=force)  # before any file is written
        with extended_sys_path(paths):
            targets = _plan(dto, root_path, origin)
            _check_collisions(targets, f"{app_root}.domain.{bounded_ctx}.sagas.{snake_case(dto.name)}", origin)
            _check_all_but_state(dto, targets, version, origin, roots)
            scaffolded = _write_scaffolds(dto, targets, root_path, origin, force=force)
    build_definition_from(dto, version=version, search_path=paths, origin=origin, allow_modules=roots)
    with extended_sys_path(paths):
        source = render(dto, origin=origin)
    _write(target, source, force=force)
    package = target.parent
    while package not in (root_path, package.parent):
        init = package / "__init__.py"
        if not init.exists():
            init.touch()
        package = package.parent
    return target, scaffolded


def _check_writable(target: Path, *, force: bool) -> None:
    if target.exists() and not force and not _untouched(target.read_text(encoding="utf-8")):
        raise GeneratedFileEdited(_edited_message(target))


def _edited_message(target: Path) -> str:
    return (
        f"{target} was edited since sagakit generated it; not overwriting it. Move your "
        "changes aside, or pass --force (force=True) to replace it"
    )


def _check_collisions(targets: Sequence[_Target], orchestrator: str, origin: str | None) -> None:
    """A state module to be written must not be (or contain, or sit inside) the orchestrator module."""
    errors = [
        f"{t.roles[0]}_module: {t.module!r} collides with the generated orchestrator module {orchestrator!r}; "
        "name another module"
        for t in targets
        if not t.found
        and (
            t.module == orchestrator
            or orchestrator.startswith(t.module + ".")
            or t.module.startswith(orchestrator + ".")
        )
    ]
    if errors:
        raise InvalidDefinition(errors, origin)


def _check_all_but_state(
    dto: SagaOrchestratorInputDTO,
    targets: Sequence[_Target],
    version: int,
    origin: str | None,
    roots: tuple[str, ...] | None = None,
) -> None:
    """Load the definition; problems with the state modules about to be created do not count."""
    try:
        build_definition_from(dto, version=version, origin=origin, allow_modules=roots)
    except InvalidDefinition as e:
        fields = tuple(f"{role}_" for t in targets if not t.found for role in t.roles)
        dto_created = any(not t.found and "state_dto" in t.roles for t in targets)

        def expected(err: str) -> bool:
            if err.startswith(fields):
                return True
            # A repository module that exists may import the state DTO module being created.
            needs = re.search(r"it needs '([^']+)'", err)
            return (
                dto_created
                and err.startswith("state_repository_")
                and needs is not None
                and (dto.state_dto_module + ".").startswith(needs.group(1) + ".")
            )

        remaining = [err for err in e.errors if not expected(err)]
        if remaining:
            raise InvalidDefinition(remaining, origin) from None


def _write(target: Path, source: str, *, force: bool) -> None:
    if target.exists() and not force:
        current = target.read_text(encoding="utf-8")
        if current == source:
            return
        if not _untouched(current):
            raise GeneratedFileEdited(_edited_message(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source, encoding="utf-8")


def _untouched(text: str) -> bool:
    body, sep, tail = text.rpartition(_CHECKSUM)
    return bool(sep) and tail.strip() == _checksum(body)


# ---------------------------------------------------------------- scaffolding

ScaffoldAction = Literal["created", "updated", "unchanged", "kept", "exists"]
_SCAFFOLD_HEADER = "# Generated by `sagakit generate --scaffold`."


@dataclass(frozen=True, slots=True)
class Scaffolded:
    """What ``scaffold`` (``generate --scaffold``) did with one module the definition names.

    ``action`` is one of:

    - ``created``: the module did not exist; it was written at ``path``;
    - ``updated``: sagakit's own, unedited file, rewritten for the current definition;
    - ``unchanged``: sagakit's own file, already up to date;
    - ``kept``: sagakit's file, edited since it was generated: left alone (``force`` replaces it);
    - ``exists``: a module sagakit did not write (``path`` is where it was found, if a file): never touched.
    """

    module: str
    classes: tuple[str, ...]
    path: Path | None
    action: ScaffoldAction


@dataclass
class _Target:
    module: str
    roles: list[str]  # "state_dto" and/or "state_repository", in that order
    path: Path | None = None  # where the file is, or will be
    base: Path | None = None  # a new file: the existing directory its new packages start under
    found: bool = False  # the module exists


def scaffold(
    definition: SagaOrchestratorInputDTO | Source,
    *,
    root: str | os.PathLike[str] = ".",
    force: bool = False,
    search_path: Sequence[str | os.PathLike[str]] | None = None,
) -> list[Scaffolded]:
    """Create the state DTO and state repository modules a definition names, where they do not exist yet.

    Module ``a.b.c`` becomes ``root/a/b/c.py`` (with the package ``__init__.py``
    files on the way), or goes inside the package ``a.b`` (or ``a``) when that
    already exists under *root* (e.g. in ``root/src``, on *search_path*). The
    state DTO is a pydantic model with the fields of the definition's trigger and
    success events (those that can be imported); the repository a small class
    reading that state from a ``SagaEngine``: sagakit stores saga state itself.

    Only the definition's format is checked here: events that cannot be
    imported yet leave the state DTO with fewer fields (its docstring says
    which). ``generate(..., scaffold=True)`` checks the whole definition first.

    Re-running is deterministic; a module sagakit did not write is never
    touched, and a generated one that was edited only with ``force=True``.

    Raises:
        InvalidDefinition: the definition is invalid, or a module cannot be
            created (a parent is a plain module, or a package outside *root*).
    """
    dto, origin = _read(definition)
    root_path = Path(root)
    with extended_sys_path([root_path, *(search_path or ())]):
        targets = _plan(dto, root_path, origin)
        return _write_scaffolds(dto, targets, root_path, origin, force=force)


def _read(definition: SagaOrchestratorInputDTO | Source) -> tuple[SagaOrchestratorInputDTO, str | None]:
    if isinstance(definition, SagaOrchestratorInputDTO):
        return definition, None
    dto = read_definition(definition)
    return dto, None if isinstance(definition, Mapping) else Path(definition).name


def _valid_module(name: str) -> bool:
    return bool(_MODULE_PATH.match(name)) and not any(keyword.iskeyword(p) for p in name.split("."))


def _valid_class(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _plan(dto: SagaOrchestratorInputDTO, root: Path, origin: str | None) -> list[_Target]:
    """Where the state modules are or go; raises for those that cannot be created."""
    errors: list[str] = []
    targets: dict[str, _Target] = {}
    for role in ("state_dto", "state_repository"):
        module, name = getattr(dto, f"{role}_module"), getattr(dto, f"{role}_name")
        if not _valid_module(module):
            errors.append(f"{role}_module: {module!r} is not a dotted Python module path like 'app.domain.state'")
        elif not _valid_class(name):
            errors.append(f"{role}_name: {name!r} is not a Python class name")
        else:
            targets.setdefault(module, _Target(module, [])).roles.append(role)
    if (
        dto.state_dto_module == dto.state_repository_module
        and dto.state_dto_name == dto.state_repository_name
        and not errors
    ):
        errors.append(
            "state_repository_name: the same class as state_dto_name in the same module; "
            "the state DTO and its repository must be two classes"
        )
    for target in targets.values():
        problem = _locate(target, root)
        if problem is not None:
            errors.append(f"{target.roles[0]}_module: {problem}")
    written = [t for t in targets.values() if t.path is not None and not t.found]
    for a in written:
        for b in written:
            if b.module.startswith(a.module + "."):
                errors.append(
                    f"{b.roles[0]}_module: {b.module!r} would live inside {a.module!r}, which is to be "
                    "created as a plain module; put the two in sibling modules"
                )
    if errors:
        raise InvalidDefinition(errors, origin)
    return list(targets.values())


def _locate(target: _Target, root: Path) -> str | None:
    """Find the module, or where to create it; the reason it cannot be created, else None."""
    try:
        spec = importlib.util.find_spec(target.module)
    except ModuleNotFoundError:
        spec = None  # a parent package is missing too
    except Exception as e:  # a parent package failed to import
        return f"cannot look for module {target.module!r}: importing its package failed: {type(e).__name__}: {e}"
    if spec is not None and spec.has_location and spec.origin is not None and not Path(spec.origin).exists():
        spec = None  # imported earlier in this process from a file deleted since
    if spec is not None:
        target.found = True
        if spec.origin is not None and Path(spec.origin).is_file():
            target.path = _within(Path(spec.origin), root)
        return None
    parts = target.module.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(parent)
        except ModuleNotFoundError:
            continue
        except Exception as e:
            return f"cannot create {target.module!r}: importing package {parent!r} failed: {type(e).__name__}: {e}"
        if found is None:
            continue
        if found.submodule_search_locations is None:
            return f"cannot create {target.module!r}: {parent!r} is a module ({found.origin}), not a package"
        inside = [Path(p) for p in found.submodule_search_locations if _is_under(Path(p), root)]
        if not inside:
            where = ", ".join(str(p) for p in found.submodule_search_locations) or "(nowhere)"
            return (
                f"cannot create {target.module!r}: its package {parent!r} is at {where}, outside the "
                f"project directory {root}; --scaffold writes only under it (create the module "
                "yourself, or pass that project as --root)"
            )
        target.base = _within(inside[0], root)
        target.path = target.base.joinpath(*parts[i:-1], f"{parts[-1]}.py")
        return None
    target.base = root
    target.path = root.joinpath(*parts[:-1], f"{parts[-1]}.py")
    return None


def _within(path: Path, root: Path) -> Path:
    """*path* spelled from *root* when it is under it (as the paths sagakit creates are), else absolute."""
    try:
        return root / path.resolve().relative_to(root.resolve())
    except ValueError:
        return path.resolve()


def _is_under(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _write_scaffolds(
    dto: SagaOrchestratorInputDTO,
    targets: Sequence[_Target],
    root: Path,
    origin: str | None,
    *,
    force: bool,
) -> list[Scaffolded]:
    out: list[Scaffolded] = []
    for t in targets:
        classes = tuple(getattr(dto, f"{role}_name") for role in t.roles)
        if t.path is None or (t.found and not _is_ours(t.path)):
            out.append(Scaffolded(t.module, classes, t.path, "exists"))
            continue
        if "state_dto" in t.roles:
            source = _render_state_module(dto, origin=origin, with_repository=len(t.roles) == 2)
        else:
            source = _render_repository_module(dto, origin=origin)
        out.append(Scaffolded(t.module, classes, t.path, _write_scaffold(t, source, force=force)))
    importlib.invalidate_caches()
    return out


def _is_ours(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().rstrip("\n") == _SCAFFOLD_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def _write_scaffold(target: _Target, source: str, *, force: bool) -> ScaffoldAction:
    path = target.path
    assert path is not None
    if path.exists():
        if not _is_ours(path):
            return "exists"
        current = path.read_text(encoding="utf-8")
        if current == source:
            return "unchanged"
        if not _untouched(current) and not force:
            return "kept"
        path.write_text(source, encoding="utf-8")
        return "updated"
    base = target.base or path.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    package = path.parent
    while package != base and _is_under(package, base):
        init = package / "__init__.py"
        if not init.exists():
            init.touch()
        package = package.parent
    path.write_text(source, encoding="utf-8")
    return "created"


# ---------------------------------------------------------------- the state DTO


@dataclass
class _StateField:
    name: str
    types: list[Any] = field(default_factory=list)
    triggers: int = 0  # how many trigger events carry it


def _message_fields(module: str, name: str) -> list[tuple[str, Any, bool]] | None:
    """(field, type, required) of a command or event class, or None if it cannot be imported."""
    if not _valid_module(module) or not _valid_class(name):
        return None
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    cls = getattr(mod, name, None)
    if not isinstance(cls, type) or not is_message_type(cls):
        return None
    if dataclasses.is_dataclass(cls):
        try:
            hints = typing.get_type_hints(cls)
        except Exception:
            hints = {}
        return [
            (
                f.name,
                hints.get(f.name, Any),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
            if f.init
        ]
    model_fields: Mapping[str, Any] = getattr(cls, "model_fields", {})
    return [
        (n, info.annotation if info.annotation is not None else Any, bool(info.is_required()))
        for n, info in model_fields.items()
    ]


def _state_sources(dto: SagaOrchestratorInputDTO) -> list[tuple[str, str, bool]]:
    """(module, class, is a trigger) of every event whose fields end up in the state, in order."""
    out: list[tuple[str, str, bool]] = [(t.event_module, t.event_name, True) for t in dto.triggering_events]
    resolver = _Resolver()
    for step in dto.steps:
        out += [(m, n, False) for m, n in success_events(step)]
        if step.compensation_command_name is not None and step.compensation_success_event_name is not None:
            found = resolver.locate_loose(
                "compensation_success_event_name", step.compensation_success_event_name, step, dto.imports
            )
            if found is not None:
                out.append((*found, False))
    seen: set[tuple[str, str]] = set()
    unique = []
    for module, name, trigger in out:
        if (module, name) not in seen:
            seen.add((module, name))
            unique.append((module, name, trigger))
    return unique


_ABC_GENERICS = {
    collections.abc.Sequence: "Sequence",
    collections.abc.MutableSequence: "MutableSequence",
    collections.abc.Mapping: "Mapping",
    collections.abc.MutableMapping: "MutableMapping",
    collections.abc.Set: "Set",
    collections.abc.MutableSet: "MutableSet",
}
_BUILTIN_GENERICS: dict[Any, str] = {
    list: "list[{0}]",
    set: "set[{0}]",
    frozenset: "frozenset[{0}]",
    dict: "dict[{0}, {0}]",
    tuple: "tuple[{0}, ...]",
}
_PLAIN_TYPES: dict[Any, str] = {str: "str", int: "int", float: "float", bool: "bool", bytes: "bytes"}


def _members(tp: Any, add: Callable[[str, str], str]) -> list[str] | None:
    """The members of *tp* as annotation sources (one unless it is a union); None if one cannot be written."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0], add)
    if origin is typing.Union or origin is types.UnionType:
        out: list[str] = []
        for arg in typing.get_args(tp):
            found = _members(arg, add)
            if found is None:
                return None
            out += found
        return out
    text = _type_source(tp, add)
    return None if text is None else [text]


def _type_source(tp: Any, add: Callable[[str, str], str]) -> str | None:
    """The annotation source of *tp*, importing what it needs through *add*; None if it cannot be written."""
    if tp is None or tp is type(None):
        return "None"
    if tp is Any:
        return add("typing", "Any")
    if isinstance(tp, type) and tp in _PLAIN_TYPES:
        return _PLAIN_TYPES[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Annotated, typing.Union, types.UnionType):
        members = _members(tp, add)
        return None if members is None else _union(members)
    if origin is typing.Literal:
        if not all(v is None or type(v) in (str, int, bool) for v in args):
            return None
        values = ", ".join(pystr(v) if isinstance(v, str) else repr(v) for v in args)
        return f"{add('typing', 'Literal')}[{values}]"
    if origin is not None:
        inner = [_type_source(a, add) if a is not Ellipsis else "..." for a in args]
        if any(i is None for i in inner) or (not inner and origin is not tuple):
            return None
        joined = ", ".join(i for i in inner if i is not None) or "()"
        if origin in (list, set, frozenset, dict, tuple):
            return f"{origin.__name__}[{joined}]"
        if origin in _ABC_GENERICS:
            return f"{add('collections.abc', _ABC_GENERICS[origin])}[{joined}]"
        return None
    if tp in _BUILTIN_GENERICS:
        return _BUILTIN_GENERICS[tp].format(add("typing", "Any"))
    if isinstance(tp, type):
        return _class_source(tp, add)
    return None


def _class_source(tp: type, add: Callable[[str, str], str]) -> str | None:
    """A class defined at the top level of an importable module (an enum, a nested model), else None."""
    if getattr(tp, "__parameters__", ()):
        return None  # a generic class without its parameters: not strict-typing clean
    module_name, name = getattr(tp, "__module__", None), tp.__name__
    if not isinstance(module_name, str) or module_name in ("builtins", "__main__") or tp.__qualname__ != name:
        return None
    if not _valid_module(module_name) or not _valid_class(name):
        return None
    if getattr(sys.modules.get(module_name), name, None) is not tp:
        return None
    return add(module_name, name)


def _union(members: Sequence[str]) -> str:
    """``A | B | None``: each member once, None last."""
    unique = list(dict.fromkeys(members))
    return " | ".join([m for m in unique if m != "None"] + (["None"] if "None" in unique else []))


def _copy(imports: Imports) -> Imports:
    trial = Imports(set(imports.reserved))
    trial.local = dict(imports.local)
    return trial


def _field_line(f: _StateField, required: bool, imports: Imports, indent: int) -> str:
    """The field's line: its type(s) as written, or Any when they cannot be written (or do not fit)."""
    pad, default = " " * indent, "" if required else " = None"

    def render(table: Imports) -> str | None:
        members: list[str] = []
        for tp in f.types:
            found = _members(tp, table.add)
            if found is None:
                return None
            members += found
        any_name = table.local.get(("typing", "Any"))
        if any_name is not None and any_name in members:
            ann = any_name  # Any absorbs the rest, None included
        else:
            ann = _union(members if required else [*members, "None"])
        text = f"{pad}{f.name}: {ann}{default}"
        return text if len(text) <= LINE_LENGTH else None

    if render(_copy(imports)) is not None:
        line = render(imports)  # the same names: the trial ran on a copy of this table
        assert line is not None
        return line
    return f"{pad}{f.name}: {imports.add('typing', 'Any')}{default}"


def _state_class(dto: SagaOrchestratorInputDTO, imports: Imports) -> list[str]:
    """The state DTO class: fields derived from the definition's events, and a docstring on extending it."""
    from pydantic import BaseModel

    name = dto.state_dto_name
    fixed = {"BaseModel", "ConfigDict", name, dto.state_repository_name}
    fields: dict[str, _StateField] = {}
    inspected: list[str] = []
    missing: list[str] = []
    skipped: list[str] = []
    triggers = 0
    all_triggers_seen = True
    for module, cls, trigger in _state_sources(dto):
        found = _message_fields(module, cls)
        if found is None:
            missing.append(_safe(cls))
            all_triggers_seen = all_triggers_seen and not trigger
            continue
        inspected.append(f"{_safe(cls)} (trigger)" if trigger else _safe(cls))
        triggers += trigger
        for field_name, tp, _ in found:
            if (
                not _valid_class(field_name)
                or field_name.startswith("_")
                or hasattr(BaseModel, field_name)
                or field_name in fixed
            ):
                if _safe(field_name) not in skipped:
                    skipped.append(_safe(field_name))
                continue
            f = fields.setdefault(field_name, _StateField(field_name))
            f.types.append(tp)
            f.triggers += trigger

    imports.reserved |= set(fields)
    body: list[str] = []
    for f in fields.values():
        required = all_triggers_seen and triggers > 0 and f.triggers == triggers
        body.append(_field_line(f, required, imports, 4))

    config = ['extra="allow"']
    if any(f.startswith("model_") for f in fields):
        config.append("protected_namespaces=()")  # pydantic < 2.10 warns on model_ fields otherwise

    # The commands' required fields no event supplies: the default mapping cannot fill them.
    needed: list[str] = []
    for step in dto.steps:
        pairs = [(step.command_module, step.command_name)]
        if step.compensation_command_module and step.compensation_command_name:
            pairs.append((step.compensation_command_module, step.compensation_command_name))
        for module, cls in pairs:
            for field_name, _, required in _message_fields(module, cls) or []:
                label = _safe(f"{cls}.{field_name}")
                if required and field_name not in fields and field_name not in skipped and label not in needed:
                    needed.append(label)

    paragraphs = [
        "A saga starts with the fields of its trigger event; the fields of each success event are "
        "merged in when it arrives, and each command is built from the state fields of the same "
        "name (sagakit's default mapping, which the orchestrator's hooks can change). sagakit "
        "stores this state and validates it against this model on every change.",
    ]
    if inspected:
        paragraphs.append(
            f"The fields below come from {_listing(inspected)}. Those every trigger event carries are "
            "required; the others arrive with a later event and default to None."
        )
    else:
        paragraphs.append(
            "No event of the definition could be imported when this file was generated, so no field "
            "is declared yet: every key of the state is kept as it is. Declare the fields the saga "
            "works with to have them validated, e.g. order_id: str for a field every trigger event "
            "carries and payment_id: str | None = None for one a later event adds."
        )
    if inspected and missing:
        paragraphs.append(
            f"Not inspected (their modules could not be imported): {_listing(missing)}; declare their "
            "fields by hand, with a default of None unless every trigger event carries them."
        )
    if skipped:
        paragraphs.append(f"Kept undeclared (not usable as pydantic field names here): {_listing(skipped)}.")
    if needed:
        paragraphs.append(
            f"No event carries these required command fields: {_listing(needed)}. Build those "
            "commands in the orchestrator's command hooks, or add the fields here with a default."
        )
    paragraphs.append(
        "Extend it like any pydantic model: add a field with a default and set it from an "
        "orchestrator hook, or narrow a type. Keys not declared here are kept as they are "
        '(extra="allow"); declare them to have them validated, or set extra="ignore" to drop them.'
    )
    doc_body = "\n\n".join(textwrap.fill(p, width=LINE_LENGTH - 4, break_long_words=False) for p in paragraphs)
    return [
        f"class {name}(BaseModel):",
        *docstring(4, f"The state of the {_safe(dto.saga_type)} saga.", doc_body),
        "",
        f"    model_config = ConfigDict({', '.join(config)})",
        *([""] if body else []),
        *body,
    ]


def _listing(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c`` (the items are shown as they are: pass them through _safe)."""
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _scaffold_header(origin: str | None) -> list[str]:
    lines = [_SCAFFOLD_HEADER]
    if origin and len(origin) <= 60:
        lines.append(f"# Source: {_safe(origin)}")
    return [
        *lines,
        "# Yours to edit: re-running replaces this file only while it is unedited",
        "# (or with --force).",
    ]


def _render_state_module(
    dto: SagaOrchestratorInputDTO,
    *,
    origin: str | None = None,
    with_repository: bool = False,
) -> str:
    """The source of the state DTO module (holding the repository too when both share a module)."""
    reserved = {"annotations", dto.state_dto_name, dto.state_repository_name, "_STATE"}
    imports = Imports(reserved)
    imports.local[("pydantic", "BaseModel")] = "BaseModel"
    imports.local[("pydantic", "ConfigDict")] = "ConfigDict"
    state = _state_class(dto, imports)
    names = [dto.state_dto_name]
    classes = [*state]
    if with_repository:
        imports.local[("pydantic", "TypeAdapter")] = "TypeAdapter"
        imports.local[("sagakit", "SagaEngine")] = "SagaEngine"
        names.append(dto.state_repository_name)
        classes += ["", "", *_repository_class(dto, dto.state_dto_name)]
    summary = f"The state DTO of the {_safe(dto.saga_type)} saga" + (" and its repository." if with_repository else ".")
    return _scaffold_module(summary, dto, imports, names, classes, origin)


def _render_repository_module(
    dto: SagaOrchestratorInputDTO,
    *,
    origin: str | None = None,
) -> str:
    """The source of the state repository module."""
    imports = Imports({"annotations", dto.state_repository_name, "_STATE"})
    imports.local[("pydantic", "TypeAdapter")] = "TypeAdapter"
    imports.local[("sagakit", "SagaEngine")] = "SagaEngine"
    state = imports.add(dto.state_dto_module, dto.state_dto_name)
    summary = f"The state repository of the {_safe(dto.saga_type)} saga."
    return _scaffold_module(summary, dto, imports, [dto.state_repository_name], _repository_class(dto, state), origin)


def _scaffold_module(
    summary: str,
    dto: SagaOrchestratorInputDTO,
    imports: Imports,
    names: Sequence[str],
    body: Sequence[str],
    origin: str | None,
) -> str:
    out = [
        *_scaffold_header(origin),
        *docstring(0, summary),
        "",
        "from __future__ import annotations",
        "",
        *imports.render(_first_party(dto)),
        "",
        *_all_lines(names),
        "",
        "",
        *body,
    ]
    # Two blank lines: ruff format puts them between a class body and a top-level comment.
    text = "\n".join(out) + "\n\n\n"
    return text + _CHECKSUM + _checksum(text) + "\n"


def _all_lines(names: Sequence[str]) -> list[str]:
    one = f"__all__ = [{', '.join(pystr(n) for n in names)}]"
    if len(one) <= LINE_LENGTH:
        return [one]
    return ["__all__ = [", *(f"    {pystr(n)}," for n in names), "]"]


def _repository_class(dto: SagaOrchestratorInputDTO, state: str) -> list[str]:
    """A small repository over a SagaEngine: sagakit owns the state; this reads it, typed."""
    name = dto.state_repository_name
    saga = _safe(dto.saga_type)
    return [
        f"_STATE = TypeAdapter({state})",
        "",
        "",
        f"class {name}:",
        *docstring(
            4,
            f"The state of {saga} sagas, read from a SagaEngine.",
            textwrap.fill(
                "sagakit stores saga state itself: in the engine's store, in the same transaction as "
                "the step that changed it, validated against the state DTO on every change. So this "
                "repository is optional glue for application code that wants the state as a typed "
                "object; the saga itself never calls it. Add queries here (e.g. with engine.list's "
                "filters) as the application needs them.",
                width=LINE_LENGTH - 4,
            ),
        ),
        "",
        f"    saga_type = {pystr(dto.saga_type)}",
        "",
        "    def __init__(self, engine: SagaEngine) -> None:",
        "        self.engine = engine",
        "",
        f"    async def get(self, saga_id: str) -> {state}:",
        *docstring(
            8,
            "The state of saga *saga_id*.",
            "Raises:\n    SagaNotFound: no such saga.",
        ),
        "        snapshot = await self.engine.get(saga_id)",
        "        return _STATE.validate_python(snapshot.data)",
        "",
        *layout_lines(Call("async def find", ["self", "correlation_id: str"]), 4, suffix=f" -> {state} | None:"),
        *docstring(8, "The state of the saga started for *correlation_id*, or None."),
        *layout_lines(
            Call(
                "await self.engine.list",
                ["name=self.saga_type", "correlation_id=correlation_id", "limit=1"],
            ),
            8,
            prefix="found = ",
        ),
        "        return _STATE.validate_python(found[0].data) if found else None",
        "",
        *layout_lines(
            Call("async def save", ["self", f"state: {state}", "*", "correlation_id: str"]), 4, suffix=" -> str:"
        ),
        *docstring(
            8,
            "Start a saga with *state* as its initial state; return the saga's id.",
            textwrap.fill(
                "A saga's state is saved once, here: from then on its steps change it (through their "
                "events and the orchestrator's hooks). Saving again with the same correlation id "
                "returns the id of the saga it started, which is left as it is.",
                width=LINE_LENGTH - 8,
            ),
        ),
        *layout_lines(
            Call(
                "await self.engine.start",
                [
                    "self.saga_type",
                    '_STATE.dump_python(state, mode="json")',
                    "correlation_id=correlation_id",
                    "idempotency_key=correlation_id",
                ],
            ),
            8,
            prefix="return ",
        ),
    ]
