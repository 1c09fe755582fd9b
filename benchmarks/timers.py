"""Memory with many sagas waiting on timers.

Runs in sagakit's environment. N sagas are started through the public API
(at most 500 unfinished starts at once) whose first step fails with a
retryable error and a one-hour back-off (``RetryPolicy(initial_delay=3600,
jitter=0)``): each saga runs its first attempt, fails, and then waits on a
timer an hour away. The process's resident set size is sampled as the
waiting sagas pile up (``/proc/self/statm``), and at the end it is reported
with how many sagas the engine still holds in memory and how many timer
handles its event loop has scheduled. A saga waiting for a timer far away
should cost no memory at all: its timer lives in the store (the indexed wake
time), not in the process.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sagakit import RetryPolicy, SagaBuilder, SagaEngine, StepContext

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*

from benchmarks.harness import Counters, instrument
from sagakit.stores.postgres import PostgresStore
from sagakit.stores.sqlite import SQLiteStore

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


async def run(store: SQLiteStore | PostgresStore, n: int, samples: int) -> dict[str, Any]:
    calls = [0]

    async def flaky(ctx: StepContext) -> None:
        calls[0] += 1
        raise RuntimeError("not yet")

    async def noop(ctx: StepContext) -> None:
        return None

    b = SagaBuilder("bench_timer")
    b.step("wait", flaky, noop, retry=RetryPolicy(max_attempts=5, initial_delay=3600.0, max_delay=3600.0, jitter=0.0))
    b.step("after", noop, noop)
    defn = b.build()
    counters = Counters()
    instrument(store, counters)
    engine = SagaEngine(store)
    engine.register(defn)
    points: list[dict[str, float]] = []
    async with engine:
        await asyncio.sleep(0.2)
        gc.collect()
        points.append({"waiting": 0, "rss_mb": rss_mb(), "held": len(engine._held)})
        every = max(1, n // samples)
        begin = time.perf_counter()
        started = 0
        while started < n:
            chunk = min(500, n - started)
            await asyncio.gather(*(engine.start(defn.name, {"i": started + i}) for i in range(chunk)))
            started += chunk
            # Let the attempts fail and their sagas be released before starting more.
            while calls[0] < started - 500 or len(engine._held) > 1000:
                await asyncio.sleep(0.005)
            if started % every < chunk or started == n:
                points.append({"waiting": calls[0], "rss_mb": rss_mb(), "held": len(engine._held)})
        deadline = time.perf_counter() + 120
        while (calls[0] < n or engine._held) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - begin
        gc.collect()
        loop = asyncio.get_running_loop()
        end = {
            "waiting": calls[0],
            "rss_mb": rss_mb(),
            "held": len(engine._held),
            "loop_timers": len(getattr(loop, "_scheduled", [])),
        }
        points.append(end)
        waiting_in_store = await engine.count("running", defn.name)
    return {
        "n": n,
        "seconds": seconds,
        "points": points,
        "rss_start_mb": points[0]["rss_mb"],
        "rss_end_mb": end["rss_mb"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "held_at_end": end["held"],
        "loop_timers_at_end": end["loop_timers"],
        "waiting_in_store": waiting_in_store,
        "store_tx": counters.transactions,
        "bytes_per_waiting_saga": (end["rss_mb"] - points[0]["rss_mb"]) * 2**20 / max(n, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--store", default="sqlite", help="sqlite, or a postgresql:// URL")
    p.add_argument("--dir", default=None)
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="sagakit-timers-", dir=args.dir)
    try:
        if args.store == "sqlite":
            store: SQLiteStore | PostgresStore = SQLiteStore(os.path.join(tmp, "timers.db"))
        else:
            store = PostgresStore.from_url(f"{args.store}?schema=sagakit_timers_{os.getpid()}")
        result = asyncio.run(run(store, args.n, args.samples))
        result["store"] = "sqlite" if args.store == "sqlite" else "postgresql"
        if isinstance(store, PostgresStore):

            async def drop() -> None:
                await store.open()
                await store._pool.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
                await store.close()

            asyncio.run(drop())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
