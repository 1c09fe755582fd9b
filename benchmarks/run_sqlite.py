"""Run the embedded SQLite benchmark outside the CLI: the same code as ``sagakit bench``.

    python benchmarks/run_sqlite.py                      # N=5000, 3 runs, workloads A and B
    python benchmarks/run_sqlite.py --n 1000 --runs 1 --workload A --json

See docs/benchmarks.md for the method and the figures measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*

from benchmarks.harness import bench_command

if __name__ == "__main__":
    bench_command.main(args=sys.argv[1:], prog_name="run_sqlite.py")
