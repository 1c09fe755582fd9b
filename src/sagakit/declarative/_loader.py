"""``load_definition``: the declarative format (seed 000) in, a ``SagaDefinition`` out.

Reading happens in three stages, each reporting every problem it finds with
its field path (``steps[1].success_event_module``), the value and the fix:

1. parse the JSON or YAML text (or take the mapping as given) within the
   limits of ``_parse`` (size, nesting, YAML aliases, integer digits, steps);
2. validate it against the pydantic models of the format;
3. resolve every module and class with ``importlib``, compile the
   correlation lambdas (see ``_correlation``), then build the definition
   through ``SagaBuilder`` exactly as code would.

Resolving a class imports its module, which runs that module's top-level
code, as ``import`` would; a definition file can therefore run code. So
``check_definition`` (and ``sagakit validate`` by default) does stage 3 with
stand-in classes named after the definition's and imports nothing, and
``load_definition`` takes ``allow_modules``, the packages whose modules it
may import.

The state repository named in a definition is resolved (so a typo is caught)
and kept in ``definition.extras["state_repository"]``, but sagakit does not
call it: the engine stores saga state in its own store, validated against the
state DTO.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import keyword
import os
import re
import reprlib
import sys
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ValidationError

from .._definition import _NAME, SagaBuilder, SagaDefinition, is_message_type
from .._errors import DefinitionError
from .._messages import SendCommand, send
from .._policy import RetryPolicy
from . import _parse
from ._correlation import CorrelationFunction, compile_correlation
from ._models import (
    EXTENSION,
    ImportDefinitionDTO,
    RetryOptions,
    SagaOptions,
    SagaOrchestratorInputDTO,
    SagaStepInputDTO,
    TriggerEventConfigInputDTO,
    success_events,
)
from ._names import events_defined_with, plan_names, set_names

__all__ = [
    "InvalidDefinition",
    "build_definition_from",
    "check_definition",
    "extended_sys_path",
    "load_definition",
    "read_definition",
]

Source = str | os.PathLike[str] | Mapping[str, Any]

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class InvalidDefinition(DefinitionError):
    """A declarative definition with one or more problems; ``errors`` holds one line per problem.

    Each line reads ``field.path: what is wrong (the value) and the fix``.
    """

    def __init__(self, errors: Sequence[str], origin: str | None = None) -> None:
        # One line each, whatever a parser or a module put in its message.
        self.errors = tuple(" ".join(e.splitlines()) for e in errors)
        self.origin = origin
        where = f" in {origin}" if origin else ""
        n = len(self.errors)
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"invalid saga definition{where}: {n} problem{'s' if n != 1 else ''}\n{lines}")


# ---------------------------------------------------------------- reading

MAX_ERRORS = 1000
"""Problems listed in one InvalidDefinition; a line says how many more there are."""


def _listed(errors: list[str], total: int) -> list[str]:
    # A file of a million unknown fields would otherwise take minutes to report.
    if total > len(errors):
        errors.append(f"... and {total - len(errors):,} more problems (only the first {len(errors):,} are listed)")
    return errors


def read_definition(source: Source) -> SagaOrchestratorInputDTO:
    """Parse and validate a definition (JSON/YAML file or mapping) without importing anything.

    Raises:
        InvalidDefinition: the file cannot be read or parsed, or fields are
            missing, unknown or of the wrong type (every error, with its path).
    """
    data, origin = _read(source)
    return _validate(data, origin)


def _validate(data: Mapping[str, Any], origin: str | None) -> SagaOrchestratorInputDTO:
    """The model of *data*, or every problem (the first ``MAX_ERRORS`` listed) in pydantic's order.

    The lists of steps, triggers and imports are validated item by item, so
    that only the listed problems are ever turned into Python objects;
    pydantic's order is kept: fields in the model's order, unknown keys last.
    """
    ranked: list[tuple[int, str]] = []  # (field position, line)
    total = 0
    prepared = dict(data)
    position = {name: i for i, name in enumerate(SagaOrchestratorInputDTO.model_fields)}
    for field, model in _MODEL_AT.items():
        items = data.get(field)
        if not isinstance(items, list):
            continue
        valid: list[BaseModel] = []
        listed = 0
        for i, item in enumerate(items):
            try:
                valid.append(model.model_validate(item))
            except ValidationError as e:
                total += e.error_count()
                if listed < MAX_ERRORS:
                    step = _step_name(item) if field == "steps" else None
                    for err in e.errors(include_url=False)[: MAX_ERRORS - listed]:
                        err["loc"] = (field, i, *err["loc"])
                        ranked.append((position[field], _format_error(err, step)))
                        listed += 1
        prepared[field] = valid
    try:
        dto = SagaOrchestratorInputDTO.model_validate(prepared)
    except ValidationError as e:
        total += e.error_count()
        for err in e.errors(include_url=False):
            ranked.append((position.get(str(err["loc"][0]) if err["loc"] else "", len(position)), _format_error(err)))
    else:
        if not ranked:
            return dto
    ranked.sort(key=lambda r: r[0])  # stable: each field's problems stay in order
    lines = [line for _, line in ranked[:MAX_ERRORS]]
    raise InvalidDefinition(_listed(lines, total), origin)


def _origin(source: Source) -> str | None:
    return None if isinstance(source, Mapping) else os.fspath(source)


def _read(source: Source) -> tuple[Any, str | None]:
    if isinstance(source, Mapping):
        try:
            _parse.check_data(source)
        except _parse.LimitExceeded as e:
            raise InvalidDefinition([str(e)]) from None
        return source, None
    if not isinstance(source, str | os.PathLike):
        raise InvalidDefinition([f"expected a file path or a mapping, got {type(source).__name__} {source!r}"])
    path = Path(source)
    origin = os.fspath(source)
    try:
        with path.open("rb") as f:
            # Read one byte past the limit rather than trusting the size on disk
            # (a pipe or a device has none).
            raw = f.read(_parse.MAX_BYTES + 1)
            if len(raw) > _parse.MAX_BYTES:
                _parse.too_big(os.fstat(f.fileno()).st_size)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise InvalidDefinition([f"file not found: {origin!r} (check the path)"], origin) from None
    except IsADirectoryError:
        raise InvalidDefinition([f"{origin!r} is a directory, not a definition file"], origin) from None
    except UnicodeDecodeError as e:
        raise InvalidDefinition([f"not UTF-8 text: {e}"], origin) from None
    except _parse.LimitExceeded as e:
        raise InvalidDefinition([str(e)], origin) from None
    except OSError as e:
        raise InvalidDefinition([f"cannot read the file: {e}"], origin) from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = _parse.parse_json(text)
        elif suffix in (".yaml", ".yml"):
            data = _parse.parse_yaml(text)
        else:
            # No telling extension: JSON if it parses as JSON, else YAML (a superset,
            # which reports the limits too, e.g. for digits inside a YAML 'string').
            try:
                data = _parse.parse_json(text)
            except _parse.LimitExceeded:
                data = _parse.parse_yaml(text)
        _parse.check_data(data)
    except _parse.LimitExceeded as e:
        raise InvalidDefinition([str(e)], origin) from None
    if not isinstance(data, dict):
        raise InvalidDefinition(
            [
                "expected a mapping (a JSON object / YAML mapping) of definition fields at the top "
                f"level, got {type(data).__name__}"
            ],
            origin,
        )
    return data, origin


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


_MODEL_AT: dict[str, type[BaseModel]] = {
    "steps": SagaStepInputDTO,
    "triggering_events": TriggerEventConfigInputDTO,
    "imports": ImportDefinitionDTO,
}


def _step_name(item: object) -> str | None:
    name = item.get("step_name") if isinstance(item, Mapping) else None
    return name if isinstance(name, str) else None


def _keys(model: type[BaseModel]) -> list[str]:
    """The keys of *model* as written in a file (aliases where a field has one)."""
    return [f.alias or name for name, f in model.model_fields.items()]


def _fields_at(loc: Sequence[int | str]) -> list[str]:
    """The keys a mapping at *loc* (the location of one of its keys) may have."""
    model: type[BaseModel] = SagaOrchestratorInputDTO
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        found = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        inner = _model_in(found.annotation) if found is not None else None
        if inner is None:
            return []
        model = inner
    return _keys(model)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model type inside an annotation such as ``X``, ``X | None`` or ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _value(value: Any) -> str:
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int too long for str(); the readers refuse those, a mapping may not
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


# Bounded: a value in an error message may be a huge list or string.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 6, 6, 80, 80
_REPR.maxlong = 80


def _format_error(err: Any, step: str | None = None) -> str:
    loc = tuple(err["loc"])
    path = _path(loc)
    if step is not None and EXTENSION in loc:
        path += f" (step {step!r})"
    kind = err["type"]
    if kind == "missing":
        return f"{path}: required field is missing; add it"
    if kind == "extra_forbidden":
        field = str(loc[-1])
        hint = difflib.get_close_matches(field, _fields_at(loc), n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else "remove it or check its spelling"
        return f"{path}: unknown field ({fix})"
    msg = str(err["msg"])
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        if ", got " in msg:
            return f"{path}: {msg}"
        return f"{path}: {msg} (value: {_value(err.get('input'))})"
    if kind == "string_type":
        return f"{path}: must be a string, got {_value(err.get('input'))}"
    if kind == "list_type":
        return f"{path}: must be a list, got {_value(err.get('input'))}"
    if kind == "bool_type":
        return f"{path}: must be true or false, got {_value(err.get('input'))}"
    if kind in ("model_type", "dict_type"):
        return f"{path}: must be a mapping (JSON object) of fields, got {_value(err.get('input'))}"
    return f"{path}: {msg} (value: {_value(err.get('input'))})"


# ---------------------------------------------------------------- resolving


@contextlib.contextmanager
def extended_sys_path(paths: Sequence[str | os.PathLike[str]] | None) -> Iterator[None]:
    """Put *paths* in front of ``sys.path`` while resolving, and take them out again."""
    if not paths:
        yield
        return
    added = [os.fspath(Path(p).resolve()) for p in paths]
    added = [p for p in dict.fromkeys(added) if p not in sys.path]
    sys.path[:0] = added
    importlib.invalidate_caches()
    try:
        yield
    finally:
        for p in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(p)


def allowed_roots(allow_modules: Sequence[str] | None) -> tuple[str, ...] | None:
    """Check *allow_modules* (package names) and return them as a tuple; None allows every module.

    Raises:
        ValueError: an entry is not a dotted module path.
    """
    if allow_modules is None:
        return None
    if isinstance(allow_modules, str):
        allow_modules = [allow_modules]
    roots = tuple(dict.fromkeys(allow_modules))
    for root in roots:
        if not isinstance(root, str) or not _MODULE.match(root):
            raise ValueError(
                f"allow_modules entry {root!r} is not a package name: give dotted module paths like 'myapp' "
                "or 'myapp.domain'"
            )
    return roots


def _is_allowed(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def _refusal(name: str, roots: tuple[str, ...]) -> str:
    allowed = ", ".join(repr(r) for r in roots) or "none"
    top = name.partition(".")[0]
    return (
        f"module {name!r} was not imported: it is outside the packages allowed to be imported "
        f"({allowed}); if you trust its code, allow it with --allow-module {top} "
        f"(allow_modules=[{top!r}] in Python)"
    )


def refuse_outside(dto: SagaOrchestratorInputDTO, roots: tuple[str, ...], origin: str | None = None) -> None:
    """Refuse, before anything is imported, a definition naming a module outside the *roots* packages.

    Raises:
        InvalidDefinition: one line per module field outside them.
    """
    errors = [
        f"{field}: {_refusal(name, roots)}"
        for field, name in named_modules(dto)
        if _MODULE.match(name) and not _is_allowed(name, roots)
    ]
    if errors:
        raise InvalidDefinition(errors, origin)


def named_modules(dto: SagaOrchestratorInputDTO) -> list[tuple[str, str]]:
    """Every module the definition names, as (field path, module path), in field order."""
    out = [("state_dto_module", dto.state_dto_module), ("state_repository_module", dto.state_repository_module)]
    out += [(f"imports[{i}].module", imp.module) for i, imp in enumerate(dto.imports)]
    out += [(f"triggering_events[{i}].event_module", t.event_module) for i, t in enumerate(dto.triggering_events)]
    for i, step in enumerate(dto.steps):
        at = f"steps[{i}]"
        out.append((f"{at}.command_module", step.command_module))
        modules = (
            [step.success_event_module] if isinstance(step.success_event_module, str) else step.success_event_module
        )
        many = len(modules) > 1
        out += [(f"{at}.success_event_module" + (f"[{j}]" if many else ""), m) for j, m in enumerate(modules)]
        for field in ("failure_event_module", "compensation_command_module"):
            value = getattr(step, field)
            if value is not None:
                out.append((f"{at}.{field}", value))
        for field in ("compensation_success_event_name", "compensation_failure_event_name"):
            value = getattr(step, field)
            if value is not None and "." in value:
                out.append((f"{at}.{field}", value.rpartition(".")[0]))
    for kind in ("completion", "failure"):
        value = getattr(dto, f"{kind}_event_module")
        if value is not None:
            out.append((f"{kind}_event_module", value))
    if dto.sagakit is not None:
        at = f"{EXTENSION}.known_events"
        out += [(f"{at}[{i}].event_module", k.event_module) for i, k in enumerate(dto.sagakit.known_events)]
    return out


class _Resolver:
    """Imports the modules a definition names (those inside *allow*, when given) and finds its classes."""

    def __init__(self, allow: tuple[str, ...] | None = None) -> None:
        self.errors: list[str] = []
        self._modules: dict[str, ModuleType | str] = {}
        self._allow = allow

    def module(self, path: str, name: str) -> ModuleType | None:
        if not _MODULE.match(name):
            if not name:
                why = "empty module path; write a dotted module path like 'app.domain.payments.events'"
            elif name.startswith("."):
                why = f"{name!r} is relative; write the absolute module path"
            else:
                why = f"{name!r} is not a dotted Python module path like 'app.domain.payments.events'"
            self.errors.append(f"{path}: {why}")
            return None
        cached = self._modules.get(name)
        if cached is None:
            cached = self._import(name)
            self._modules[name] = cached
        if isinstance(cached, str):
            self.errors.append(f"{path}: {cached}")
            return None
        return cached

    def _import(self, name: str) -> ModuleType | str:
        if self._allow is not None and not _is_allowed(name, self._allow):
            return _refusal(name, self._allow)
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name != e.name and not name.startswith(e.name + "."):
                return f"module {name!r} was found but failed to import: it needs {e.name!r}, which is not installed"
            return (
                f"cannot import module {name!r} (no module named {e.name!r}); check the module "
                "path, or put its root directory on the search path (--path DIR or PYTHONPATH)"
            )
        except Exception as e:  # the module's own code failed: report, do not crash validation
            return f"module {name!r} failed to import: {type(e).__name__}: {e}"

    def events_defined_with(self, classes: Sequence[type]) -> list[type]:
        """The message classes defined in the modules of *classes* (imported already: nothing is imported)."""
        return events_defined_with(*classes)

    def name_messages(self, names: Mapping[type, str], owner: str) -> None:
        """Give the classes their wire names (checked by ``plan_names``)."""
        set_names(names, owner)

    def import_names(self, i: int, imp: ImportDefinitionDTO) -> None:
        """Check an ``imports`` entry: its module, and each name in it."""
        mod = self.module(f"imports[{i}].module", imp.module)
        if mod is None:
            return
        for j, n in enumerate(imp.names):
            if not hasattr(mod, n):
                self.errors.append(f"imports[{i}].names[{j}]: module {imp.module!r} has no {n!r}")

    def cls(
        self,
        name_path: str,
        class_name: str,
        module_path: str,
        module_name: str,
        what: str,
        *,
        message: bool = True,
    ) -> type | None:
        if not class_name.isidentifier() or keyword.iskeyword(class_name):
            self.errors.append(f"{name_path}: {class_name!r} is not a Python class name")
            return None
        mod = self.module(module_path, module_name)
        if mod is None:
            return None
        obj = getattr(mod, class_name, None)
        if obj is None:
            candidates = [n for n, v in vars(mod).items() if isinstance(v, type)]
            hint = difflib.get_close_matches(class_name, candidates, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"check the name, or that {what} lives there"
            self.errors.append(f"{name_path}: module {module_name!r} has no {class_name!r} ({fix})")
            return None
        if not isinstance(obj, type):
            self.errors.append(f"{name_path}: {module_name}.{class_name} is a {type(obj).__name__}, not a class")
            return None
        if message and not is_message_type(obj):
            self.errors.append(
                f"{name_path}: {module_name}.{class_name} is not a pydantic model or dataclass; "
                f"{what} must be one, so that it can be serialised and validated"
            )
            return None
        return obj

    def loose_event(
        self,
        path: str,
        name: str,
        step: SagaStepInputDTO,
        imports: Sequence[ImportDefinitionDTO],
    ) -> type | None:
        """Resolve a compensation event, which the schema names without a module."""
        found = self.locate_loose(path, name, step, imports)
        if found is None:
            return None
        module_name, class_name = found
        return self.cls(path, class_name, path, module_name, "a compensation event")

    def locate_loose(
        self,
        path: str,
        name: str,
        step: SagaStepInputDTO,
        imports: Sequence[ImportDefinitionDTO],
    ) -> tuple[str, str] | None:
        """Where a compensation event lives, as (module, class name).

        Accepted forms: ``module.ClassName``, or a bare name found in (in this
        order) an ``imports`` entry listing it, the compensation command's
        module, the step's failure event module, its success event modules and
        its command module.
        """
        if "." in name:
            module_name, _, class_name = name.rpartition(".")
            return module_name, class_name
        if not name.isidentifier() or keyword.iskeyword(name):
            self.errors.append(f"{path}: {name!r} is not a Python class name")
            return None
        candidates: list[str] = [imp.module for imp in imports if name in imp.names]
        if step.compensation_command_module:
            candidates.append(step.compensation_command_module)
        if step.failure_event_module:
            candidates.append(step.failure_event_module)
        candidates += [m for m, _ in success_events(step)]
        candidates.append(step.command_module)
        tried = list(dict.fromkeys(c for c in candidates if _MODULE.match(c)))
        if self._allow is not None:
            # A module outside the allowed packages is reported on its own field.
            allow = self._allow
            tried = [t for t in tried if _is_allowed(t, allow)]
        for module_name in tried:
            cached = self._modules.get(module_name)
            if cached is None:
                cached = self._modules[module_name] = self._import(module_name)
            if isinstance(cached, ModuleType) and isinstance(getattr(cached, name, None), type):
                return module_name, name
        self.errors.append(
            f"{path}: class {name!r} not found in {', '.join(repr(t) for t in tried) or 'any module'}; "
            "the schema gives compensation events no module field, so write it as "
            "'module.ClassName' or list it in an 'imports' entry"
        )
        return None


@dataclasses.dataclass(frozen=True)
class _StandIn:
    """Base of the classes that stand in for a definition's classes when nothing is imported."""


