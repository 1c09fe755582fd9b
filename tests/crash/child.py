"""Child process of the crash test: runs sagas until it is killed.

Each step records its side effect in a separate SQLite database, once per
idempotency key (check-then-insert in one transaction), and counts every
execution in another table, so the parent can tell re-runs from duplicates.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time

from sagakit import NonRetryableError, RetryPolicy, SagaBuilder, SagaEngine, StepContext


def effects_db(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT NOT NULL, saga TEXT NOT NULL)")
    conn.execute("CREATE TABLE IF NOT EXISTS executions (key TEXT NOT NULL)")
    return conn


def make_definition(effects_path: str):  # type: ignore[no-untyped-def]
    def effect(ctx: StepContext) -> dict[str, str]:
        conn = effects_db(effects_path)
        try:
            conn.execute("INSERT INTO executions VALUES (?)", (ctx.idempotency_key,))
            time.sleep(0.002)
            conn.execute("BEGIN IMMEDIATE")
            seen = conn.execute("SELECT 1 FROM effects WHERE key = ?", (ctx.idempotency_key,)).fetchone()
            if not seen:
                conn.execute("INSERT INTO effects VALUES (?, ?)", (ctx.idempotency_key, ctx.saga_id))
            conn.execute("COMMIT")
        finally:
            conn.close()
        if not ctx.compensation and ctx.step == "ship" and ctx.data["fail"]:
            raise NonRetryableError("cannot ship")
        return {"key": ctx.idempotency_key}

    fast = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05)
    b = SagaBuilder("crashy")
    b.step("reserve", effect, effect, retry=fast, compensation_retry=fast)
    b.step("charge", effect, effect, retry=fast, compensation_retry=fast)
    b.step("ship", effect, retry=fast)
    return b.build()


async def main(store_url: str, effects_path: str, count: int) -> None:
    engine = SagaEngine(store_url, lease_seconds=1.0, concurrency=32, threads=8)
    engine.register(make_definition(effects_path))
    async with engine:
        for i in range(count):
            await engine.start("crashy", {"i": i, "fail": i % 5 == 0}, idempotency_key=f"o-{i}")
        print("started", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
