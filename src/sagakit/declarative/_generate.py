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

import ast
import hashlib
import keyword
import os
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .._errors import SagaError
from ._correlation import compile_correlation
from ._loader import (
    InvalidDefinition,
    Source,
    _Resolver,
    build_definition_from,
    extended_sys_path,
    read_definition,
)
from ._models import SagaOrchestratorInputDTO, SagaStepInputDTO, success_events

__all__ = ["GeneratedFileEdited", "generate", "module_path", "render", "snake_case"]

LINE_LENGTH = 88
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


# ---------------------------------------------------------------- layout helpers


def _pystr(s: str) -> str:
    """A string literal the way ruff format writes it (double quotes unless that needs more escapes).

    Non-ASCII characters are written as escapes.
    """
    quote = "'" if s.count('"') > s.count("'") else '"'
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == quote:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable() or not ch.isascii():
            # Non-ASCII is escaped too: linters flag look-alike characters (RUF001).
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return quote + "".join(out) + quote


@dataclass
class _Call:
    """``head(args)`` (or a tuple when head is ""), laid out flat or one argument per line.

    ``group`` makes a plain parenthesised expression: no trailing comma when split.
    """

    head: str
    args: list[_Layout] = field(default_factory=list)
    tuple: bool = False
    group: bool = False


@dataclass
class _Chain:
    """Operands joined by ``+``; split before each ``+`` (inside brackets) when too long."""

    parts: list[_Layout]


_Layout = _Call | _Chain | str


def _flat(x: _Layout) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, _Chain):
        return " + ".join(_flat(p) for p in x.parts)
    inner = ", ".join(_flat(a) for a in x.args)
    if x.tuple and len(x.args) == 1:
        inner += ","
    return f"{x.head}({inner})"


def _lines(x: _Layout, indent: int, prefix: str = "", suffix: str = "") -> list[str]:
    pad = " " * indent
    flat = prefix + _flat(x) + suffix
    if isinstance(x, str) or indent + len(flat) <= LINE_LENGTH:
        return [pad + flat]
    if isinstance(x, _Chain):
        # Only ever laid out inside brackets, where a line may start with "+".
        out: list[str] = []
        last = len(x.parts) - 1
        for i, part in enumerate(x.parts):
            out += _lines(part, indent, prefix if i == 0 else "+ ", suffix if i == last else "")
        return out
    if not x.args:
        return [pad + flat]
    # One argument per line with a trailing comma: ruff format keeps this
    # layout (magic trailing comma), so the output is stable under formatting.
    out = [f"{pad}{prefix}{x.head}("]
    for a in x.args:
        out += _lines(a, indent + 4, suffix="" if x.group else ",")
    out.append(f"{pad}){suffix}")
    return out


def _def(indent: int, name: str, params: list[str], returns: str) -> list[str]:
    return _lines(_Call(f"def {name}", list(params)), indent, suffix=f" -> {returns}:")


