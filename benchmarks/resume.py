"""Resuming many waiting sagas: by N events (``engine.notify``) against by N timers coming due.

    python benchmarks/resume.py --mode event --n 10000
    python benchmarks/resume.py --mode broker --n 10000
    python benchmarks/resume.py --mode timer --n 10000

Runs in sagakit's environment, on a fresh SQLite file. First N sagas are
started and left waiting (the wait is not measured):

- ``event``: a saga of one step, ``wait_for(Resume)``. Resuming: N
  ``engine.notify(saga_id, Resume(...))`` calls, at most ``--concurrency``
  at once; each saga's step completes and the saga completes.
- ``broker``: the same through the in-memory broker (``memory://``): the step
  is ``wait_for(Arrived, correlation=...)``, each saga started with its own
  correlation id, and N ``engine.publish(Arrived(key=...))`` calls resume
  them: the engine's consumer finds each saga by its correlation id.
- ``timer``: a saga of one step whose first attempt fails with a retryable
  error and a one-hour back-off (``RetryPolicy(initial_delay=3600, jitter=0)``);
  the engine's clock is a test clock. Resuming: the clock moves on by an hour,
  so all N timers are due at once; each saga's second attempt succeeds and
  the saga completes.

Measured from the first notify or publish (event, broker) or the start of the first claim of
due sagas (timer; ``from_clock_seconds`` also counts the engine's wait
before it looks for due work, up to its 50 ms poll interval) until the
last saga's completion is committed: sagas/s, and CPU ms per saga of this
process (all threads) over that time. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*

from benchmarks.harness import Counters, instrument
from sagakit import RetryPolicy, SagaBuilder, SagaEngine, StepContext, wait_for
from sagakit.stores.sqlite import SQLiteStore


class Resume(BaseModel):
    n: int


class Arrived(BaseModel):
    key: str


def _key(e: Arrived) -> str:
    return e.key


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _until(pred: Any, what: str, timeout: float = 600) -> None:
    deadline = time.perf_counter() + timeout
    while not pred():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


async def run(mode: str, n: int, concurrency: int, path: str) -> dict[str, Any]:
    store = SQLiteStore(path)
    counters = Counters()
    instrument(store, counters)
    counters.progressed = asyncio.Event()
    # The time of the first claim that returns sagas once the timers are due (timer mode).
    armed, first_claim = [False], [0.0]
    counted_claim = store.claim

    async def claim(*args: Any) -> Any:
        t = time.perf_counter()
        states = await counted_claim(*args)
        if states and armed[0] and not first_claim[0]:
            first_claim[0] = t
        return states

    store.claim = claim  # type: ignore[method-assign,assignment]
    offset = [0.0]
    base = time.time()

    def clock() -> float:
        return time.time() + offset[0]

    calls = [0]

    async def flaky(ctx: StepContext) -> None:
        calls[0] += 1
        if ctx.attempt == 1:
            raise RuntimeError("not yet")

    b = SagaBuilder(f"bench_resume_{mode}")
    if mode == "event":
        b.step("wait", action=wait_for(Resume))
    elif mode == "broker":
        b.step("wait", action=wait_for(Arrived, correlation=_key))
    else:
        b.step("wait", flaky, retry=RetryPolicy(max_attempts=3, initial_delay=3600.0, max_delay=3600.0, jitter=0.0))
    defn = b.build()
    engine = SagaEngine(store, clock=clock, poll_interval=0.05, transport="memory://" if mode == "broker" else None)
    engine.register(defn)
    async with engine:
        ids: list[str] = []
        for lo in range(0, n, 500):
            chunk = range(lo, min(n, lo + 500))
            ids += await asyncio.gather(*(engine.start(defn.name, {"i": i}, correlation_id=f"k{i}") for i in chunk))
            if mode == "timer":
                await _until(lambda lo=lo: calls[0] >= lo - 500, "first attempts")
        if mode == "timer":
            await _until(lambda: calls[0] >= n and not engine._held, "all sagas waiting on their timers")
        else:

            async def waiting() -> bool:
                snap = await engine.get(ids[-1])
                return snap.steps["wait"].status.value == "running"

            deadline = time.perf_counter() + 600
            while not (await waiting() and not engine._held):
                if time.perf_counter() > deadline:
                    raise RuntimeError("the sagas did not all get to wait")
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        finished0 = counters.finished
        tx0, commits0 = counters.transactions, counters.commits
        cpu0 = cpu_seconds()
        begin = time.perf_counter()
        if mode in ("event", "broker"):
            # *concurrency* callers, each taking the next saga when its last call returns.
            todo = iter(enumerate(ids))

            async def caller() -> None:
                for i, sid in todo:
                    if mode == "event":
                        await engine.notify(sid, Resume(n=i))
                    else:
                        await engine.publish(Arrived(key=f"k{i}"))

            notifying = asyncio.gather(*(caller() for _ in range(concurrency)))
        else:
            armed[0] = True
            offset[0] += 3600.0 + 1.0
        deadline = time.perf_counter() + 600
        while counters.finished - finished0 < n:
            counters.progressed.clear()
            try:
                await asyncio.wait_for(counters.progressed.wait(), 60)
            except TimeoutError:
                break
            if time.perf_counter() > deadline:
                break
        end = time.perf_counter()
        cpu = cpu_seconds() - cpu0
        if mode != "timer":
            await notifying
        done = await engine.count("completed", defn.name)
    if done != n:
        raise RuntimeError(f"{done} of {n} sagas completed")
    first = (first_claim[0] or begin) if mode == "timer" else begin
    seconds = end - first
    return {
        "mode": mode,
        "n": n,
        "concurrency": concurrency if mode != "timer" else None,
        "seconds": seconds,
        "from_clock_seconds": end - begin,
        "sagas_per_s": n / seconds,
        "cpu_ms_per_saga": 1000 * cpu / n,
        "write_tx_per_saga": (counters.transactions - tx0) / n,
        "commits": counters.commits - commits0,
        "started_at": base,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["event", "broker", "timer"], required=True)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=256, help="event, broker: notify or publish calls at once")
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="sagakit-resume-") as tmp:
        result = asyncio.run(run(args.mode, args.n, args.concurrency, os.path.join(tmp, "resume.db")))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