class _StandIns(_Resolver):
    """Checks names and module paths without importing: each class is a stand-in of its name.

    One stand-in per (module, class name), so the build's checks that compare
    classes (an event listed twice, a reply both success and failure) work
    as with the real classes. Every stand-in is a dataclass, which
    ``SagaBuilder`` accepts as a message type.
    """

    def __init__(self) -> None:
        super().__init__(allow=())
        self._stand_ins: dict[tuple[str, str], type] = {}

    def stand_in(self, module_name: str, class_name: str) -> type:
        key = (module_name, class_name)
        found = self._stand_ins.get(key)
        if found is None:
            namespace = {"__module__": module_name or "<unknown>", "__qualname__": class_name}
            found = type(class_name, (_StandIn,), namespace)
            self._stand_ins[key] = found
        return found

    def module(self, path: str, name: str) -> ModuleType | None:
        if not _MODULE.match(name):
            super().module(path, name)  # reports why the path is malformed
        return None

    def events_defined_with(self, classes: Sequence[type]) -> list[type]:
        return []  # finding them needs the modules imported

    def name_messages(self, names: Mapping[type, str], owner: str) -> None:
        pass  # stand-ins are not sent: the names were checked, nothing to give

    def import_names(self, i: int, imp: ImportDefinitionDTO) -> None:
        self.module(f"imports[{i}].module", imp.module)
        for j, n in enumerate(imp.names):
            if not n.isidentifier() or keyword.iskeyword(n):
                self.errors.append(f"imports[{i}].names[{j}]: {n!r} is not a Python name")

    def cls(
        self,
        name_path: str,
        class_name: str,
        module_path: str,
        module_name: str,
        what: str,
        *,
        message: bool = True,
    ) -> type | None:
        if not class_name.isidentifier() or keyword.iskeyword(class_name):
            self.errors.append(f"{name_path}: {class_name!r} is not a Python class name")
            return None
        if not _MODULE.match(module_name):
            self.module(module_path, module_name)
            return None
        return self.stand_in(module_name, class_name)

    def loose_event(
        self,
        path: str,
        name: str,
        step: SagaStepInputDTO,
        imports: Sequence[ImportDefinitionDTO],
    ) -> type | None:
        if "." in name:
            module_name, _, class_name = name.rpartition(".")
            return self.cls(path, class_name, path, module_name, "a compensation event")
        if not name.isidentifier() or keyword.iskeyword(name):
            self.errors.append(f"{path}: {name!r} is not a Python class name")
            return None
        # Where a bare name lives is found by importing; without that, the name alone identifies it.
        return self.stand_in("", name)


