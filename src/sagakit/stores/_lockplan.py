"""Who holds which semantic lock: the queue rules every store applies, as pure functions over lock rows.

A row is one saga's claim on one key: held, or waiting with a ticket. The keys
of one acquisition share its ticket; tickets grow, so they order the
acquisitions first come, first served. A waiting acquisition is granted,
all its keys at once, when no other saga holds any of them and no earlier
acquisition still waits for any of them: a saga that waits for several keys is
never overtaken on a key by a later one (it does not starve), and since no
acquisition holds a part of its keys while it waits, acquisitions alone never
deadlock. A saga that holds keys and asks for more (a step's locks) could close
a cycle; such an acquisition is refused instead of queued.

The stores read the rows under a lock of their own (one transaction at a time
changes them), apply these functions, and write back the difference. They read
only the rows an operation can depend on (``Component``): the rows of its keys
and sagas, then of every key and saga those rows name, until none is new;
sagas on unrelated keys are never read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "Answer",
    "Component",
    "LockRow",
    "Plan",
    "acquire",
    "apply",
    "commit_plan",
    "release",
    "waiting_for_nothing",
]


class LockRow(NamedTuple):
    key: str
    saga_id: str
    ticket: int
    held: bool
    since: float


class Answer(NamedTuple):
    """The outcome of an acquisition: ``granted``, ``waiting``, ``refused`` (with the reason) or ``stale``."""

    outcome: str
    reason: str = ""
    blockers: tuple[tuple[str, str], ...] = ()


class Plan(NamedTuple):
    """What to write: rows to delete and to insert (by key and saga), rows granted, sagas to wake."""

    deleted: list[tuple[str, str]]
    inserted: list[LockRow]
    granted: list[tuple[str, str]]
    woken: set[str]


class Component:
    """The rows connected to some keys and sagas, read a round at a time.

    ``todo()`` gives the keys and sagas not read yet (empty: done); ``add()`` takes
    the rows read for them.
    """

    def __init__(self, keys: Iterable[str] = (), sagas: Iterable[str] = ()) -> None:
        self.rows: dict[tuple[str, str], LockRow] = {}
        self._keys = set(keys)
        self._sagas = set(sagas)
        self._read_keys: set[str] = set()
        self._read_sagas: set[str] = set()

    def todo(self) -> tuple[list[str], list[str]]:
        keys = sorted(self._keys - self._read_keys)
        sagas = sorted(self._sagas - self._read_sagas)
        self._read_keys.update(keys)
        self._read_sagas.update(sagas)
        return keys, sagas

    def add(self, rows: Iterable[LockRow]) -> None:
        for r in rows:
            self.rows[(r.key, r.saga_id)] = r
            self._keys.add(r.key)
            self._sagas.add(r.saga_id)

    def all(self) -> list[LockRow]:
        return list(self.rows.values())


def _diff(before: Sequence[LockRow], after: Sequence[LockRow], woken: set[str]) -> Plan:
    old = {(r.key, r.saga_id): r for r in before}
    new = {(r.key, r.saga_id): r for r in after}
    deleted = [k for k in old if k not in new]
    inserted = [r for k, r in new.items() if k not in old]
    granted = [k for k, r in new.items() if k in old and r.held and not old[k].held]
    return Plan(deleted, inserted, granted, woken)


def _grant(rows: list[LockRow]) -> tuple[list[LockRow], set[str]]:
    """Grant every waiting acquisition that may go, first come first served; returns the rows and the sagas granted."""
    holder = {r.key: r.saga_id for r in rows if r.held}
    requests: dict[tuple[int, str], list[str]] = {}
    for r in rows:
        if not r.held:
            requests.setdefault((r.ticket, r.saga_id), []).append(r.key)
    blocked: set[str] = set()
    grants: set[tuple[str, str]] = set()
    woken: set[str] = set()
    for (_, saga), keys in sorted(requests.items()):
        if all(holder.get(k, saga) == saga and k not in blocked for k in keys):
            for k in keys:
                holder[k] = saga
                grants.add((k, saga))
            woken.add(saga)
        else:
            blocked.update(keys)
    if not grants:
        return rows, woken
    return [r._replace(held=True) if (r.key, r.saga_id) in grants else r for r in rows], woken


def _blockers(rows: Iterable[LockRow], saga: str, ticket: int, keys: Iterable[str]) -> list[tuple[str, str]]:
    """For each of *keys* not free for this acquisition: the saga that holds it, else the first one queued before."""
    wanted = set(keys)
    holders: dict[str, str] = {}
    first: dict[str, tuple[int, str]] = {}
    for r in rows:
        if r.key not in wanted or r.saga_id == saga:
            continue
        if r.held:
            holders[r.key] = r.saga_id
        elif r.ticket < ticket and (r.key not in first or r.ticket < first[r.key][0]):
            first[r.key] = (r.ticket, r.saga_id)
    out = []
    for k in sorted(wanted):
        if k in holders:
            out.append((k, holders[k]))
        elif k in first:
            out.append((k, first[k][1]))
    return out


def _deadlocks(rows: Sequence[LockRow], saga: str) -> bool:
    """Whether *saga*'s waiting acquisition waits, through other sagas' waits, for itself.

    A waiting acquisition waits for the holders of its keys and for every
    acquisition queued before it on one of them (it is served after those).
    """
    waiting: dict[str, tuple[int, set[str]]] = {}
    for r in rows:
        if not r.held:
            waiting.setdefault(r.saga_id, (r.ticket, set()))[1].add(r.key)
    waits: dict[str, set[str]] = {}
    for s, (ticket, keys) in waiting.items():
        waits[s] = {r.saga_id for r in rows if r.key in keys and r.saga_id != s and (r.held or r.ticket < ticket)}
    seen: set[str] = set()
    todo = list(waits.get(saga, ()))
    while todo:
        s = todo.pop()
        if s == saga:
            return True
        if s in seen:
            continue
        seen.add(s)
        todo.extend(waits.get(s, ()))
    return False


def acquire(
    rows: Sequence[LockRow], saga: str, keys: Sequence[str], now: float, *, fail: bool, give_up: bool
) -> tuple[Plan, Answer]:
    """Acquire *keys* for *saga*, all or none; asking again for keys it holds or waits for changes nothing."""
    rows = list(rows)
    mine = {r.key: r for r in rows if r.saga_id == saga}
    waiting = [r.ticket for k, r in mine.items() if k in keys and not r.held]
    ticket = waiting[0] if waiting else max((r.ticket for r in rows), default=0) + 1
    after = rows + [LockRow(k, saga, ticket, False, now) for k in keys if k not in mine]
    after, woken = _grant(after)
    if all(r.held for r in after if r.saga_id == saga and r.key in keys):
        return _diff(rows, after, woken - {saga}), Answer("granted")
    blockers = tuple(_blockers(after, saga, ticket, list(keys)))
    reason = "taken" if fail else "timeout" if give_up else "deadlock" if _deadlocks(after, saga) else ""
    if not reason:
        return _diff(rows, after, woken), Answer("waiting", "", blockers)
    # Leave the queues: acquisitions behind this one may go now.
    after = [r for r in after if not (r.saga_id == saga and r.key in keys and not r.held)]
    after, more = _grant(after)
    return _diff(rows, after, woken | more), Answer("refused", reason, blockers)


def release(rows: Sequence[LockRow], saga: str, keys: Sequence[str] | None) -> Plan:
    """Drop *saga*'s rows for *keys* (None: all of them) and grant what may go now."""
    rows = list(rows)
    drop = None if keys is None else set(keys)
    after = [r for r in rows if not (r.saga_id == saga and (drop is None or r.key in drop))]
    if len(after) == len(rows):
        return Plan([], [], [], set())
    after, woken = _grant(after)
    return _diff(rows, after, woken)


