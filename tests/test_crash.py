"""Crash test: a worker process is killed with SIGKILL mid-run; a new engine finishes every saga."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sagakit import SagaEngine, SagaStatus, StepStatus
from tests.crash.child import make_definition

COUNT = 300
pytestmark = pytest.mark.slow


def _completed_steps(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM effects").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


async def test_sigkill_mid_run_then_a_new_engine_finishes_every_saga(tmp_path: Path) -> None:
    store = tmp_path / "sagas.db"
    effects = tmp_path / "effects.db"
    url = f"sqlite:///{store}"
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.crash.child", url, str(effects), str(COUNT)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        # Kill it once some, but not all, of the work is done.
        while _completed_steps(effects) < 150:
            if child.poll() is not None:
                err = child.stderr.read().decode() if child.stderr else ""
                pytest.fail(f"the child process ended early: {err}")
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert child.returncode == -signal.SIGKILL

    engine = SagaEngine(url, lease_seconds=5.0, poll_interval=0.1)
    engine.register(make_definition(str(effects)))
    unfinished = [s for s in await engine.list(limit=COUNT) if not s.status.terminal]
    assert unfinished, "the kill came too late: nothing was left mid-run"
    async with engine:
        snaps = await engine.list(limit=COUNT + 1)
        assert len(snaps) <= COUNT
        finals = [await engine.wait(s.id, timeout=60) for s in snaps]

    # No saga lost or duplicated: the idempotency keys o-0 .. o-(COUNT-1) each map to one saga
    # (the child may have been killed before starting them all).
    keys = [s.idempotency_key for s in finals]
    assert len(keys) == len(set(keys))
    with sqlite3.connect(effects) as conn:
        rows = conn.execute("SELECT key, COUNT(*) FROM effects GROUP BY key").fetchall()
        executions = conn.execute("SELECT COUNT(*) FROM executions").fetchone()[0]
    counts = dict(rows)
    assert all(n == 1 for n in counts.values()), "an effect was applied twice"
    expected: set[str] = set()
    for snap in finals:
        failing = snap.data["fail"]
        assert snap.status is (SagaStatus.COMPENSATED if failing else SagaStatus.COMPLETED), snap
        for step in ("reserve", "charge", "ship"):
            expected.add(f"{snap.id}:{step}:action")
        if failing:
            assert snap.steps["ship"].status is StepStatus.FAILED
            expected.add(f"{snap.id}:reserve:compensation")
            expected.add(f"{snap.id}:charge:compensation")
    assert set(counts) == expected
    # Attempts the killed worker had in flight ran again: more executions than effects.
    assert executions >= len(expected)