# ---------------------------------------------------------------- building


def load_definition(
    source: Source,
    *,
    version: int = 1,
    search_path: Sequence[str | os.PathLike[str]] | None = None,
    allow_modules: Sequence[str] | None = None,
) -> SagaDefinition:
    """Load a saga definition in the declarative format of seed 000, importing the modules it names.

    Importing a module runs its top-level code: load only definitions you
    trust, or name the packages they may import from with *allow_modules*.
    ``check_definition`` validates a definition without importing anything.

    Args:
        source: a ``.json``/``.yaml``/``.yml`` file (other names: JSON if it
            parses as JSON, else YAML), or the definition as a mapping.
        version: the definition version to build.
        search_path: directories put in front of ``sys.path`` while modules are
            resolved.
        allow_modules: package names (``["myapp"]``): only these packages and
            the modules inside them are imported; a definition naming any
            other module is refused. None (the default) imports any module.

    Returns:
        The same ``SagaDefinition`` that ``SagaBuilder`` makes: one ``send``
        step per definition step, in order; triggers with their compiled
        correlation; the state DTO; the completion and failure events. The
        orchestrator's class name, description, state repository class,
        custom imports and compensating-transaction steps are in ``extras``
        (``orchestrator``, ``description``, ``state_repository``, ``imports``,
        ``compensating_transactions``).

    Raises:
        InvalidDefinition: (a DefinitionError) listing every problem with its
            field path, the value and the reason; a file over a limit (size,
            nesting, YAML aliases, number digits, steps) is one problem naming it.
        ValueError: an *allow_modules* entry is not a package name.
    """
    roots = allowed_roots(allow_modules)
    dto = read_definition(source)
    return _build_from(dto, version, search_path, _origin(source), _Resolver(roots))


