"""Worker process of the chaos test: one SagaEngine on PostgreSQL, run until killed or SIGTERM.

Usage: ``python -m tests.chaos.worker URL WORKER_ID LEASE_SECONDS [SKEW_SECONDS]``

``URL`` is a store URL with ``?schema=``; the ``effects`` table lives in the
same schema (the parent creates it). ``SKEW_SECONDS`` (default 0) shifts the
engine's clock by that much through the ``clock=`` hook; a worker whose
process time is shifted by libfaketime gets 0 here and the shift from its
environment. Either way the first line on stdout is
``ready <worker id> skew=<engine clock minus the database's clock>``.

Every step and compensation applies its effect by inserting one row into
``effects`` inside ``sagakit.stores.postgres.fenced`` (the effect happens only
while the worker provably holds the saga's lease), and in the same statement
records whether this worker held the saga's lease at that moment on the
database's clock (``lease_valid``). The
same check at the start of the attempt goes to ``started_valid`` (and its time
to ``started_at``), to tell an
attempt begun without a lease from one that lost it while it ran (a freeze,
a takeover).

Sagas with ``flaky`` in their data fail ``charge`` twice (retryable, before
its effect) and wait 0.5 s, then 1 s for the retries: a worker holds a saga
while it has work in flight and releases it only while it waits, so this is
when an operator's ``compensate`` from another process can get hold of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import time
from typing import Any

import asyncpg

from sagakit import NonRetryableError, RetryPolicy, SagaBuilder, SagaEngine, StepContext
from sagakit.stores.postgres import fenced

WORKER_ID = os.environ.get("CHAOS_WORKER_ID", "")
STEP_SECONDS = (0.05, 0.5)  # simulated work of an attempt, between the lease check at its start and its effect

_pool: asyncpg.Pool | None = None
_lock: asyncio.Lock | None = None

LEASE_HELD = (
    "SELECT COALESCE((SELECT lease_owner = $1::text AND lease_expires > extract(epoch FROM clock_timestamp()) "
    "FROM sagakit_sagas WHERE id = $2::text), false) AS valid, clock_timestamp() AS at"
)
APPLY = (
    "INSERT INTO effects (key, saga_id, step, direction, worker, attempt, started_valid, started_at, lease_valid) "
    "SELECT $3::text, $2::text, $4::text, $5::text, $1::text, $6::int, $7::boolean, $8::timestamptz, "
    "COALESCE((SELECT lease_owner = $1 AND "
    "lease_expires > extract(epoch FROM clock_timestamp()) FROM sagakit_sagas WHERE id = $2), false)"
)

FENCED_OFF = "INSERT INTO fenced_off (saga_id, step, direction, worker, error) VALUES ($1, $2, $3, $4, $5)"

TABLES = (
    "CREATE TABLE IF NOT EXISTS effects (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, saga_id TEXT NOT NULL, "
    "step TEXT NOT NULL, direction TEXT NOT NULL, worker TEXT NOT NULL, attempt INTEGER NOT NULL, "
    "started_valid BOOLEAN NOT NULL, started_at TIMESTAMPTZ NOT NULL, lease_valid BOOLEAN NOT NULL, "
    "at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
    "CREATE INDEX IF NOT EXISTS effects_saga ON effects (saga_id)",
    "CREATE TABLE IF NOT EXISTS fenced_off (saga_id TEXT NOT NULL, step TEXT NOT NULL, direction TEXT NOT NULL, "
    "worker TEXT NOT NULL, error TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
)


def split_url(url: str) -> tuple[str, str]:
    base, _, schema = url.partition("?schema=")
    return base, schema


async def _get_pool() -> asyncpg.Pool:
    global _pool, _lock
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        if _pool is None:
            base, schema = split_url(os.environ["CHAOS_DSN"])
            _pool = await asyncpg.create_pool(base, min_size=1, max_size=6, server_settings={"search_path": schema})
    return _pool


async def _effect(ctx: StepContext) -> dict[str, Any]:
    pool = await _get_pool()
    direction = "compensation" if ctx.compensation else "action"
    started = await pool.fetchrow(LEASE_HELD, WORKER_ID, ctx.saga_id)
    await asyncio.sleep(random.uniform(*STEP_SECONDS))
    if not ctx.compensation and ctx.step == "ship" and ctx.data.get("fail"):
        raise NonRetryableError("cannot ship")  # refused: no effect
    if not ctx.compensation and ctx.step == "charge" and ctx.data.get("flaky") and ctx.attempt <= 2:
        raise RuntimeError("card network busy")  # retried after a back-off, saga released meanwhile: no effect
    # The effect is fenced: applied in a transaction that holds the saga's row while the lease is
    # proven on the database's clock, so a worker that lost its lease (frozen mid-step) applies nothing.
    try:
        async with pool.acquire() as conn, fenced(conn, ctx):
            await conn.execute(
                APPLY,
                WORKER_ID,
                ctx.saga_id,
                ctx.idempotency_key,
                ctx.step,
                direction,
                ctx.attempt,
                started["valid"],
                started["at"],
            )
    except Exception as e:
        # Refused by the fence (LeaseLost), or the server closed the session of a transaction this
        # worker left idle past its lease (a freeze inside the block): nothing was applied.
        with contextlib.suppress(Exception):
            await pool.execute(FENCED_OFF, ctx.saga_id, ctx.step, direction, WORKER_ID, type(e).__name__)
        raise
    return {"key": ctx.idempotency_key}


def make_definition():  # type: ignore[no-untyped-def]
    retry = RetryPolicy(max_attempts=10, initial_delay=0.05, max_delay=0.5)
    slow = RetryPolicy(max_attempts=10, initial_delay=0.5, multiplier=2.0, max_delay=2.0)
    b = SagaBuilder("chaos")
    for step in ("reserve", "charge", "pack"):
        policy = slow if step == "charge" else retry
        b.step(step, _effect, _effect, retry=policy, compensation_retry=retry, timeout=15.0)
    b.step("ship", _effect, retry=retry, timeout=15.0)
    return b.build()


definition = make_definition()


def _dump(engine: SagaEngine) -> None:
    """SIGUSR1: what this worker holds, for the test's report on stuck sagas (reads the engine's internals)."""
    try:
        slots = engine._slots  # noqa: SLF001
        lines = [
            f"dump {engine.worker_id}: held {len(engine._held)}, slots free "  # noqa: SLF001
            f"{getattr(slots, 'free', '?')}, waiting {len(getattr(slots, 'waiters', ()))}"
        ]
        for sid, held in list(engine._held.items()):  # noqa: SLF001
            tasks = {tok: ("done" if t.done() else "running") for tok, t in held.inflight.items()}
            timer = held.timer.when() - asyncio.get_running_loop().time() if held.timer is not None else None
            steps = {n: (s.status.value, s.token) for n, s in held.state.steps.items() if s.token}
            lines.append(
                f"dump held {sid}: {held.state.status.value} rev {held.state.revision} steps {steps} "
                f"inflight {tasks} queued {held.queued} committing {held.committing} timer {timer}"
            )
        for task in asyncio.all_tasks():
            frames = task.get_stack(limit=3)
            where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
            lines.append(f"dump task {task.get_name()}: {where}")
        print("\n".join(lines), file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 - a debugging aid must not kill the worker
        print(f"dump failed: {e!r}", file=sys.stderr, flush=True)


async def main(url: str, worker_id: str, lease: float, skew: float) -> None:
    global WORKER_ID
    WORKER_ID = worker_id
    os.environ["CHAOS_DSN"] = url
    clock = (lambda: time.time() + skew) if skew else time.time
    engine = SagaEngine(
        url,
        lease_seconds=lease,
        concurrency=24,
        threads=2,
        poll_interval=0.2,
        shutdown_grace=1.0,
        worker_id=worker_id,
        clock=clock,
    )
    engine.register(definition)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    pool = await _get_pool()
    db_now = float(await pool.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))
    measured = engine.clock() - db_now
    loop.add_signal_handler(signal.SIGUSR1, _dump, engine)
    parent = os.getppid()

    async def orphaned() -> None:  # the test process died without reaping us: stop too
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        stop.set()

    async with engine:
        print(f"ready {worker_id} skew={measured:.3f}", flush=True)
        watch = asyncio.create_task(orphaned())
        await stop.wait()
        watch.cancel()
    await pool.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    skew = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), skew))
