"""Timers: a held saga's next wake time (a retry, a reply deadline, the saga deadline) as a timer of the event loop."""

from __future__ import annotations

from ..machine import Timer
from ._base import Held, RuntimeBase


class Timers(RuntimeBase):
    """Fires the machine's timers of the sagas held here."""

    def _set_timer(self, held: Held) -> None:
        if held.timer is not None:
            held.timer.cancel()
            held.timer = None
        wake = held.state.wake_at
        if wake is None:
            return
        loop = self._loop_()
        delay = max(0.0, wake - self.clock())
        held.timer = loop.call_later(delay, self._fire_timer, held.state.id)

    def _fire_timer(self, sid: str) -> None:
        held = self._held.get(sid)
        if held is None:
            return
        held.timer = None
        self._apply(held, Timer())
