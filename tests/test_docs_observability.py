"""docs/operations.md, "Metrics, tracing and tracebacks": each Python example runs as written and prints
exactly the output the page shows after it; the Grafana dashboard it points to is valid and uses real metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "operations.md"


def section() -> str:
    text = PAGE.read_text()
    start = text.index("## Metrics, tracing and tracebacks")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def examples() -> list[tuple[str, str]]:
    """Each Python block of the section with the ``text`` block that follows it (its output)."""
    found = re.findall(r"```python\n(.*?)```\s*\n(?:prints\s*\n)?\s*```text\n(.*?)```", section(), flags=re.S)
    assert len(found) == len(re.findall(r"```python\n", section())), "every Python example shows its output"
    return found


@pytest.mark.parametrize("index", range(len(examples())))
def test_the_example_runs_and_prints_what_the_page_shows(index: int, tmp_path: Path) -> None:
    code, expected = examples()[index]
    script = tmp_path / f"example_{index}.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == expected.splitlines()


def test_the_page_lists_every_metric_and_the_grafana_dashboard_uses_only_them() -> None:
    from prometheus_client import CollectorRegistry

    from sagakit.prometheus import PrometheusObserver

    registry = CollectorRegistry()
    PrometheusObserver(registry)
    names = set()
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        names.add(family.name + suffix)
    listed = set(re.findall(r"^\| `(sagakit_\w+)` \|", section(), flags=re.M))
    assert listed == names
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    used = {m for e in exprs for m in re.findall(r"\bsagakit_\w+", e)}
    known = names | {f"{n}_{s}" for n in names for s in ("bucket", "sum", "count")}
    assert used <= known, used - known
