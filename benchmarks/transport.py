"""Transport benchmark: message-step round trips and sagas/s of a 3-step message saga over one broker.

The saga sends ``BenchStep1`` → ``BenchStep2`` → ``BenchStep3``; a
participant in the same process (on its own connection) answers each at
once. A *round trip* is measured on the orchestrator's side of the broker,
from one command leaving the relay to the next one leaving it: command
delivered to the participant, reply published and delivered back, the
reply's transition committed with the next command in the outbox, and the
relay publishing it. The third round trip ends when the saga's completion
event is published.

Two phases: ``latency`` runs sagas one at a time (the round trip of an idle
system); ``load`` runs ``n`` sagas with ``in_flight`` unfinished at once and
reports sagas/s and the round trips under that load. The store is a fresh
SQLite file unless one is given. This module measures and reports; it
asserts nothing about speed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import BaseModel

from sagakit._definition import SagaBuilder, SagaDefinition
from sagakit._engine import SagaEngine
from sagakit._messages import send
from sagakit._status import SagaStatus
from sagakit._transport import Handler, Transport, transport_from_url

__all__ = ["print_transport_bench", "run_transport_bench", "transport_bench_table"]


class BenchStep1(BaseModel):
    n: int


class BenchStep2(BaseModel):
    n: int


class BenchStep3(BaseModel):
    n: int


class BenchDone1(BaseModel):
    n: int


class BenchDone2(BaseModel):
    n: int


class BenchDone3(BaseModel):
    n: int


class BenchCompleted(BaseModel):
    saga_id: str


def _definition() -> SagaDefinition:
    b = SagaBuilder("sagakit_transport_bench")
    b.step("one", action=send(BenchStep1, success=BenchDone1, reply_timeout=30))
    b.step("two", action=send(BenchStep2, success=BenchDone2, reply_timeout=30))
    b.step("three", action=send(BenchStep3, success=BenchDone3, reply_timeout=30))
    b.on_completed(BenchCompleted)
    return b.build()


class _Stopwatch:
    """Wraps the orchestrator's transport and notes when each saga's messages leave it."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.url = inner.url
        self.sent: dict[str, list[float]] = {}

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def subscribe(self, destinations: Sequence[str], group: str, handler: Handler) -> None:
        await self.inner.subscribe(destinations, group, handler)

    async def publish(
        self, destination: str, body: bytes, *, message_id: str, headers: dict[str, str] | None = None
    ) -> None:
        await self.inner.publish(destination, body, message_id=message_id, headers=headers)
        saga_id = orjson.loads(body).get("saga_id")
        if saga_id:
            self.sent.setdefault(saga_id, []).append(time.perf_counter())

    def round_trips(self, saga_ids: Sequence[str]) -> list[float]:
        out = []
        for sid in saga_ids:
            times = self.sent.get(sid, [])
            out += [b - a for a, b in itertools.pairwise(times)]
        return out


def _stats(samples: Sequence[float]) -> dict[str, float | int]:
    if not samples:
        return {"samples": 0}
    ordered = sorted(samples)
    return {
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


async def run_transport_bench(
    url: str,
    n: int = 500,
    *,
    in_flight: int = 50,
    latency_sagas: int = 50,
    store: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark over the transport at *url*; returns the figures as a dict.

    Args:
        url: a transport URL (``memory://``, ``nats://…``, ``amqp://…``, ``redis://…``).
        n: sagas of the load phase.
        in_flight: unfinished sagas at once in the load phase.
        latency_sagas: sagas of the latency phase, run one at a time.
        store: a store URL (default: a fresh SQLite file, removed afterwards).
    """
    from sagakit.participant import Participant

    tmp = None
    if store is None:
        tmp = tempfile.mkdtemp(prefix="sagakit-bench-")
        store = f"sqlite:///{tmp}/bench.db"
    service = Participant(transport_from_url(url), name="sagakit-bench-service")
    for cmd, reply in ((BenchStep1, BenchDone1), (BenchStep2, BenchDone2), (BenchStep3, BenchDone3)):

        def answer(c: Any, reply: type[BaseModel] = reply) -> BaseModel:
            return reply(n=c.n)

        service.handles(cmd)(answer)
    watch = _Stopwatch(transport_from_url(url))
    engine = SagaEngine(store, transport=watch)
    engine.register(_definition())
    try:
        async with service, engine:
            await engine._messaging.ready()
            # Latency: one saga at a time (after two warm-up sagas).
            ids = []
            for i in range(latency_sagas + 2):
                sid = await engine.start("sagakit_transport_bench", {"n": i})
                await _finished(engine, sid)
                ids.append(sid)
            await asyncio.sleep(0.2)  # the last completion event leaves after the commit
            latency = _stats(watch.round_trips(ids[2:]))
            # Load: n sagas, at most in_flight unfinished.
            slots = asyncio.Semaphore(in_flight)
            load_ids: list[str] = []

            async def one(i: int) -> None:
                async with slots:
                    sid = await engine.start("sagakit_transport_bench", {"n": i})
                    load_ids.append(sid)
                    await _finished(engine, sid)

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            seconds = time.perf_counter() - started
            await asyncio.sleep(0.2)
            loaded = _stats(watch.round_trips(load_ids))
    finally:
        if tmp is not None:
            for name in os.listdir(tmp):
                os.unlink(os.path.join(tmp, name))
            os.rmdir(tmp)
    return {
        "transport": url.split(":", 1)[0],
        "url": url,
        "store": store.split(":", 1)[0] if tmp is None else "sqlite (temporary file)",
        "n": n,
        "in_flight": in_flight,
        "latency": latency,
        "load": loaded,
        "seconds": round(seconds, 3),
        "sagas_per_s": round(n / seconds, 1),
        "service_duplicates": service.duplicates,
    }


async def _finished(engine: SagaEngine, saga_id: str) -> None:
    snap = await engine.wait(saga_id, timeout=60)
    if snap.status is not SagaStatus.COMPLETED:
        raise RuntimeError(f"benchmark saga {saga_id} ended {snap.status.value}: {snap.error}")


def transport_bench_table(results: Sequence[dict[str, Any]]) -> Any:
    """The results as a rich Table."""
    from rich.table import Table

    table = Table(title="3-step message saga: round trip (command out → reply in → next command out)")
    for col in ("transport", "idle p50 ms", "idle p99 ms", "loaded p50 ms", "loaded p99 ms", "sagas/s", "in flight"):
        table.add_column(col, justify="left" if col == "transport" else "right")
    for r in results:
        lat, load = r["latency"], r["load"]
        table.add_row(
            r["transport"],
            f"{lat.get('p50_ms', 0):.1f}",
            f"{lat.get('p99_ms', 0):.1f}",
            f"{load.get('p50_ms', 0):.1f}",
            f"{load.get('p99_ms', 0):.1f}",
            f"{r['sagas_per_s']:,.0f}",
            str(r["in_flight"]),
        )
    return table


def print_transport_bench(results: Sequence[dict[str, Any]]) -> None:
    """Print the results as a table on stdout."""
    from rich.console import Console

    Console().print(transport_bench_table(results))
