"""Claims and leases: idle workers claim due sagas of their definitions, renew the leases of those they hold."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

from .._errors import SagaNotFound
from ..machine import HistoryEntry, Resume, SagaState
from ._base import Batcher, Held, RuntimeBase, log


class Leases(RuntimeBase):
    """Claims due sagas, keeps their leases, and lets go of the ones lost."""

    def _poke_claimer(self) -> None:
        if self._poke is not None:
            self._poke.set()

    async def _claim_loop(self) -> None:
        poke = self._poke
        assert poke is not None
        backoff = 0.05
        # close() sets _closing before it cancels this task: should a cancellation still be
        # lost (asyncio.wait_for can drop one that races its inner future, Python < 3.12),
        # the loop ends at its next turn instead of polling on with close() waiting for it.
        while not self._closing:
            poke.clear()
            try:
                claimed = await self._claim_once()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sagakit: claiming failed; retrying in %.2fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if claimed:
                await asyncio.sleep(0)
                continue
            if self._full():
                # Nothing can be taken on until a held saga is let go; its release pokes.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poke.wait(), self.poll_interval)
                continue
            delay = self.poll_interval
            try:
                nxt = await self.store.next_wake(self._definitions.keys()) if self._definitions else None
            except Exception:
                nxt = None
            if nxt is not None:
                delay = min(delay, max(0.002, nxt - self.clock()))
            await self._idle(poke, delay)

    async def _idle(self, poke: asyncio.Event, delay: float) -> None:
        """Sleep until poked, until *delay* passes, or until the store says work may be due.

        A store with ``wait_for_work`` (PostgreSQL's LISTEN/NOTIFY) wakes idle
        workers when another worker's commit makes a saga due; polling stays
        the fallback.
        """
        wait_for_work = getattr(self.store, "wait_for_work", None)
        if wait_for_work is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(poke.wait(), delay)
            return
        # The store's wait lives on across idle periods: cancelling it midway (say,
        # while it connects its listener) would leave it never listening.
        work = self._work_waiter
        if work is None or work.done():
            work = self._work_waiter = asyncio.ensure_future(wait_for_work(self.poll_interval))
        poked = asyncio.ensure_future(poke.wait())
        try:
            await asyncio.wait({poked, work}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            poked.cancel()
            # gather, not a suppressed await: should this task be cancelled (close()) while it
            # waits here, the cancellation must reach the claim loop instead of being swallowed.
            await asyncio.gather(poked, return_exceptions=True)
        if work.done() and not work.cancelled() and work.exception() is not None:
            log.warning("sagakit: waiting for work failed: %s", work.exception())

    def _full(self) -> bool:
        """Whether this engine holds as many sagas as it takes on."""
        return len(self._held) >= self.concurrency * 2

    async def _claim_once(self) -> bool:
        room = self.concurrency * 2 - len(self._held)
        if room <= 0:
            return False
        kinds = self._definitions.keys()
        if not kinds:
            return False  # a process that runs no definition never claims a saga
        now = self.clock()
        limit = min(room, 256)
        sent = time.monotonic()
        states = await self.store.claim(self.worker_id, now, now + self.lease_seconds, limit, kinds)
        for st in states:
            self._adopt(st, sent + self.lease_seconds - self._lease_margin)
        return len(states) == limit

    def _adopt(self, st: SagaState, proven: float) -> None:
        old = self._held.pop(st.id, None)
        if old is not None:
            # This engine claimed anew a saga it held (its lease had run out): the old copy's
            # attempts and queued transitions belong to a revision that is gone.
            for task in old.inflight.values():
                task.cancel()
            old.inflight.clear()
            if old.timer is not None:
                old.timer.cancel()
                old.timer = None
        defn = self._definitions.get((st.name, st.version))
        if defn is None:
            # Claims name this engine's definitions; one unregistered meanwhile is let go.
            self._in_background(self.store.release(self.worker_id, [(st.id, self.clock())]))
            return
        held = Held(st, defn, durable=True, lease_mono=proven)
        self._held[st.id] = held
        self._apply(held, Resume(), force=True)

    async def _claim_by_id(self, saga_id: str) -> tuple[SagaState | None, float] | None:
        """Claim one saga for an event or a command, in one transaction with the others asked for meanwhile.

        Returns the claimed state (None while another worker's lease is live)
        and the monotonic time the claim was sent; or None when another caller
        asked for the same saga in the same batch and got it (look at the held
        sagas again). Like a group commit, one batch is in flight at a time and
        the requests made meanwhile go in the next.

        Raises:
            SagaNotFound: no such saga.
        """
        if getattr(self.store, "claim_sagas", None) is None:
            now = self.clock()
            sent = time.monotonic()
            return await self.store.claim_saga(saga_id, self.worker_id, now, now + self.lease_seconds), sent
        if self._claims is None:
            self._claims = _Claims(self)
        return await self._claims.get(saga_id)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self._say_alive()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("sagakit: could not tell the store this worker is alive", exc_info=True)
            try:
                await self._renew_permits()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("sagakit: could not renew this worker's resource permits", exc_info=True)
            ids = [sid for sid, h in self._held.items() if not h.queued and not h.committing]
            if not ids:
                continue
            try:
                now = self.clock()
                sent = time.monotonic()
                lost = await self.store.renew(self.worker_id, ids, now + self.lease_seconds, now=now)
                proven = sent + self.lease_seconds - self._lease_margin
                for sid in ids:
                    held = self._held.get(sid)
                    if held is not None and sid not in lost:
                        held.lease_mono = max(held.lease_mono, proven)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sagakit: renewing leases failed")
                continue
            for sid in lost:
                held = self._held.get(sid)
                if held is not None and not held.queued and not held.committing:
                    del self._held[sid]
                    running = [
                        f"{n!r} attempt {s.compensation_attempts if s.status.value == 'compensating' else s.attempts}"
                        for n, s in held.state.steps.items()
                        if s.token and s.token in held.inflight
                    ]
                    running += [
                        f"{n!r} item {i} attempt "
                        f"{it.compensation_attempts if it.status.value == 'compensating' else it.attempts}"
                        for n, s in held.state.steps.items()
                        if s.items is not None
                        for i, it in enumerate(s.items)
                        if it.token and it.token in held.inflight
                    ]
                    for task in held.inflight.values():
                        task.cancel()
                    log.warning("sagakit: lease of saga %s was lost to another worker", sid)
                    if running:
                        entry = HistoryEntry(
                            self.clock(),
                            "fenced",
                            f"worker {self.worker_id} lost its lease while running {', '.join(running)}; "
                            "it stopped them and none of their results is applied",
                        )
                        self._in_background(self.store.append_history(sid, held.state.revision, [entry]))


class _Claims(Batcher[str, "tuple[SagaState | None, float] | None"]):
    """Claims by id made together, one store call for each batch (see ``Leases._claim_by_id``)."""

    def __init__(self, engine: Leases) -> None:
        super().__init__(self._claim, None)
        self._engine = engine

    async def _claim(self, saga_ids: list[str]) -> dict[str, tuple[SagaState | None, float] | None]:
        e = self._engine
        now = e.clock()
        sent = time.monotonic()
        got = await e.store.claim_sagas(saga_ids, e.worker_id, now, now + e.lease_seconds)  # type: ignore[attr-defined]
        return {sid: (st, sent) for sid, st in got.items()}

    def _deliver(
        self,
        batch: dict[str, list[asyncio.Future[tuple[SagaState | None, float] | None]]],
        got: Mapping[str, tuple[SagaState | None, float] | None],
    ) -> None:
        unwanted: list[tuple[str, float]] = []
        for sid, futs in batch.items():
            live = [f for f in futs if not f.done()]
            found = got.get(sid)
            if found is None:
                for f in live:
                    f.set_exception(SagaNotFound(sid))
            elif found[0] is None:
                for f in live:
                    f.set_result(found)  # another worker's lease is live
            elif not live:
                unwanted.append((sid, self._engine.clock()))  # every caller gave up meanwhile: let it go
            else:
                live[0].set_result(found)
                for f in live[1:]:
                    f.set_result(None)  # claimed for the first of them: look at the held sagas again
        if unwanted:
            self._engine._in_background(self._engine.store.release(self._engine.worker_id, unwanted))
