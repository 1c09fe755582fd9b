"""Observers see every transition, attempt and commit; the OpenTelemetry observer records spans."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sagakit import (
    AttemptInput,
    BaseObserver,
    CommitInput,
    LoggingObserver,
    NonRetryableError,
    SagaBuilder,
    SagaEngine,
    SagaStatus,
    StepContext,
    TransitionInput,
)
from sagakit.otel import OpenTelemetryObserver, saga_trace_id, traceparent


class Recording(BaseObserver):
    def __init__(self) -> None:
        self.transitions: list[TransitionInput] = []
        self.attempts: list[AttemptInput] = []
        self.commits: list[CommitInput] = []

    def on_transition(self, event: TransitionInput) -> None:
        self.transitions.append(event)

    def on_attempt(self, event: AttemptInput) -> None:
        self.attempts.append(event)

    def on_commit(self, event: CommitInput) -> None:
        self.commits.append(event)


class Broken(BaseObserver):
    def on_attempt(self, event: AttemptInput) -> None:
        raise RuntimeError("observer bug")


def definition() -> object:
    async def ok(ctx: StepContext) -> str:
        return "ok"

    async def bad(ctx: StepContext) -> None:
        raise NonRetryableError("declined")

    b = SagaBuilder("observed")
    b.step("a", ok, ok)
    b.step("b", bad)
    return b.build()


async def test_observers_see_transitions_attempts_and_commits(store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recording()
    caplog.set_level(logging.INFO, logger="sagakit.events")
    async with SagaEngine(store_url, observers=[rec, Broken(), LoggingObserver()]) as engine:
        engine.register(definition())  # type: ignore[arg-type]
        sid = await engine.start("observed")
        snap = await engine.wait(sid, timeout=10)
    assert snap.status is SagaStatus.COMPENSATED
    outcomes = [(a.step, a.compensation, a.outcome) for a in rec.attempts]
    assert outcomes == [("a", False, "succeeded"), ("b", False, "failed"), ("a", True, "succeeded")]
    assert rec.attempts[1].error == "NonRetryableError: declined"
    assert all(a.ended >= a.started for a in rec.attempts)
    changes = [(t.before.value, t.after.value) for t in rec.transitions if t.before is not t.after]
    assert changes == [("running", "compensating"), ("compensating", "compensated")]
    assert sum(c.writes for c in rec.commits) >= 1 and all(c.refused == 0 for c in rec.commits)
    assert "observer bug" in caplog.text or "Broken" in caplog.text  # logged, not raised
    assert f"saga {sid} (observed v1) running -> compensating" in caplog.text


async def test_opentelemetry_spans_share_the_saga_trace(store_url: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with SagaEngine(store_url, observers=[OpenTelemetryObserver(provider)]) as engine:
        engine.register(definition())  # type: ignore[arg-type]
        sid = await engine.start("observed")
        await engine.wait(sid, timeout=10)
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["observed.a", "observed.b", "observed.a.compensation"]
    assert {s.context.trace_id for s in spans} == {saga_trace_id(sid)}
    assert spans[1].status.status_code.name == "ERROR"
    assert spans[0].attributes is not None and spans[0].attributes["sagakit.saga_id"] == sid
    header = traceparent(sid)
    assert header.startswith(f"00-{sid}-") and header.endswith("-01")
