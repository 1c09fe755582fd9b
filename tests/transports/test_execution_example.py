"""The execution saga example (``examples/execution_saga``) end to end over Kafka, on a Tansu the test starts.

``python -m examples.execution_saga.run`` submits scripts of every kind
(completes, exits non-zero, times out, image missing, waits for input and is
cancelled by the user), waits for each saga and checks it against its plan,
the worker's pods and the outcome events; it exits non-zero on any difference.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from .brokers import Broker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def run_example(url: str, store: str, executions: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "examples.execution_saga.run", "--transport", url, "--store", store,
         "--executions", str(executions), "--timeout", "150", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=220, check=False,
    )  # fmt: skip
    assert proc.stdout.strip(), f"no report; stderr:\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, f"not as planned: {report['wrong'][:10]}\nstderr:\n{proc.stderr[-3000:]}"
    return report


@pytest.mark.parametrize("broker", ["kafka"], indirect=True)
async def test_execution_saga_over_kafka(broker: Broker, store_url: str) -> None:
    report = await asyncio.to_thread(run_example, broker.url(), store_url, 15)
    assert report["ok"] and report["wrong"] == []
    assert report["executions"] == 15
    assert report["status"] == {
        "completes": {"completed": 3},
        "fails": {"compensated": 3},
        "times out": {"compensated": 3},
        "no image": {"compensated": 3},
        "cancelled": {"compensated": 3},
    }
    # Every kind but "no image" created its pod; the failed, timed-out and cancelled ones were deleted.
    assert report["pods"] == {"created": 12, "deleted": 9}
    assert report["outcome_events"] == {"execution.saga_completed": 3, "execution.saga_failed": 12}