def _string_assignment(indent: int, target: str, value: str | None) -> list[str]:
    pad = " " * indent
    if value is None:
        return [f"{pad}{target} = None"]
    one = f"{pad}{target} = {_pystr(value)}"
    if len(one) <= LINE_LENGTH:
        return [one]
    width = LINE_LENGTH - indent - 4 - 3
    chunks: list[str] = []
    rest = value
    while rest:
        piece = rest[:width]
        # Prefer to break after a space; never let the escaped literal overflow.
        cut = piece.rfind(" ") + 1 if len(rest) > width and " " in piece[width // 2 :] else len(piece)
        while len(_pystr(rest[:cut])) > width + 2 and cut > 1:
            cut -= 1
        chunks.append(rest[:cut])
        rest = rest[cut:]
    return [f"{pad}{target} = (", *(f"{pad}    {_pystr(c)}" for c in chunks), f"{pad})"]


def _docstring(indent: int, summary: str, body: str = "") -> list[str]:
    pad = " " * indent
    # Room for both quote triples: ruff format puts the closing quotes of a
    # one-line docstring on that line, however long it gets.
    first = textwrap.wrap(summary, width=LINE_LENGTH - indent - 6, break_long_words=False)
    if not body and len(first) == 1:
        return [f'{pad}"""{summary}"""']
    lines = [f'{pad}"""{first[0]}', *(f"{pad}{line}" for line in first[1:])]
    if body:
        lines.append("")
        lines += [f"{pad}{line}" if line else "" for line in body.splitlines()]
    lines.append(f'{pad}"""')
    return lines


_SAFE_TEXT = re.compile(r"^[A-Za-z0-9_.\- ]*$")


def _safe(text: str) -> str:
    """Text for docstrings and comments: identifiers and file names only, else a placeholder."""
    return text if _SAFE_TEXT.match(text) else "(name not shown)"


# ---------------------------------------------------------------- imports


def _natural(s: str) -> tuple[tuple[int, int], ...]:
    # Character order with digit runs compared as numbers, like ruff's isort.
    key: list[tuple[int, int]] = []
    for run in re.findall(r"\d+|\D", s):
        key.append((ord("0"), int(run)) if run[0].isdigit() else (ord(run), 0))
    return tuple(key)


def _module_key(module: str) -> tuple[object, ...]:
    return (_natural(module.lower()), _natural(module))


def _member_key(name: str) -> tuple[object, ...]:
    kind = 0 if len(name) > 1 and name.isupper() else 1 if name[:1].isupper() else 2
    return (kind, _natural(name.lower()), _natural(name))


def _section(module: str, root: Path) -> int:
    top = module.split(".", maxsplit=1)[0]
    if top == "__future__":
        return 0
    if top in sys.stdlib_module_names:
        return 1
    for base in (root, root / "src"):
        if (base / top).is_dir() or (base / f"{top}.py").is_file():
            return 3
    return 2


class _Imports:
    """The generated module's imports; gives each (module, name) a unique local name."""

    def __init__(self, reserved: set[str]) -> None:
        self.reserved = reserved
        self.local: dict[tuple[str, str], str] = {}

    def add(self, module: str, name: str) -> str:
        key = (module, name)
        if key in self.local:
            return self.local[key]
        taken = self.reserved | set(self.local.values())
        local = name
        n = 2
        while local in taken:
            local = f"{name}{n}"
            n += 1
        self.local[key] = local
        return local

    def render(self, root: Path) -> list[str]:
        by_module: dict[str, list[tuple[str, str]]] = {}
        for (module, name), local in self.local.items():
            by_module.setdefault(module, []).append((name, local))
        sections: dict[int, list[str]] = {}
        for module in sorted(by_module, key=_module_key):
            members = by_module[module]
            plain = sorted((n for n, local in members if n == local), key=_member_key)
            aliased = sorted(((n, a) for n, a in members if n != a), key=lambda p: (_member_key(p[0]), p[1]))
            # Like isort: one statement for the plain names, one per alias,
            # ordered by their first name (plain before alias on a tie).
            statements: list[tuple[tuple[object, ...], list[str]]] = []
            if plain:
                statements.append(((_member_key(plain[0]), ""), plain))
            statements += [((_member_key(n), a), [f"{n} as {a}"]) for n, a in aliased]
            out = sections.setdefault(_section(module, root), [])
            for _, names in sorted(statements, key=lambda st: st[0]):
                out += _import_lines(module, names)
        lines: list[str] = []
        for key in sorted(sections):
            if lines:
                lines.append("")
            lines += sections[key]
        return lines


def _import_lines(module: str, names: list[str]) -> list[str]:
    one = f"from {module} import {', '.join(names)}"
    if len(one) <= LINE_LENGTH:
        return [one]
    head = f"from {module} import ("
    if len(head) > LINE_LENGTH:
        # A module path longer than a line cannot be wrapped; say so to the linter.
        head += "  # noqa: E501"
    return [head, *(f"    {n}," for n in names), ")"]


# ---------------------------------------------------------------- correlation source


def _expr_source(node: ast.expr, in_fstring: bool = False) -> str:
    """Source of an accepted correlation expression, quoted the way ruff format quotes."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_expr_source(node.value, in_fstring)}.{node.attr}"
    if isinstance(node, ast.Subscript):
        return f"{_expr_source(node.value, in_fstring)}[{_expr_source(node.slice, in_fstring)}]"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return f"-{_expr_source(node.operand, in_fstring)}"
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            return repr(node.value) if in_fstring else _pystr(node.value)
        return repr(node.value)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return f"{node.func.id}({', '.join(_expr_source(a, in_fstring) for a in node.args)})"
    if isinstance(node, ast.BinOp):
        return f"{_expr_source(node.left, in_fstring)} + {_expr_source(node.right, in_fstring)}"
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                text = str(v.value).replace("{", "{{").replace("}", "}}")
                parts.append(_pystr(text)[1:-1] if '"' not in text else text)
            elif isinstance(v, ast.FormattedValue):
                flag = f"!{chr(v.conversion)}" if v.conversion != -1 else ""
                parts.append("{" + _expr_source(v.value, True) + flag + "}")
        return 'f"' + "".join(parts) + '"'
    raise ValueError(f"unexpected node {ast.dump(node)}")


def _correlation_body(source: str) -> tuple[str, _Layout, bool]:
    """(parameter, body layout, body is certainly a str) of an accepted correlation lambda."""
    fn = compile_correlation(source)
    lam = ast.parse(source.strip(), mode="eval").body
    assert isinstance(lam, ast.Lambda)
    tree = _Tidy().visit(lam.body)
    try:
        body = _expr_source(tree)
        same = ast.dump(ast.parse(body, mode="eval").body) == ast.dump(tree)
    except (ValueError, SyntaxError):
        same = False
    layout = _expr_layout(tree) if same else ast.unparse(tree)
    return fn.parameter, layout, fn.returns_str


def _expr_layout(node: ast.expr) -> _Layout:
    """Calls and ``+`` chains as breakable layout; everything else as its flat source."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return _Call(node.func.id, [_expr_layout(a) for a in node.args])
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        parts: list[_Layout] = []
        for side in (node.left, node.right):
            inner = _expr_layout(side)
            # "+" is left-associative: only the left operand continues the chain.
            if isinstance(inner, _Chain) and side is node.left:
                parts += inner.parts
            elif isinstance(inner, _Chain):
                parts.append(_Call("", [inner], group=True))
            else:
                parts.append(inner)
        return _Chain(parts)
    return _expr_source(node)


class _Tidy(ast.NodeTransformer):
    """Rewrite an accepted correlation body into the equivalent form linters ask for.

    ``f"{str(x)}"`` -> ``f"{x!s}"`` (RUF010), ``int(int(x))`` -> ``int(x)``
    (RUF046) and ``str("a")`` -> ``"a"`` (UP018): the same value every time.
    """

    _TYPES: ClassVar[dict[str, type]] = {"str": str, "int": int, "float": float}

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        name = _conversion(node)
        if name is None:
            return node
        arg = node.args[0]
        if _conversion(arg) == name:
            return arg
        if isinstance(arg, ast.Constant) and type(arg.value) is self._TYPES[name]:
            return arg
        return node

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        self.generic_visit(node)
        if node.conversion == -1 and node.format_spec is None and _conversion(node.value) == "str":
            assert isinstance(node.value, ast.Call)
            return ast.FormattedValue(value=node.value.args[0], conversion=ord("s"), format_spec=None)
        return node


def _conversion(node: ast.AST) -> str | None:
    """ "str", "int" or "float" for a one-argument call of that builtin, else None."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("str", "int", "float")
        and len(node.args) == 1
        and not node.keywords
    ):
        return node.func.id
    return None


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
    imports = _Imports(reserved)
    resolver = _Resolver()

    state = imports.add(dto.state_dto_module, dto.state_dto_name)
    repository = imports.add(dto.state_repository_module, dto.state_repository_name)

    hooks = _Hooks(used={"saga_type", "state_dto", "state_repository", "description", "build_definition"})
    builder: list[str] = []
    indent = 8
    builder += _lines(
        _Call("SagaBuilder", [_pystr(dto.saga_type), "version=version", "description=cls.description"]),
        indent,
        prefix="b = ",
    )
    builder.append(f"{' ' * indent}b.state(cls.state_dto)")

    for t in dto.triggering_events:
        event = imports.add(t.event_module, t.event_name)
        param, expr, is_str = _correlation_body(t.correlation_id_provider_str)
        hook = hooks.name(_ident(f"correlate_{snake_case(t.event_name)}", "correlate"))
        ret: _Layout = _Call("to_correlation_id", [expr]) if not is_str else expr
        if isinstance(ret, _Chain) and 15 + len(_flat(ret)) > LINE_LENGTH:
            ret = _Call("", [ret], group=True)  # split inside parentheses
        hooks.lines += [
            "",
            "    @staticmethod",
            *_def(4, hook, [f"{param}: {event}"], "str"),
            *_docstring(8, f"Correlation id of {event} (the definition's lambda)."),
            *_lines(ret, 8, prefix="return "),
        ]
        builder += _lines(_Call("b.trigger", [event, f"correlation=cls.{hook}"]), indent)

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

    extras = _Call(
        "b.extras.update",
        [
            f"orchestrator={_pystr(dto.name)}",
            "description=cls.description",
            "state_repository=cls.state_repository",
            "imports=" + _flat(_imports_tuple(dto)),
            "compensating_transactions="
            + _flat(_Call("", [_pystr(s.step_name) for s in dto.steps if s.is_compensating_transaction], tuple=True)),
        ],
    )
    # Keyword values are laid out flat inside; split the call itself one per line.
    extras_lines = _lines(extras, indent)
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
        *_docstring(
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
    if any(not _correlation_body(t.correlation_id_provider_str)[2] for t in dto.triggering_events):
        imports.local[("sagakit.declarative", "to_correlation_id")] = "to_correlation_id"
    out += imports.render(Path(root))
    out += [
        "",
        f'__all__ = ["{dto.name}", "definition"]',
        "",
        "",
        f"class {dto.name}:",
        *_docstring(
            4,
            f"The {_safe(dto.saga_type)} saga: its state, triggers, steps and hooks.",
            "Edit the hooks to customise how commands are built from the saga state and how\n"
            "events change it; ``build_definition`` wires them into the saga.",
        ),
        "",
        f"    saga_type = {_pystr(dto.saga_type)}",
        f"    state_dto = {state}",
        f"    state_repository = {repository}",
        *_string_assignment(4, "description: str | None", dto.description),
    ]
    if custom:
        out += [
            "    # The definition's custom imports, at hand for the hooks.",
            *_lines(_Call("", list(custom), tuple=True), 4, prefix="custom_imports = "),
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


def _imports_tuple(dto: SagaOrchestratorInputDTO) -> _Call:
    return _Call(
        "",
        [
            _Call("", [_pystr(imp.module), _Call("", [_pystr(n) for n in imp.names], tuple=True)], tuple=True)
            for imp in dto.imports
        ],
        tuple=True,
    )


def _extras_exploded(dto: SagaOrchestratorInputDTO, indent: int) -> list[str]:
    pad = " " * (indent + 4)
    comp = _Call("", [_pystr(s.step_name) for s in dto.steps if s.is_compensating_transaction], tuple=True)
    lines = [
        f"{' ' * indent}b.extras.update(",
        f"{pad}orchestrator={_pystr(dto.name)},",
        f"{pad}description=cls.description,",
        f"{pad}state_repository=cls.state_repository,",
    ]
    lines += _lines(_imports_tuple(dto), indent + 4, prefix="imports=", suffix=",")
    lines += _lines(comp, indent + 4, prefix="compensating_transactions=", suffix=",")
    lines.append(f"{' ' * indent})")
    return lines


def _step(
    step: SagaStepInputDTO,
    dto: SagaOrchestratorInputDTO,
    imports: _Imports,
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
    args: list[_Layout] = [command, _list_arg("success", success)]
    if failure is not None:
        args.append(f"failure={failure}")
    args += [f"to_command=cls.{make}", f"merge=cls.{merge}"]
    step_args: list[_Layout] = [_pystr(step.step_name), _Call("action=send", args)]

    if step.compensation_command_name is not None and step.compensation_command_module is not None:
        comp = imports.add(step.compensation_command_module, step.compensation_command_name)
        comp_args: list[_Layout] = [comp]
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
        step_args.append(_Call("compensation=send", comp_args))
    return _lines(_Call("b.step", step_args), 8, suffix="")


def _list_arg(name: str, items: list[str]) -> str:
    return f"{name}=[{', '.join(items)}]"


def _command_hook(name: str, step_name: str, command: str, what: str) -> list[str]:
    return [
        "",
        "    @staticmethod",
        *_def(4, name, ["state: Mapping[str, Any]"], command),
        *_docstring(8, f"The {what} of step {_safe(step_name)}, built from the saga state."),
        *_lines(_Call("default_command", [command, "state"]), 8, prefix="return "),
    ]


def _merge_hook(name: str, step_name: str, events: list[str], what: str) -> list[str]:
    return [
        "",
        "    @staticmethod",
        *_def(4, name, ["state: Mapping[str, Any]", f"event: {' | '.join(events)}"], "Mapping[str, Any]"),
        *_docstring(8, f"The saga state after a {what} of step {_safe(step_name)}."),
        *_lines(_Call("merge_event", ["state", "event"]), 8, prefix="return "),
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
