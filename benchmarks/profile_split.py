"""Where a saga's CPU goes: workload A on SQLite, split into state machine, runtime, asyncio and the writer thread.

    python benchmarks/profile_split.py            # N=5,000, 50 in flight
    python benchmarks/profile_split.py --n 500 --json out.json

Two runs of workload A (3 no-op steps) on fresh SQLite files, in this process:

1. **Unprofiled.** The process's CPU over the run (all threads), each
   thread's CPU (``/proc/self/task/<tid>/stat``, sampled before the first
   saga and after the last: the event loop's thread, the SQLite store's
   writer thread ``sagakit-sqlite``, its reader and checkpoint threads), and
   the state machine's share measured directly: ``decide()`` and
   ``new_saga()`` wrapped where the runtime calls them, timed with
   ``time.thread_time()``.
2. **Profiled** (cProfile on the event loop's thread, CPU-time clock). Its
   figures are inflated by the profiler; only their proportions are used: the
   event loop thread's CPU, less the state machine's, is split between
   sagakit's runtime (``sagakit/`` outside ``sagakit/machine``), asyncio
   (``asyncio/``, ``selectors``) and the rest (the benchmark's no-op steps and
   counters, pydantic, the standard library). A C function's time (orjson,
   ``sqlite3`` calls, ``uuid4`` …) goes to the Python code that called it.

Prints the split in ms per saga; ``--json`` writes it. This measures and
reports; it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*

import sagakit._engine
import sagakit._runtime.commit
import sagakit._runtime.requests
from benchmarks.harness import WORKLOADS, Counters, instrument, run_sagakit
from sagakit.stores.sqlite import SQLiteStore

TICK = os.sysconf("SC_CLK_TCK")
MACHINE_CALLERS = (sagakit._engine, sagakit._runtime.commit, sagakit._runtime.requests)


def process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name."""
    out: dict[str, float] = {}
    for t in threading.enumerate():
        try:
            with open(f"/proc/self/task/{t.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        name = t.name if t is not threading.main_thread() else "event loop (main thread)"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


class MachineTimer:
    """Wraps ``decide`` and ``new_saga`` where the runtime imported them; sums their CPU time."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._saved: list[tuple[Any, str, Callable[..., Any]]] = []

    def __enter__(self) -> MachineTimer:
        for module in MACHINE_CALLERS:
            for name in ("decide", "new_saga"):
                fn = getattr(module, name, None)
                if fn is None:
                    continue
                self._saved.append((module, name, fn))
                setattr(module, name, self._wrap(fn))
        return self

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.thread_time

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += clock() - t0
                self.calls += 1

        return timed

    def __exit__(self, *exc: object) -> None:
        for module, name, fn in self._saved:
            setattr(module, name, fn)


async def _run(n: int, in_flight: int, path: str, profile: cProfile.Profile | None) -> dict[str, Any]:
    """Workload A; per-thread CPU sampled inside the engine's life (its threads end with it)."""
    w = WORKLOADS["A"]
    store = SQLiteStore(path)
    counters = Counters()
    instrument(store, counters)
    marks: dict[str, Any] = {}
    orig_open = store.open

    async def open_and_mark() -> None:
        await orig_open()
        marks["threads0"] = thread_cpu()
        marks["cpu0"] = process_cpu()
        marks["t0"] = time.perf_counter()
        if profile is not None:
            profile.enable()

    store.open = open_and_mark  # type: ignore[method-assign]
    orig_commit = store.commit

    async def commit_and_mark(*args: Any) -> Any:
        result = await orig_commit(*args)
        if counters.finished >= n and "t1" not in marks:
            if profile is not None:
                profile.disable()
            marks["t1"] = time.perf_counter()
            marks["cpu1"] = process_cpu()
            marks["threads1"] = thread_cpu()
        return result

    store.commit = commit_and_mark  # type: ignore[method-assign,assignment]
    await run_sagakit(w, n, in_flight, store, counters)
    threads = {k: v - marks["threads0"].get(k, 0.0) for k, v in marks["threads1"].items()}
    return {
        "seconds": marks["t1"] - marks["t0"],
        "cpu_seconds": marks["cpu1"] - marks["cpu0"],
        "threads": threads,
        "commits": counters.commits,
    }


def _category(filename: str) -> str:
    f = filename.replace("\\", "/")
    if "/sagakit/machine/" in f:
        return "machine"
    if "/sagakit/" in f:
        return "runtime"
    if "/asyncio/" in f or f.endswith("/selectors.py"):
        return "asyncio"
    return "other"


def profile_shares(profile: cProfile.Profile) -> dict[str, float]:
    """CPU seconds of the profiled thread by category; a C function's time goes to its callers' categories."""
    stats = pstats.Stats(profile)
    shares: dict[str, float] = {}
    for (filename, _line, _name), (_cc, _nc, tt, _ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if filename != "~":
            cat = _category(filename)
            shares[cat] = shares.get(cat, 0.0) + tt
            continue
        for (cfile, _cl, _cn), (_a, _b, ctt, _d) in callers.items():
            cat = _category(cfile) if cfile != "~" else "other"
            shares[cat] = shares.get(cat, 0.0) + ctt
    return shares


def measure(n: int, in_flight: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sagakit-profile-") as tmp:
        with MachineTimer() as machine:
            plain = asyncio.run(_run(n, in_flight, os.path.join(tmp, "plain.db"), None))
        profile = cProfile.Profile(time.thread_time)
        profiled = asyncio.run(_run(n, in_flight, os.path.join(tmp, "profiled.db"), profile))
    shares = profile_shares(profile)
    threads = plain["threads"]
    loop = threads.pop("event loop (main thread)", 0.0)
    writer = sum(
        v for k, v in threads.items() if k.startswith("sagakit-sqlite") and "read" not in k and "check" not in k
    )
    others = sum(threads.values()) - writer
    rest = max(0.0, loop - machine.seconds)
    non_machine = sum(v for k, v in shares.items() if k != "machine") or 1.0
    ms = 1000 / n
    split = {
        "state machine (decide, new_saga)": machine.seconds * ms,
        "runtime (sagakit outside the machine)": rest * shares.get("runtime", 0.0) / non_machine * ms,
        "asyncio (event loop, tasks, futures)": rest * shares.get("asyncio", 0.0) / non_machine * ms,
        "other on the loop (steps, counters, pydantic, stdlib)": rest * shares.get("other", 0.0) / non_machine * ms,
        "SQLite writer thread": writer * ms,
        "other threads (SQLite reads, checkpoints)": others * ms,
    }
    return {
        "workload": "A",
        "store": "sqlite",
        "n": n,
        "in_flight": in_flight,
        "wall_ms_per_saga": plain["seconds"] * ms,
        "process_cpu_ms_per_saga": plain["cpu_seconds"] * ms,
        "event_loop_thread_cpu_ms_per_saga": loop * ms,
        "machine_calls_per_saga": machine.calls / n,
        "split_ms_per_saga": split,
        "profile_seconds_by_category": shares,
        "profiled_wall_ms_per_saga": profiled["seconds"] * ms,
        "threads_cpu_seconds": plain["threads"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--in-flight", type=int, default=50)
    p.add_argument("--json", default=None, help="write the figures to this file too")
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    r = measure(args.n, args.in_flight)
    total = r["process_cpu_ms_per_saga"]
    print(
        f"workload A on SQLite, N={r['n']:,}, {r['in_flight']} in flight: wall {r['wall_ms_per_saga']:.3f} ms/saga, "
        f"process CPU {total:.3f} ms/saga ({r['machine_calls_per_saga']:.1f} machine calls per saga)"
    )
    width = max(len(k) for k in r["split_ms_per_saga"])
    for k, v in r["split_ms_per_saga"].items():
        print(f"  {k.ljust(width)}  {v:7.4f} ms/saga  {100 * v / total if total else 0:5.1f} %")
    summed = sum(r["split_ms_per_saga"].values())
    print(
        f"  {'(sum of the threads; the process total may differ by clock ticks)'.ljust(width)}  {summed:7.4f} ms/saga"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
