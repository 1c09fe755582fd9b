"""Semantic locks: the business keys a saga holds, acquired all or none, released when it ends.

A saga (``SagaBuilder(locks=...)``) or a step (``b.step(..., locks=...)``)
declares keys read from the saga's data. Before the saga begins (or before the
step's first attempt) the machine asks the runtime to acquire the keys it does
not hold yet (``AcquireLocks``: sorted, distinct, all or none, so no two
acquisitions can each hold a part of the other's keys) and waits, visibly, in
``meta["locks"]``; the store answers with ``LocksGranted`` or ``LocksRefused``.
Every key is released in the write that makes the saga terminal (``ReleaseLocks``);
the saga-level keys may go earlier, after the step named by ``release_locks_after``.

The state, in ``meta[LOCKS]``: ``saga`` (the saga-level keys, read once),
``held``, and while an acquisition is in progress ``wanted``, ``for`` (the
steps that wait for it; empty for the saga's own keys), ``since``, ``until``
(the wait's timeout) and ``give_up`` (the timeout passed: the last ask is out).
``released`` is set once ``release_locks_after`` has released them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._definition import SagaDefinition, StepDefinition
from .._status import SagaStatus, StepStatus
from ._types import LOCKS, AcquireLocks, Effect, HistoryEntry, ReleaseLocks, SagaState

_DONE = (StepStatus.COMPLETED, StepStatus.SKIPPED)
_TERMINAL = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.ABORTED)

# What _lock_gate says: go on, hold the saga (it waits for its own keys), or why the keys cannot be read.
HOLD = True


def keys_of(fn: Callable[[Any], Any], data: Any) -> tuple[str, ...] | str:
    """The keys *fn* reads from *data*, sorted and distinct; or why they cannot be read."""
    try:
        raw = fn(data)
    except Exception as e:  # a user's function
        return f"the locks function raised {type(e).__name__}: {e}"
    if isinstance(raw, str):
        raw = [raw]
    try:
        items = list(raw)
    except TypeError:
        return f"the locks function returned {type(raw).__name__}, not a list of keys"
    for k in items:
        if not isinstance(k, str) or not k:
            return f"the locks function returned {k!r}: lock keys are non-empty strings"
    return tuple(sorted(set(items)))


def _locks(st: SagaState) -> dict[str, Any]:
    found = st.meta.get(LOCKS) if st.meta else None
    return found if isinstance(found, dict) else {}


def _set(st: SagaState, locks: dict[str, Any]) -> None:
    # meta is shared with the state decide() started from: replaced, never changed in place.
    st.meta = {**st.meta, LOCKS: locks}


def _names(keys: Any) -> str:
    return ", ".join(repr(k) for k in keys)


def lock_wait(st: SagaState) -> dict[str, Any] | None:
    """The acquisition the saga waits for, or None."""
    locks = _locks(st)
    return locks if locks.get("wanted") else None


def start_wait(
    defn: SagaDefinition,
    st: SagaState,
    keys: tuple[str, ...],
    steps: list[str],
    now: float,
    fx: list[Effect],
    hist: list[HistoryEntry],
) -> None:
    """Ask for *keys* (for *steps*, or for the saga itself when empty) and wait for the answer."""
    cfg = defn.locks
    assert cfg is not None
    fail = cfg.policy == "fail"
    until = now + cfg.timeout if cfg.timeout is not None and not fail else None
    locks = {**_locks(st), "wanted": list(keys), "for": steps, "since": now, "until": until, "give_up": False}
    _set(st, locks)
    fx.append(AcquireLocks(keys, fail, False))
    what = f"before step {steps[0]!r}" if len(steps) == 1 else "before the saga's steps"
    how = "fails if one is taken" if fail else (f"waits up to {cfg.timeout}s" if until is not None else "waits")
    hist.append(
        HistoryEntry(
            now, "lock_waiting", f"acquiring lock(s) {_names(keys)} {what} ({how})", steps[0] if steps else None
        )
    )


def lock_gate(
    defn: SagaDefinition, st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]
) -> bool | str | None:
    """Before an active saga moves on: early release, and the saga-level keys it must hold.

    Returns ``HOLD`` while the saga waits for its own keys (nothing runs),
    a reason when its keys cannot be read (the saga is rolled back), else None.
    """
    cfg = defn.locks
    assert cfg is not None
    locks = _locks(st)
    after = cfg.release_after
    if after is not None and not locks.get("released") and st.steps[after].status in _DONE:
        # The saga's own keys go; a step's keys stay with the saga (until it ends), and so does a
        # saga key that a step holding it as its own is running under.
        held = locks.get("held") or []
        busy: set[str] = set()
        for name, s in st.steps.items():
            fn = defn.by_name[name].locks
            if fn is not None and s.token:
                running = keys_of(fn, st.data)
                busy.update(running if not isinstance(running, str) else ())
        go = [k for k in held if k in (locks.get("saga") or ()) and k not in busy]
        if go:
            fx.append(ReleaseLocks(tuple(go)))
            hist.append(HistoryEntry(now, "locks_released", f"lock(s) {_names(go)} released after step {after!r}"))
        locks = {**locks, "held": [k for k in held if k not in go], "released": True}
        _set(st, locks)
    if locks.get("wanted"):
        return HOLD if not locks.get("for") else None
    if cfg.keys is None or locks.get("released"):
        return None
    if st.status is SagaStatus.COMPENSATING and not any(s.attempts for s in st.steps.values()):
        return None  # nothing was done, so nothing to undo under the locks
    keys: list[str] | None = locks.get("saga")
    if keys is None:
        read = keys_of(cfg.keys, st.data)
        if isinstance(read, str):
            return f"the saga's locks cannot be read: {read}"
        keys = list(read)
        locks = {**locks, "saga": keys}
        _set(st, locks)
    held = locks.get("held") or []
    need = tuple(k for k in keys if k not in held)
    if not need:
        return None
    start_wait(defn, st, need, [], now, fx, hist)
    return HOLD


def step_ready(
    defn: SagaDefinition, st: SagaState, sdef: StepDefinition, now: float, fx: list[Effect], hist: list[HistoryEntry]
) -> bool | str:
    """Whether step *sdef* (ready by its dependencies) holds its keys; asks for them if not.

    Returns True (dispatch it), False (it waits) or why its keys cannot be read.
    """
    assert sdef.locks is not None
    read = keys_of(sdef.locks, st.data)
    if isinstance(read, str):
        return f"the locks of step {sdef.name!r} cannot be read: {read}"
    locks = _locks(st)
    held = locks.get("held") or ()
    need = tuple(k for k in read if k not in held)
    if not need:
        return True
    if not locks.get("wanted"):
        start_wait(defn, st, need, [sdef.name], now, fx, hist)
    return False


def abandon_wait(st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]) -> None:
    """The saga no longer wants the keys it waits for (it is rolled back): leave the queues."""
    locks = _locks(st)
    wanted = locks.get("wanted")
    if not wanted:
        return
    fx.append(ReleaseLocks(tuple(wanted)))
    _set(st, {**locks, "wanted": [], "for": [], "until": None, "give_up": False})
    hist.append(HistoryEntry(now, "lock_wait_ended", f"no longer waiting for lock(s) {_names(wanted)}"))


def granted(st: SagaState, keys: tuple[str, ...], now: float, hist: list[HistoryEntry]) -> bool:
    """Record the keys the saga waited for as held; False for a grant of nothing it waits for."""
    locks = _locks(st)
    wanted = locks.get("wanted")
    if not wanted or set(wanted) != set(keys):
        return False
    held = sorted({*(locks.get("held") or ()), *wanted})
    since = locks.get("since")
    waited = f" after {now - since:.3f}s" if isinstance(since, int | float) else ""
    _set(st, {**locks, "held": held, "wanted": [], "for": [], "until": None, "give_up": False})
    steps = locks.get("for") or []
    hist.append(
        HistoryEntry(now, "lock_acquired", f"acquired lock(s) {_names(wanted)}{waited}", steps[0] if steps else None)
    )
    return True


def refused(
    defn: SagaDefinition,
    st: SagaState,
    keys: tuple[str, ...],
    reason: str,
    blockers: tuple[tuple[str, str], ...],
    now: float,
    hist: list[HistoryEntry],
) -> tuple[str, list[str]] | None:
    """Drop the wait the store refused; returns the error and the steps that waited, or None if stale."""
    locks = _locks(st)
    wanted = locks.get("wanted")
    if not wanted or set(wanted) != set(keys):
        return None
    if blockers:
        key, holder = blockers[0]
        whom = f"lock {key!r}, taken by saga {holder}"
        others = f" (and {len(blockers) - 1} more)" if len(blockers) > 1 else ""
    else:
        whom, others = f"lock(s) {_names(wanted)}", ""
    cfg = defn.locks
    if reason == "timeout":
        timeout = cfg.timeout if cfg is not None else None
        after = f" after {timeout}s" if timeout is not None else ""
        error = f"timed out{after} waiting for {whom}{others}"
    elif reason == "deadlock":
        error = (
            f"waiting for {whom}{others} would deadlock: that saga waits, directly or not, for a lock this saga holds"
        )
    else:
        error = f"could not acquire {whom}{others} (lock_policy 'fail')"
    steps = list(locks.get("for") or [])
    _set(st, {**locks, "wanted": [], "for": [], "until": None, "give_up": False})
    hist.append(HistoryEntry(now, "lock_refused", error, steps[0] if steps else None))
    return error, steps


def on_timer(defn: SagaDefinition, st: SagaState, now: float, fx: list[Effect]) -> None:
    """The wait's timeout passed: ask once more, for the last time (grant now, or refuse)."""
    locks = _locks(st)
    until = locks.get("until")
    if not locks.get("wanted") or until is None or until > now:
        return
    _set(st, {**locks, "until": None, "give_up": True})
    fx.append(AcquireLocks(tuple(locks["wanted"]), False, True))


