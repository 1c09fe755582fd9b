"""A failed attempt's traceback is kept with its history entry, bounded, and shown masked.

Stored and read back through the suite's store (SQLite, or PostgreSQL under
SAGAKIT_TEST_DB=postgres) and the memory store; shown by ``sagakit show``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sagakit import NonRetryableError, RetryPolicy, SagaBuilder, SagaEngine, SagaStatus, StepContext
from sagakit._observe import MAX_TRACEBACK, format_traceback
from sagakit.cli._main import cli


def lookup(payload: dict[str, str]) -> str:
    return payload["id"]


async def charge(ctx: StepContext) -> str:
    return lookup({"password": "hunter2"})


def release(ctx: StepContext) -> None:
    try:
        lookup({})
    except KeyError as e:
        raise NonRetryableError("release failed") from e


async def reserve(ctx: StepContext) -> str:
    return "r-1"


def definition() -> object:
    b = SagaBuilder("shop")
    b.step("reserve", reserve, release)
    b.step("charge", charge, retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0))
    return b.build()


@pytest.mark.parametrize("store", ["suite", "memory"])
async def test_each_failed_attempt_keeps_its_traceback_in_the_history(store: str, store_url: str) -> None:
    url = store_url if store == "suite" else "memory://"
    async with SagaEngine(url) as engine:
        engine.register(definition())  # type: ignore[arg-type]
        sid = await engine.start("shop")
        await engine.wait(sid, timeout=10)
        snap = await engine.get(sid)  # read back from the store
    assert snap.status is SagaStatus.FAILED
    failures = [h for h in snap.history if h.traceback is not None]
    assert [(h.kind, h.step, h.attempt) for h in failures] == [
        ("step_failed", "charge", 1),
        ("step_failed", "charge", 2),
        ("compensation_failed", "reserve", 1),
    ]
    tb = failures[0].traceback
    assert tb is not None
    # From the step's code down to where it raised; the runtime's frames are left out.
    assert tb.startswith("Traceback (most recent call last):\n")
    assert "in charge\n" in tb and 'in lookup\n    return payload["id"]' in tb
    assert tb.rstrip().endswith("KeyError: 'id'")
    assert "_run_step" not in tb and "asyncio" not in tb
    # A sync compensation on the thread pool, with the exception it was raised from.
    undo = failures[2].traceback
    assert undo is not None
    assert "The above exception was the direct cause of the following exception" in undo
    assert "in release\n" in undo and "NonRetryableError: release failed" in undo
    assert "concurrent/futures" not in undo
    # A sync function that raised has failed, not been abandoned: nothing "late" is recorded.
    assert not [h for h in snap.history if h.kind == "stale_rejected"]
    # Other entries carry none.
    assert all(h.traceback is None for h in snap.history if h.kind not in ("step_failed", "compensation_failed"))


def test_a_long_traceback_keeps_its_start_and_its_end() -> None:
    # Two functions calling each other: no two frames in a row alike, so none is folded.
    def ping(n: int) -> None:
        if n == 0:
            raise ValueError("at the bottom")
        pong(n - 1)

    def pong(n: int) -> None:
        ping(n - 1)

    try:
        ping(300)
    except ValueError as e:
        tb = format_traceback(e)
    assert len(tb) <= MAX_TRACEBACK
    assert tb.startswith("Traceback (most recent call last):\n")
    assert " characters cut ...\n" in tb
    assert tb.rstrip().endswith("ValueError: at the bottom")


def test_sagakit_show_prints_the_tracebacks_masked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"

    async def run() -> str:
        async with SagaEngine(url) as engine:
            engine.register(definition())  # type: ignore[arg-type]
            sid = await engine.start("shop")
            await engine.wait(sid, timeout=10)
            return sid

    sid = asyncio.run(run())
    result = CliRunner().invoke(cli, ["show", sid, "--store", url], catch_exceptions=False, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "traceback of step 'charge' attempt 1" in result.output
    assert "traceback of compensation of step 'reserve' attempt 1" in result.output
    assert 'return payload["id"]' in result.output
    assert 'return lookup({"password": "***"})' in result.output
    assert "hunter2" not in result.output
    shown = json.loads(CliRunner().invoke(cli, ["show", sid, "--store", url, "--json"]).output)
    tracebacks = [h["traceback"] for h in shown["history"] if h["traceback"]]
    assert len(tracebacks) == 3 and all("hunter2" not in t for t in tracebacks)


def test_a_repeated_failure_is_formatted_once_and_a_different_one_anew() -> None:
    def fail(text: str) -> str:
        try:
            lookup({"text": text})
        except KeyError as e:
            return format_traceback(e)
        raise AssertionError("lookup did not fail")

    def fail_elsewhere() -> str:
        try:
            {}["id"]  # noqa: B018
        except KeyError as e:
            return format_traceback(e)
        raise AssertionError("unreachable")

    first, again = fail("a"), fail("b")
    assert first is again  # the same code path and message: remembered
    other = fail_elsewhere()
    assert other != first and "in fail_elsewhere" in other and "in lookup" not in other


def test_history_entries_keep_five_values_without_a_traceback_and_tolerate_newer_ones() -> None:
    from sagakit.machine import HistoryEntry
    from sagakit.stores._codec import decode_history, encode_history

    plain = HistoryEntry(1.0, "step_started", "step 'a' attempt 1", "a", 1)
    failed = HistoryEntry(2.0, "step_failed", "step 'a' failed", "a", 1, "Traceback: ...")
    text = encode_history([plain, failed])
    assert json.loads(text) == [[1.0, "step_started", "step 'a' attempt 1", "a", 1], [*failed]]
    assert decode_history([(text,)]) == [plain, failed]
    # A value a newer version added is left out, not refused.
    assert decode_history([('[[3.0, "x", "y", null, null, null, "newer"]]',)]) == [HistoryEntry(3.0, "x", "y")]
