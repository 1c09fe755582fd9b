"""Helpers of the participant tests: commands as a saga sends them, the replies, effects counted in a table."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel

from sagakit._messages import Envelope, message_id, message_type_name
from sagakit._transport import Delivery, Transport
from sagakit.participant import FAULT_TYPE_NAME, MessageContext

MakeTransport = Callable[..., Transport]


class Charge(BaseModel):
    order_id: str
    amount: float


class Charged(BaseModel):
    order_id: str
    charge_key: str


REPLY_TYPES = [message_type_name(Charged), FAULT_TYPE_NAME]


def saga_command(
    cmd: BaseModel,
    *,
    saga_id: str | None = None,
    step: str = "charge",
    token: int = 1,
    direction: str = "action",
) -> Envelope:
    """*cmd* in the envelope a saga's outbox would send for one attempt of *step*."""
    saga_id = saga_id or uuid.uuid4().hex
    return Envelope.wrap(
        cmd,
        message_id=message_id(saga_id, step, 0, direction),
        timestamp=time.time(),
        saga_id=saga_id,
        step=step,
        token=token,
        correlation_id=f"corr-{saga_id}",
        headers={"traceparent": f"00-{saga_id[:32].ljust(32, '0')}-0000000000000001-01"},
    )


async def send_command(transport: Transport, env: Envelope) -> None:
    """Publish *env* as the relay does: the outbox row's id (message id and token) for the broker."""
    await transport.publish(
        env.type_name,
        env.to_bytes(),
        message_id=f"{env.message_id}/{env.token}",
        headers={"message_id": env.message_id},
    )


class Replies:
    """Subscribes, as a saga engine would, to the replies (success events and faults) and keeps them."""

    def __init__(self, make_transport: MakeTransport, destinations: list[str] | None = None) -> None:
        self.transport = make_transport()
        self.destinations = destinations or REPLY_TYPES
        self.envelopes: list[Envelope] = []

    async def __aenter__(self) -> Replies:
        await self.transport.start()

        async def keep(d: Delivery) -> None:
            self.envelopes.append(Envelope.from_bytes(d.body))

        await self.transport.subscribe(self.destinations, f"saga-{uuid.uuid4().hex[:6]}", keep)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()

    async def wait(self, n: int, timeout: float = 30.0) -> list[Envelope]:
        await wait_until(lambda: len(self.envelopes) >= n, timeout, f"{n} replies (have {self.envelopes})")
        return self.envelopes

    def to(self, env: Envelope) -> list[Envelope]:
        """The replies to the command in *env*."""
        return [r for r in self.envelopes if r.causation_id == env.message_id]


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------ effects, counted per idempotency key


def _sqlite_path(store_url: str) -> str | None:
    return store_url.removeprefix("sqlite:///") if store_url.startswith("sqlite:") else None


def _pg(store_url: str) -> tuple[str, str]:
    parts = urlsplit(store_url)
    schema = dict(parse_qsl(parts.query))["schema"]
    return parts._replace(query="").geturl(), schema


async def create_effects(store_url: str) -> None:
    """The participant's own table in the store's database: how often each effect was applied."""
    ddl = "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, n INTEGER NOT NULL)"
    path = _sqlite_path(store_url)
    if path is not None:
        with sqlite3.connect(path) as conn:
            conn.execute(ddl)
        return
    import asyncpg

    dsn, schema = _pg(store_url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(ddl.replace("effects", f'"{schema}".effects'))
    finally:
        await conn.close()


async def effects(store_url: str) -> dict[str, int]:
    """Times applied, per idempotency key (committed effects only)."""
    path = _sqlite_path(store_url)
    if path is not None:
        with sqlite3.connect(path) as conn:
            return dict(conn.execute("SELECT key, n FROM effects").fetchall())
    import asyncpg

    dsn, schema = _pg(store_url)
    conn = await asyncpg.connect(dsn)
    try:
        return {r[0]: r[1] for r in await conn.fetch(f'SELECT key, n FROM "{schema}".effects')}
    finally:
        await conn.close()


async def apply_effect(ctx: MessageContext) -> None:
    """Count one application of the effect of *ctx*'s command, in the handling transaction."""
    conn: Any = ctx.connection
    if isinstance(conn, sqlite3.Connection):
        conn.execute(
            "INSERT INTO effects (key, n) VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET n = n + 1",
            (ctx.idempotency_key,),
        )
    else:
        await conn.execute(
            "INSERT INTO effects (key, n) VALUES ($1, 1) ON CONFLICT (key) DO UPDATE SET n = effects.n + 1",
            ctx.idempotency_key,
        )