def on_resume(defn: SagaDefinition, st: SagaState, fx: list[Effect]) -> None:
    """A worker took the saga: ask again for what it waits for (the store may have granted it meanwhile)."""
    locks = _locks(st)
    wanted = locks.get("wanted")
    if not wanted or any(isinstance(e, AcquireLocks) for e in fx):
        return
    cfg = defn.locks
    fx.append(AcquireLocks(tuple(wanted), cfg is not None and cfg.policy == "fail", bool(locks.get("give_up"))))


def release_at_end(st: SagaState, now: float, fx: list[Effect], hist: list[HistoryEntry]) -> None:
    """A terminal saga holds no lock and waits for none: every key is released in its final write."""
    locks = _locks(st)
    held = locks.get("held") or []
    wanted = locks.get("wanted") or []
    if not held and not wanted:
        return
    fx.append(ReleaseLocks(None))
    _set(st, {**locks, "held": [], "wanted": [], "for": [], "until": None, "give_up": False})
    if held:
        hist.append(
            HistoryEntry(now, "locks_released", f"lock(s) {_names(held)} released: the saga is {st.status.value}")
        )
    if wanted:
        hist.append(HistoryEntry(now, "lock_wait_ended", f"no longer waiting for lock(s) {_names(wanted)}"))


def wake(st: SagaState) -> float | None:
    """When the saga's lock wait times out, if it does."""
    locks = _locks(st)
    return locks.get("until") if locks.get("wanted") else None
