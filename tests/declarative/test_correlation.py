"""The correlation compiler: what it accepts, how it evaluates, and what it refuses without running it."""

from __future__ import annotations

import ast
import builtins
import contextlib
import os
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from sagakit import DefinitionError
from sagakit._messages import CorrelationError
from sagakit.declarative import CorrelationFunction, compile_correlation
from sagakit.declarative._correlation import MAX_DEPTH, MAX_LENGTH


class Recorder:
    """An event whose every attribute/item access and conversion is recorded."""

    def __init__(self, log: list[str], path: str = "event") -> None:
        self._log = log
        self._path = path

    def __getattr__(self, name: str) -> Recorder:
        self._log.append(f"{self._path}.{name}")
        return Recorder(self._log, f"{self._path}.{name}")

    def __getitem__(self, key: object) -> Recorder:
        self._log.append(f"{self._path}[{key!r}]")
        return Recorder(self._log, f"{self._path}[{key!r}]")

    def __call__(self, *a: object, **k: object) -> Recorder:
        self._log.append(f"{self._path}()")
        return self

    def __str__(self) -> str:
        self._log.append(f"str({self._path})")
        return self._path

    def __format__(self, spec: str) -> str:
        return str(self)


EVENT = SimpleNamespace(
    order_id="o-1",
    number=42,
    amount=9.5,
    customer=SimpleNamespace(id="c-7", region="eu"),
    meta={"id": "m-1", "tags": ["a", "b"], 3: "three"},
    items=["first", "second", "last"],
    text="12",
    none=None,
    empty="",
)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("lambda event: str(event.order_id)", "o-1"),
        ("lambda event: event.order_id", "o-1"),
        ("lambda e: e.customer.id", "c-7"),
        ("lambda e: e.meta['id']", "m-1"),
        ('lambda e: e.meta["tags"][1]', "b"),
        ("lambda e: e.meta[3]", "three"),
        ("lambda e: e.items[-1]", "last"),
        ("lambda e: e.items[0]", "first"),
        ("lambda e: e.number", "42"),
        ("lambda e: str(e.number)", "42"),
        ("lambda e: int(e.text)", "12"),
        ("lambda e: float(e.text)", "12.0"),
        ("lambda e: str(int(e.amount))", "9"),
        ("lambda e: f'{e.customer.region}-{e.order_id}'", "eu-o-1"),
        ("lambda e: f\"order:{e.meta['id']}\"", "order:m-1"),
        ("lambda e: f'{e.number}'", "42"),
        ("lambda e: e.customer.region + ':' + e.order_id", "eu:o-1"),
        ("lambda e: 'fixed'", "fixed"),
        ("lambda e: str(e.number) + '/' + str(e.amount)", "42/9.5"),
        ("  lambda event: str(event.order_id)  ", "o-1"),
        ("lambda e: (e.order_id)", "o-1"),
    ],
)
def test_accepted_lambdas_evaluate(source: str, expected: str) -> None:
    fn = compile_correlation(source)
    assert isinstance(fn, CorrelationFunction)
    assert fn(EVENT) == expected
    assert fn.source == source
    assert repr(fn) == f"CorrelationFunction({source!r})"


def test_compiled_function_metadata() -> None:
    fn = compile_correlation("lambda event: str(event.order_id)")
    assert fn.parameter == "event"
    assert fn.expression == "str(event.order_id)"
    assert fn.returns_str
    assert not compile_correlation("lambda e: e.order_id").returns_str
    assert compile_correlation("lambda e: f'{e.a}'").returns_str
    assert compile_correlation("lambda e: 'a' + str(e.b)").returns_str
    assert not compile_correlation("lambda e: 'a' + e.b").returns_str


def test_only_the_named_attributes_are_touched() -> None:
    log: list[str] = []
    fn = compile_correlation("lambda event: f'{event.customer.id}-{event.meta[\"k\"]}'")
    fn(Recorder(log))
    assert log == [
        "event.customer",
        "event.customer.id",
        "str(event.customer.id)",
        "event.meta",
        "event.meta['k']",
        "str(event.meta['k'])",
    ]


