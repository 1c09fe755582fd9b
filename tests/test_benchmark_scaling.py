"""The scaling benchmark (benchmarks/scaling.py) at small sizes, on a real SQLite file and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _scaling(*args: str) -> tuple[dict[str, Any], int]:
    """The script's JSON, and its process id (the PostgreSQL schemas it makes are named after it)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--sizes", "0,3000", "--runs", "2",
         "--n", "120", "--claim-sagas", "400", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return json.loads(stdout), proc.pid


def _check(figures: dict[str, Any]) -> None:
    for size in (0, 3000):
        f = figures[str(size)]
        # The bulk load copied the template saga *size* times; the template itself is finished too.
        assert f["finished"] == size + 1
        assert len(f["claim_ms"]) == 2 and all(x > 0 for x in f["claim_ms"])
        # 400 due sagas claimed 50 at a time: every claim of every round was timed.
        assert f["claims_per_round"] == [8, 8]
        assert len(f["sagas_per_s"]) == 2 and all(x > 0 for x in f["sagas_per_s"])


def test_scaling_on_sqlite(tmp_path: Path) -> None:
    out, _ = _scaling("--stores", "sqlite", "--dir", str(tmp_path))
    assert out["claim_sagas"] == 400
    _check(out["stores"]["sqlite"])
    assert list(tmp_path.iterdir()) == []  # the stores it built are removed


@pytest.mark.postgres
def test_scaling_on_postgres() -> None:
    from tests.conftest import PG_DSN, pg_available, require_service

    require_service(pg_available())
    import asyncpg

    out, pid = _scaling("--stores", "postgresql", "--pg", PG_DSN)
    _check(out["stores"]["postgresql"])

    async def leftover() -> list[str]:
        conn = await asyncpg.connect(PG_DSN)
        try:
            pattern = f"sagakit_scaling_{pid}_%"
            rows = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", pattern)
        finally:
            await conn.close()
        return [r[0] for r in rows]

    assert asyncio.run(leftover()) == []  # the schemas it built are dropped
