"""sagakit validate / generate / graph through click's CliRunner."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner, Result

from sagakit.cli._main import cli
from tests.conftest import require_service

from .conftest import SEED


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_the_commands_are_registered() -> None:
    out = run("--help").output
    for name in ("validate", "generate", "graph"):
        assert f"  {name} " in out


def test_validate_ok() -> None:
    result = run("validate", str(SEED))
    assert result.exit_code == 0
    assert result.stdout == (
        f"{SEED}: OK: saga 'OrderProcessingSaga' (orchestrator OrderProcessingSagaOrchestrator): "
        "2 steps, 1 trigger, 1 compensation (modules not imported; --resolve --allow-module PACKAGE checks them)\n"
    )
    result = run("validate", "--resolve", "--allow-module", "app_root_name", str(SEED))
    assert result.exit_code == 0
    assert result.stdout == (
        f"{SEED}: OK: saga 'OrderProcessingSaga' (orchestrator OrderProcessingSagaOrchestrator): "
        "2 steps, 1 trigger, 1 compensation\n"
    )


def test_validate_reports_every_error_on_its_own_line(tmp_path: Path, seed: dict[str, Any]) -> None:
    seed["steps"][0]["command_name"] = "Nope"
    seed["triggering_events"][0]["correlation_id_provider_str"] = "lambda e: e.__class__"
    bad = write(tmp_path / "bad.json", seed)
    result = run("validate", "--allow-module", "app_root_name", str(SEED), str(bad))
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{SEED}: OK")
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{bad}: triggering_events[0].correlation_id_provider_str: the attribute '__class__'")
    assert lines[1].startswith(f"{bad}: steps[0].command_name: module 'app_root_name.application.payments.commands'")


def test_validate_a_file_that_is_not_there(tmp_path: Path) -> None:
    result = run("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert (
        result.stderr == f"{tmp_path / 'nope.yaml'}: file not found: {str(tmp_path / 'nope.yaml')!r} (check the path)\n"
    )


def test_validate_needs_a_file() -> None:
    result = CliRunner().invoke(cli, ["validate"])
    assert result.exit_code == 2
    assert "Missing argument 'FILES...'" in result.output


def test_path_option_and_current_directory(
    tmp_path: Path, seed: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "libs" / "cli_only_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pydantic import BaseModel\n\nclass Done(BaseModel):\n    x: str = ''\n")
    seed["completion_event_name"] = "Done"
    seed["completion_event_module"] = "cli_only_pkg"
    f = write(tmp_path / "saga.json", seed)
    assert run("validate", str(f)).exit_code == 0  # nothing imported
    resolve = ("validate", "--allow-module", "app_root_name", "--allow-module", "cli_only_pkg")
    assert run(*resolve, str(f)).exit_code == 1
    assert run(*resolve, "--path", str(tmp_path / "libs"), str(f)).exit_code == 0
    monkeypatch.chdir(tmp_path / "libs")  # the current directory is always searched
    assert run(*resolve, str(f)).exit_code == 0
    import sys

    sys.modules.pop("cli_only_pkg", None)


def test_generate_prints_the_path_it_wrote(tmp_path: Path) -> None:
    result = run("generate", str(SEED), "--bounded-ctx", "ordering", "--root", str(tmp_path))
    assert result.exit_code == 0, result.output
    target = tmp_path / "app/domain/ordering/sagas/order_processing_saga_orchestrator.py"
    assert result.stdout == f"{target}\n"
    assert "class OrderProcessingSagaOrchestrator:" in target.read_text()
    # --out is the same option; --app-root moves the package
    result = run("generate", str(SEED), "--bounded-ctx", "ordering", "--out", str(tmp_path), "--app-root", "svc")
    assert result.stdout == f"{tmp_path / 'svc/domain/ordering/sagas/order_processing_saga_orchestrator.py'}\n"


def test_generate_in_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("generate", str(SEED), "--bounded-ctx", "ordering")
    assert result.exit_code == 0
    assert result.stdout == "app/domain/ordering/sagas/order_processing_saga_orchestrator.py\n"
    assert Path(result.stdout.strip()).is_file()


def test_generate_refuses_to_overwrite_an_edited_file(tmp_path: Path) -> None:
    args = ["generate", str(SEED), "--bounded-ctx", "ordering", "--root", str(tmp_path)]
    target = Path(run(*args).stdout.strip())
    target.write_text(target.read_text() + "# my change\n")
    result = run(*args)
    assert result.exit_code == 1
    assert "was edited since sagakit generated it" in result.stderr
    assert "--force" in result.stderr
    assert run(*args, "--force").exit_code == 0
    assert "# my change" not in target.read_text()


def test_generate_errors(tmp_path: Path, seed: dict[str, Any]) -> None:
    seed["name"] = "OrderProcessing"
    f = write(tmp_path / "saga.json", seed)
    result = run("generate", str(f), "--bounded-ctx", "ordering", "--root", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{f}: name: 'OrderProcessing' cannot name a generated orchestrator")

    result = CliRunner().invoke(cli, ["generate", str(SEED), "--bounded-ctx", "Order-ing", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "bounded_ctx 'Order-ing' is not a package name" in result.output

    result = CliRunner().invoke(cli, ["generate", str(SEED)])
    assert result.exit_code == 2
    assert "Missing option '--bounded-ctx'" in result.output


def test_graph(tmp_path: Path, seed: dict[str, Any]) -> None:
    mermaid = run("graph", str(SEED))
    assert mermaid.exit_code == 0
    assert mermaid.stdout.startswith("flowchart TD\n")
    assert "step_1 -. rollback .-> undo_1" in mermaid.stdout
    dot = run("graph", str(SEED), "--format", "dot")
    assert dot.stdout.startswith('digraph "OrderProcessingSaga" {')
    del seed["steps"]
    bad = write(tmp_path / "bad.json", seed)
    result = run("graph", str(bad))
    assert result.exit_code == 1
    assert result.stderr == f"{bad}: steps: required field is missing; add it\n"
    assert CliRunner().invoke(cli, ["graph", str(SEED), "--format", "png"]).exit_code == 2


def test_graph_svg() -> None:
    require_service(None if shutil.which("dot") else "Graphviz's dot is not installed (apt-get install graphviz)")
    result = run("graph", str(SEED), "--format", "svg")
    assert result.exit_code == 0, result.output
    root = ElementTree.fromstring(result.stdout)
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {"ProcessPayment", "ShipOrder", "undo ShipOrder"} <= texts


def test_graph_svg_without_graphviz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot here
    result = run("graph", str(SEED), "--format", "svg")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"{SEED}: SVG output needs Graphviz's 'dot' program, which is not on PATH: ")
    assert "apt-get install graphviz" in result.stderr


def scaffold_definition(tmp_path: Path, seed: dict[str, Any], package: str) -> Path:
    seed["state_dto_module"] = f"{package}.state"
    seed["state_repository_module"] = f"{package}.repository"
    return write(tmp_path / "saga.json", seed)


@pytest.fixture
def forget_cli_pkg() -> Iterator[None]:
    yield
    for name in [m for m in sys.modules if m == "cli_pkg" or m.startswith("cli_pkg.")]:
        del sys.modules[name]


def test_generate_scaffold(tmp_path: Path, seed: dict[str, Any], forget_cli_pkg: None) -> None:
    f = scaffold_definition(tmp_path, seed, "cli_pkg")
    out = tmp_path / "out"
    args = ["generate", str(f), "--bounded-ctx", "ordering", "--out", str(out), "--scaffold"]
    orchestrator = out / "app/domain/ordering/sagas/order_processing_saga_orchestrator.py"
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        str(out / "cli_pkg/state.py"),
        str(out / "cli_pkg/repository.py"),
        str(orchestrator),
    ]
    assert result.stderr == ""
    assert "class OrderProcessingSagaState(BaseModel):" in (out / "cli_pkg/state.py").read_text()
    assert (out / "cli_pkg/__init__.py").is_file()
    assert run("validate", "--path", str(out), str(f)).exit_code == 0

    # Again: nothing to scaffold, only the orchestrator's path.
    result = run(*args)
    assert (result.exit_code, result.stdout, result.stderr) == (0, f"{orchestrator}\n", "")

    # An edited state DTO is kept, and said so; --force replaces it.
    state = out / "cli_pkg/state.py"
    state.write_text(state.read_text().replace("address: str", "address: str = ''"))
    result = run(*args)
    assert result.exit_code == 0
    assert result.stdout == f"{orchestrator}\n"
    assert result.stderr == (
        f"{state}: kept: edited since sagakit generated it (OrderProcessingSagaState); --force replaces it\n"
    )
    result = run(*args, "--force")
    assert result.stdout.splitlines() == [str(state), str(orchestrator)]
    assert "address: str = ''" not in state.read_text()


def test_generate_scaffold_of_existing_modules(tmp_path: Path) -> None:
    result = run("generate", str(SEED), "--bounded-ctx", "ordering", "--root", str(tmp_path), "--scaffold")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tmp_path / 'app/domain/ordering/sagas/order_processing_saga_orchestrator.py'}\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("app_root_name.domain.ordering.sagas.order_processing_saga_state (")
    assert lines[0].endswith("): exists, not scaffolded (OrderProcessingSagaState)")


def test_generate_scaffold_errors(tmp_path: Path, seed: dict[str, Any]) -> None:
    seed["steps"][1]["command_name"] = "Nope"
    f = scaffold_definition(tmp_path, seed, "cli_broken")
    result = run("generate", str(f), "--bounded-ctx", "ordering", "--root", str(tmp_path / "out"), "--scaffold")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{f}: steps[1].command_name: module ")
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()
