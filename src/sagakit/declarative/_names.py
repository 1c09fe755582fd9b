"""Wire names from a definition: the classes it names are sent and received under the names it gives them.

A message's wire name is ``sagakit._messages.message_type_name(cls)``: the
class's own ``message_name`` attribute when it has one, else
``module.ClassName``. A definition with ``"x-sagakit": {"message_names":
"definition"}`` gives each command and event class it names the class name
it is written under (behind ``message_namespace``, if set), by setting that
attribute on the class, so that services in other languages or with other
module layouts need not mirror Python module paths.

A class has one wire name per process. Naming is refused, with the reason,
when two classes of a definition would share a name, when a class was given
another name already (by another definition), or when the class has a field
called ``message_name``. A class that sets ``message_name`` itself keeps it.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import weakref
from collections.abc import Mapping, Sequence

from .._definition import is_message_type
from .._messages import message_type_name

__all__ = ["events_defined_with", "name_messages", "plan_names", "set_names", "wire_name_owner"]

# The classes named by a definition: class -> (wire name, which definition named it).
_GIVEN: weakref.WeakKeyDictionary[type, tuple[str, str]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def wire_name_owner(cls: type) -> str | None:
    """Which definition gave *cls* its wire name, or None when none did."""
    given = _GIVEN.get(cls)
    return None if given is None else given[1]


def _label(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _has_field(cls: type, name: str) -> bool:
    fields = getattr(cls, "model_fields", None)
    if isinstance(fields, Mapping) and name in fields:
        return True
    return dataclasses.is_dataclass(cls) and any(f.name == name for f in dataclasses.fields(cls))


def plan_names(entries: Sequence[tuple[str, type, str]], origin: str) -> tuple[dict[type, str], list[str]]:
    """The wire names to give, and the problems, for *entries* of (field path, class, wanted name).

    A class listed under several fields must be wanted under one name; a
    class that sets its own ``message_name`` keeps it (and is left out).
    """
    names: dict[type, str] = {}
    where: dict[type, str] = {}
    errors: list[str] = []
    for path, cls, wanted in entries:
        if cls in names or cls in where:
            continue
        own = cls.__dict__.get("message_name")
        given = _GIVEN.get(cls)
        if own is not None and given is None:
            if not isinstance(own, str) or not own:
                errors.append(f"{path}: {_label(cls)}.message_name is {own!r}, not a non-empty string")
            where[cls] = path  # the class chose its own name: it counts for clashes, but is not renamed
            continue
        if _has_field(cls, "message_name"):
            errors.append(
                f"{path}: {_label(cls)} has a field called 'message_name', the attribute that holds a class's "
                "wire name; rename the field, or set message_names to 'python'"
            )
            continue
        if given is not None and given[0] != wanted and given[1] != origin:
            errors.append(
                f"{path}: {_label(cls)} already has the wire name {given[0]!r}, given by {given[1]}; a class has "
                f"one wire name, so it cannot also be {wanted!r}: use the same message_namespace in both "
                "definitions"
            )
            continue
        names[cls] = wanted
        where[cls] = path
    # Two classes must not share a wire name (their messages could not be told apart).
    taken: dict[str, type] = {}
    for cls, path in where.items():
        name = names.get(cls) or message_type_name(cls)
        other = taken.get(name)
        if other is not None:
            errors.append(
                f"{path}: {_label(cls)} would have the wire name {name!r}, which is already that of "
                f"{_label(other)} ({where[other]}); two classes cannot share one: set message_name on one of "
                "them, or set message_namespace / message_names 'python'"
            )
            continue
        taken[name] = cls
    return names, errors


def set_names(names: Mapping[type, str], origin: str) -> None:
    """Give each class its wire name (checked by ``plan_names``)."""
    with _LOCK:
        for cls, name in names.items():
            setattr(cls, "message_name", name)  # noqa: B010 (a class attribute, set on purpose)
            _GIVEN[cls] = (name, origin)


def name_messages(
    names: Mapping[type, str] | Sequence[type],
    *,
    namespace: str | None = None,
    origin: str = "a saga definition",
) -> None:
    """Give classes wire names, as a definition with ``message_names: definition`` does.

    *names* maps each class to its wire name; or it is a sequence of classes,
    each named ``namespace.ClassName`` (``ClassName`` without a namespace),
    leaving out those *origin* has named already. Generated orchestrator
    modules call this; ``load_definition`` does the same for the classes a
    definition names.

    Raises:
        InvalidDefinition: a class has a field called ``message_name``, was
            named otherwise already, or two classes would share a name.
    """
    from ._loader import InvalidDefinition

    if isinstance(names, Mapping):
        wanted = dict(names)
    else:
        prefix = f"{namespace}." if namespace else ""
        wanted = {cls: prefix + cls.__name__ for cls in names if _GIVEN.get(cls, ("", ""))[1] != origin}
    planned, errors = plan_names([(_label(cls), cls, name) for cls, name in wanted.items()], origin)
    if errors:
        raise InvalidDefinition(errors, origin)
    set_names(planned, origin)


def events_defined_with(*classes: type) -> list[type]:
    """Every message class (pydantic model or dataclass) defined in the modules that define *classes*.

    In the modules' order, each once, *classes* included; names starting
    with ``_`` are left out. These are the events a definition knows without
    listing them: those of its participants, beside the events its steps
    declare (``x-sagakit.scan_event_modules``).
    """
    found: dict[type, None] = {}
    for module_name in dict.fromkeys(c.__module__ for c in classes):
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for key, value in vars(module).items():
            if (
                isinstance(value, type)
                and value.__module__ == module_name
                and not key.startswith("_")
                and is_message_type(value)
            ):
                found[value] = None
    return list(found)
