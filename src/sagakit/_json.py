"""Saga data, step results and events as JSON: what is stored, what is refused, and reading it back typed.

Stored as JSON, in the form pydantic's ``mode="json"`` gives: pydantic models
and dataclasses as objects, ``Decimal`` as a string (exact), ``datetime``,
``date`` and ``time`` as ISO 8601 strings, ``UUID`` as a string, an ``Enum``
as its value. Reading a value back as a model (``from_json``) turns those
strings into the field's type again.

Refused, with the path of the value (``data.items[3].price``): what JSON
cannot hold faithfully (NaN and infinities, as floats or ``Decimal``s, which a
JSON encoder would write as ``null`` or not at all), keys that are not
strings, integers beyond 64 bits, and types with no JSON form (sets, bytes,
arbitrary objects).

The plain case costs what it did before: one ``orjson.dumps`` call and a scan
of its output for ``null`` (orjson writes a NaN as ``null``); only a value
whose JSON holds a ``null``, or that fails to encode, is walked to find the
culprit.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import typing
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, TypeVar, cast

import orjson

from ._errors import DataEncodingError

__all__ = ["NOT_PLAIN", "encode", "from_json", "is_pydantic", "model_type", "plain_copy", "to_json"]

T = TypeVar("T")
_INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson writes as a JSON number
_SCALARS = (str, bool, type(None), datetime, date, time, uuid.UUID)


def is_pydantic(cls: type) -> bool:
    """Whether *cls* is a pydantic model class (remembered per class: ``model_fields`` is computed on each read)."""
    return _pydantic_class(cls)


@functools.lru_cache(maxsize=1024)
def _pydantic_class(cls: Any) -> bool:
    return hasattr(cls, "model_fields") and callable(getattr(cls, "model_validate", None))


def _default(obj: Any) -> Any:
    """What orjson calls for a type it does not know: pydantic models and ``Decimal``."""
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise TypeError("not finite")
        return str(obj)
    if is_pydantic(type(obj)):
        return obj.model_dump(mode="json")
    raise TypeError(f"type {type(obj).__name__} is not JSON-serialisable")


def encode(value: Any, what: str, *args: object, root: str = "data") -> bytes:
    """*value* as JSON bytes.

    Args:
        value: the data, result or payload.
        what: how an error names the value as a whole (``"data of saga {!r}"``), formatted
            with *args only when there is an error (the common case pays for no formatting).
        root: the first part of a path in an error (``data``, ``result``).

    Raises:
        DataEncodingError: naming the path of the first value that cannot be stored faithfully.
    """
    try:
        blob = orjson.dumps(value, default=_default)
    except TypeError as e:
        found = _culprit(value, root)
        where, why = found if found is not None else (root, str(e))
        raise DataEncodingError(f"{what.format(*args)} is not JSON-serialisable: {where} {why}") from None
    if b"null" in blob:
        # orjson writes NaN and the infinities as null: tell them apart from None.
        found = _culprit(value, root)
        if found is not None:
            raise DataEncodingError(f"{what.format(*args)} is not JSON-serialisable: {found[0]} {found[1]}")
    return blob


def to_json(value: Any, what: str, *args: object, root: str = "data") -> Any:
    """*value* in its JSON form (dicts, lists, strings, numbers), as it will be stored; see ``encode``."""
    if value is None:
        return None
    return orjson.loads(encode(value, what, *args, root=root))


NOT_PLAIN: Any = object()  # what plain_copy returns for a value it does not copy
_PLAIN_SCALARS = frozenset((str, int, float, bool, type(None)))


class _Stop(Exception):
    """The value is not plain JSON, or holds more than the copy's budget."""


def plain_copy(value: Any, budget: int) -> Any:
    """A copy of *value* equal to ``orjson.loads`` of its JSON, made without parsing that JSON.

    Only for a value ``encode`` has accepted, and only when it holds nothing but dicts with
    ``str`` keys, lists and the JSON scalars themselves (no subclasses, tuples, models or
    ``Decimal``s, whose JSON form differs from them), in at most *budget* containers and
    values: large data made of a few long strings is copied at the cost of its structure,
    not of its bytes. Returns ``NOT_PLAIN`` otherwise (parse the JSON then).
    """
    left = [budget]

    def copy(v: Any) -> Any:
        left[0] -= 1
        if left[0] < 0:
            raise _Stop
        cls = type(v)
        if cls in _PLAIN_SCALARS:
            return v
        if cls is dict:
            out = {}
            for k, item in v.items():
                if type(k) is not str:
                    raise _Stop
                out[k] = copy(item)
            return out
        if cls is list:
            return [copy(item) for item in v]
        raise _Stop

    try:
        return copy(value)
    except (_Stop, RecursionError):
        return NOT_PLAIN


def _culprit(value: Any, path: str) -> tuple[str, str] | None:
    """The path of the first value in *value* that JSON cannot hold faithfully, and why; None if there is none."""
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return path, f"is {value!r}, which JSON cannot hold (it would be stored as null); use None or a string"
    if isinstance(value, _SCALARS):
        return None
    if isinstance(value, int):
        if _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            return None
        return path, "is an integer beyond 64 bits, which JSON readers cannot hold exactly; store it as a string"
    if isinstance(value, Decimal):
        if value.is_finite():
            return None
        return path, f"is Decimal({str(value)!r}), which JSON cannot hold; use None"
    if isinstance(value, enum.Enum):
        return _culprit(value.value, path)
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                return path, f"has the key {k!r}, which is not a string (JSON keys are strings)"
            found = _culprit(v, f"{path}.{k}" if k.isidentifier() else f"{path}[{k!r}]")
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _culprit(v, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    cls = type(value)
    if is_pydantic(cls):
        return _culprit(value.model_dump(mode="json"), path)
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            found = _culprit(getattr(value, f.name), f"{path}.{f.name}")
            if found is not None:
                return found
        return None
    return path, (
        f"is a {cls.__module__}.{cls.__qualname__}, which has no JSON form "
        "(use a dict, a list, a pydantic model, a dataclass or a scalar)"
    )


# ------------------------------------------------------------ reading typed


def model_type(fn: Callable[..., Any]) -> type | None:
    """The pydantic model or dataclass that *fn* is annotated to return (``-> Receipt``, ``-> Receipt | None``).

    None when it returns anything else or has no annotation that resolves.
    """
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:  # unresolvable forward references, or not a function: no typing then
        return None
    if hint is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1 and type(None) in typing.get_args(hint):
        hint = args[0]  # Optional[Receipt]
    if isinstance(hint, type) and (is_pydantic(hint) or dataclasses.is_dataclass(hint)):
        return hint
    return None


@functools.lru_cache(maxsize=512)
def _adapter(cls: type) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


def from_json(cls: type[T], value: Any, what: str) -> T:
    """*value* (as stored) read as *cls*: a pydantic model, a dataclass, or any type pydantic validates.

    Raises:
        DataEncodingError: *what* cannot be read as *cls*; names each field that does not fit.
    """
    if isinstance(cls, type) and isinstance(value, cls):
        return value
    from pydantic import ValidationError

    try:
        if isinstance(cls, type) and is_pydantic(cls):
            return cast("T", cls.model_validate(value))  # type: ignore[attr-defined]
        return cast("T", _adapter(cast("Any", cls)).validate_python(value))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors())
        name = getattr(cls, "__qualname__", repr(cls))
        raise DataEncodingError(f"{what} cannot be read as {name}: {problems}") from None
