"""Definition files that must not run code, and input built to hang or exhaust the loader.

Validating imports nothing unless asked; resolving imports only inside the
allowed packages; every oversized or malformed file ends in one error line
that names the limit, quickly.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from sagakit.cli._main import cli
from sagakit.declarative import InvalidDefinition, _loader, _parse, check_definition, generate, load_definition

from .conftest import SEED

APP = "app_root_name"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def problems(source: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(InvalidDefinition) as e:
        check_definition(source, **kwargs)
    assert all("\n" not in line for line in e.value.errors)
    return list(e.value.errors)


# ---------------------------------------------------------------- imports


@pytest.fixture
def marker_pkg(tmp_path: Path) -> Iterator[Path]:
    """A package in tmp_path/libs whose import writes tmp_path/imported (and its name)."""
    pkg = tmp_path / "libs" / "marker_pkg"
    pkg.mkdir(parents=True)
    marker = tmp_path / "imported"
    (pkg / "__init__.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text(__name__)\n"
        "from pydantic import BaseModel\n\n"
        "class Go(BaseModel):\n    order_id: str = ''\n"
    )
    yield marker
    for name in [m for m in sys.modules if m == "marker_pkg" or m.startswith("marker_pkg.")]:
        del sys.modules[name]


def naming(tmp_path: Path, seed: dict[str, Any], module: str) -> Path:
    seed["steps"][0]["command_module"] = module
    seed["steps"][0]["command_name"] = "Go"
    f = tmp_path / "saga.json"
    f.write_text(json.dumps(seed))
    return f


def test_validate_does_not_import_venv_main(
    tmp_path: Path, seed: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Importing venv.__main__ creates a virtual environment in the current directory.
    work = tmp_path / "work"
    work.mkdir()
    f = naming(tmp_path, seed, "venv.__main__")
    monkeypatch.chdir(work)
    monkeypatch.delitem(sys.modules, "venv.__main__", raising=False)
    result = run("validate", str(f))
    assert result.exit_code == 0, result.output
    assert "modules not imported" in result.stdout
    assert "venv.__main__" not in sys.modules
    assert list(work.iterdir()) == []
    result = run("validate", "--allow-module", APP, str(f))
    assert result.exit_code == 1
    assert result.stderr == (
        f"{f}: steps[0].command_module: module 'venv.__main__' was not imported: it is outside the packages "
        f"allowed to be imported ('{APP}'); if you trust its code, allow it with --allow-module venv "
        "(allow_modules=['venv'] in Python)\n"
    )
    assert "venv.__main__" not in sys.modules
    assert list(work.iterdir()) == []


def test_validate_imports_only_when_asked_and_only_allowed_packages(
    tmp_path: Path, seed: dict[str, Any], marker_pkg: Path
) -> None:
    f = naming(tmp_path, seed, "marker_pkg")
    libs = str(tmp_path / "libs")
    assert run("validate", "--path", libs, str(f)).exit_code == 0
    assert run("graph", "--path", libs, str(f)).exit_code == 0
    assert not marker_pkg.exists()

    result = run("validate", "--path", libs, "--resolve", "--allow-module", APP, str(f))
    assert result.exit_code == 1
    assert "module 'marker_pkg' was not imported" in result.stderr
    assert "--allow-module marker_pkg" in result.stderr
    assert not marker_pkg.exists()

    result = run("validate", "--path", libs, "--allow-module", APP, "--allow-module", "marker_pkg", str(f))
    assert result.exit_code == 0, result.output
    assert marker_pkg.read_text() == "marker_pkg"


def test_resolve_needs_allowed_packages() -> None:
    result = CliRunner().invoke(cli, ["validate", "--resolve", str(SEED)])
    assert result.exit_code == 2
    assert "name the packages it may import from with --allow-module PACKAGE" in result.output
    result = CliRunner().invoke(cli, ["validate", "--allow-module", "not a package", str(SEED)])
    assert result.exit_code == 2
    assert "'not a package' is not a package name" in result.output


def test_a_package_allows_its_submodules_only() -> None:
    assert load_definition(SEED, allow_modules=[APP]).name == "OrderProcessingSaga"
    with pytest.raises(InvalidDefinition) as e:
        load_definition(SEED, allow_modules=["app_root_name.domain"])
    assert e.value.errors[0] == (
        "state_repository_module: module 'app_root_name.infrastructure.persistence.ordering.repositories."
        "order_processing_saga_state_repository' was not imported: it is outside the packages allowed to be "
        "imported ('app_root_name.domain'); if you trust its code, allow it with --allow-module app_root_name "
        "(allow_modules=['app_root_name'] in Python)"
    )
    with pytest.raises(InvalidDefinition, match="'app_root_nam' was not imported"):
        load_definition({**json.loads(SEED.read_text()), "state_dto_module": "app_root_nam"}, allow_modules=[APP])
    with pytest.raises(ValueError, match="allow_modules entry '../x' is not a package name"):
        load_definition(SEED, allow_modules=["../x"])


def test_generate_refuses_before_importing(tmp_path: Path, seed: dict[str, Any], marker_pkg: Path) -> None:
    f = naming(tmp_path, seed, "marker_pkg")
    out = tmp_path / "out"
    with pytest.raises(InvalidDefinition, match="module 'marker_pkg' was not imported"):
        generate(f, bounded_ctx="ordering", root=out, search_path=[tmp_path / "libs"], allow_modules=[APP])
    result = run("generate", str(f), "--bounded-ctx", "ordering", "--out", str(out), "--allow-module", APP)
    assert result.exit_code == 1
    assert "--allow-module marker_pkg" in result.stderr
    assert not marker_pkg.exists()
    assert not out.exists()


def test_worker_limits_a_definition_files_imports(
    tmp_path: Path, seed: dict[str, Any], marker_pkg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sagakit.admin import DefinitionsNotLoaded, load_definitions

    monkeypatch.setattr(sys, "path", list(sys.path))  # load_definitions adds --path for good

    assert [d.name for d in load_definitions([str(SEED)], allow_modules=[APP])] == ["OrderProcessingSaga"]
    f = naming(tmp_path, seed, "marker_pkg")
    with pytest.raises(DefinitionsNotLoaded, match="module 'marker_pkg' was not imported"):
        load_definitions([str(f)], path=[str(tmp_path / "libs")], allow_modules=[APP])
    result = CliRunner().invoke(cli, ["worker", str(f), "--path", str(tmp_path / "libs"), "--allow-module", APP])
    assert result.exit_code == 2
    assert "--allow-module marker_pkg" in result.output
    assert not marker_pkg.exists()


def test_format_only_still_checks_names_graph_and_lambdas(seed: dict[str, Any]) -> None:
    seed["steps"][1]["step_name"] = seed["steps"][0]["step_name"]
    seed["steps"][0]["command_module"] = "app..commands"
    seed["steps"][0]["success_event_name"] = ["Paid", "Paid"]
    seed["triggering_events"][0]["correlation_id_provider_str"] = "lambda e: __import__('os')"
    seed["steps"][1]["compensation_success_event_name"] = "Undone"
    seed["steps"][1]["compensation_failure_event_name"] = "Undone"
    assert problems(seed) == [
        "triggering_events[0].correlation_id_provider_str: calling '__import__' at column 11 is not allowed: "
        "only str(), int() and float() may be called (in \"lambda e: __import__('os')\")",
        "steps[0].command_module: 'app..commands' is not a dotted Python module path like 'app.domain.payments.events'",
        "steps[0].success_event_name[1]: 'Paid' from 'app_root_name.domain.payments.events' is listed twice",
        "steps[1].step_name: 'ProcessPayment' is already the name of steps[0]; step names must be unique",
        "steps[1].compensation_failure_event_name: the same event as compensation_success_event_name; "
        "a reply must mean success or failure, not both",
    ]


# ---------------------------------------------------------------- limits


def problem_of(tmp_path: Path, name: str, text: str | bytes) -> str:
    f = tmp_path / name
    if isinstance(text, bytes):
        f.write_bytes(text)
    else:
        f.write_text(text)
    started = time.perf_counter()
    found = problems(f)
    assert time.perf_counter() - started < 30  # a hang would hit the test timeout first; this names it
    assert len(found) == 1, found
    result = run("validate", str(f))
    assert result.exit_code == 1
    assert result.stderr == f"{f}: {found[0]}\n"
    return found[0]


# Nine lists of nine aliases to the list before: 9**9 (387 million) values once expanded.
BOMB = "\n".join(
    ["a: &a [x,x,x,x,x,x,x,x,x]"] + [f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
)


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    assert len(BOMB.encode()) < 400
    bomb = problem_of(tmp_path, "bomb.yaml", BOMB)
    assert bomb.startswith("more than 2,000,000 values at line 7 column ")
    assert bomb.endswith(", counting each YAML alias as the value it repeats (limit)")
    # Under a field that is read, where the expanded value would be walked and shown in the error.
    assert problem_of(tmp_path, "bomb2.yaml", BOMB.replace("i: &i", "name:")) == bomb


def test_aliases_beyond_the_limit_and_recursive_aliases(tmp_path: Path) -> None:
    many = "a: &a x\nb: [" + ", ".join(["*a"] * (_parse.MAX_ALIASES + 1)) + "]\n"
    assert problem_of(tmp_path, "many.yaml", many).startswith(
        f"more than {_parse.MAX_ALIASES} YAML aliases (*a) at line 2 column "
    )
    assert problem_of(tmp_path, "loop.yaml", "a: &a [1, *a]\n") == (
        "the YAML alias *a at line 1 column 11 refers to a value that contains it; a definition cannot be recursive"
    )


def test_a_few_aliases_are_fine(tmp_path: Path, seed: dict[str, Any]) -> None:
    import yaml

    text = yaml.safe_dump(seed).replace(
        "command_module: app_root_name.application.payments.commands",
        "command_module: &pay app_root_name.application.payments.commands",
        1,
    )
    text = text.replace("command_module: app_root_name.application.payments.commands", "command_module: *pay")
    f = tmp_path / "saga.yaml"
    f.write_text(text)
    assert check_definition(f).steps[0].command_module == "app_root_name.application.payments.commands"


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deep_nesting(tmp_path: Path, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    assert problem_of(tmp_path, "deep.json", '{"name": ' + nested + "}") == (
        "nesting deeper than 64 levels at line 1 column 73 (limit; a definition needs 4)"
    )
    found = problem_of(tmp_path, "deep.yaml", "name: " + nested + "\n")
    assert found.startswith("nesting deeper than 64 levels at line 1 column ")
    assert found.endswith(" (limit; a definition needs 4)")
    block = "".join(f"{'  ' * i}k:\n" for i in range(depth if depth < 1000 else 1000)) + "  " * 1000 + "v\n"
    assert problem_of(tmp_path, "block.yaml", block).startswith("nesting deeper than 64 levels at line 65 ")
    # The limit is deep enough for any definition.
    (tmp_path / "ok.json").write_text('{"name": ' + "[" * 63 + "]" * 63 + "}")
    assert problems(tmp_path / "ok.json")[0] == "name: must be a string, got [[[[...]]]]"


def test_nesting_in_a_mapping_given_in_python() -> None:
    data: dict[str, Any] = {"name": []}
    inner = data["name"]
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    assert problems(data) == ["nesting deeper than 64 levels (limit; a definition needs 4)"]
    cyclic: dict[str, Any] = {}
    cyclic["name"] = cyclic
    assert problems(cyclic) == ["nesting deeper than 64 levels (limit; a definition needs 4)"]


def test_huge_integers(tmp_path: Path) -> None:
    digits = "1" * 100_000
    assert problem_of(tmp_path, "int.json", '{"name": ' + digits + "}") == (
        "a number of 100,000 digits at line 1 column 10; the limit is 100 digits "
        "(no field of the format is a number: quote it if it is a name)"
    )
    assert problem_of(tmp_path, "int.yaml", "name: " + digits + "\n") == (
        "a number of 100,000 digits at line 1 column 7; the limit is 100 digits "
        "(no field of the format is a number: quote it if it is a name)"
    )
    for text in ("name: 0x" + "f" * 5000, "name: !!int '" + digits + "'", "name: " + "1:" * 3000 + "1"):
        assert "digits at line 1 column 7; the limit is 100 digits" in problem_of(tmp_path, "int2.yaml", text)
    assert problems({"name": 10**100_000}) == [
        "a number of 100,000 digits; the limit is 100 digits (no field of the format is a number: quote it if it is "
        "a name)"
    ]
    # A short number is only a wrong type.
    assert problems({"name": 12})[0] == "name: must be a string, got 12"


def test_file_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_parse, "MAX_BYTES", 1000)
    assert problem_of(tmp_path, "big.json", '{"description": "' + "x" * 2000 + '"}') == (
        "the file is 2,019 bytes; the limit is 1,000 (a saga definition is far smaller)"
    )


def test_too_many_steps(tmp_path: Path, seed: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_parse, "MAX_STEPS", 3)
    seed["steps"] = [dict(seed["steps"][0], step_name=f"S{i}") for i in range(4)]
    expected = (
        "steps: 4 steps; the limit is 3 (too many steps for one saga: split it into sagas that trigger each other)"
    )
    assert problem_of(tmp_path, "steps.json", json.dumps(seed)) == expected
    assert problems(seed) == [expected]


def test_floods_of_keys_items_and_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {f"k{i}": 1 for i in range(101)}
    assert problem_of(tmp_path, "keys.json", json.dumps(keys)) == (
        "a mapping of 101 keys; the limit is 100 (the format's largest mapping has 15 fields)"
    )
    assert problem_of(tmp_path, "items.json", json.dumps({"imports": [1] * 50_001})) == (
        "a list of 50,001 items; the limit is 50,000"
    )
    monkeypatch.setattr(_parse, "MAX_NODES", 1000)
    assert problem_of(tmp_path, "values.json", json.dumps({"imports": [[1] * 99] * 11})) == (
        "more than 1,000 values (limit)"
    )


def test_problems_listed_are_capped(seed: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of broken steps are counted, and the first ones listed in pydantic's order."""
    monkeypatch.setattr(_loader, "MAX_ERRORS", 4)
    seed["steps"] = [{"step_name": f"S{i}", "extra": 1} for i in range(3000)]
    seed["name"] = 1
    seed["zz"] = 2
    assert problems(seed) == [
        "name: must be a string, got 1",
        "steps[0].command_name: required field is missing; add it",
        "steps[0].command_module: required field is missing; add it",
        "steps[0].success_event_name: required field is missing; add it",
        "... and 14,998 more problems (only the first 4 are listed)",
    ]