def check_definition(source: Source, *, version: int = 1) -> SagaOrchestratorInputDTO:
    """Validate a definition completely without importing anything; return its model.

    Checks what ``load_definition`` checks except that the modules exist and
    hold the classes: the fields, every name and module path, the step
    graph, the correlation lambdas, and the definition ``SagaBuilder`` would
    build (with stand-ins for the classes).

    Raises:
        InvalidDefinition: listing every problem with its field path.
    """
    dto = read_definition(source)
    outline(dto, version=version, origin=_origin(source))
    return dto


def outline(dto: SagaOrchestratorInputDTO, *, version: int = 1, origin: str | None = None) -> SagaDefinition:
    """The definition built with stand-in classes named after the definition's (imports nothing).

    For checking and drawing only: its classes are empty dataclasses, so an
    engine cannot run it.

    Raises:
        InvalidDefinition: listing every problem with its field path.
    """
    return _build(dto, version, origin, _StandIns())


def build_definition_from(
    dto: SagaOrchestratorInputDTO,
    *,
    version: int = 1,
    search_path: Sequence[str | os.PathLike[str]] | None = None,
    origin: str | None = None,
    allow_modules: Sequence[str] | None = None,
) -> SagaDefinition:
    """Resolve a validated definition's modules and build its ``SagaDefinition``.

    *allow_modules* limits the imports as for ``load_definition``.

    Raises:
        InvalidDefinition: listing every problem with its field path.
        ValueError: an *allow_modules* entry is not a package name.
    """
    return _build_from(dto, version, search_path, origin, _Resolver(allowed_roots(allow_modules)))


