"""``sagakit worker`` logs failures by default (tracebacks at WARNING, a saga that needs an operator at
ERROR) and serves Prometheus metrics at /metrics with --metrics-port."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sagakit import SagaEngine, SagaStatus
from tests.worker.sagas import broken_saga

ROOT = Path(__file__).resolve().parent.parent.parent


def start_worker(url: str, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    """A worker process on *url*; returns it and the lines it printed up to "ready"."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagakit", "worker", "tests.worker.sagas", "--store", url, "--grace", "0.5", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    while not lines or "ready" not in lines[-1]:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the worker exited: {proc.communicate(timeout=10)}")
        lines.append(line.strip())
    return proc, lines


def stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_the_worker_logs_failures_with_tracebacks_and_serves_metrics(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    proc, lines = start_worker(url, "--metrics-port", "0", "--metrics-interval", "0.1")
    try:
        [metrics_url] = [line.rsplit(" ", 1)[1] for line in lines if "metrics at" in line]
        assert metrics_url.startswith("http://127.0.0.1:") and metrics_url.endswith("/metrics")
        producer = SagaEngine(url)
        producer.register(broken_saga)
        sid = await producer.start("broken")
        snap = await producer.wait(sid, timeout=30)
        await producer.close()
        assert snap.status is SagaStatus.FAILED
        # Scrape until the store gauges (read every 0.1 s) have seen the saga fail.
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while True:
                response = await client.get(metrics_url)
                assert response.status_code == 200
                m = samples(response.text)
                if m.get(("sagakit_sagas", frozenset({("status", "failed")}))) == 1:
                    break
                assert time.monotonic() < deadline, response.text
                await asyncio.sleep(0.1)
        code, out, err = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert code == 0, err

    def get(name: str, **labels: str) -> float | None:
        return m.get((name, frozenset(labels.items())))

    assert get("sagakit_sagas_started_total", saga="broken") == 1
    assert get("sagakit_sagas_finished_total", saga="broken", status="failed") == 1
    charge = {"saga": "broken", "step": "charge", "direction": "action"}
    assert get("sagakit_step_attempts_total", **charge, outcome="failed") == 2
    assert get("sagakit_step_retries_total", **charge) == 1
    assert get("sagakit_step_failures_total", saga="broken", step="reserve", direction="compensation") == 1
    assert get("sagakit_sagas_in_flight", saga="broken") == 0
    assert (get("process_cpu_seconds_total") or 0) > 0  # the process's own metrics are there too

    # Without -v: each failed attempt at WARNING with its traceback from the step's code down,
    # the saga that needs an operator at ERROR.
    warnings = [line for line in err.splitlines() if " WARNING sagakit.events: " in line]
    assert any(f"saga {sid} step 'charge' attempt 1 failed" in w and "KeyError: 'id'" in w for w in warnings), err
    assert any(f"saga {sid} compensation of step 'reserve' attempt 1 failed" in w for w in warnings), err
    assert 'in _order_id\n    return payload["id"]' in err
    assert "_run_step" not in err  # the runtime's own frames are left out
    assert f"ERROR sagakit.events: saga {sid} (broken v1) compensating -> failed" in err
