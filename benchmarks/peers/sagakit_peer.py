"""sagakit running the benchmark workloads: one measurement per process, in sagakit's own environment.

The measuring code is ``benchmarks/harness.py`` (what ``sagakit bench`` runs):
``run_one`` starts N sagas in this process through the public API, at most
``--in-flight`` unfinished at once, on a new SQLite file or a new PostgreSQL
schema; ``run_workers`` stores N PENDING sagas first and then starts
``--workers`` ``sagakit worker`` processes. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import _common as common

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*

from benchmarks.harness import WORKLOADS, run_one, run_workers


def main() -> None:
    args = common.arguments("sagakit on the benchmark workloads").parse_args()
    w = WORKLOADS[args.workload]
    url = args.db if args.store == "postgresql" else "sqlite"
    if args.workers:
        result = asyncio.run(run_workers(w, args.n, url, args.workers, concurrency=args.in_flight))
    else:
        directory = os.path.dirname(os.path.abspath(args.db)) if args.store == "sqlite" else tempfile.gettempdir()
        result = asyncio.run(run_one(w, args.n, args.in_flight, url, directory))
    lat = result.pop("latency", None) or {}
    result.update(
        system="sagakit",
        version=f"sagakit {version('sagakit')}",
        workload=w.key,
        store=args.store,
        n=args.n,
        workers=args.workers,
        in_flight=args.in_flight,
        latency={
            "p50": (lat.get("p50_ms") or 0) / 1000,
            "p99": (lat.get("p99_ms") or 0) / 1000,
            "samples": lat.get("samples", 0),
        },
    )
    if args.store == "sqlite":
        import sqlite3

        result["sqlite"] = sqlite3.sqlite_version
    common.emit(result)


if __name__ == "__main__":
    main()