def _build_from(
    dto: SagaOrchestratorInputDTO,
    version: int,
    search_path: Sequence[str | os.PathLike[str]] | None,
    origin: str | None,
    resolver: _Resolver,
) -> SagaDefinition:
    with extended_sys_path(search_path):
        return _build(dto, version, origin, resolver)


def _build(dto: SagaOrchestratorInputDTO, version: int, origin: str | None, r: _Resolver) -> SagaDefinition:
    errors = r.errors
    if not _NAME.match(dto.saga_type):
        errors.append(
            f"saga_type: {dto.saga_type!r} is not a valid saga name; use letters, digits, "
            "'_', '-' or '.', starting with a letter or '_'"
        )
    if not dto.steps:
        errors.append("steps: the saga has no steps; add at least one")

    state = r.cls("state_dto_name", dto.state_dto_name, "state_dto_module", dto.state_dto_module, "the state DTO")
    repository = r.cls(
        "state_repository_name",
        dto.state_repository_name,
        "state_repository_module",
        dto.state_repository_module,
        "the state repository",
        message=False,
    )

    for i, imp in enumerate(dto.imports):
        r.import_names(i, imp)

    options = dto.sagakit or SagaOptions()
    named: list[tuple[str, type, str]] = []  # (field path, class, class name in the definition)

    triggers: list[tuple[type, CorrelationFunction]] = []
    seen_triggers: dict[type, int] = {}
    for i, t in enumerate(dto.triggering_events):
        at = f"triggering_events[{i}]"
        event = r.cls(f"{at}.event_name", t.event_name, f"{at}.event_module", t.event_module, "a triggering event")
        if event is not None:
            named.append((f"{at}.event_name", event, t.event_name))
        try:
            fn = compile_correlation(t.correlation_id_provider_str, field=f"{at}.correlation_id_provider_str")
        except DefinitionError as e:
            errors.append(str(e))
            continue
        if event is None:
            continue
        if event in seen_triggers:
            errors.append(
                f"{at}.event_name: {t.event_name!r} already triggers the saga in "
                f"triggering_events[{seen_triggers[event]}]; list each event once"
            )
            continue
        seen_triggers[event] = i
        triggers.append((event, fn))

    steps: list[_BuiltStep] = []
    seen_steps: dict[str, int] = {}
    for i, step in enumerate(dto.steps):
        built = _step(r, i, step, dto.imports, seen_steps, named)
        if built is not None:
            steps.append(built)

    outcome: dict[str, type | None] = {"completion": None, "failure": None}
    for kind in ("completion", "failure"):
        name = getattr(dto, f"{kind}_event_name")
        if name is not None:
            found = r.cls(
                f"{kind}_event_name",
                name,
                f"{kind}_event_module",
                getattr(dto, f"{kind}_event_module"),
                f"the saga's {kind} event",
            )
            outcome[kind] = found
            if found is not None:
                named.append((f"{kind}_event_name", found, name))

    known = _known_events(r, dto, options, named, exclude={state})
    owner = f"saga {dto.saga_type!r}" + (f" ({origin})" if origin else "")
    wire_names: dict[type, str] = {}
    if options.names_from_definition and not errors:
        wire_names, problems = plan_names(
            [(f"{path}", cls, options.wire_name(class_name)) for path, cls, class_name in named], owner
        )
        errors += [f"{EXTENSION}.message_names: {p}" for p in problems]

    if errors:
        raise InvalidDefinition(_listed(errors[:MAX_ERRORS], len(errors)), origin)
    assert state is not None and repository is not None  # errors otherwise

    b = SagaBuilder(dto.saga_type, version=version, description=dto.description, deadline=options.deadline)
    b.state(state)
    for event, fn in triggers:
        b.trigger(event, correlation=fn)
    for built in steps:
        b.step(built.name, action=built.action, compensation=built.compensation, **built.settings)
    if known:
        b.known_events(*known)
    if outcome["completion"] is not None:
        b.on_completed(outcome["completion"])
    if outcome["failure"] is not None:
        b.on_failed(outcome["failure"])
    b.extras.update(
        orchestrator=dto.name,
        description=dto.description,
        state_repository=repository,
        imports=tuple((imp.module, tuple(imp.names)) for imp in dto.imports),
        compensating_transactions=tuple(s.step_name for s in dto.steps if s.is_compensating_transaction),
    )
    try:
        built_definition = b.build()
    except DefinitionError as e:
        raise InvalidDefinition([f"(definition): {e}"], origin) from None
    r.name_messages(wire_names, owner)
    return built_definition


