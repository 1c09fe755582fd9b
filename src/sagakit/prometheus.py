"""Prometheus metrics for sagakit (the ``prometheus`` extra): an observer that counts, and store gauges.

    from sagakit.prometheus import PrometheusObserver
    metrics = PrometheusObserver()                 # on prometheus_client's default registry
    engine = SagaEngine(url, observers=[metrics])
    async with engine, metrics.watch(engine):      # store gauges, refreshed every 15 s
        ...

What this process does (the observer): sagas started and finished, step
attempts by outcome, failures, retries and timeouts, durations, group
commits. What the store holds (``watch`` or ``refresh``, read from the store,
so the same in every process): sagas per status and in flight, the outbox
backlog and the age of its oldest message, dead letters, and how long the most
overdue unfinished saga has waited for a worker. ``sagakit worker
--metrics-port`` and ``sagakit serve --metrics`` expose them at ``/metrics``.

Labels: ``saga`` (definition name), ``step``, ``direction`` (``action`` or
``compensation``), ``outcome`` (``succeeded``, ``failed``, ``timed_out``) and
``status`` (a saga status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        GC_COLLECTOR,
        PLATFORM_COLLECTOR,
        PROCESS_COLLECTOR,
        REGISTRY,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
        start_http_server,
    )
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"{e}. Install metrics support with: pip install 'sagakit[prometheus]'") from e

from ._observe import AttemptInput, BaseObserver, CommitInput, TransitionInput
from ._status import SagaStatus
from ._store import SagaQuery

__all__ = ["DURATION_BUCKETS", "PrometheusObserver", "process_registry", "serve_metrics"]

log = logging.getLogger("sagakit.prometheus")

# Seconds: step attempts and whole sagas run from milliseconds to hours.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
_TERMINAL = frozenset(s for s in SagaStatus if s.terminal)
_IN_FLIGHT = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)
_FAILURES = ("step_failed", "compensation_failed")
_STARTS = ("step_started", "compensation_started")


class PrometheusObserver(BaseObserver):
    """Counts what the engine does as Prometheus metrics; ``refresh`` adds what the store holds.

    Args:
        registry: where the metrics are registered (default: prometheus_client's
            global registry, which ``start_http_server`` and most frameworks expose).
        namespace: the metrics' name prefix.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = "sagakit") -> None:
        self.registry = REGISTRY if registry is None else registry
        r = self.registry
        ns = namespace
        step = ("saga", "step", "direction")
        self.sagas_started = Counter("sagas_started", "Sagas that began running.", ["saga"], namespace=ns, registry=r)
        self.sagas_finished = Counter(
            "sagas_finished", "Sagas that reached a terminal status, by status.", ["saga", "status"],
            namespace=ns, registry=r,
        )  # fmt: skip
        self.saga_duration = Histogram(
            "saga_duration_seconds", "Time from a saga's creation to its terminal status.", ["saga", "status"],
            namespace=ns, registry=r, buckets=DURATION_BUCKETS,
        )  # fmt: skip
        self.attempts = Counter(
            "step_attempts", "Local step attempts that ended, by outcome.", [*step, "outcome"],
            namespace=ns, registry=r,
        )  # fmt: skip
        self.step_duration = Histogram(
            "step_duration_seconds", "Duration of local step attempts, by outcome.", [*step, "outcome"],
            namespace=ns, registry=r, buckets=DURATION_BUCKETS,
        )  # fmt: skip
        self.failures = Counter(
            "step_failures", "Failed step attempts (local and message steps).", step, namespace=ns, registry=r
        )
        self.retries = Counter(
            "step_retries", "Step attempts after the first (retries, operator retries, resends).", step,
            namespace=ns, registry=r,
        )  # fmt: skip
        self.timeouts = Counter(
            "step_timeouts", "Step attempts cut off by their timeout, or replies that did not come in time.", step,
            namespace=ns, registry=r,
        )  # fmt: skip
        self.commit_duration = Histogram(
            "commit_duration_seconds", "Duration of group commits.", namespace=ns, registry=r, buckets=_COMMIT_BUCKETS
        )
        self.commit_batch = Histogram(
            "commit_batch_size", "Transitions written per group commit.", namespace=ns, registry=r,
            buckets=_BATCH_BUCKETS,
        )  # fmt: skip
        self.commit_refused = Counter(
            "commit_refused", "Transitions refused at commit: their worker had lost the saga's lease.",
            namespace=ns, registry=r,
        )  # fmt: skip
        # Read from the store by refresh().
        self.sagas = Gauge("sagas", "Sagas in the store, by status.", ["status"], namespace=ns, registry=r)
        self.in_flight = Gauge(
            "sagas_in_flight", "Unfinished sagas (pending, running, compensating) in the store.", ["saga"],
            namespace=ns, registry=r,
        )  # fmt: skip
        self.outbox_backlog = Gauge(
            "outbox_backlog", "Messages written to the outbox and not yet published.", namespace=ns, registry=r
        )
        self.outbox_age = Gauge(
            "outbox_oldest_age_seconds", "Age of the oldest message still in the outbox (0 when it is empty).",
            namespace=ns, registry=r,
        )  # fmt: skip
        self.dead_letters = Gauge(
            "dead_letters", "Received messages that reached no saga, kept with the reason.", namespace=ns, registry=r
        )
        self.stuck_age = Gauge(
            "stuck_saga_age_seconds",
            "How long the most overdue unfinished saga has been due without a worker taking it (0: none is).",
            namespace=ns, registry=r,
        )  # fmt: skip
        self.resource_in_use = Gauge(
            "resource_permits_in_use", "Permits of a resource held now (by every worker on PostgreSQL).",
            ["resource"], namespace=ns, registry=r,
        )  # fmt: skip
        self.resource_waiting = Gauge(
            "resource_waiting", "Attempts waiting for a permit of a resource.", ["resource"], namespace=ns, registry=r
        )
        self.refreshed = Gauge(
            "store_gauges_updated_timestamp_seconds", "When the store gauges were last read.", namespace=ns, registry=r
        )
        # Children by label values: .labels() is several times dearer than a dict lookup.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # ------------------------------------------------------------ what the engine reports

    def on_transition(self, event: TransitionInput) -> None:
        name = event.saga_name
        for h in event.history:
            kind = h.kind
            if kind in _FAILURES:
                direction = "action" if kind == "step_failed" else "compensation"
                self._child(self.failures, name, h.step or "", direction).inc()
                if "waiting for the reply" in h.message:
                    self._child(self.timeouts, name, h.step or "", direction).inc()
            elif kind in _STARTS:
                if h.attempt is not None and h.attempt > 1:
                    direction = "action" if kind == "step_started" else "compensation"
                    self._child(self.retries, name, h.step or "", direction).inc()
            elif kind == "started":
                self._child(self.sagas_started, name).inc()
        if event.after in _TERMINAL and event.before not in _TERMINAL:
            status = event.after.value
            self._child(self.sagas_finished, name, status).inc()
            if event.created_at is not None:
                self._child(self.saga_duration, name, status).observe(max(0.0, event.at - event.created_at))

    def on_attempt(self, event: AttemptInput) -> None:
        direction = "compensation" if event.compensation else "action"
        labels = (event.saga_name, event.step, direction, event.outcome)
        self._child(self.attempts, *labels).inc()
        self._child(self.step_duration, *labels).observe(max(0.0, event.ended - event.started))
        if event.outcome == "timed_out":
            self._child(self.timeouts, event.saga_name, event.step, direction).inc()

    def on_commit(self, event: CommitInput) -> None:
        self.commit_duration.observe(max(0.0, event.ended - event.started))
        self.commit_batch.observe(event.writes)
        if event.refused:
            self.commit_refused.inc(event.refused)

    def exposition(self) -> tuple[bytes, str]:
        """The registry's metrics in Prometheus' text format, and its content type (for a ``/metrics`` route)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # ------------------------------------------------------------ what the store holds

    async def refresh(self, engine: Any, names: Iterable[str] | None = None) -> None:
        """Read the store gauges from *engine*'s store (opened by the engine; ``SagaEngine`` or the like).

        Args:
            engine: has ``store`` and ``clock()``; its registered definitions name the
                sagas whose in-flight count is reported, unless *names* does.
            names: saga names to report ``sagas_in_flight`` for.
        """
        store = engine.store
        now = engine.clock()
        counts = await store.count_by_status()
        for status in SagaStatus:
            self._child(self.sagas, status.value).set(counts.get(status, 0))
        if names is None:
            names = sorted({d.name for d in getattr(engine, "definitions", ())})
        for name in names:
            per = await store.count_by_status(SagaQuery(name=name, statuses=_IN_FLIGHT))
            self._child(self.in_flight, name).set(sum(per.get(s, 0) for s in _IN_FLIGHT))
        self.outbox_backlog.set(await store.outbox_pending())
        oldest_method = getattr(store, "outbox_oldest", None)
        oldest = await oldest_method() if oldest_method is not None else None
        self.outbox_age.set(0.0 if oldest is None else max(0.0, now - oldest))
        self.dead_letters.set(await store.prune_dead_letters(float("inf"), limit=1, dry_run=True))
        due = await store.next_wake()
        self.stuck_age.set(0.0 if due is None else max(0.0, now - due))
        for usage in await store.resources(now):
            self._child(self.resource_in_use, usage.name).set(usage.in_use)
            self._child(self.resource_waiting, usage.name).set(usage.waiting)
        self.refreshed.set(now)

    @contextlib.asynccontextmanager
    async def watch(self, engine: Any, every: float = 15.0) -> AsyncIterator[None]:
        """Refresh the store gauges every *every* seconds while the block runs (first right away).

        A failed read is logged and tried again at the next turn.
        """
        if not every > 0:
            raise ValueError(f"every must be > 0 seconds, got {every!r}")

        async def loop() -> None:
            while True:
                try:
                    await self.refresh(engine)
                except Exception:
                    log.exception("sagakit: reading the store gauges failed")
                await asyncio.sleep(every)

        task = asyncio.create_task(loop(), name="sagakit-metrics")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def process_registry() -> CollectorRegistry:
    """A new registry with the process, platform and garbage-collector metrics (for a process of its own)."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


def serve_metrics(port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None) -> Any:
    """Serve *registry* (default: the global one) at ``http://addr:port/metrics`` from a thread; returns the server.

    Call ``shutdown()`` on the result to stop it.
    """
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY if registry is None else registry)
    return server
