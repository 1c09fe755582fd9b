"""Choreographed sagas: events observed from participants that react to each other, no commands sent forward.

Each stage of a choreography is a step that waits for its event and sends
nothing. The rules here decide what an observed event (one without a step in
its headers) does:

- the event of the stage that waits now completes it (a stage's failure event
  fails it, and the saga compensates the stages passed, in reverse order);
- an event of a stage whose turn has not come (the participants' events
  arrived out of order) is kept in the saga and applied when the stage waits,
  so nothing is lost and the stages still pass in order;
- an event of the flow's own failures (``fails_on``) rolls the saga back at
  once, whatever stage it is at;
- while the saga rolls back, an event of a stage that was never passed says
  that the stage happened after all: it is marked passed and compensated too;
- anything else (a stage already passed, an event kept already, a finished
  saga) is a duplicate or too late: refused with the reason, state unchanged.
"""

from __future__ import annotations

from typing import Any

from .._definition import ChoreographySpec, SagaDefinition
from .._status import SagaStatus
from ._completions import _match_reply, _on_completion
from ._progress import _S, _advance, _observed_late, _rollback
from ._types import FAILURE, HELD_EVENTS, Effect, HistoryEntry, Reply, SagaState

_OPEN = (SagaStatus.PENDING, SagaStatus.RUNNING)
_PASSED = (_S.COMPLETED, _S.SKIPPED, _S.COMPENSATING, _S.COMPENSATED, _S.COMPENSATION_FAILED)


def _on_observed(
    defn: SagaDefinition, st: SagaState, ev: Reply, now: float, fx: list[Effect], hist: list[HistoryEntry]
) -> str | None:
    """Apply an observed event to a choreographed saga; the reason it is refused, or None."""
    spec = defn.choreography
    assert spec is not None
    t = ev.type_name
    if t in spec.flow_failures:
        return _flow_failed(defn, st, ev, now, fx, hist)
    stage = spec.stages.get(t)
    if stage is None:
        # Not an event of the flow: a reply to a compensation command, matched like any reply.
        matched = _match_reply(defn, st, ev, now, hist)
        if isinstance(matched, str):
            return matched
        _on_completion(defn, st, matched, now, fx, hist)
        return None
    s = st.steps[stage]
    what = "failure event" if t in spec.failures else "event"
    if s.token and s.status is _S.RUNNING:
        return _apply(defn, st, stage, t, ev.payload, f"{what} {t} observed: stage {stage!r}", now, fx, hist)
    held: dict[str, Any] = st.meta.get(HELD_EVENTS) or {}
    if st.status in _OPEN and s.status is _S.PENDING:
        if stage in held:
            return (
                f"saga {st.id} ({defn.name}): {t} is a duplicate: {held[stage]['type_name']} is already kept "
                f"for stage {stage!r} until its turn; not applied"
            )
        st.meta = {**st.meta, HELD_EVENTS: {**held, stage: {"type_name": t, "payload": dict(ev.payload), "at": now}}}
        waiting = [n for n in defn.order if st.steps[n].token] or ["its start"]
        hist.append(
            HistoryEntry(
                now,
                "observed_early",
                f"{what} {t} observed before the turn of stage {stage!r} (the saga waits for "
                f"{', '.join(repr(n) for n in waiting)}): kept, and applied when its turn comes",
                stage,
            )
        )
        return None
    failure = st.meta.get(FAILURE)
    failed_here = isinstance(failure, dict) and failure.get("step") == stage
    if (
        st.status is SagaStatus.COMPENSATING
        and t not in spec.failures
        and s.status in (_S.PENDING, _S.FAILED)
        and not failed_here
    ):
        return _observed_late(defn, st, stage, t, ev.payload, now, hist)
    if st.status.terminal and s.status not in _PASSED:
        return (
            f"saga {st.id} ({defn.name}) is {st.status.value}: {what} {t} of stage {stage!r} came after it "
            "finished; not applied"
        )
    return (
        f"saga {st.id} ({defn.name}, {st.status.value}): stage {stage!r} is {s.status.value}: {what} {t} "
        "is a duplicate or too late; not applied"
    )


def _flow_failed(
    defn: SagaDefinition, st: SagaState, ev: Reply, now: float, fx: list[Effect], hist: list[HistoryEntry]
) -> str | None:
    t = ev.type_name
    if st.status not in _OPEN:
        return f"saga {st.id} ({defn.name}) is {st.status.value}: failure event {t} changes nothing; not applied"
    hist.append(HistoryEntry(now, "observed", f"failure event {t} observed: the flow failed"))
    st.meta = {**st.meta, FAILURE: {"step": None, "event": t, "payload": dict(ev.payload), "fault": False}}
    _rollback(defn, st, now, f"failure event {t} observed", fx, hist)
    return None


def _apply(
    defn: SagaDefinition,
    st: SagaState,
    stage: str,
    type_name: str,
    payload: Any,
    note: str,
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> str | None:
    """Apply an event to the stage that waits for it."""
    mark = len(hist)
    hist.append(HistoryEntry(now, "observed", note, stage))
    matched = _match_reply(defn, st, Reply(type_name, payload, stage, None), now, hist)
    if isinstance(matched, str):
        del hist[mark:]
        return matched
    _on_completion(defn, st, matched, now, fx, hist)
    return None


def _name_stages(defn: SagaDefinition, hist: list[HistoryEntry]) -> None:
    """Say what a stage's start means in a choreography: it waits for its event (it runs nothing)."""
    spec = defn.choreography
    assert spec is not None
    for i, h in enumerate(hist):
        if h.kind == "step_started" and h.step is not None:
            events = [w for w, stage in spec.stages.items() if stage == h.step and w not in spec.failures]
            hist[i] = h._replace(message=f"stage {h.step!r} waits for {', '.join(events) or 'its event'}")


def _apply_held(defn: SagaDefinition, st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]) -> None:
    """After the saga moved: apply the kept events whose stage waits now, one after the other."""
    spec: ChoreographySpec | None = defn.choreography
    assert spec is not None
    while st.status is SagaStatus.RUNNING:
        held: dict[str, Any] = st.meta.get(HELD_EVENTS) or {}
        ready = next((n for n in held if st.steps[n].token and st.steps[n].status is _S.RUNNING), None)
        if ready is None:
            return
        e = held[ready]
        rest = {k: v for k, v in held.items() if k != ready}
        st.meta = {k: v for k, v in st.meta.items() if k != HELD_EVENTS}
        if rest:
            st.meta[HELD_EVENTS] = rest
        t = e["type_name"]
        what = "failure event" if t in spec.failures else "event"
        note = f"{what} {t}, observed earlier, applied: stage {ready!r} has its turn"
        why = _apply(defn, st, ready, t, e["payload"], note, now, fx, hist)
        if why is not None:
            hist.append(HistoryEntry(now, "refused", f"kept {what} {t} refused: {why}", ready))
        _advance(defn, st, now, fx, hist)
