"""Semantic locks: the committed acquisitions of sagas held here, asked of the store.

The machine asks for keys (``AcquireLocks``) in a transition; once that is
committed, this part asks the store and reports the answer back as an event.
A saga left queued is let go here: the store released its lease in the same
transaction, and wakes it when its keys are granted. Releases need nothing
from here: they travel in the transition's own write (``Write.unlock``).
"""

from __future__ import annotations

import asyncio

from ..machine import LOCKS, AcquireLocks, LocksGranted, LocksRefused
from ._base import Held, RuntimeBase, log


class Locks(RuntimeBase):
    """Carries out the acquisitions of semantic locks of the sagas held here."""

    def _acquire_locks(self, held: Held, eff: AcquireLocks) -> None:
        self._in_background(self._ask_for_locks(held, eff))

    async def _ask_for_locks(self, held: Held, eff: AcquireLocks) -> None:
        st = held.state
        sid = st.id
        locks = st.meta.get(LOCKS) if st.meta else None
        wanted = locks.get("wanted") if isinstance(locks, dict) else None
        if self._held.get(sid) is not held or not wanted or set(wanted) != set(eff.keys):
            return  # the saga moved on (or another worker has it) since it asked
        idle = not held.inflight and not held.queued and not held.committing
        try:
            answer = await self.store.acquire_locks(
                sid,
                eff.keys,
                self.clock(),
                fail=eff.fail,
                give_up=eff.give_up,
                owner=self.worker_id if idle else None,
                wake_at=st.wake_at,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sagakit: acquiring locks %s for saga %s failed; it asks again", list(eff.keys), sid)
            if self._held.get(sid) is held and not held.inflight and not held.queued and not held.committing:
                # Let go of it, due in a moment: whoever claims it asks again (on Resume).
                del self._held[sid]
                if held.timer is not None:
                    held.timer.cancel()
                    held.timer = None
                await self.store.release(self.worker_id, [(sid, self.clock() + self.poll_interval)])
            return
        if answer.released:
            # Queued, and unleased in the store: the grant wakes it, wherever it is then claimed.
            if self._held.get(sid) is held and not held.inflight and not held.queued and not held.committing:
                del self._held[sid]
                if held.timer is not None:
                    held.timer.cancel()
                    held.timer = None
            return
        if self._held.get(sid) is not held:
            return
        if answer.outcome == "granted":
            self._apply(held, LocksGranted(eff.keys))
        elif answer.outcome == "refused":
            self._apply(held, LocksRefused(eff.keys, answer.reason, answer.blockers))
