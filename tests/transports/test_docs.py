"""The Python blocks of docs/transports.md run as written, each on its own (the Kafka one: test_kafka.py, on Tansu)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "transports.md"


def blocks() -> list[str]:
    """The page's Python blocks that need no broker (a Kafka block needs one: test_kafka.py runs it)."""
    found = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), flags=re.S | re.M)
    return [b for b in found if "kafka://" not in b]


def test_the_page_has_blocks() -> None:
    assert len(blocks()) >= 2


@pytest.mark.parametrize("index", range(len(blocks())))
def test_block_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(blocks()[index])
    out = subprocess.run(
        [sys.executable, str(script)], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