@pytest.mark.parametrize(
    ("source", "event", "expected"),
    [
        ("lambda e: e.missing", SimpleNamespace(), "failed on SimpleNamespace: AttributeError"),
        ("lambda e: e.meta['nope']", EVENT, "KeyError: 'nope'"),
        ("lambda e: e.items[10]", EVENT, "IndexError"),
        ("lambda e: int(e.order_id)", EVENT, "ValueError: invalid literal"),
        ("lambda e: e.none", EVENT, "returned None: a correlation id must be a non-empty value"),
        ("lambda e: e.empty", EVENT, "returned '': a correlation id must be a non-empty value"),
        ("lambda e: e.number + 'x'", EVENT, "+ joins strings only, got int + str; wrap numbers in str()"),
    ],
)
def test_runtime_failures_are_correlation_errors(source: str, event: Any, expected: str) -> None:
    fn = compile_correlation(source)
    with pytest.raises(CorrelationError) as e:
        fn(event)
    assert expected in str(e.value)
    assert source in str(e.value)


FIELD = "triggering_events[0].correlation_id_provider_str"

MALICIOUS = [
    # imports and builtins that reach the interpreter
    ("__import__('os').system('touch /tmp/sagakit-pwned')", "must be a one-argument lambda"),
    ("lambda e: __import__('os').system('id')", "calling the method 'system'"),
    ("lambda e: __import__('decl_fixtures.side_effects')", "calling '__import__'"),
    ("lambda e: __builtins__", "the name '__builtins__'"),
    ("lambda e: open('/etc/passwd').read()", "calling the method 'read'"),
    ("lambda e: open('/etc/passwd')", "calling 'open'"),
    ("lambda e: eval('1')", "calling 'eval'"),
    ("lambda e: exec('x = 1')", "calling 'exec'"),
    ("lambda e: compile('1', 'f', 'eval')", "calling 'compile'"),
    ("lambda e: getattr(e, '__class__')", "calling 'getattr'"),
    ("lambda e: globals()", "calling 'globals'"),
    ("lambda e: vars(e)", "calling 'vars'"),
    ("lambda e: type(e)", "calling 'type'"),
    ("lambda e: len(e.items)", "calling 'len'"),
    ("lambda e: e.order_id.upper()", "calling the method 'upper'"),
    ("lambda e: e.save()", "calling the method 'save'"),
    ("lambda e: e()", "calling 'e'"),
    ("lambda e: str(e)(1)", "calling a Call expression"),
    ("lambda e: str(e, 'utf-8')", "str() with 2 arguments"),
    ("lambda e: str()", "str() with 0 arguments"),
    ("lambda e: str(object=e)", "keyword arguments to str()"),
    ("lambda e: str(*e.items)", "a starred argument to str()"),
    ("lambda e: str", "str may only be called"),
    ("lambda str: str(str.order_id)", "the argument name 'str'"),
    # dunder and private attributes
    ("lambda e: e.__class__", "the attribute '__class__'"),
    ("lambda e: e.__class__.__mro__[1].__subclasses__()", "calling the method '__subclasses__'"),
    ("lambda e: str(e.__dict__)", "the attribute '__dict__'"),
    ("lambda e: e._private", "the attribute '_private'"),
    ("lambda e: e.__globals__", "the attribute '__globals__'"),
    ("lambda e: f'{e.__init__.__globals__}'", "the attribute '__globals__'"),
    # other names
    ("lambda e: other.order_id", "the name 'other'"),
    ("lambda e: os.system", "the name 'os'"),
    # comprehensions, walrus, lambdas, starred and friends
    ("lambda e: [x for x in e.items]", "a list comprehension"),
    ("lambda e: {x for x in e.items}", "a set comprehension"),
    ("lambda e: {k: v for k, v in e.meta}", "a dict comprehension"),
    ("lambda e: str(x for x in e.items)", "a generator expression"),
    ("lambda e: (y := e.order_id)", "the walrus operator (:=)"),
    ("lambda e: [*e.items]", "a list display"),
    ("lambda e: (e.a, e.b)", "a tuple"),
    ("lambda e: {'a': e.a}", "a dict display"),
    ("lambda e: e.a if e.b else e.c", "a conditional expression"),
    ("lambda e: e.a or e.b", "a boolean operator"),
    ("lambda e: e.a == 1", "a comparison"),
    ("lambda e: not e.a", "a unary operator"),
    ("lambda e: e.items[0:2]", "the subscript key a slice"),
    ("lambda e: e.meta[e.key]", "the subscript key an Attribute expression"),
    ("lambda e: e.number * 1000000", "the operator '*'"),
    ("lambda e: e.number ** 99999999", "the operator '**'"),
    ("lambda e: e.a - e.b", "the operator '-'"),
    ("lambda e: e.a % e.b", "the operator '%'"),
    ("lambda e: b'bytes'", "the constant b'bytes'"),
    ("lambda e: None", "the constant None"),
    ("lambda e: True", "the constant True"),
    ("lambda e: ...", "the constant Ellipsis"),
    ("lambda e: f'{e.a!r}'", "the f-string conversion !r"),
    ("lambda e: f'{e.a!s}'", "the f-string conversion !s"),
    ("lambda e: f'{e.a:>10}'", "an f-string format spec"),
    ("lambda e: f'{e.a:{e.b}}'", "an f-string format spec"),
    ("lambda e: await e.a", "await"),
    # lambda shapes
    ("lambda: 'x'", "a lambda with 0 arguments"),
    ("lambda a, b: a.x", "a lambda with 2 arguments"),
    ("lambda *a: a", "a lambda with *args"),
    ("lambda **k: k", "a lambda with *args, **kwargs"),
    ("lambda e=1: e", "or defaults"),
    ("lambda e, /: e.a", "a lambda with *args, **kwargs, keyword-only arguments or defaults"),
    ("lambda *, e: e.a", "keyword-only arguments"),
    ("lambda e: lambda f: f.a", "a nested lambda"),
    ("lambda e: (lambda f: f.a)(e)", "calling a nested lambda"),
    # not lambdas at all
    ("str(event.order_id)", "must be a one-argument lambda"),
    ("event.order_id", "must be a one-argument lambda"),
    ("import os", "is not a Python expression"),
    ("lambda e: e.a; import os", "is not a Python expression"),
    ("lambda e: e.a\nimport os", "is not a Python expression"),
    ("def f(e): return e", "is not a Python expression"),
    ("", "is not a Python expression"),
    ("lambda e: e.\x00a", "is not a Python expression"),
    ("lambda e: (", "is not a Python expression"),
]