def _known_events(
    r: _Resolver,
    dto: SagaOrchestratorInputDTO,
    options: SagaOptions,
    named: list[tuple[str, type, str]],
    exclude: set[type | None],
) -> list[type]:
    """The events the saga knows that no step declares: listed in ``known_events``, and found beside its events.

    The modules scanned are those that define the steps' success, failure
    and compensation events (the participants' events); the classes the saga
    sends, publishes or is triggered by, and those a step declares, are left
    out. Each is added to *named*, so that it gets its wire name too.
    """
    at = f"{EXTENSION}.known_events"
    declared: set[type | None] = {*(cls for _, cls, _ in named), *exclude}
    found: list[type] = []
    for i, k in enumerate(options.known_events):
        cls = r.cls(f"{at}[{i}].event_name", k.event_name, f"{at}[{i}].event_module", k.event_module, "a known event")
        if cls is None:
            continue
        if cls in declared:
            r.errors.append(
                f"{at}[{i}].event_name: {k.event_module}.{k.event_name} is already one of the saga's commands or "
                "events; list here only events no step declares"
            )
            continue
        if cls not in found:
            found.append(cls)
            named.append((f"{at}[{i}].event_name", cls, k.event_name))
    if not options.scan_event_modules:
        return found
    replies = [cls for path, cls, _ in named if path.startswith("steps[") and "command_name" not in path]
    for cls in r.events_defined_with(replies):
        if cls not in declared and cls not in found:
            found.append(cls)
            named.append((f"{cls.__module__}.{cls.__qualname__} (found beside the steps' events)", cls, cls.__name__))
    return found


