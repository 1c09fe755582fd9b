"""Worker process of the for-each crash test.

``start`` starts one saga whose for-each step reads its items from a JSON file
and runs until it is killed; ``resume`` runs the saga left behind to its end and
prints its id, status and result as JSON; ``work`` runs whatever sagas it can
claim until it is stopped. Each item's side effect is recorded in a separate
SQLite database once per idempotency key, and every execution is counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from typing import Any

from sagakit import SagaBuilder, SagaDefinition, SagaEngine, StepContext


def _db(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY)")
    conn.execute("CREATE TABLE IF NOT EXISTS executions (key TEXT NOT NULL, worker INTEGER NOT NULL)")
    return conn


def effects(path: str) -> list[str]:
    """The idempotency keys of the item effects applied so far."""
    try:
        conn = _db(path)
    except sqlite3.OperationalError:
        return []
    try:
        return [r[0] for r in conn.execute("SELECT key FROM effects ORDER BY key")]
    finally:
        conn.close()


def executions(path: str) -> list[tuple[str, int]]:
    """Every execution of an item so far: (idempotency key, worker process id)."""
    conn = _db(path)
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT key, worker FROM executions")]
    finally:
        conn.close()


def make_definition(source: str, effects_path: str, pause: float = 0.3) -> SagaDefinition:
    def read(data: Any, results: Any) -> list[str]:
        with open(source) as f:
            return list(json.load(f))

    def upper(item: str, ctx: StepContext) -> str:
        time.sleep(pause)  # slow enough to be killed between items
        conn = _db(effects_path)
        try:
            conn.execute("INSERT INTO executions VALUES (?, ?)", (ctx.idempotency_key, os.getpid()))
            conn.execute("INSERT OR IGNORE INTO effects VALUES (?)", (ctx.idempotency_key,))
        finally:
            conn.close()
        return item.upper()

    b = SagaBuilder("for_each_crash")
    b.for_each("upper", items=read, action=upper, parallelism=1 if pause else 3)
    return b.build()


async def main(store_url: str, source: str, effects_path: str, mode: str) -> None:
    engine = SagaEngine(store_url, lease_seconds=1.0, poll_interval=0.05)
    engine.register(make_definition(source, effects_path, 0.0 if mode == "work" else 0.3))
    async with engine:
        if mode == "work":
            print("working", flush=True)
            await asyncio.sleep(3600)
            return
        if mode == "start":
            await engine.start("for_each_crash", {}, idempotency_key="the-one")
            await asyncio.sleep(3600)
            return
        [snap] = await engine.list(name="for_each_crash")
        final = await engine.wait(snap.id, timeout=60)
        print(json.dumps({"id": final.id, "status": final.status.value, "result": final.steps["upper"].result}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]))
