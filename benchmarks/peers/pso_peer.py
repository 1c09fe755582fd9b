"""python-saga-orchestrator running the benchmark workloads.

Runs in its own virtual environment (``benchmarks/.venvs/pso``, Python >= 3.12
as the package requires: ``python-saga-orchestrator`` and, for SQLite,
``aiosqlite``, from PyPI), never in sagakit's. A saga is a ``SagaBuilder``
definition of ``BaseStep`` objects with ``compensate``; a failing step raises
and has ``NoRetry``, so the orchestrator compensates the completed steps.
``SagaOrchestrator.start`` runs a saga to its end; at most ``--in-flight``
run at once.

Workload D (eight parallel steps and a join) cannot be expressed: the package
runs steps one after another only (its README: "optimized for sequential saga
execution, not parallel DAG execution"), so that run reports itself as not
supported instead of a figure.

Stores as sagakit gets them: SQLite (``sqlite+aiosqlite``) in WAL mode with
``synchronous=NORMAL``; PostgreSQL (``postgresql+asyncpg``) in its own schema.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import _common as common
import sqlalchemy as sa
from pydantic import BaseModel
from saga_orchestrator import (
    BaseStep,
    NoRetry,
    SagaBuilder,
    SagaOrchestrator,
    SagaStateMixin,
    SagaStepHistoryMixin,
)
from sqlalchemy import ForeignKey
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class BenchSagaHistory(Base, SagaStepHistoryMixin):
    __tablename__ = "bench_saga_history"

    saga_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("bench_saga_state.id", ondelete="CASCADE"), index=True)


class BenchSagaState(Base, SagaStateMixin):
    __tablename__ = "bench_saga_state"

    step_history: Mapped[list[BenchSagaHistory]] = relationship(
        "BenchSagaHistory", cascade="all, delete-orphan", order_by="BenchSagaHistory.id"
    )


class Empty(BaseModel):
    pass


CALLS = [0]


class NoopStep(BaseStep[Empty, Empty]):
    async def execute(self, inp: Empty, event_type: str | None = None, event_payload: Any | None = None) -> Empty:
        CALLS[0] += 1
        return Empty()

    async def compensate(
        self, inp: Empty, out: Empty, event_type: str | None = None, event_payload: Any | None = None
    ) -> None:
        CALLS[0] += 1


class FailingStep(BaseStep[Empty, Empty]):
    async def execute(self, inp: Empty, event_type: str | None = None, event_payload: Any | None = None) -> Empty:
        CALLS[0] += 1
        raise RuntimeError("declined")

    async def compensate(
        self, inp: Empty, out: Empty, event_type: str | None = None, event_payload: Any | None = None
    ) -> None:
        CALLS[0] += 1


def _definition(spec: common.Spec) -> Any:
    b = SagaBuilder()
    ref = None
    for name in spec.steps:
        step = FailingStep() if name == spec.fail else NoopStep()
        if ref is None:
            ref = b.add_step(step=step, input_map=lambda ctx: {}, retry_policy=NoRetry(), step_id=name)
        else:
            ref = b.add_step(step=step, input_map=lambda out: {}, depends_on=ref, retry_policy=NoRetry(), step_id=name)
    return b.build()


# ---------------------------------------------------------------- write transactions

_tx: dict[str, Any] = {"writes": 0, "dirty": set()}


def _count_writes() -> None:
    """Count committed transactions that wrote or locked rows (INSERT/UPDATE/DELETE, FOR UPDATE)."""

    @sa.event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def _mark(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        head = statement.lstrip()[:6].upper()
        if head in ("INSERT", "UPDATE", "DELETE") or "FOR UPDATE" in statement:
            _tx["dirty"].add(id(conn))

    @sa.event.listens_for(sa.engine.Engine, "commit")
    def _commit(conn: Any) -> None:
        if id(conn) in _tx["dirty"]:
            _tx["dirty"].discard(id(conn))
            _tx["writes"] += 1

    @sa.event.listens_for(sa.engine.Engine, "rollback")
    def _rollback(conn: Any) -> None:
        _tx["dirty"].discard(id(conn))


def _engine(args: Any) -> Any:
    if args.store == "sqlite":
        engine = create_async_engine(f"sqlite+aiosqlite:///{args.db}")

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    url = args.db.replace("postgresql://", "postgresql+asyncpg://", 1)
    return create_async_engine(
        url, pool_size=args.in_flight, max_overflow=10, connect_args={"server_settings": {"search_path": args.schema}}
    )


async def _setup(args: Any) -> None:
    if args.store == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(args.db)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE')
            await conn.execute(f'CREATE SCHEMA "{args.schema}"')
        finally:
            await conn.close()


async def _drop(args: Any) -> None:
    if args.store == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(args.db)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE')
        finally:
            await conn.close()


async def _run(args: Any, spec: common.Spec) -> dict[str, Any]:
    await _setup(args)
    engine = _engine(args)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        orch = SagaOrchestrator[BenchSagaState, BenchSagaHistory](
            model_class=BenchSagaState, history_model_class=BenchSagaHistory, session_maker=sessions
        )
        orch.register(f"bench_{spec.key}", _definition(spec))
        sem = asyncio.Semaphore(args.in_flight)

        async def one(i: int) -> None:
            async with sem:
                await orch.start(saga_name=f"bench_{spec.key}", initial_data={"i": i}, aggregation_id=f"agg-{i}")

        writes0 = _tx["writes"]
        server0 = common.postgres_cpu_seconds() if args.store == "postgresql" else 0.0
        cpu0 = common.cpu_seconds()
        begin = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(args.n)))
        seconds = time.perf_counter() - begin
        cpu = common.cpu_seconds() - cpu0
        server = common.postgres_cpu_seconds() - server0 if args.store == "postgresql" else None
        writes = _tx["writes"] - writes0
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT status, count(*) FROM bench_saga_state GROUP BY status"))).all()
            outcomes = {str(s).lower(): int(c) for s, c in rows}
            hist = (
                await conn.execute(
                    sa.text("SELECT saga_id, step_id, phase, timestamp FROM bench_saga_history ORDER BY id")
                )
            ).all()
    finally:
        await engine.dispose()
        await _drop(args)
    by_saga: dict[Any, list[tuple[str, bool, float]]] = {}
    from datetime import datetime

    for sid, step, phase, stamp in hist:
        at = datetime.fromisoformat(stamp) if isinstance(stamp, str) else stamp  # SQLite keeps the text
        by_saga.setdefault(sid, []).append((step, str(phase).upper().endswith("COMPENSATE"), at.timestamp()))
    gaps: list[float] = []
    for fin in by_saga.values():
        gaps.extend(common.step_gaps(spec, fin))
    return {
        "seconds": seconds,
        "step_runs": CALLS[0],
        "ok": outcomes.get(spec.expected, 0) == args.n,
        "finished": outcomes.get(spec.expected, 0),
        "write_tx": writes,
        "cpu_seconds": cpu,
        "server_cpu_seconds": server,
        "outcomes": outcomes,
        "latency": common.percentiles(gaps),
    }


def main() -> None:
    args = common.arguments("python-saga-orchestrator on the benchmark workloads").parse_args()
    spec = common.WORKLOADS[args.workload]
    from importlib.metadata import version

    head = {
        "system": "pso",
        "version": f"python-saga-orchestrator {version('python-saga-orchestrator')}",
        "workload": spec.key,
        "store": args.store,
        "n": args.n,
        "workers": args.workers,
        "in_flight": args.in_flight,
    }
    if len(spec.stages) != len(spec.steps):
        common.emit({**head, "unsupported": "parallel steps: the package runs steps one after another only"})
        return
    if args.workers:
        common.emit({**head, "unsupported": "worker processes: not part of this comparison"})
        return
    if args.store == "postgresql" and not args.schema:
        args.schema = f"bench_pso_{os.getpid()}"
    _count_writes()
    import logging

    logging.disable(logging.INFO)
    from loguru import logger

    logger.remove()
    result = asyncio.run(_run(args, spec))
    result.update(head)
    if args.store == "sqlite":
        import sqlite3

        result["sqlite"] = sqlite3.sqlite_version
    common.emit(result)


if __name__ == "__main__":
    main()