@dataclasses.dataclass(frozen=True)
class _BuiltStep:
    name: str
    action: SendCommand
    compensation: SendCommand | None
    settings: dict[str, Any]  # SagaBuilder.step's retry and timeout arguments


COMPENSATION_RETRY = RetryPolicy(max_attempts=10, initial_delay=0.1, max_delay=60.0)
"""SagaBuilder's default retry of a compensation; a compensation_retry block starts from it."""


def retry_policy(given: RetryOptions, default: RetryPolicy) -> RetryPolicy:
    """*default* with the fields a retry block gives (not validated)."""
    return RetryPolicy(
        max_attempts=default.max_attempts if given.max_attempts is None else given.max_attempts,
        initial_delay=default.initial_delay if given.initial_delay is None else given.initial_delay,
        multiplier=default.multiplier if given.multiplier is None else given.multiplier,
        max_delay=default.max_delay if given.max_delay is None else given.max_delay,
        jitter=default.jitter if given.jitter is None else given.jitter,
    )


def _retry(r: _Resolver, where: str, given: RetryOptions | None, default: RetryPolicy) -> RetryPolicy | None:
    if given is None:
        return None
    policy = retry_policy(given, default)
    try:
        policy.validate(where)
    except DefinitionError as e:
        defaults = ", ".join(f"{k} {getattr(default, k)!r}" for k in ("initial_delay", "max_delay"))
        r.errors.append(f"{e} (the defaults of the fields not given: {defaults})")
        return None
    return policy


def _settings(r: _Resolver, at: str, step: SagaStepInputDTO) -> dict[str, Any]:
    """SagaBuilder.step's keyword arguments from the step's x-sagakit block."""
    opts = step.sagakit
    if opts is None:
        return {}
    where = f"{at}.{EXTENSION}"
    out: dict[str, Any] = {}
    retry = _retry(r, f"{where}.retry (step {step.step_name!r})", opts.retry, RetryPolicy())
    if retry is not None:
        out["retry"] = retry
    comp_retry = _retry(
        r,
        f"{where}.compensation_retry (step {step.step_name!r})",
        opts.compensation_retry,
        COMPENSATION_RETRY,
    )
    if comp_retry is not None:
        out["compensation_retry"] = comp_retry
    if opts.timeout is not None:
        out["timeout"] = opts.timeout
    if opts.compensation_timeout is not None:
        out["compensation_timeout"] = opts.compensation_timeout
    has_compensation = step.compensation_command_name is not None
    for field in ("compensation_retry", "compensation_timeout", "compensation_reply_timeout"):
        value = getattr(opts, field)
        if value is not None and not has_compensation:
            r.errors.append(
                f"{where}.{field} (step {step.step_name!r}): set for a step without compensation_command_name, "
                "so there is no compensation to apply it to; remove it or add the compensation"
            )
    return out


