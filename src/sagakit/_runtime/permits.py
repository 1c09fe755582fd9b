"""Resource permits: attempts that name a resource wait, queued, for a permit before they run.

The machine asks for a permit (``AcquirePermit``) and gives it back
(``ReleasePermit``) when the attempt ends, whatever ends it. Here each waiting
attempt is a future in its resource's queue, in the order they asked; one task
per resource with waiters asks the store for permits for the whole queue at
once, then sleeps until a permit is given back (by this engine, or, on
PostgreSQL, by any worker: a notification), until the rate lets the next one
start, or for a bounded re-check (a holder that died: its permits come back
when they expire). Nothing polls while no attempt waits.
"""

from __future__ import annotations

import asyncio
import contextlib

from .._resources import PermitKey, Resource
from ..machine import AcquirePermit, PermitGranted, ReleasePermit
from ._base import Held, RuntimeBase, log

__all__ = ["PERMIT_TASK", "Permits"]

# The name of the task in which an attempt waits for its permit (close() cancels these first).
PERMIT_TASK = "sagakit-permit"


class _Queue:
    """The attempts of this engine waiting for permits of one resource, in the order they asked."""

    __slots__ = ("task", "waiters", "wake")

    def __init__(self) -> None:
        self.waiters: dict[PermitKey, asyncio.Future[None]] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class Permits(RuntimeBase):
    """Waits for the permits attempts ask for, and gives them back."""

    _resources: dict[str, Resource]
    _permit_queues: dict[str, _Queue]
    _permits_held: dict[PermitKey, str]

    def _acquire_permit(self, held: Held, eff: AcquirePermit) -> None:
        """Queue a committed AcquirePermit; its task is the attempt's (cancelling the attempt ends the wait)."""
        task = asyncio.create_task(self._wait_for_permit(held, eff), name=PERMIT_TASK)
        held.inflight[eff.token] = task

    async def _wait_for_permit(self, held: Held, eff: AcquirePermit) -> None:
        key = PermitKey(held.state.id, eff.step, eff.token)
        q = self._permit_queues.get(eff.resource)
        if q is None:
            q = self._permit_queues[eff.resource] = _Queue()
        fut: asyncio.Future[None] = self._loop_().create_future()
        q.waiters[key] = fut
        if q.task is None or q.task.done():
            q.task = asyncio.create_task(self._look_for_permits(eff.resource, q), name="sagakit-permits")
        else:
            q.wake.set()
        try:
            await fut
        except asyncio.CancelledError:
            q.waiters.pop(key, None)
            self._give_back(eff.resource, key)  # its place in the store's queue, or the permit it just got
            raise
        current = asyncio.current_task()
        if held.inflight.get(eff.token) is not current or self._held.get(held.state.id) is not held:
            self._give_back(eff.resource, key)
            return
        del held.inflight[eff.token]
        self._apply(held, PermitGranted(eff.step, eff.token, eff.resource))

    async def _look_for_permits(self, resource: str, q: _Queue) -> None:
        """Ask for permits for the queue until it is empty; sleep between looks (never poll busily)."""
        limit = self._resources.get(resource)
        if limit is None:  # checked when the definition is registered; a clear failure all the same
            for fut in q.waiters.values():
                if not fut.done():
                    fut.set_exception(RuntimeError(f"resource {resource!r} has no declared limit"))
            q.waiters.clear()
            return
        recheck = min(self.lease_seconds / 3, 1.0)
        backoff = 0.05
        while q.waiters and self._running:
            q.wake.clear()
            keys = list(q.waiters)
            try:
                got = await self.store.permits_acquire(limit, self.worker_id, keys, self.lease_seconds, self.clock())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sagakit: asking for permits of resource %r failed; retrying in %.2fs", resource, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            granted = set(got.granted)
            for key in keys:
                if key not in granted and key not in q.waiters:
                    # Its attempt ended while the store queued it: that place goes back too.
                    self._give_back(resource, key)
            for key in got.granted:
                waiter = q.waiters.pop(key) if key in q.waiters else None
                if waiter is None or waiter.done():
                    self._give_back(resource, key)  # its attempt ended meanwhile
                else:
                    self._permits_held[key] = resource
                    waiter.set_result(None)
            if not q.waiters:
                break
            delay = recheck if got.retry_after is None else min(recheck, max(got.retry_after, 0.001))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(q.wake.wait(), delay)

    def _release_permit(self, held: Held, eff: ReleasePermit) -> None:
        """The machine ended an attempt that held (or waited for) a permit: give it back."""
        self._give_back(eff.resource, PermitKey(held.state.id, eff.step, eff.token))

    def _give_back(self, resource: str, key: PermitKey) -> None:
        self._permits_held.pop(key, "")
        self._in_background(self._released(resource, key))

    async def _released(self, resource: str, key: PermitKey) -> None:
        await self.store.permits_release(resource, [key])
        self._permit_freed(resource)

    def _permit_freed(self, resource: str) -> None:
        """A permit of *resource* (any, when empty) was given back, here or by another worker: look again."""
        if resource:
            q = self._permit_queues.get(resource)
            if q is not None and q.waiters:
                q.wake.set()
            return
        for q in self._permit_queues.values():
            if q.waiters:
                q.wake.set()

    async def _renew_permits(self) -> None:
        """Keep this engine's permits and waiting places alive (a dead worker's expire)."""
        if self._permits_held or any(q.waiters for q in self._permit_queues.values()):
            await self.store.permits_renew(self.worker_id, self.lease_seconds, self.clock())

    async def _stop_permits(self) -> None:
        """On close: the queues' tasks stop and every permit and waiting place of this engine goes back."""
        tasks = [q.task for q in self._permit_queues.values() if q.task is not None and not q.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._permit_queues or self._permits_held:
            self._permits_held.clear()
            with contextlib.suppress(Exception):
                await self.store.permits_forget(self.worker_id)
        self._permit_queues.clear()
