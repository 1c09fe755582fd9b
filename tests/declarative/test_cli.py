"""sagakit validate / generate / graph through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from sagakit.cli._main import cli

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
        "2 steps, 1 trigger, 1 compensation\n"
    )


def test_validate_reports_every_error_on_its_own_line(tmp_path: Path, seed: dict[str, Any]) -> None:
    seed["steps"][0]["command_name"] = "Nope"
    seed["triggering_events"][0]["correlation_id_provider_str"] = "lambda e: e.__class__"
    bad = write(tmp_path / "bad.json", seed)
    result = run("validate", str(SEED), str(bad))
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
    assert run("validate", str(f)).exit_code == 1
    assert run("validate", "--path", str(tmp_path / "libs"), str(f)).exit_code == 0
    monkeypatch.chdir(tmp_path / "libs")  # the current directory is always searched
    assert run("validate", str(f)).exit_code == 0
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
    assert CliRunner().invoke(cli, ["graph", str(SEED), "--format", "svg"]).exit_code == 2
