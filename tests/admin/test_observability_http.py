"""The HTTP API shows each failed attempt's traceback (masked); ``sagakit serve --metrics`` serves /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sagakit.admin import Operations, create_app
from sagakit.prometheus import PrometheusObserver

from . import sample_app
from .conftest import AUTH, TOKEN, Seed, client_for, free_port, seed_sync

ROOT = Path(__file__).resolve().parent.parent.parent


async def test_the_api_shows_the_traceback_of_each_failed_attempt_masked(seed: Seed, client: httpx.AsyncClient) -> None:
    sid = seed.failed[0]  # ship failed past the pivot: "carrier API down: password=hunter2 rejected"
    saga = (await client.get(f"/api/sagas/{sid}")).json()
    [entry] = [h for h in saga["history"] if h["kind"] == "step_failed"]
    tb = entry["traceback"]
    assert tb.startswith("Traceback (most recent call last):\n")
    assert "in ship\n" in tb and "NonRetryableError: carrier API down: password=*** rejected" in tb
    assert "hunter2" not in tb
    assert all(h["traceback"] is None for h in saga["history"] if h["kind"] != "step_failed")
    timeline = (await client.get(f"/api/sagas/{sid}/timeline")).json()
    [attempt] = [a for a in timeline["attempts"] if a["outcome"] == "failed"]
    assert (attempt["step"], attempt["traceback"]) == ("ship", tb)
    assert all(a["traceback"] is None for a in timeline["attempts"] if a["outcome"] != "failed")


async def test_metrics_follow_the_read_rules_and_read_the_store_at_each_scrape(seed: Seed) -> None:
    observer = PrometheusObserver(CollectorRegistry())
    ops = Operations.for_store(seed.url, [sample_app.order])
    async with ops, client_for(create_app(ops, token=TOKEN, private=True, metrics=observer)) as c:
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers={"Authorization": "Bearer not-the-token"})).status_code == 403
        r = await c.get("/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(r.text)
        for s in f.samples
    }
    assert samples[("sagakit_sagas", (("status", "failed"),))] == len(seed.failed)
    assert samples[("sagakit_sagas", (("status", "completed"),))] == len(seed.completed)
    assert samples[("sagakit_sagas_in_flight", (("saga", "order"),))] == len(seed.pending)


def test_sagakit_serve_metrics_over_http(tmp_path: Path) -> None:
    seed = seed_sync(f"sqlite:///{tmp_path}/sagas.db")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env.pop("SAGAKIT_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagakit", "serve", "--store", seed.url, "--port", str(port), "--metrics",
         "--app", "tests.admin.sample_app:order", "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sagakit serve did not come up: {proc.communicate(timeout=10)}")
                time.sleep(0.1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert r.status_code == 200, r.text
    assert 'sagakit_sagas{status="failed"} 2.0' in r.text
    assert 'sagakit_sagas{status="pending"} 1.0' in r.text
    assert "process_cpu_seconds_total" in r.text
    assert "metrics /metrics" in err
