"""Python source layout for generated modules, the way ruff writes it.

Literals, calls split one argument per line (magic trailing comma), docstrings,
an import table sorted like isort, and the source of accepted correlation
expressions. The point is output that ``ruff check`` and ``ruff format
--check`` accept as it is, at ruff's default line length.
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import ClassVar

from ._correlation import compile_correlation

__all__ = [
    "LINE_LENGTH",
    "Call",
    "Chain",
    "Imports",
    "Layout",
    "correlation_body",
    "def_lines",
    "docstring",
    "flat_text",
    "layout_lines",
    "pystr",
    "string_assignment",
]

LINE_LENGTH = 88


# ---------------------------------------------------------------- layout helpers


def pystr(s: str) -> str:
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
class Call:
    """``head(args)`` (or a tuple when head is ""), laid out flat or one argument per line.

    ``group`` makes a plain parenthesised expression: no trailing comma when split.
    """

    head: str
    args: list[Layout] = field(default_factory=list)
    tuple: bool = False
    group: bool = False


@dataclass
class Chain:
    """Operands joined by ``+``; split before each ``+`` (inside brackets) when too long."""

    parts: list[Layout]


Layout = Call | Chain | str


def flat_text(x: Layout) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, Chain):
        return " + ".join(flat_text(p) for p in x.parts)
    inner = ", ".join(flat_text(a) for a in x.args)
    if x.tuple and len(x.args) == 1:
        inner += ","
    return f"{x.head}({inner})"


def layout_lines(x: Layout, indent: int, prefix: str = "", suffix: str = "") -> list[str]:
    pad = " " * indent
    flat = prefix + flat_text(x) + suffix
    if isinstance(x, str) or indent + len(flat) <= LINE_LENGTH:
        return [pad + flat]
    if isinstance(x, Chain):
        # Only ever laid out inside brackets, where a line may start with "+".
        out: list[str] = []
        last = len(x.parts) - 1
        for i, part in enumerate(x.parts):
            out += layout_lines(part, indent, prefix if i == 0 else "+ ", suffix if i == last else "")
        return out
    if not x.args:
        return [pad + flat]
    # One argument per line with a trailing comma: ruff format keeps this
    # layout (magic trailing comma), so the output is stable under formatting.
    out = [f"{pad}{prefix}{x.head}("]
    for a in x.args:
        out += layout_lines(a, indent + 4, suffix="" if x.group else ",")
    out.append(f"{pad}){suffix}")
    return out


def def_lines(indent: int, name: str, params: list[str], returns: str) -> list[str]:
    return layout_lines(Call(f"def {name}", list(params)), indent, suffix=f" -> {returns}:")


def string_assignment(indent: int, target: str, value: str | None) -> list[str]:
    pad = " " * indent
    if value is None:
        return [f"{pad}{target} = None"]
    one = f"{pad}{target} = {pystr(value)}"
    if len(one) <= LINE_LENGTH:
        return [one]
    width = LINE_LENGTH - indent - 4 - 3
    chunks: list[str] = []
    rest = value
    while rest:
        piece = rest[:width]
        # Prefer to break after a space; never let the escaped literal overflow.
        cut = piece.rfind(" ") + 1 if len(rest) > width and " " in piece[width // 2 :] else len(piece)
        while len(pystr(rest[:cut])) > width + 2 and cut > 1:
            cut -= 1
        chunks.append(rest[:cut])
        rest = rest[cut:]
    return [f"{pad}{target} = (", *(f"{pad}    {pystr(c)}" for c in chunks), f"{pad})"]


def docstring(indent: int, summary: str, body: str = "") -> list[str]:
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


def _section(module: str, first_party: Collection[str]) -> int:
    # From the names alone, never from the file system, sys.path or a linter's
    # settings: the same definition must give the same file wherever it is written.
    top = module.split(".", maxsplit=1)[0]
    if top == "__future__":
        return 0
    if top in sys.stdlib_module_names:
        return 1
    if top in first_party:
        return 3
    return 2


class Imports:
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

    def render(self, first_party: Collection[str]) -> list[str]:
        """The import statements in isort's sections; *first_party* names the project's top-level packages."""
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
            out = sections.setdefault(_section(module, first_party), [])
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
            return repr(node.value) if in_fstring else pystr(node.value)
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
                parts.append(pystr(text)[1:-1] if '"' not in text else text)
            elif isinstance(v, ast.FormattedValue):
                flag = f"!{chr(v.conversion)}" if v.conversion != -1 else ""
                parts.append("{" + _expr_source(v.value, True) + flag + "}")
        return 'f"' + "".join(parts) + '"'
    raise ValueError(f"unexpected node {ast.dump(node)}")


def correlation_body(source: str) -> tuple[str, Layout, bool]:
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


def _expr_layout(node: ast.expr) -> Layout:
    """Calls and ``+`` chains as breakable layout; everything else as its flat source."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return Call(node.func.id, [_expr_layout(a) for a in node.args])
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        parts: list[Layout] = []
        for side in (node.left, node.right):
            inner = _expr_layout(side)
            # "+" is left-associative: only the left operand continues the chain.
            if isinstance(inner, Chain) and side is node.left:
                parts += inner.parts
            elif isinstance(inner, Chain):
                parts.append(Call("", [inner], group=True))
            else:
                parts.append(inner)
        return Chain(parts)
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
