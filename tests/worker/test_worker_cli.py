"""``sagakit worker``: runs a module's sagas, stops gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from sagakit import SagaEngine, SagaStatus, StepStatus
from tests.worker.sagas import quick_saga, slow_saga

ROOT = Path(__file__).resolve().parent.parent.parent


def start_worker(url: str, *extra: str, slow_seconds: float = 30) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLOW_SECONDS": str(slow_seconds)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagakit", "worker", "tests.worker.sagas", "--store", url, "--grace", "0.5", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert "ready" in proc.stdout.readline()
    return proc


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out + err


async def test_worker_runs_stored_sagas_and_stops_on_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    producer = SagaEngine(url)
    producer.register(quick_saga, slow_saga)
    ids = [await producer.start("quick", {"i": i}) for i in range(20)]
    proc = start_worker(url, "--concurrency", "8")
    try:
        snaps = [await producer.wait(i, timeout=30) for i in ids]
        assert {s.status for s in snaps} == {SagaStatus.COMPLETED}
        # A step still running at SIGTERM: cut off after the grace, left running for the next worker.
        slow_id = await producer.start("slow")
        for _ in range(300):
            if (await producer.get(slow_id)).steps["wait"].status is StepStatus.RUNNING:
                break
            await asyncio.sleep(0.02)
        code, output = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert code == 0, output
    assert "stopped" in output
    snap = await producer.get(slow_id)
    assert snap.status is SagaStatus.RUNNING and snap.steps["wait"].status is StepStatus.RUNNING
    with sqlite3.connect(tmp_path / "w.db") as conn:
        owner = conn.execute("SELECT lease_owner FROM sagakit_sagas WHERE id = ?", (slow_id,)).fetchone()[0]
    assert owner is None  # released: the next worker takes it at once
    await producer.close()

    # The next worker finishes it.
    proc = start_worker(url, slow_seconds=0.05)  # its step is quick this time
    try:
        engine = SagaEngine(url)
        engine.register(slow_saga)
        snap = await engine.wait(slow_id, timeout=60)
        await engine.close()
    finally:
        stop(proc)
    assert snap.status is SagaStatus.COMPLETED and snap.steps["wait"].attempts == 1


async def test_worker_reports_a_bad_target(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sagakit", "worker", "no.such.module", "--store", f"sqlite:///{tmp_path}/x.db"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert "cannot import 'no.such.module'" in out.stderr
