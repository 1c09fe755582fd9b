"""Definition text to plain data, within limits: hostile input ends in one error line, never a hang.

A definition file may come from anyone, so reading it is bounded before
anything is built from it:

- ``MAX_BYTES``: the file's size;
- ``MAX_DEPTH``: nesting of mappings and lists (a definition needs 4);
- ``MAX_INT_DIGITS``: digits of an integer (the format has no number fields;
  Python refuses to convert more than 4,300 anyway);
- ``MAX_ALIASES``: YAML aliases (``*name``), and ``MAX_NODES``: values once
  every alias is expanded, so that a few hundred bytes of aliases to aliases
  (a "billion laughs") cannot grow into millions of values;
- ``MAX_STEPS``: steps of one saga, and items of any other list;
- ``MAX_KEYS``: keys of one mapping (the format's largest has 15 fields, with x-sagakit).

The last two bound the number of problems validation can find, so that a
file of a million unknown fields or list items cannot take gigabytes to
report.

YAML is read with the safe loader (no Python tags), after a first pass over
the parser's events checks the limits without building anything. JSON is
scanned for nesting and long numbers before ``json.loads``. The data, parsed
or given as a mapping in Python, is then walked once for all the limits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NoReturn

import yaml

__all__ = [
    "MAX_ALIASES",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_KEYS",
    "MAX_NODES",
    "MAX_STEPS",
    "LimitExceeded",
    "check_data",
    "check_steps",
    "parse_json",
    "parse_yaml",
    "too_big",
]

MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_INT_DIGITS = 100
MAX_ALIASES = 100
MAX_NODES = 2_000_000
MAX_STEPS = 50_000
MAX_KEYS = 100

# libyaml's parser when PyYAML was built with it (much faster); the pure-Python one otherwise.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# PyYAML's implicit int forms (YAML 1.1), as in yaml.resolver.
_YAML_INT = re.compile(
    r"""[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+
    |[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+""",
    re.X,
)
_INT_TAG = "tag:yaml.org,2002:int"
_NOT_DIGITS = str.maketrans("", "", "+-_:xXbBoO")

# A JSON string (skipped), a bracket, or a run of digits longer than the limit.
_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|[0-9]{' + str(MAX_INT_DIGITS + 1) + ",}")


class LimitExceeded(ValueError):
    """The input breaks a limit or cannot be parsed; the message is one line naming it."""


def _fail(message: str) -> NoReturn:
    raise LimitExceeded(message)


def _at(line: int, column: int) -> str:
    return f" at line {line} column {column}"


def _too_deep(where: str) -> str:
    return f"nesting deeper than {MAX_DEPTH} levels{where} (limit; a definition needs 4)"


def _too_long_int(digits: int, where: str) -> str:
    return (
        f"a number of {digits:,} digits{where}; the limit is {MAX_INT_DIGITS} digits "
        "(no field of the format is a number: quote it if it is a name)"
    )


def too_big(size: int) -> NoReturn:
    """Raise LimitExceeded for a file over ``MAX_BYTES`` (*size*: its size on disk, 0 if it has none)."""
    what = f"{size:,} bytes" if size > MAX_BYTES else f"more than {MAX_BYTES:,} bytes"
    _fail(f"the file is {what}; the limit is {MAX_BYTES:,} (a saga definition is far smaller)")


# ---------------------------------------------------------------- JSON


def parse_json(text: str) -> Any:
    """Parse JSON *text* within the limits.

    Raises:
        LimitExceeded: invalid JSON, or a limit broken (one line each).
    """
    _scan_json(text)
    try:
        return json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as e:
        _fail(f"invalid JSON{_at(e.lineno, e.colno)}: {e.msg}")
    except RecursionError:  # the scan counts brackets, so only malformed text gets here
        _fail(_too_deep(""))


def _json_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        _fail(_too_long_int(digits, ""))
    return int(text)


def _scan_json(text: str) -> None:
    depth = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()[0]
        if c == '"':
            continue
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                _fail(_too_deep(_json_where(text, m.start())))
        elif c in "]}":
            depth -= 1
        else:
            _fail(_too_long_int(len(m.group()), _json_where(text, m.start())))


def _json_where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return _at(line, pos - (text.rfind("\n", 0, pos) + 1) + 1)


# ---------------------------------------------------------------- YAML


def parse_yaml(text: str) -> Any:
    """Parse YAML *text* with the safe loader, within the limits.

    Raises:
        LimitExceeded: invalid YAML, or a limit broken (one line each).
    """
    try:
        _scan_yaml(text)
        return yaml.load(text, Loader=_LOADER)  # the safe loader, C or Python
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = _at(mark.line + 1, mark.column + 1) if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        if "maximum nesting depth" in problem:  # libyaml's own limit, met while it reads ahead
            _fail(_too_deep(at))
        _fail(f"invalid YAML{at}: {_one_line(problem)}")
    except LimitExceeded:
        raise
    except Exception as e:
        # A value the safe constructor cannot build, e.g. the date 2024-13-45 (ValueError) or
        # !!int '' (IndexError): PyYAML lets such errors through, whatever their type.
        _fail(f"invalid YAML: a value cannot be read ({type(e).__name__}: {_one_line(str(e))})")


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class _Frame:
    __slots__ = ("anchor", "deepest", "nodes_before")

    def __init__(self, anchor: str | None, nodes_before: int, deepest: int) -> None:
        self.anchor = anchor
        self.nodes_before = nodes_before
        self.deepest = deepest


def _scan_yaml(text: str) -> None:
    """Check the limits on the parser's events, before any value is built.

    Counts values as if every alias were expanded: an anchored value's size
    and depth are known when it ends, and each alias to it adds them.
    """
    depth = 0
    nodes = 0
    aliases = 0
    stack: list[_Frame] = []
    size: dict[str, int] = {}
    levels: dict[str, int] = {}
    for event in yaml.parse(text, Loader=_LOADER):
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            anchor = event.anchor
            if aliases > MAX_ALIASES:
                _fail(
                    f"more than {MAX_ALIASES} YAML aliases (*{anchor}){_mark(mark)} (limit); "
                    "write the values out instead"
                )
            if anchor is not None and any(f.anchor == anchor for f in stack):
                _fail(
                    f"the YAML alias *{anchor}{_mark(mark)} refers to a value that contains it; "
                    "a definition cannot be recursive"
                )
            if anchor not in size:
                continue  # an undefined alias: the loader reports it
            assert anchor is not None
            nodes += size[anchor]
            reached = depth + levels[anchor]
        elif isinstance(event, yaml.CollectionStartEvent):
            nodes += 1
            depth += 1
            reached = depth
            stack.append(_Frame(event.anchor, nodes - 1, depth))
        elif isinstance(event, yaml.CollectionEndEvent):
            frame = stack.pop()
            if frame.anchor is not None:
                size[frame.anchor] = nodes - frame.nodes_before
                levels[frame.anchor] = frame.deepest - depth + 1
            depth -= 1
            if stack and frame.deepest > stack[-1].deepest:
                stack[-1].deepest = frame.deepest
            continue
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            reached = depth
            if event.anchor is not None:
                size[event.anchor] = 1
                levels[event.anchor] = 0
            value = event.value
            if len(value) > MAX_INT_DIGITS and (
                # A plain scalar's style is None from PyYAML, "" from libyaml.
                event.tag == _INT_TAG or (not event.style and event.implicit[0] and _YAML_INT.fullmatch(value))
            ):
                digits = len(value.translate(_NOT_DIGITS))
                if digits > MAX_INT_DIGITS:
                    _fail(_too_long_int(digits, _mark(mark)))
        else:
            continue
        if reached > MAX_DEPTH:
            _fail(_too_deep(_mark(mark)))
        if nodes > MAX_NODES:
            _fail(
                f"more than {MAX_NODES:,} values{_mark(mark)}, counting each YAML alias as the value it repeats (limit)"
            )
        if stack and reached > stack[-1].deepest:
            stack[-1].deepest = reached


def _mark(mark: Any) -> str:
    return _at(mark.line + 1, mark.column + 1) if mark is not None else ""


# ---------------------------------------------------------------- data


def check_data(data: object) -> None:
    """Walk parsed or given data once and check the limits (steps, depth, values, keys, list items, integers).

    Stops at the first broken limit, so a huge or cyclic structure is not
    walked to its end.

    Raises:
        LimitExceeded: naming the limit.
    """
    check_steps(data)
    nodes = 0
    stack: list[tuple[object, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            _fail(f"more than {MAX_NODES:,} values (limit)")
        if isinstance(value, Mapping):
            depth += 1
            if depth > MAX_DEPTH:
                _fail(_too_deep(""))
            if len(value) > MAX_KEYS:
                _fail(
                    f"a mapping of {len(value):,} keys; the limit is {MAX_KEYS} "
                    "(the format's largest mapping has 15 fields)"
                )
            stack.extend((k, depth) for k in value)
            stack.extend((v, depth) for v in value.values())
        elif isinstance(value, list | tuple):
            depth += 1
            if depth > MAX_DEPTH:
                _fail(_too_deep(""))
            if len(value) > MAX_STEPS:
                _fail(f"a list of {len(value):,} items; the limit is {MAX_STEPS:,}")
            stack.extend((v, depth) for v in value)
        elif isinstance(value, int) and value.bit_length() > MAX_INT_DIGITS * 3.33:
            # bit_length, not str(): converting a huge int to text is what fails.
            _fail(_too_long_int(int(value.bit_length() / 3.3219), ""))


def check_steps(data: object) -> None:
    """Raise LimitExceeded if *data* has more than ``MAX_STEPS`` steps."""
    if isinstance(data, Mapping):
        steps = data.get("steps")
        if isinstance(steps, list) and len(steps) > MAX_STEPS:
            _fail(
                f"steps: {len(steps):,} steps; the limit is {MAX_STEPS:,} "
                "(too many steps for one saga: split it into sagas that trigger each other)"
            )
