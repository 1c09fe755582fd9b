"""Every ``python`` block of docs/declarative.md runs, in order, in a project that has the seed's modules.

The project is a copy of the test-local ``app_root_name`` package with the
page's example definition (its first ``json`` block) beside it, and the state
DTO and repository modules as ``sagakit generate --scaffold`` writes them. The
blocks run in a child process, one namespace for the page (top-level ``await``
allowed), so that the classes they import and name are the project's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "declarative.md"

RUNNER = """
import ast, asyncio, inspect, re, sys
from pathlib import Path

from sagakit.declarative import scaffold

scaffold("order_processing_saga.json", root=".")  # the state DTO and repository of the project
page = Path(sys.argv[1])
text = page.read_text()
namespace = {"__name__": "docs_declarative"}


async def main() -> None:
    for m in re.finditer(r"^```python\\n(.*?)^```", text, re.S | re.M):
        line = text.count("\\n", 0, m.start()) + 2
        code = compile("\\n" * (line - 1) + m.group(1), str(page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, namespace)
        if inspect.iscoroutine(result):
            await asyncio.wait_for(result, 60)
        print(f"block at line {line}: ok", flush=True)


asyncio.run(main())
"""


def test_every_python_block_of_the_page_runs(tmp_path: Path) -> None:
    text = PAGE.read_text()
    definition = re.search(r"^```json\n(.*?)^```", text, re.S | re.M)
    assert definition is not None, "the page has no example definition"
    shutil.copytree(FIXTURES / "app_root_name", tmp_path / "app_root_name")
    (tmp_path / "order_processing_saga.json").write_text(definition.group(1))
    for module in (
        "app_root_name/domain/ordering/sagas/order_processing_saga_state.py",
        "app_root_name/infrastructure/persistence/ordering/repositories/order_processing_saga_state_repository.py",
    ):
        (tmp_path / module).unlink()  # written by scaffold(), as the page describes
    (tmp_path / "run_page.py").write_text(RUNNER)
    out = subprocess.run(
        [sys.executable, "run_page.py", str(PAGE)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    blocks = len(re.findall(r"^```python\n", text, re.M))
    assert out.stdout.count(": ok") == blocks
    # the undeclared event's dead letter, as the page shows it
    assert re.search(
        r"saga [0-9a-f]{32} \(OrderProcessingSaga\): app_root_name\.domain\.shipping\.events\.ShipmentFailedEvent "
        r"is not an event the waiting step declares \(step 'ShipOrder' waits for "
        r"app_root_name\.domain\.shipping\.events\.OrderShippedEvent\); not applied",
        out.stdout,
    ), out.stdout
