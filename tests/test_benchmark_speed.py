"""The speed-target benchmarks (benchmarks/speed.py, resume.py, raw_chain.py, profile_split.py) at tiny sizes.

They measure only; these tests check that each runs to the end, reports its
figures and leaves nothing behind, never how fast anything was.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from benchmarks import speed

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str, timeout: float = 240) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def test_summary_takes_the_median_of_the_per_round_ratios() -> None:
    row = next(r for r in speed.ROWS if r.key == "sqlite_batch")
    records = [
        {"row": row.key, "round": 1, "sagakit": {"figure": 10.0}, "baseline": {"figure": 40.0}, "ratio": 0.25},
        {"row": row.key, "round": 2, "sagakit": {"figure": 30.0}, "baseline": {"figure": 50.0}, "ratio": 0.6},
        {"row": row.key, "round": 3, "sagakit": {"figure": 20.0}, "baseline": {"figure": 20.0}, "ratio": 1.0},
        {"row": row.key, "round": 4, "error": "broker unreachable", "sagakit": {}, "baseline": {}},
    ]
    [entry] = speed.summarize([row], records)
    assert (entry["sagakit"], entry["baseline"]) == (20.0, 40.0)
    assert (entry["ratio_median"], entry["ratio_min"], entry["ratio_max"]) == (0.6, 0.25, 1.0)
    assert entry["rounds"] == 3 and entry["failed_rounds"] == 1
    assert entry["met"] is True  # 0.6 >= 0.5


def test_b_over_a_is_a_ratio_of_times_per_saga() -> None:
    row = next(r for r in speed.ROWS if r.key == "b_over_a")
    # sagakit is B at 500 sagas/s, the baseline A at 1,000: B takes twice as long per saga.
    assert row.ratio(500.0, 1000.0) == 2.0
    assert not row.met(500.0, 1000.0, 2.0) and row.met(900.0, 1000.0, 1000.0 / 900.0)


def test_a_row_without_any_figure_reports_the_error() -> None:
    row = next(r for r in speed.ROWS if r.key == "resume")
    [entry] = speed.summarize([row], [{"row": "resume", "error": "gave up", "sagakit": {}, "baseline": {}}])
    assert entry["error"] == ["gave up"] and "ratio_median" not in entry


@pytest.mark.parametrize("mode", ["event", "broker", "timer"])
def test_resume_resumes_every_waiting_saga(mode: str) -> None:
    out = _script("resume.py", "--mode", mode, "--n", "60")
    assert out["mode"] == mode and out["n"] == 60  # the script checks that all 60 completed
    assert out["sagas_per_s"] > 0 and out["cpu_ms_per_saga"] > 0


def test_one_sagakit_measurement_one_saga_at_a_time(tmp_path: Path) -> None:
    out = _script("speed.py", "--one", "--workload", "A", "--store", "sqlite", "--n", "20", "--in-flight", "1",
                  "--payload", "1000", "--dir", str(tmp_path))  # fmt: skip
    assert out["saga_ms_p50"] > 0 and out["sagas_per_s"] > 0  # the script checks that all 20 completed


def test_profile_split_names_every_part() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "profile_split.py"), "--n", "100"],
        capture_output=True, text=True, timeout=240, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for part in ("state machine", "runtime", "asyncio", "SQLite writer thread"):
        assert part in proc.stdout
    assert "4.0 machine calls per saga" in proc.stdout  # new_saga, then one decide per step's end


@pytest.mark.parametrize("system", ["raw", "sagakit"])
def test_chain_over_redis_leaves_no_keys(system: str) -> None:
    from tests.conftest import require_service

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
        missing = None
    except OSError as e:
        missing = f"Redis at 127.0.0.1:6379 is not reachable: {e}"
    require_service(missing)
    out = _script("raw_chain.py", "--system", system, "--broker", "redis", "--n", "20", "--in-flight", "5")
    assert out["system"] == system and out["n"] == 20 and out["chains_per_s"] > 0
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        assert list(client.scan_iter(match=f"bench{system}*", count=1000)) == []
    finally:
        client.close()


def test_chain_over_kafka_runs_on_a_private_tansu_and_stops_it() -> None:
    from tests.conftest import require_service
    from tests.transports.tansu import tansu_missing

    require_service(tansu_missing())

    out = _script("raw_chain.py", "--system", "raw", "--broker", "kafka", "--n", "10", "--in-flight", "5")
    assert out["broker"] == "kafka" and out["n"] == 10 and out["chains_per_s"] > 0
    host, port = out["url"].removeprefix("kafka://").rsplit(":", 1)
    with pytest.raises(OSError):  # the broker it started on a free port is stopped
        socket.create_connection((host, int(port)), timeout=2).close()