class Tripwires:
    """While armed: record any use of the builtins that would run text, and any bytecode compilation."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        real_compile = builtins.compile
        real_import = builtins.__import__
        saved = {n: getattr(builtins, n) for n in ("eval", "exec", "open", "getattr", "globals", "vars")}

        def watch(name: str) -> Any:
            def tripped(*a: object, **k: object) -> None:
                self.calls.append(name)
                raise AssertionError(f"{name} was called")

            return tripped

        def compile_ast_only(source: Any, filename: Any, mode: Any, flags: int = 0, *a: Any, **k: Any) -> Any:
            if not flags & ast.PyCF_ONLY_AST:
                self.calls.append("compile to bytecode")
            return real_compile(source, filename, mode, flags, *a, **k)

        def no_new_imports(name: str, *a: Any, **k: Any) -> Any:
            if name not in sys.modules:
                self.calls.append(f"import {name}")
            return real_import(name, *a, **k)

        try:
            for name in saved:
                setattr(builtins, name, watch(name))
            builtins.compile = compile_ast_only
            builtins.__import__ = no_new_imports
            yield
        finally:
            for name, fn in saved.items():
                setattr(builtins, name, fn)
            builtins.compile = real_compile
            builtins.__import__ = real_import


@pytest.mark.parametrize(("source", "expected"), MALICIOUS)
def test_malicious_text_is_rejected_without_running_anything(source: str, expected: str) -> None:
    trip = Tripwires()
    with trip.armed(), pytest.raises(DefinitionError) as e:
        compile_correlation(source, field=FIELD)
    assert trip.calls == []
    message = str(e.value)
    assert message.startswith(f"{FIELD}: ")
    assert expected in message
    assert not getattr(builtins, "SAGAKIT_SIDE_EFFECT", False)
    assert "decl_fixtures.side_effects" not in sys.modules
    assert not os.path.exists("/tmp/sagakit-pwned")


def test_the_tripwires_work() -> None:
    trip = Tripwires()
    with trip.armed(), pytest.raises(AssertionError):
        eval("1")
    with trip.armed():
        compile("1", "<test>", "eval")
    assert trip.calls == ["eval", "compile to bytecode"]


def test_a_recording_event_is_never_touched_by_a_rejected_lambda() -> None:
    # There is no function to call at all: compilation fails before one exists.
    log: list[str] = []
    for source, _ in MALICIOUS:
        with pytest.raises(DefinitionError):
            compile_correlation(source)
    Recorder(log)  # built, never handed to anything
    assert log == []


def test_rejection_names_the_column_and_the_source() -> None:
    with pytest.raises(DefinitionError) as e:
        compile_correlation("lambda e: e.__class__", field=FIELD)
    assert str(e.value) == (
        f"{FIELD}: the attribute '__class__' at column 11 is not allowed: names starting with '_' "
        "(private and special attributes) are off limits (in 'lambda e: e.__class__')"
    )


def test_huge_input_is_rejected_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    import sagakit.declarative._correlation as module

    parsed: list[str] = []
    monkeypatch.setattr(module.ast, "parse", lambda *a, **k: parsed.append("parse"))
    source = "lambda e: " + "e.a + " * 200 + "e.a"
    assert len(source) > MAX_LENGTH
    with pytest.raises(DefinitionError) as e:
        compile_correlation(source, field=FIELD)
    assert f"{len(source):,} characters long; the limit is 1,000" in str(e.value)
    assert parsed == []
    monkeypatch.undo()
    # The quoted source in messages is cut short.
    with pytest.raises(DefinitionError) as e2:
        compile_correlation("lambda e: " + "[" * 300, field=FIELD)
    assert "..." in str(e2.value) and len(str(e2.value)) < 400


def test_exactly_the_length_limit_is_accepted() -> None:
    body = "lambda e: 'x' + "
    source = body + "'" + "y" * (MAX_LENGTH - len(body) - 2) + "'"
    assert len(source) == MAX_LENGTH
    assert compile_correlation(source)(EVENT).startswith("xy")


@pytest.mark.parametrize(
    "source",
    [
        "lambda e: " + "(" * 150 + "e.a" + ")" * 150,  # parentheses do not nest the tree
        "lambda e: " + "str(" * 40 + "e.a" + ")" * 40,
        "lambda e: " + " + ".join(["e.a"] * 60),
        "lambda e: " + "-" * 900 + "1",
        "lambda e: " + "e" + ".a" * 400,
        "lambda e: e" + "[0]" * 300,
        "lambda e: " + "f'{" * 3 + "e.a" + "}'" * 3,
        "lambda e: " + "[" * 400 + "]" * 400,
    ],
)
def test_deeply_nested_expressions_are_rejected(source: str) -> None:
    assert len(source) <= MAX_LENGTH
    if source.startswith("lambda e: ((("):
        # Redundant parentheses leave no trace in the tree: accepted.
        assert compile_correlation(source)(SimpleNamespace(a="x")) == "x"
        return
    with pytest.raises(DefinitionError) as e:
        compile_correlation(source, field=FIELD)
    msg = str(e.value)
    assert msg.startswith(FIELD)
    assert (
        f"nested more than {MAX_DEPTH} levels deep" in msg
        or "is not a Python expression" in msg
        or "is not allowed" in msg
    )


def test_nesting_up_to_the_limit_is_accepted() -> None:
    source = "lambda e: " + "str(" * (MAX_DEPTH - 1) + "e" + ")" * (MAX_DEPTH - 1)
    assert compile_correlation(source)(SimpleNamespace()).startswith("namespace(")
    too_deep = "lambda e: " + "str(" * MAX_DEPTH + "e" + ")" * MAX_DEPTH
    with pytest.raises(DefinitionError, match="nested more than 32 levels deep"):
        compile_correlation(too_deep)


@pytest.mark.parametrize("value", [None, 5, b"lambda e: e.a", ["lambda e: e.a"]])
def test_non_string_input(value: object) -> None:
    with pytest.raises(DefinitionError, match="expected a string like 'lambda event: str"):
        compile_correlation(value, field=FIELD)


def test_the_compiled_function_is_a_valid_trigger_correlation() -> None:
    from pydantic import BaseModel

    from sagakit import SagaBuilder

    class Created(BaseModel):
        order_id: str

    fn = compile_correlation("lambda event: str(event.order_id)")
    d = SagaBuilder("s").trigger(Created, correlation=fn).step("a", action=lambda ctx: None).build()
    assert d.triggers[0].correlation(Created(order_id="o-9")) == "o-9"
