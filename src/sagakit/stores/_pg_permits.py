"""Resource permits on PostgreSQL: the limits hold across every worker on the database.

Each acquirer locks its resource's row in ``sagakit_resources`` (one upsert),
drops the permits whose holders stopped renewing them, queues its waiters in
``sagakit_permits`` and grants what ``sagakit._resources.grant`` allows, all in
one transaction on the database's clock. A release deletes the rows and
notifies the workers (``NOTIFY`` on the store's channel with a ``permit:``
payload), so their waiters look again at once; a bounded re-check covers a
holder that died (its permits come back when they expire).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from .._resources import PermitGrant, PermitKey, Resource, ResourceUsage, grant
from ._codec import dumps, loads

__all__ = ["PERMIT_NOTICE", "PostgresPermits"]

# The payload prefix of a notification that a permit of a resource was given back.
PERMIT_NOTICE = "permit:"
_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"

_UPSERT_RESOURCE = (
    "INSERT INTO sagakit_resources (name, concurrency, rate, per, grants) VALUES ($1, $2, $3, $4, '[]') "
    "ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency, rate = excluded.rate, per = excluded.per "
    "RETURNING grants"
)
_PURGE = "DELETE FROM sagakit_permits WHERE resource = $1 AND expires_at <= $2"
# The whole queue in one statement (arrays of saga ids, steps and tokens), whatever its length.
_QUEUE = (
    "INSERT INTO sagakit_permits (saga_id, step, token, resource, holder, granted, queued_at, expires_at) "
    "SELECT k.saga_id, k.step, k.token, $4, $5, 0, $6, $7 "
    "FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(saga_id, step, token) "
    "ON CONFLICT (saga_id, step, token) DO UPDATE SET expires_at = excluded.expires_at, holder = excluded.holder"
)
_HELD = "SELECT saga_id, step, token, granted FROM sagakit_permits WHERE resource = $1 AND (granted = 1 OR holder = $2)"
_GRANT = (
    "UPDATE sagakit_permits p SET granted = 1 "
    "FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(saga_id, step, token) "
    "WHERE p.saga_id = k.saga_id AND p.step = k.step AND p.token = k.token"
)
_WINDOW = "UPDATE sagakit_resources SET grants = $2 WHERE name = $1"
_RELEASE = "DELETE FROM sagakit_permits WHERE saga_id = $1 AND step = $2 AND token = $3"
_USAGE = """SELECT r.name, r.concurrency, r.rate, r.per, r.grants,
    (SELECT count(*) FROM sagakit_permits p WHERE p.resource = r.name AND p.granted = 1 AND p.expires_at > $1),
    (SELECT count(*) FROM sagakit_permits p WHERE p.resource = r.name AND p.granted = 0 AND p.expires_at > $1)
FROM sagakit_resources r ORDER BY r.name"""


class PostgresPermits:
    """``Store.permits_*`` and ``resources`` for ``PostgresStore``."""

    lease_clock: str
    _channel: str
    _permit_watchers: builtins.list[Callable[[str], None]]
    _tx: Callable[[str], AbstractAsyncContextManager[Any]]
    _fetch: Callable[..., Any]

    async def _db_now(self, conn: Any, now: float) -> float:
        if self.lease_clock != "database":
            return now
        return float(await conn.fetchval(f"SELECT {_NOW}"))

    async def permits_acquire(
        self, resource: Resource, holder: str, keys: Sequence[PermitKey], lease_seconds: float, now: float
    ) -> PermitGrant:
        name = resource.name
        async with self._tx("acquiring permits") as conn:
            # The upsert locks the resource's row: acquirers of one resource go one at a time.
            grants = await conn.fetchval(_UPSERT_RESOURCE, name, resource.concurrency, resource.rate, resource.per)
            now = await self._db_now(conn, now)
            await conn.execute(_PURGE, name, now)
            expires = now + lease_seconds
            await conn.execute(_QUEUE, *_columns(keys), name, holder, now, expires)
            rows = await conn.fetch(_HELD, name, holder)
            state = {(r[0], r[1], r[2]): r[3] for r in rows}
            in_use = sum(1 for g in state.values() if g)
            waiting = [k for k in keys if not state.get((k[0], k[1], k[2]))]
            got, window, retry_after = grant(resource, in_use, loads(grants), waiting, now)
            if got:
                await conn.execute(_GRANT, *_columns(got))
            if resource.rate is not None:
                await conn.execute(_WINDOW, name, dumps(window))
        had = [k for k in keys if state.get((k[0], k[1], k[2]))]
        return PermitGrant(had + got, retry_after)

    async def permits_release(self, resource: str, keys: Sequence[PermitKey]) -> None:
        if not keys:
            return
        async with self._tx("releasing permits") as conn:
            await conn.executemany(_RELEASE, [(k[0], k[1], k[2]) for k in keys])
            await conn.execute("SELECT pg_notify($1, $2)", self._channel, PERMIT_NOTICE + resource)

    async def permits_renew(self, holder: str, lease_seconds: float, now: float) -> None:
        async with self._tx("renewing permits") as conn:
            now = await self._db_now(conn, now)
            await conn.execute(
                "UPDATE sagakit_permits SET expires_at = $2 WHERE holder = $1", holder, now + lease_seconds
            )

    async def permits_forget(self, holder: str) -> None:
        async with self._tx("forgetting permits") as conn:
            await conn.execute("DELETE FROM sagakit_permits WHERE holder = $1", holder)
            await conn.execute("SELECT pg_notify($1, $2)", self._channel, PERMIT_NOTICE)

    async def resources(self, now: float) -> builtins.list[ResourceUsage]:
        out = []
        async with self._tx("reading resources") as conn:
            now = await self._db_now(conn, now)
            rows = await conn.fetch(_USAGE, now)
        for name, concurrency, rate, per, grants, in_use, waiting in rows:
            recent = sum(1 for t in loads(grants) if t > now - per) if rate is not None else 0
            out.append(ResourceUsage(name, concurrency, rate, per, int(in_use), int(waiting), recent))
        return out

    def watch_permits(self, callback: Callable[[str], None]) -> None:
        """Call *callback* with a resource's name when any worker gives back one of its permits.

        Heard on the connection that ``wait_for_work`` listens on (a hint: a
        waiter keeps a bounded re-check). An empty name means any resource.
        """
        self._permit_watchers.append(callback)

    def _permit_notice(self, payload: str) -> bool:
        """Pass a permit notification to the watchers; False when *payload* is not one."""
        if not payload.startswith(PERMIT_NOTICE):
            return False
        resource = payload[len(PERMIT_NOTICE) :]
        for cb in self._permit_watchers:
            cb(resource)
        return True


def _columns(keys: Sequence[PermitKey]) -> tuple[list[str], list[str], list[int]]:
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