def waiting_for_nothing(rows: Iterable[LockRow], saga: str) -> bool:
    """True when *saga* has no acquisition queued: it was granted (or never asked), so it must look again."""
    return not any(r.saga_id == saga and not r.held for r in rows)


def apply(rows: Sequence[LockRow], plan: Plan) -> list[LockRow]:
    """*rows* with *plan* carried out."""
    gone = set(plan.deleted)
    granted = set(plan.granted)
    out = [
        r._replace(held=True) if (r.key, r.saga_id) in granted else r for r in rows if (r.key, r.saga_id) not in gone
    ]
    return out + plan.inserted


def commit_plan(
    rows: Sequence[LockRow], releases: Sequence[tuple[str, Sequence[str] | None]], waiting: Sequence[str]
) -> tuple[Plan, list[str]]:
    """The releases of a commit's writes, in order, as one plan; and which of the *waiting* sagas are due now.

    A saga in *waiting* waits for locks and its write lets go of it: with no
    acquisition queued any more (granted meanwhile), it must be due now.
    """
    current = list(rows)
    woken: set[str] = set()
    for saga, keys in releases:
        plan = release(current, saga, keys)
        current = apply(current, plan)
        woken |= plan.woken
    due = [s for s in waiting if waiting_for_nothing(current, s)]
    return _diff(rows, current, woken), due
