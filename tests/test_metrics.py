"""Prometheus metrics: what the observer counts, what it reads from the store, scraped over HTTP.

Each test has a registry of its own and reads the metrics the way Prometheus
does: an HTTP GET of /metrics on the server ``serve_metrics`` starts, parsed
with prometheus_client's own parser of the text format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from sagakit import NonRetryableError, RetryPolicy, SagaBuilder, SagaEngine, SagaStatus, StepContext, send
from sagakit._store import DeadLetter
from sagakit.prometheus import PrometheusObserver, serve_metrics
from sagakit.stores.memory import MemoryStore

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """GET *url* and parse the Prometheus text format: {(sample name, labels): value}."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def metrics() -> Iterator[tuple[PrometheusObserver, str]]:
    """An observer on a registry of its own, served on a free local port; yields it and its /metrics URL."""
    observer = PrometheusObserver(CollectorRegistry())
    server = serve_metrics(0, "127.0.0.1", observer.registry)
    try:
        yield observer, f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


async def reserve(ctx: StepContext) -> str:
    return "r-1"


async def release(ctx: StepContext) -> None:
    return None


async def charge(ctx: StepContext) -> None:
    if ctx.attempt < 3:
        raise ConnectionError("gateway busy")
    raise NonRetryableError("card declined")


async def slow(ctx: StepContext) -> None:
    await asyncio.sleep(30)


def shop() -> Any:
    b = SagaBuilder("shop")
    b.step("reserve", reserve, release)
    b.step("charge", charge, retry=RetryPolicy(max_attempts=5, initial_delay=0.01, jitter=0))
    return b.build()


def quick() -> Any:
    b = SagaBuilder("quick")
    b.step("reserve", reserve)
    return b.build()


def sleepy() -> Any:
    b = SagaBuilder("sleepy")
    b.step("slow", slow, timeout=0.05, retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0))
    return b.build()


async def test_the_engine_reports_sagas_attempts_retries_timeouts_and_commits(
    store_url: str, metrics: tuple[PrometheusObserver, str]
) -> None:
    observer, url = metrics
    async with SagaEngine(store_url, observers=[observer]) as engine:
        engine.register(shop(), quick(), sleepy())
        ids = [await engine.start("quick") for _ in range(3)]
        ids += [await engine.start("shop"), await engine.start("sleepy")]
        snaps = [await engine.wait(i, timeout=20) for i in ids]
        assert [s.status for s in snaps] == [SagaStatus.COMPLETED] * 3 + [SagaStatus.COMPENSATED] * 2
        await observer.refresh(engine)
    m = scrape(url)
    assert value(m, "sagakit_sagas_started_total", saga="quick") == 3
    assert value(m, "sagakit_sagas_finished_total", saga="quick", status="completed") == 3
    assert value(m, "sagakit_sagas_finished_total", saga="shop", status="compensated") == 1
    assert value(m, "sagakit_saga_duration_seconds_count", saga="quick", status="completed") == 3
    # charge: two retryable failures, then a non-retryable one; reserve is compensated.
    charge = {"saga": "shop", "step": "charge", "direction": "action"}
    assert value(m, "sagakit_step_attempts_total", **charge, outcome="failed") == 3
    assert value(m, "sagakit_step_failures_total", **charge) == 3
    assert value(m, "sagakit_step_retries_total", **charge) == 2
    assert value(m, "sagakit_step_duration_seconds_count", **charge, outcome="failed") == 3
    undo = {"saga": "shop", "step": "reserve", "direction": "compensation"}
    assert value(m, "sagakit_step_attempts_total", **undo, outcome="succeeded") == 1
    slow_step = {"saga": "sleepy", "step": "slow", "direction": "action"}
    assert value(m, "sagakit_step_timeouts_total", **slow_step) == 2
    assert value(m, "sagakit_step_attempts_total", **slow_step, outcome="timed_out") == 2
    assert (value(m, "sagakit_commit_batch_size_count") or 0) >= 1
    assert (value(m, "sagakit_commit_batch_size_sum") or 0) >= 5  # every saga's transitions were committed
    assert (value(m, "sagakit_commit_duration_seconds_count") or 0) >= 1
    # The store gauges (refresh): everything finished, nothing in flight.
    assert value(m, "sagakit_sagas", status="completed") == 3
    assert value(m, "sagakit_sagas", status="compensated") == 2
    assert value(m, "sagakit_sagas_in_flight", saga="shop") == 0
    assert value(m, "sagakit_stuck_saga_age_seconds") == 0


class Reserve(BaseModel):
    order_id: str


class Reserved(BaseModel):
    order_id: str


@pytest.mark.parametrize("store", ["suite", "memory"])
async def test_the_store_gauges_show_a_stuck_saga_the_outbox_backlog_and_dead_letters(
    store: str, store_url: str, metrics: tuple[PrometheusObserver, str]
) -> None:
    observer, url = metrics
    target: Any = store_url if store == "suite" else MemoryStore()  # one memory store for both engines
    now = [1_000_000.0]
    b = SagaBuilder("order")
    b.step("reserve", send(Reserve, success=Reserved))
    order = b.build()
    # Started with no engine running: due at once, and nobody takes it.
    idle = SagaEngine(target, clock=lambda: now[0])
    idle.register(order, quick())
    await idle.start("quick")
    await idle.close()
    now[0] += 90
    # A running engine without a transport: the command is written to the outbox and stays there.
    async with SagaEngine(target, clock=lambda: now[0], observers=[observer]) as engine:
        engine.register(order)
        sid = await engine.start("order", {"order_id": "o-1"})
        for _ in range(500):
            if await engine.store.outbox_pending():
                break
            await asyncio.sleep(0.01)
        await engine.store.dead_letter(DeadLetter("m-1", now[0], None, "Nobody.Wants", "{}", "no saga consumes it"))
        now[0] += 30
        await observer.refresh(engine, names=["order", "quick"])
        m = scrape(url)
        assert value(m, "sagakit_outbox_backlog") == 1
        assert value(m, "sagakit_outbox_oldest_age_seconds") == pytest.approx(30)
        assert value(m, "sagakit_dead_letters") == 1
        assert value(m, "sagakit_sagas_in_flight", saga="order") == 1
        assert value(m, "sagakit_sagas_in_flight", saga="quick") == 1
        assert value(m, "sagakit_sagas", status="pending") == 1
        # The quick saga has been due for 120 s without a worker taking it (none runs its definition).
        assert value(m, "sagakit_stuck_saga_age_seconds") == pytest.approx(120)
        assert value(m, "sagakit_store_gauges_updated_timestamp_seconds") == now[0]
        await engine.abort(sid)


async def test_watch_refreshes_the_store_gauges_until_it_ends(
    store_url: str, metrics: tuple[PrometheusObserver, str]
) -> None:
    observer, url = metrics
    async with SagaEngine(store_url, observers=[observer]) as engine:
        engine.register(quick())
        async with observer.watch(engine, every=0.05):
            await engine.wait(await engine.start("quick"), timeout=10)
            for _ in range(400):
                if value(scrape(url), "sagakit_sagas", status="completed") == 1:
                    break
                await asyncio.sleep(0.025)
            else:
                raise AssertionError("the store gauges were not refreshed")
        with pytest.raises(ValueError, match="every must be > 0 seconds, got 0"):
            async with observer.watch(engine, every=0):
                pass
