"""The README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S)
    assert first_block is not None
    lines = [ln for ln in first_block.group(1).splitlines() if ln.strip()]
    assert "sagakit demo" in lines[0]
    test_command = lines[1].split("&&")[-1].split("#")[0].strip()
    assert test_command == "python3 -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci


def test_quick_start_runs(tmp_path: Path) -> None:
    blocks = python_blocks()
    assert blocks, "the README has no Python example"
    script = tmp_path / "quickstart.py"
    script.write_text(blocks[0])
    out = subprocess.run(
        [sys.executable, str(script)], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "released r-o-1" in out.stdout
    assert "compensated NonRetryableError: card declined" in out.stdout
    assert (tmp_path / "sagas.db").exists()
