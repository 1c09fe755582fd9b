"""The benchmark suite: sagakit beside its peers, same workloads, same machine, same run.

    python benchmarks/run.py --setup      # make the peers' virtual environments only
    python benchmarks/run.py --quick      # every section at small sizes, 1 run (~3 minutes)
    python benchmarks/run.py              # the full suite, median of 3 runs (~35 minutes)
    python benchmarks/report.py benchmarks/results/full.json   # tables and charts again, from saved figures

Writes ``benchmarks/results/{quick,full}.json`` (every measurement),
``benchmarks/results/tables.md`` (every figure as tables) and ``benchmarks/results/img/bench-*.png``;
``docs/benchmarks.md`` is the report written from them by hand.

Every measurement is its own process, started from here: sagakit in this
virtual environment (``benchmarks/peers/sagakit_peer.py``), each peer in its
own under ``benchmarks/.venvs/`` (made by ``--setup`` or on first use, from
PyPI): ``dbos`` (with ``pysqlite3-binary``), ``pso``
(``python-saga-orchestrator`` and ``aiosqlite``, on a Python >= 3.12 found on
this machine) and ``raw`` (``asyncpg``). No peer's dependency is ever
installed into sagakit's environment.

Within a run the systems are interleaved per workload and store (raw, sagakit,
DBOS, python-saga-orchestrator, sagakit at the larger N, raw batched), so a
change of machine speed during the suite affects all of them alike; the ratios
are taken per run and their median reported.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENVS = HERE / ".venvs"
PEERS = HERE / "peers"
RESULTS = HERE / "results"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"

MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "runs": 1,
        "ns": [1000],
        "pairs": 1,
        "peer_n": {"A": 60, "B": 60, "C": 20, "D": 20},
        "raw_n": 1000,
        "workers": [1, 2, 4],
        "workers_n": 1000,
        "worker_pairs": 1,
        "dbos_workers_n": 40,
        "scaling_sizes": [0, 100_000],
        "scaling_runs": 1,
        "scaling_n": 500,
        "timers_n": 10_000,
    },
    "full": {
        "runs": 3,
        "ns": [1000, 10_000],
        "pairs": 3,
        "peer_n": {"A": 120, "B": 120, "C": 40, "D": 40},
        "raw_n": 1000,
        "workers": [1, 2, 4],
        "workers_n": 10_000,
        "worker_pairs": 3,
        "dbos_workers_n": 200,
        "scaling_sizes": [0, 100_000, 1_000_000],
        "scaling_runs": 3,
        "scaling_n": 10_000,
        "timers_n": 100_000,
    },
}

# name: (packages, minimum Python)
PEER_VENVS: dict[str, tuple[list[str], tuple[int, int]]] = {
    "dbos": (["dbos", "pysqlite3-binary"], (3, 10)),
    "pso": (["python-saga-orchestrator", "aiosqlite"], (3, 12)),
    "raw": (["asyncpg"], (3, 9)),
}
PEER_PACKAGE = {"dbos": "dbos", "pso": "python-saga-orchestrator", "raw": "asyncpg"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- setup


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.split()  # fmt: skip
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def find_python(minimum: tuple[int, int]) -> str | None:
    """A Python interpreter of at least *minimum* on this machine: this one, one on PATH, or pyenv's."""
    base = getattr(sys, "_base_executable", sys.executable)
    candidates = [base, sys.executable]
    for minor in range(20, minimum[1] - 1, -1):
        found = shutil.which(f"python3.{minor}")
        if found:
            candidates.append(found)
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(f"{pyenv}/versions/3.*/bin/python3"), reverse=True)
    candidates += sorted(glob.glob("/usr/bin/python3.*[0-9]"), reverse=True)
    for c in candidates:
        v = _version_of(c)
        if v is not None and v >= minimum:
            # pyenv shims on PATH may point at another version: use the real interpreter.
            real = subprocess.run(
                [c, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, check=False
            )
            return real.stdout.strip() or c
    return None


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def installed_version(name: str) -> str | None:
    py = venv_python(name)
    if not py.exists():
        return None
    out = subprocess.run(
        [str(py), "-c", f"from importlib.metadata import version; print(version({PEER_PACKAGE[name]!r}))"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return out.stdout.strip() if out.returncode == 0 else None


def setup(upgrade: bool = False) -> dict[str, Any]:
    """Make each peer's virtual environment (latest releases from PyPI) unless it is there and works."""
    info: dict[str, Any] = {}
    VENVS.mkdir(parents=True, exist_ok=True)
    for name, (packages, minimum) in PEER_VENVS.items():
        have = installed_version(name)
        if have and not upgrade:
            info[name] = {"version": have, "python": _py_version(venv_python(name))}
            continue
        python = find_python(minimum)
        if python is None:
            info[name] = {"error": f"no Python >= {minimum[0]}.{minimum[1]} on this machine"}
            log(f"setup {name}: {info[name]['error']}")
            continue
        target = VENVS / name
        if target.exists() and not have:
            shutil.rmtree(target)
        if not target.exists():
            log(f"setup {name}: virtual environment on {python}")
            subprocess.run([python, "-m", "venv", str(target)], check=True)
        log(f"setup {name}: pip install {' '.join(packages)}")
        proc = subprocess.run(
            [str(venv_python(name)), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             *(["--upgrade"] if upgrade else []), *packages],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            info[name] = {"error": f"pip install failed: {proc.stderr.strip()[-500:]}"}
            log(f"setup {name}: {info[name]['error']}")
            continue
        info[name] = {"version": installed_version(name), "python": _py_version(venv_python(name))}
    return info


def _py_version(python: Path) -> str:
    v = _version_of(str(python))
    return f"{v[0]}.{v[1]}" if v else "?"


# ---------------------------------------------------------------- measuring


def measure(system: str, workload: str, n: int, store: str, *, pg: str, workers: int = 0, mode: str = "tx",
            timeout: float = 900) -> dict[str, Any]:  # fmt: skip
    """One measurement in its own process; returns its JSON figures (or an error)."""
    runner = {"sagakit": "sagakit_peer.py", "dbos": "dbos_peer.py", "pso": "pso_peer.py"}.get(system, "raw_peer.py")
    python = sys.executable if system == "sagakit" else str(venv_python(system if system in PEER_VENVS else "raw"))
    if system != "sagakit" and not Path(python).exists():
        return {"system": system, "workload": workload, "store": store, "n": n, "error": "not set up"}
    tmp = tempfile.mkdtemp(prefix=f"bench-{system}-")
    db = os.path.join(tmp, "bench.db") if store == "sqlite" else pg
    cmd = [python, str(PEERS / runner), "--workload", workload, "--n", str(n), "--store", store, "--db", db,
           "--workers", str(workers)]  # fmt: skip
    if store == "postgresql" and system != "sagakit":
        cmd += ["--schema", f"bench_{system}_{uuid.uuid4().hex[:8]}"]
    if system.startswith("raw"):
        cmd += ["--mode", mode]
    begin = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=tmp)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            result: dict[str, Any] = {
                "error": (proc.stderr or proc.stdout).strip()[-1500:] or f"exit {proc.returncode}"
            }
        else:
            result = json.loads(lines[-1])
    except subprocess.TimeoutExpired:
        result = {"error": f"timed out after {timeout:g} s"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.setdefault("system", system if not system.startswith("raw") else f"raw-{mode}")
    result.update(workload=workload, store=store, n=n, workers=workers, elapsed=time.perf_counter() - begin)
    return result


def wait_for_pg(pg: str, timeout: float = 90) -> bool:
    """Wait until the PostgreSQL server accepts connections again (other jobs on this machine restart it)."""
    code = "import asyncio, asyncpg, sys\nasyncio.run(asyncpg.connect(sys.argv[1], timeout=5))\n"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run([sys.executable, "-c", code, pg], capture_output=True, check=False).returncode == 0:
            return True
        time.sleep(2)
    return False


def measure_retrying(system: str, workload: str, n: int, store: str, *, pg: str, **kw: Any) -> dict[str, Any]:
    """``measure``; a PostgreSQL measurement that failed is run once more when the server is back."""
    r = measure(system, workload, n, store, pg=pg, **kw)
    if "error" in r and store == "postgresql" and r["error"] != "not set up":
        log(f"{system} {workload} on PostgreSQL failed ({r['error'].splitlines()[-1][:120]}); retrying once")
        if wait_for_pg(pg):
            r = measure(system, workload, n, store, pg=pg, **kw)
            r["retried"] = True
    return r


def _show(r: dict[str, Any]) -> str:
    name = r["system"] + (f" x{r['workers']}" if r.get("workers") else "")
    head = f"{name} {r['store']} {r['workload']} N={r['n']:,}"
    if "error" in r:
        return f"{head}: ERROR {r['error'].splitlines()[-1] if r['error'] else ''}"
    if "unsupported" in r:
        return f"{head}: not supported ({r['unsupported']})"
    secs = r.get("processing_seconds") or r["seconds"]
    return f"{head}: {r['n'] / secs:,.1f} sagas/s ({r['elapsed']:.1f} s)"


def run_suite(mode: str, pg: str, stores: list[str], workloads: list[str], sections: set[str]) -> dict[str, Any]:
    cfg = MODES[mode]
    begin = time.perf_counter()
    measurements: list[dict[str, Any]] = []

    def add(r: dict[str, Any], run: int, section: str) -> None:
        r["run"] = run
        r["section"] = section
        measurements.append(r)
        log(f"run {run} {_show(r)}")

    peers_on = "peers" in sections
    for run in range(1, cfg["runs"] + 1):
        if "matrix" in sections:
            for store in stores:
                for w in workloads:
                    n_small, *n_rest = cfg["ns"]
                    # SQLite's raw baseline runs at every N of sagakit (a larger file checkpoints its WAL
                    # during the run, a small one does not); PostgreSQL's at the first N only (its cost per
                    # transaction does not depend on N, and at 10,000 it would take minutes).
                    raw_ns = cfg["ns"] if store == "sqlite" else [cfg["raw_n"]]
                    add(measure_retrying("raw", w, raw_ns[0], store, pg=pg, mode="tx"), run, "matrix")
                    add(measure_retrying("sagakit", w, n_small, store, pg=pg), run, "matrix")
                    if peers_on:
                        add(measure_retrying("dbos", w, cfg["peer_n"][w], store, pg=pg), run, "matrix")
                        add(measure_retrying("pso", w, cfg["peer_n"][w], store, pg=pg), run, "matrix")
                    for n in n_rest:
                        add(measure_retrying("sagakit", w, n, store, pg=pg), run, "matrix")
                        if n in raw_ns:
                            add(measure_retrying("raw", w, n, store, pg=pg, mode="tx"), run, "matrix")
                    for n in raw_ns:
                        add(measure_retrying("raw", w, n, store, pg=pg, mode="batch"), run, "matrix")
                if {"A", "B"} <= set(workloads):
                    # B's time per saga against A's: the two run back to back at each N, so that
                    # a change of machine speed between them (the matrix puts peers in between)
                    # does not enter the ratio. A run of 1,000 sagas lasts a fraction of a second and
                    # its ratio scatters widely, so each run takes several pairs (all reported).
                    for n in cfg["ns"]:
                        for k in range(cfg["pairs"]):
                            for w in ("A", "B"):
                                m = measure_retrying("sagakit", w, n, store, pg=pg)
                                m["pair"] = k
                                add(m, run, "pair")
        if "workers" in sections and "postgresql" in stores:
            for k in cfg["workers"]:
                add(measure_retrying("sagakit", "A", cfg["workers_n"], "postgresql", pg=pg, workers=k), run, "workers")
                if peers_on:
                    add(
                        measure_retrying("dbos", "A", cfg["dbos_workers_n"], "postgresql", pg=pg, workers=k),
                        run,
                        "workers",
                    )
            # 2 workers against 1: one pair per run is the sequence above; the ratio of 10-second runs
            # scatters (1.3-2.2 within one session), so more pairs follow, 1 worker then 2, back to back.
            for k in range(1, cfg["worker_pairs"]):
                for workers in (1, 2):
                    m = measure_retrying("sagakit", "A", cfg["workers_n"], "postgresql", pg=pg, workers=workers)
                    m["pair"] = k
                    add(m, run, "workers_pair")
    out: dict[str, Any] = {"measurements": measurements}
    if "scaling" in sections:
        log("scaling: building stores with finished sagas, then measuring")
        out["scaling"] = _script(
            "scaling.py",
            ["--sizes", ",".join(map(str, cfg["scaling_sizes"])), "--runs", str(cfg["scaling_runs"]),
             "--n", str(cfg["scaling_n"]), "--stores", ",".join(stores), "--pg", pg],
        )  # fmt: skip
    if "timers" in sections:
        log(f"timers: {cfg['timers_n']:,} sagas waiting on timers")
        out["timers"] = _script("timers.py", ["--n", str(cfg["timers_n"])])
    out["seconds"] = time.perf_counter() - begin
    return out


def _script(name: str, args: list[str], timeout: float = 1800) -> dict[str, Any]:
    try:
        proc = subprocess.run([sys.executable, str(HERE / name), *args], capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"{name} timed out after {timeout:g} s"}
    for line in proc.stderr.splitlines():
        log(f"  {line}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": proc.stderr.strip()[-1500:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def machine() -> dict[str, Any]:
    import platform
    import sqlite3

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "load_average_start": os.getloadavg(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            models = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu"] = models[0] if models else "?"
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        )
        info["commit"] = rev.stdout.strip()
    except OSError:
        pass
    return info


def pg_info(pg: str) -> dict[str, Any]:
    code = (
        "import asyncio, asyncpg, json, sys\n"
        "async def m():\n"
        "    c = await asyncpg.connect(sys.argv[1])\n"
        "    v = await c.fetchval('SHOW server_version')\n"
        "    s = {k: await c.fetchval('SHOW ' + k) for k in ('synchronous_commit', 'fsync', 'shared_buffers', "
        "'max_connections')}\n"
        "    await c.close()\n"
        "    print(json.dumps({'version': v, **s}))\n"
        "asyncio.run(m())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, pg], capture_output=True, text=True, check=False)
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
        return result
    except ValueError:
        return {"error": proc.stderr.strip()[-300:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one run (~3 minutes)")
    p.add_argument("--setup", action="store_true", help="make the peers' virtual environments and stop")
    p.add_argument("--upgrade-peers", action="store_true", help="reinstall the peers' latest releases")
    p.add_argument("--pg", default=os.environ.get("SAGAKIT_BENCH_PG", PG_DEFAULT), help="PostgreSQL server URL")
    p.add_argument("--stores", default="sqlite,postgresql")
    p.add_argument("--workloads", default="A,B,C,D")
    p.add_argument("--sections", default="matrix,peers,workers,scaling,timers",
                   help="any of matrix, peers, workers, scaling, timers")  # fmt: skip
    p.add_argument("--out", default=None, help="results file [benchmarks/results/MODE.json]")
    p.add_argument("--no-docs", action="store_true", help="do not write benchmarks/results/tables.md and the charts")
    args = p.parse_args()
    if not args.setup and not args.no_docs and importlib.util.find_spec("matplotlib") is None:
        p.error("the charts need matplotlib: pip install --group bench (or pass --no-docs to write figures only)")
    peers = setup(args.upgrade_peers)
    if args.setup:
        print(json.dumps(peers, indent=2))
        return
    mode = "quick" if args.quick else "full"
    info = {"mode": mode, "config": MODES[mode], "machine": machine(), "postgresql": pg_info(args.pg), "peers": peers}
    log(f"{mode} suite; peers: {json.dumps(peers)}")
    suite = run_suite(mode, args.pg, args.stores.split(","), args.workloads.split(","), set(args.sections.split(",")))
    info["machine"]["load_average_end"] = os.getloadavg()
    result = {**info, **suite}
    out = Path(args.out) if args.out else RESULTS / f"{mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"figures in {out} ({suite['seconds'] / 60:.1f} minutes)")
    if not args.no_docs:
        import report

        report.write(result, ROOT / "benchmarks" / "results" / "tables.md", ROOT / "benchmarks" / "results" / "img")
        log("wrote benchmarks/results/tables.md and benchmarks/results/img/bench-*.png")


if __name__ == "__main__":
    main()
