"""What every benchmark runner shares: workloads, arguments, latency and the result line.

Standard library only, Python 3.11+: this module is imported by runners in
sagakit's virtual environment and in each peer's own (``benchmarks/.venvs/``).
A runner prints exactly one JSON object on its last line of stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Spec:
    """One workload: its steps in order, which run in parallel, which fails."""

    key: str
    description: str
    stages: tuple[tuple[str, ...], ...]  # steps by stage; a stage's steps run in parallel
    fail: str | None  # the step that fails (non-retryably), or None
    expected: str  # terminal outcome: "completed" or "compensated"

    @property
    def steps(self) -> list[str]:
        return [s for stage in self.stages for s in stage]

    @property
    def step_runs(self) -> int:
        """Step functions called per saga: actions, and compensations of the completed steps."""
        if self.fail is None:
            return len(self.steps)
        done = self.steps.index(self.fail)
        return done + 1 + done

    @property
    def transitions(self) -> int:
        """Durable transitions per saga in the raw baseline: created, then one per step function."""
        return 1 + self.step_runs

    def states(self) -> list[tuple[str, dict[str, str]]]:
        """(saga status, step statuses) after each transition of one saga (the raw baseline's rows)."""
        steps = dict.fromkeys(self.steps, "pending")
        out = [("running", dict(steps))]
        done: list[str] = []
        for name in self.steps:
            if name == self.fail:
                steps[name] = "failed"
                out.append(("compensating", dict(steps)))
                break
            steps[name] = "completed"
            done.append(name)
            out.append(("running", dict(steps)))
        if self.fail is not None:
            for name in reversed(done):
                steps[name] = "compensated"
                out.append(("compensating", dict(steps)))
        out[-1] = (self.expected, out[-1][1])
        assert len(out) == self.transitions, (self.key, len(out))
        return out


WORKLOADS: dict[str, Spec] = {
    "A": Spec("A", "3 no-op steps, happy path", (("s1",), ("s2",), ("s3",)), None, "completed"),
    "B": Spec("B", "step 3 fails, 2 and 1 compensated", (("s1",), ("s2",), ("s3",)), "s3", "compensated"),
    "C": Spec("C", "10 sequential steps", tuple((f"s{i}",) for i in range(1, 11)), None, "completed"),
    "D": Spec(
        "D",
        "fan-out of 8 parallel steps, then a join",
        (tuple(f"p{i}" for i in range(1, 9)), ("join",)),
        None,
        "completed",
    ),
}


def stage_of(spec: Spec) -> dict[str, int]:
    return {s: i for i, stage in enumerate(spec.stages) for s in stage}


def step_gaps(spec: Spec, finishes: Iterable[tuple[str, bool, float]]) -> list[float]:
    """Step-to-step latencies of one saga, in seconds.

    *finishes* are (step, is_compensation, time) of each step function's end
    (a failure too). Steps of one parallel stage count as one, ending with the
    last of them; compensations are stages of their own, after the actions.
    The result is the time between consecutive stage ends.
    """
    stages = stage_of(spec)
    ends: dict[tuple[int, int], float] = {}
    for step, comp, at in finishes:
        k = (1, -stages[step]) if comp else (0, stages[step])
        if at > ends.get(k, float("-inf")):
            ends[k] = at
    times = [ends[k] for k in sorted(ends)]
    return [b - a for a, b in itertools.pairwise(times)]


def percentiles(gaps: Sequence[float]) -> dict[str, float | None]:
    if not gaps:
        return {"p50": None, "p99": None, "samples": 0}
    xs = sorted(gaps)
    n = len(xs)
    return {"p50": xs[n // 2], "p99": xs[min(n - 1, int(n * 0.99))], "samples": n}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all its threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0 when unknown)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def postgres_cpu_seconds() -> float:
    """CPU seconds of every process named postgres on this machine (the local server; approximate)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # The postmaster's children that exited (closed connections) count through cutime/cstime.
            total += sum(int(x) for x in fields[11:15]) / tick
        except (OSError, ValueError, IndexError):
            continue
    return total


def peak_rss_mb() -> float:
    """This process's peak resident set size, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def arguments(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--in-flight", type=int, default=50)
    p.add_argument("--store", choices=["sqlite", "postgresql"], required=True)
    p.add_argument("--db", required=True, help="SQLite file path, or PostgreSQL URL")
    p.add_argument("--schema", default=None, help="PostgreSQL schema to use (created, dropped after)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0: in this process)")
    p.add_argument("--stall", type=float, default=120.0, help="give up after this long without progress")
    return p


def emit(result: dict[str, Any]) -> None:
    result.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    result.setdefault("pid", os.getpid())
    result.setdefault("python", sys.version.split()[0])
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def now() -> float:
    return time.perf_counter()


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)