def test_values_that_yaml_cannot_build(tmp_path: Path) -> None:
    assert problem_of(tmp_path, "date.yaml", "name: 2024-13-45\n") == (
        "invalid YAML: a value cannot be read (ValueError: month must be in 1..12)"
    )
    assert problem_of(tmp_path, "nul.yaml", b"name: a\x00b\n").startswith("invalid YAML")
    assert problem_of(tmp_path, "empty_int.yaml", "name: !!int ''\n") == (
        "invalid YAML: a value cannot be read (IndexError: string index out of range)"
    )
    assert problem_of(tmp_path, "latin.json", "name: caf\xe9".encode("latin-1")).startswith("not UTF-8 text: ")


# ---------------------------------------------------------------- 20,000 steps


def many_steps(n: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SEED.read_text())
    first, second = data["steps"]
    data["steps"] = [dict((first, second)[i % 2], step_name=f"Step{i}") for i in range(n)]
    return data


def test_twenty_thousand_steps_validate_in_linear_time(tmp_path: Path) -> None:
    """Prints time and peak memory; quadratic work took minutes and gigabytes here."""
    f = tmp_path / "big.json"
    f.write_text(json.dumps(many_steps(20_000)))
    started = time.perf_counter()
    dto = check_definition(f)
    checked = time.perf_counter()
    definition = load_definition(f, allow_modules=[APP])
    loaded = time.perf_counter()
    assert len(dto.steps) == len(definition.steps) == 20_000
    assert definition.ancestors["Step19999"] == frozenset(f"Step{i}" for i in range(19_999))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(
        f"\n20,000 steps: checked in {checked - started:.2f} s, loaded in {loaded - checked:.2f} s, peak RSS {peak} MB"
    )
