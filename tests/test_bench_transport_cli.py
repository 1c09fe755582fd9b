"""``sagakit bench --transport``: the message round-trip benchmark prints its figures (no timing assertions)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from sagakit.cli._main import cli


def test_bench_transport_prints_latency_and_throughput() -> None:
    out = CliRunner().invoke(cli, ["bench", "--transport", "memory://", "--n", "30", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout[out.stdout.index("{") :])
    [result] = doc["transports"]
    assert result["transport"] == "memory"
    assert result["latency"]["p50_ms"] > 0 and result["latency"]["p99_ms"] >= result["latency"]["p50_ms"]
    assert result["sagas_per_s"] > 0 and result["load"]["samples"] > 0


def test_bench_transport_reports_an_unknown_scheme() -> None:
    out = CliRunner().invoke(cli, ["bench", "--transport", "zmq://x", "--n", "5"])
    assert out.exit_code != 0
    assert "unknown transport URL 'zmq://x'" in out.output
