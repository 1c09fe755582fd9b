"""What the published package says about itself, and what it leaves in the repository."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_classifiers_say_typed_and_name_every_supported_python() -> None:
    project = PROJECT["project"]
    classifiers = set(project["classifiers"])
    assert "Typing :: Typed" in classifiers
    assert (ROOT / "src" / "sagakit" / "py.typed").is_file()
    assert "py.typed" in PROJECT["tool"]["setuptools"]["package-data"]["sagakit"]
    lowest = re.fullmatch(r">=3\.(\d+)", project["requires-python"])
    assert lowest, project["requires-python"]
    versions = sorted(int(c.rsplit(".", 1)[1]) for c in classifiers if re.fullmatch(r".*Python :: 3\.\d+", c))
    assert versions and versions[0] == int(lowest.group(1)), versions
    assert versions == list(range(versions[0], versions[-1] + 1)), versions


def test_development_tools_are_a_dependency_group_not_a_published_extra() -> None:
    extras = PROJECT["project"]["optional-dependencies"]
    assert "dev" not in extras
    dev = " ".join(PROJECT["dependency-groups"]["dev"])
    for tool in ("pytest", "mypy", "ruff", "import-linter", "playwright", "opentelemetry-sdk"):
        assert tool in dev, tool
    # The observability extras users install, and the pytest plugin they get.
    assert extras["prometheus"] == ["prometheus-client>=0.20"]
    assert any(r.startswith("opentelemetry-api") for r in extras["otel"])
    assert PROJECT["project"]["entry-points"]["pytest11"] == {"sagakit": "sagakit.testing.plugin"}


def test_the_benchmark_harness_is_not_in_the_installed_package() -> None:
    """``sagakit bench`` only finds ``benchmarks/harness.py`` of a checkout; it measures nothing itself."""
    bench = ROOT / "src" / "sagakit" / "cli" / "_bench.py"
    tree = ast.parse(bench.read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {m for m in imported if m and ("store" in m or "engine" in m or "harness" in m)}, imported
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setattr"]
    assert len(bench.read_text().splitlines()) < 80
    assert not list((ROOT / "src" / "sagakit").rglob("*bench_transport*"))
    assert (ROOT / "benchmarks" / "harness.py").is_file() and (ROOT / "benchmarks" / "transport.py").is_file()
    # Importing the CLI (every command) leaves the store classes as they are defined.
    code = (
        "import sys, sagakit.cli\n"
        "from sagakit.stores.sqlite import SQLiteStore\n"
        "assert 'benchmarks' not in sys.modules and 'benchmarks.harness' not in sys.modules\n"
        "assert SQLiteStore.commit.__module__ == 'sagakit.stores.sqlite', SQLiteStore.commit.__module__\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
