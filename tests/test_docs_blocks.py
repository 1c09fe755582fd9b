"""Code blocks of docs/messaging.md and docs/transports.md run as written and print what they say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def block_under(doc: str, heading: str) -> str:
    """The first Python block in *doc* after the line *heading*."""
    text = (ROOT / "docs" / doc).read_text()
    start = text.index(f"\n{heading}\n")
    found = re.search(r"```python\n(.*?)```", text[start:], flags=re.S)
    assert found is not None, f"no Python block under {heading!r} in {doc}"
    return found.group(1)


@pytest.mark.parametrize(
    ("doc", "heading", "printed"),
    [
        ("messaging.md", "## Message names", "completed ['payments.ProcessPayment', 'payments.PaymentProcessed']"),
        ("transports.md", "## Several applications on one broker", "SHOP BILLING"),
    ],
)
def test_docs_block_runs(tmp_path: Path, doc: str, heading: str, printed: str) -> None:
    code = block_under(doc, heading)
    assert printed in code  # the block says what it prints
    script = tmp_path / "block.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == printed