def _step(
    r: _Resolver,
    i: int,
    step: SagaStepInputDTO,
    imports: Sequence[ImportDefinitionDTO],
    seen: dict[str, int],
    named: list[tuple[str, type, str]],
) -> _BuiltStep | None:
    at = f"steps[{i}]"
    n_errors = len(r.errors)
    if not _NAME.match(step.step_name):
        r.errors.append(
            f"{at}.step_name: {step.step_name!r} is not a valid step name; use letters, digits, "
            "'_', '-' or '.', starting with a letter or '_'"
        )
    elif step.step_name in seen:
        r.errors.append(
            f"{at}.step_name: {step.step_name!r} is already the name of steps[{seen[step.step_name]}]; "
            "step names must be unique"
        )
    else:
        seen[step.step_name] = i

    command = r.cls(f"{at}.command_name", step.command_name, f"{at}.command_module", step.command_module, "a command")
    pairs = success_events(step)
    many_names = isinstance(step.success_event_name, list)
    many_modules = isinstance(step.success_event_module, list)
    success: list[type | None] = []
    for j, (module_name, class_name) in enumerate(pairs):
        name_path = f"{at}.success_event_name" + (f"[{j}]" if many_names else "")
        module_path = f"{at}.success_event_module" + (
            f"[{j}]" if many_modules and len(step.success_event_module) > 1 else ""
        )
        success.append(r.cls(name_path, class_name, module_path, module_name, "a success event"))
    failure = None
    if step.failure_event_name is not None and step.failure_event_module is not None:
        failure = r.cls(
            f"{at}.failure_event_name",
            step.failure_event_name,
            f"{at}.failure_event_module",
            step.failure_event_module,
            "a failure event",
        )
    comp_command = comp_success = comp_failure = None
    if step.compensation_command_name is not None and step.compensation_command_module is not None:
        comp_command = r.cls(
            f"{at}.compensation_command_name",
            step.compensation_command_name,
            f"{at}.compensation_command_module",
            step.compensation_command_module,
            "a compensation command",
        )
        if step.compensation_success_event_name is not None:
            comp_success = r.loose_event(
                f"{at}.compensation_success_event_name", step.compensation_success_event_name, step, imports
            )
        if step.compensation_failure_event_name is not None:
            comp_failure = r.loose_event(
                f"{at}.compensation_failure_event_name", step.compensation_failure_event_name, step, imports
            )

    for j, pair in enumerate(pairs):
        if pair in pairs[:j]:
            r.errors.append(f"{at}.success_event_name[{j}]: {pair[1]!r} from {pair[0]!r} is listed twice")
    if failure is not None and failure in success:
        r.errors.append(
            f"{at}.failure_event_name: {step.failure_event_name!r} is also a success event of the step; "
            "a reply must mean success or failure, not both"
        )
    if comp_success is not None and comp_success is comp_failure:
        r.errors.append(
            f"{at}.compensation_failure_event_name: the same event as compensation_success_event_name; "
            "a reply must mean success or failure, not both"
        )

    settings = _settings(r, at, step)
    given: tuple[tuple[str, type | None, str | None], ...] = (
        (f"{at}.command_name", command, step.command_name),
        *(
            (f"{at}.success_event_name" + (f"[{j}]" if many_names else ""), cls, name)
            for j, (cls, (_, name)) in enumerate(zip(success, pairs, strict=True))
        ),
        (f"{at}.failure_event_name", failure, step.failure_event_name),
        (f"{at}.compensation_command_name", comp_command, step.compensation_command_name),
        (f"{at}.compensation_success_event_name", comp_success, step.compensation_success_event_name),
        (f"{at}.compensation_failure_event_name", comp_failure, step.compensation_failure_event_name),
    )
    for path, cls, written in given:
        if cls is not None and written is not None:
            named.append((path, cls, written.rpartition(".")[2]))

    if len(r.errors) != n_errors or command is None:
        return None
    opts = step.sagakit
    action = send(
        command,
        success=[s for s in success if s is not None],
        failure=failure,
        reply_timeout=opts.reply_timeout if opts is not None else None,
    )
    compensation = None
    if comp_command is not None:
        compensation = send(
            comp_command,
            success=comp_success,
            failure=comp_failure,
            reply_timeout=opts.compensation_reply_timeout if opts is not None else None,
        )
    return _BuiltStep(step.step_name, action, compensation, settings)
