"""A safe compiler for ``correlation_id_provider_str``: a tiny interpreter, never ``eval``.

The text is parsed with ``ast`` (parsing only; nothing is compiled to
bytecode or run) and accepted only if it is a one-argument lambda whose body
uses nothing but:

- the lambda's argument, e.g. ``event``;
- attribute access, ``event.order_id`` (no name starting with ``_``);
- subscripts with a constant key, ``event.items[0]``, ``event.meta["id"]``;
- constants (strings and numbers);
- calls of ``str``, ``int`` and ``float`` with one positional argument;
- f-strings without conversions (``!r``) or format specs (``:>10``);
- ``+`` joining strings.

The accepted tree is turned into nested Python closures, one per node, so the
only code that ever runs is this module's. Every rejection is a
``DefinitionError`` naming the field path, the construct and why.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

from .._errors import DefinitionError
from .._messages import CorrelationError, to_correlation_id

__all__ = ["MAX_DEPTH", "MAX_LENGTH", "CorrelationFunction", "compile_correlation"]

MAX_LENGTH = 1000
MAX_DEPTH = 32
_CALLS: dict[str, Callable[[Any], Any]] = {"str": str, "int": int, "float": float}
_EXAMPLE = "lambda event: str(event.order_id)"

_Eval = Callable[[Any], Any]

_FRIENDLY = {
    "Lambda": "a nested lambda",
    "ListComp": "a list comprehension",
    "SetComp": "a set comprehension",
    "DictComp": "a dict comprehension",
    "GeneratorExp": "a generator expression",
    "NamedExpr": "the walrus operator (:=)",
    "Starred": "a starred expression (*x)",
    "IfExp": "a conditional expression (x if c else y)",
    "BoolOp": "a boolean operator (and/or)",
    "Compare": "a comparison",
    "UnaryOp": "a unary operator",
    "Await": "await",
    "Yield": "yield",
    "YieldFrom": "yield from",
    "Dict": "a dict display",
    "List": "a list display",
    "Tuple": "a tuple",
    "Set": "a set display",
    "Slice": "a slice",
}


class CorrelationFunction:
    """A compiled correlation extractor: ``fn(event) -> correlation id``.

    Attributes:
        source: the text it was compiled from.
        parameter: the lambda's argument name.
        expression: the lambda's body, normalised (``ast.unparse`` of the accepted tree).
        returns_str: True when the body is certainly a string (``str(...)``,
            an f-string, a string constant or a ``+`` of those).
    """

    __slots__ = ("_fn", "expression", "parameter", "returns_str", "source")

    def __init__(self, source: str, parameter: str, expression: str, returns_str: bool, fn: _Eval):
        self.source = source
        self.parameter = parameter
        self.expression = expression
        self.returns_str = returns_str
        self._fn = fn

    def __call__(self, event: Any) -> str:
        """The correlation id of *event*.

        Raises:
            CorrelationError: the expression failed on this event (a missing
                attribute or key, a bad conversion) or produced None or "".
        """
        try:
            value = self._fn(event)
        except CorrelationError:
            raise
        except Exception as e:
            raise CorrelationError(
                f"correlation {self.source!r} failed on {type(event).__qualname__}: {type(e).__name__}: {e}"
            ) from e
        return to_correlation_id(value, source=self.source)

    def __repr__(self) -> str:
        return f"CorrelationFunction({self.source!r})"


def compile_correlation(source: object, *, field: str = "correlation_id_provider_str") -> CorrelationFunction:
    """Compile *source* (e.g. ``"lambda event: str(event.order_id)"``) into a correlation function.

    Args:
        source: the lambda text.
        field: the field path to name in errors, e.g. ``triggering_events[0].correlation_id_provider_str``.

    Raises:
        DefinitionError: the text is not an accepted lambda; the message names
            *field*, the offending construct and why. Nothing of the text runs.
    """
    if not isinstance(source, str):
        raise DefinitionError(f"{field}: expected a string like {_EXAMPLE!r}, got {source!r}")
    shown = _shorten(source)
    if len(source) > MAX_LENGTH:
        raise DefinitionError(
            f"{field}: {len(source):,} characters long; the limit is {MAX_LENGTH:,} "
            f"(a correlation extractor is one short lambda, e.g. {_EXAMPLE!r})"
        )
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        reason = e.msg if isinstance(e, SyntaxError) else (str(e) or type(e).__name__)
        raise DefinitionError(
            f"{field}: {shown} is not a Python expression ({reason}); write a lambda like {_EXAMPLE!r}"
        ) from None
    return _Compiler(field, source).lambda_(tree.body)


def _shorten(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


class _Compiler:
    def __init__(self, field: str, source: str) -> None:
        self.field = field
        self.source = source
        self.param = ""

    def reject(self, node: ast.AST | None, construct: str, why: str) -> DefinitionError:
        at = ""
        if node is not None and hasattr(node, "col_offset"):
            at = f" at column {node.col_offset + 1}"
        return DefinitionError(f"{self.field}: {construct}{at} is not allowed: {why} (in {_shorten(self.source)})")

    def lambda_(self, node: ast.expr) -> CorrelationFunction:
        if not isinstance(node, ast.Lambda):
            raise self.reject(
                node,
                _describe(node),
                f"the provider must be a one-argument lambda, e.g. {_EXAMPLE!r}",
            )
        a = node.args
        if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs or a.defaults or a.kw_defaults:
            raise self.reject(
                node,
                "a lambda with *args, **kwargs, keyword-only arguments or defaults",
                "it is called with one argument, the event",
            )
        if len(a.args) != 1:
            raise self.reject(
                node,
                f"a lambda with {len(a.args)} arguments",
                "it is called with one argument, the event: write 'lambda event: ...'",
            )
        self.param = a.args[0].arg
        if self.param in _CALLS:
            raise self.reject(
                node,
                f"the argument name {self.param!r}",
                f"it hides the builtin {self.param}(); call the argument 'event'",
            )
        fn = self.expr(node.body, 1)
        return CorrelationFunction(self.source, self.param, ast.unparse(node.body), _is_str(node.body), fn)

    def expr(self, node: ast.expr, depth: int) -> _Eval:
        if depth > MAX_DEPTH:
            raise self.reject(node, "an expression", f"it is nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.Attribute):
            return self.attribute(node, depth)
        if isinstance(node, ast.Subscript):
            return self.subscript(node, depth)
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        if isinstance(node, ast.JoinedStr):
            return self.fstring(node, depth)
        if isinstance(node, ast.BinOp):
            return self.binop(node, depth)
        raise self.reject(
            node,
            _describe(node),
            "only the argument, attribute access, constant subscripts, constants, "
            "str()/int()/float(), f-strings and + on strings are accepted",
        )

    def name(self, node: ast.Name) -> _Eval:
        if node.id == self.param:
            return _identity
        if node.id in _CALLS:
            raise self.reject(node, f"the name {node.id!r}", f"{node.id} may only be called: {node.id}(...)")
        raise self.reject(
            node,
            f"the name {node.id!r}",
            f"only the lambda's argument {self.param!r} and calls of str, int and float may be used",
        )

    def attribute(self, node: ast.Attribute, depth: int) -> _Eval:
        attr = node.attr
        if attr.startswith("_"):
            raise self.reject(
                node,
                f"the attribute {attr!r}",
                "names starting with '_' (private and special attributes) are off limits",
            )
        inner = self.expr(node.value, depth + 1)

        def get_attribute(event: Any) -> Any:
            return getattr(inner(event), attr)

        return get_attribute

    def subscript(self, node: ast.Subscript, depth: int) -> _Eval:
        key = self.constant_key(node.slice)
        inner = self.expr(node.value, depth + 1)

        def get_item(event: Any) -> Any:
            return inner(event)[key]

        return get_item

    def constant_key(self, node: ast.expr) -> str | int:
        if isinstance(node, ast.Constant) and isinstance(node.value, str | int) and type(node.value) is not bool:
            return node.value
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
            and type(node.operand.value) is int
        ):
            return -node.operand.value
        raise self.reject(
            node,
            f"the subscript key {_describe(node)}",
            "a key must be a string or integer constant, e.g. event.meta['id'] or event.items[0]",
        )

    def constant(self, node: ast.Constant) -> _Eval:
        value = node.value
        if type(value) not in (str, int, float):
            raise self.reject(
                node,
                f"the constant {value!r}",
                "only string and number constants are accepted",
            )

        def const(event: Any) -> Any:
            return value

        return const

    def call(self, node: ast.Call, depth: int) -> _Eval:
        func = node.func
        allowed = "only str(), int() and float() may be called"
        if isinstance(func, ast.Attribute):
            raise self.reject(node, f"calling the method {func.attr!r}", allowed)
        if not isinstance(func, ast.Name):
            raise self.reject(node, f"calling {_describe(func)}", allowed)
        if func.id not in _CALLS or func.id == self.param:
            raise self.reject(node, f"calling {func.id!r}", allowed)
        if node.keywords:
            raise self.reject(node, f"keyword arguments to {func.id}()", f"{allowed}, with one argument")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise self.reject(node, f"a starred argument to {func.id}()", f"{allowed}, with one argument")
        if len(node.args) != 1:
            raise self.reject(node, f"{func.id}() with {len(node.args)} arguments", f"{allowed}, with one argument")
        convert = _CALLS[func.id]
        inner = self.expr(node.args[0], depth + 1)

        def call(event: Any) -> Any:
            return convert(inner(event))

        return call

    def fstring(self, node: ast.JoinedStr, depth: int) -> _Eval:
        parts: list[_Eval] = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(self.constant(value))
                continue
            if not isinstance(value, ast.FormattedValue):
                raise self.reject(value, _describe(value), "unexpected in an f-string")
            if value.conversion != -1:
                raise self.reject(
                    value,
                    f"the f-string conversion !{chr(value.conversion)}",
                    "write {x} or call str(x) instead",
                )
            if value.format_spec is not None:
                raise self.reject(value, "an f-string format spec", "write plain {x} placeholders")
            inner = self.expr(value.value, depth + 1)

            def placeholder(event: Any, inner: _Eval = inner) -> str:
                return format(inner(event), "")

            parts.append(placeholder)

        def join(event: Any) -> str:
            return "".join(p(event) for p in parts)

        return join

    def binop(self, node: ast.BinOp, depth: int) -> _Eval:
        if not isinstance(node.op, ast.Add):
            raise self.reject(
                node,
                f"the operator {_OPERATORS.get(type(node.op).__name__, type(node.op).__name__)!r}",
                "only + (joining strings) is accepted",
            )
        left = self.expr(node.left, depth + 1)
        right = self.expr(node.right, depth + 1)
        source = self.source

        def concat(event: Any) -> str:
            a, b = left(event), right(event)
            if not (isinstance(a, str) and isinstance(b, str)):
                raise CorrelationError(
                    f"correlation {source!r}: + joins strings only, got "
                    f"{type(a).__name__} + {type(b).__name__}; wrap numbers in str()"
                )
            return a + b

        return concat


_OPERATORS = {
    "Sub": "-",
    "Mult": "*",
    "Div": "/",
    "FloorDiv": "//",
    "Mod": "%",
    "Pow": "**",
    "LShift": "<<",
    "RShift": ">>",
    "BitOr": "|",
    "BitXor": "^",
    "BitAnd": "&",
    "MatMult": "@",
}


def _identity(event: Any) -> Any:
    return event


def _describe(node: ast.AST) -> str:
    kind = type(node).__name__
    article = "an" if kind[0] in "AEIOU" else "a"
    return _FRIENDLY.get(kind, f"{article} {kind} expression")


def _is_str(node: ast.expr) -> bool:
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id == "str"
    if isinstance(node, ast.BinOp):
        return _is_str(node.left) and _is_str(node.right)
    return False
