"""Child sagas: starting them, rolling them back, aborting them, and telling parents how they ended.

The machine asks (``StartChild``, ``CompensateChild``, ``AbortChild``,
``NotifyParent``); this part carries the requests out once the transition that
made them is committed, and reports what it finds back as events
(``ChildOutcome`` to the parent, ``ParentRollback`` or ``Abort`` to the
child), through ``_act``: whichever worker holds a saga applies them. Each
request may be carried out more than once (a parent looks at its child again
every ``check_every`` seconds and when it is resumed), so each is idempotent:
a child is inserted under a deterministic id (a second insert is refused and
runs nothing: no idempotency key, which would make it look applied), and a child
that a rollback or an abort finds missing is stored already ended, so that a
start coming late finds it and runs nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .._child import ChildSaga
from .._definition import SagaDefinition
from .._errors import SagaBusy, SagaError, SagaNotFound
from .._json import encode
from .._status import SagaStatus
from .._store import Write
from ..machine import (
    Abort,
    AbortChild,
    ChildEffect,
    ChildOutcome,
    CompensateChild,
    Event,
    NotifyParent,
    ParentRollback,
    SagaState,
    StartChild,
    child_outcome,
    decide,
    new_saga,
    step_results,
)
from ._base import Held, RuntimeBase, log

__all__ = ["Children"]


class Children(RuntimeBase):
    """Carries out child sagas' effects in the background (each one idempotent)."""

    def _child_effects(self, parent: SagaState, definition: SagaDefinition | None, effects: list[ChildEffect]) -> None:
        for eff in effects:
            self._in_background(self._child_effect(parent, definition, eff))

    async def _child_effect(self, parent: SagaState, definition: SagaDefinition | None, eff: ChildEffect) -> None:
        if self._closing and not isinstance(eff, AbortChild):
            return  # left to the parent's next look (check_every, or its next claim): shutting down waits for none
        try:
            match eff:
                case StartChild():
                    assert definition is not None  # only a saga run with its definition starts children
                    await self._start_child(parent, definition, eff)
                case CompensateChild():
                    await self._compensate_child(parent, eff)
                case AbortChild():
                    await self._abort_child(parent, eff)
                case NotifyParent(parent_id, outcome):
                    await self._tell_parent(parent_id, outcome)
        except asyncio.CancelledError:
            raise
        except (SagaBusy, SagaNotFound) as e:
            # The parent (or child) looks again in check_every seconds, or when it is resumed.
            log.info("sagakit: saga %s: %s left for the next look: %s", parent.id, type(eff).__name__, e)

    async def _start_child(self, parent: SagaState, definition: SagaDefinition, eff: StartChild) -> None:
        child = await self.store.get(eff.child_id)
        if child is not None:
            if child.status.terminal:
                await self._tell_parent(parent.id, child_outcome(child, eff.step))
            return
        if eff.child_id in self._held:
            return  # being inserted here right now
        action = definition.by_name[eff.step].action
        assert isinstance(action, ChildSaga)
        try:
            cdefn = self._definition(eff.name, eff.version)
            data = parent.data if action.data is None else action.data(parent.data, step_results(parent))
            data = self._prepare_data(cdefn, data)
        except Exception as e:  # a user's data hook, an unknown definition, data that cannot be stored
            error = f"child saga {eff.name} could not be started: {type(e).__name__}: {e}"
            await self._tell_parent(parent.id, ChildOutcome(eff.step, eff.child_id, None, error=error))
            return
        decision = new_saga(
            cdefn,
            eff.child_id,
            data,
            self.clock(),
            correlation_id=parent.correlation_id,
            begin=self._running and not self._closing,
            parent=(parent.id, eff.step),
        )
        await self._insert(cdefn, decision)

    async def _compensate_child(self, parent: SagaState, eff: CompensateChild) -> None:
        event = ParentRollback(parent.id, eff.reason)
        for _ in range(3):
            child = await self.store.get(eff.child_id)
            if child is None:
                try:
                    child = await self._stored_ended(parent, eff.step, eff.child_id, eff.name, eff.version, event)
                except SagaError as e:
                    error = f"child saga {eff.child_id} ({eff.name}) cannot be stored here: {e}"
                    await self._tell_parent(parent.id, ChildOutcome(eff.step, eff.child_id, None, error=error))
                    return
                if child is None:
                    continue  # started meanwhile: roll it back
            if child.status.terminal and child.status is not SagaStatus.COMPLETED:
                await self._tell_parent(parent.id, child_outcome(child, eff.step))
                return
            if child.status is SagaStatus.COMPENSATING:
                return  # it reports its end
            refused = await self._act(eff.child_id, _always(event), admin=event)
            if refused is None:
                return  # rolling back: it reports its end
            now = await self.store.get(eff.child_id)
            if now is not None and now.status is not child.status:
                continue  # it moved on meanwhile (ended on its own, say): look again
            error = f"child saga {eff.child_id} refused to roll back: {refused}"
            await self._tell_parent(parent.id, ChildOutcome(eff.step, eff.child_id, None, error=error))
            return

    async def _abort_child(self, parent: SagaState, eff: AbortChild) -> None:
        event = Abort(eff.reason, f"saga {parent.id}")
        for _ in range(3):
            child = await self.store.get(eff.child_id)
            if child is None:
                defn = self._definitions.get((parent.name, parent.version))
                action = defn.by_name[eff.step].action if defn is not None and eff.step in defn.by_name else None
                if not isinstance(action, ChildSaga):
                    return  # the parent's definition is not here: a worker that has it asks again
                try:
                    child = await self._stored_ended(parent, eff.step, eff.child_id, action.name, action.version, event)
                except SagaError as e:
                    # Never started, and it cannot be stored ended here: the parent stops waiting for it.
                    result = {"saga_id": eff.child_id, "status": "aborted", "error": f"never started ({e})"}
                    await self._tell_parent(parent.id, ChildOutcome(eff.step, eff.child_id, "aborted", result))
                    return
                if child is None:
                    continue  # started meanwhile: abort it
            if child.status.terminal:
                # Ended (or stored ended just now): the parent stops telling it to abort.
                await self._tell_parent(parent.id, child_outcome(child, eff.step))
                return
            if await self._act(eff.child_id, _always(event), admin=event) is None:
                return  # aborted: its end reaches the parent as any child's does

    async def _stored_ended(
        self,
        parent: SagaState,
        step: str,
        cid: str,
        name: str,
        version: int | None,
        event: Event,
    ) -> SagaState | None:
        """Store child *cid*, which was never started, as ended by *event*; None if it was started meanwhile.

        Raises:
            UnknownSagaType: the child's definition is not registered here.
        """
        cdefn = self._definition(name, version)
        now = self.clock()
        made = new_saga(cdefn, cid, {}, now, begin=False, parent=(parent.id, step))
        ended = decide(cdefn, made.state, event, now)
        st = ended.state
        st.revision = 0
        res = await self.store.commit([Write(st, 0, [*made.history, *ended.history], None, insert=True)])
        if res[0] != cid:
            return None
        return st

    async def _tell_parent(self, parent_id: str, outcome: ChildOutcome) -> None:
        if outcome.result is not None and not outcome.size:
            outcome = outcome._replace(size=len(encode(outcome.result, "result of child saga {}", outcome.child_id)))
        refused = await self._act(parent_id, _always(outcome), admin=outcome, busy_timeout=self.lease_seconds + 5.0)
        if refused is not None:
            log.debug("sagakit: saga %s did not take the outcome of child %s: %s", parent_id, outcome.child_id, refused)


def _always(event: Event) -> Callable[[Held], Event]:
    return lambda held: event
