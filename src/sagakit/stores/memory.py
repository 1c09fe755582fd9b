"""In-memory store: the store protocol with nothing on disk, for tests and experiments.

Rows are kept encoded, exactly as a database would hold them, so a test on
this store sees the same copies and JSON round trips as on SQLite.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from .._errors import SagaNotFound
from .._status import SagaStatus
from .._store import (
    UNFINISHED,
    DeadLetter,
    Handling,
    Lease,
    LockAnswer,
    LockEntry,
    OutboxMessage,
    OutboxRecord,
    Pruned,
    SagaQuery,
    Schedule,
    WorkerInfo,
    Write,
    data_text,
    waits_for,
)
from ..machine import HistoryEntry, SagaState
from . import _lockplan
from ._codec import decode_row, dumps, encode_steps, loads
from ._permits import InProcessPermits

__all__ = ["MemoryStore"]

_ACTIVE = ("pending", "running", "compensating")


@dataclass(slots=True)
class _Row:
    values: list[object]  # in COLUMNS order
    lease_owner: str | None = None
    lease_expires: float | None = None
    history: list[tuple[int, int, HistoryEntry]] = field(default_factory=list)

    @property
    def wake_at(self) -> float | None:
        v = self.values[10]
        return v if isinstance(v, float | int) else None

    @property
    def revision(self) -> int:
        v = self.values[14]
        assert isinstance(v, int)
        return v


@dataclass
class _Request:
    saga_id: str
    event: str
    at: float
    outcome: str | None = None


def _encode(st: SagaState, wake_at: float | None) -> list[object]:
    return [
        st.id, st.name, st.version, st.status.value, dumps(st.data), encode_steps(st.steps),
        st.created_at, st.updated_at, st.correlation_id, st.idempotency_key, wake_at,
        st.deadline_at, st.error, st.seq, st.revision, dumps(st.meta) if st.meta else None,
    ]  # fmt: skip


class MemoryStore(InProcessPermits):
    """Sagas in a dict; lost when the process ends."""

    def __init__(self) -> None:
        self._requests: dict[str, _Request] = {}
        self._workers: dict[str, tuple[list[tuple[str, int]], float, float | None]] = {}
        self.url = "memory://"
        self._rows: dict[str, _Row] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        self.outbox: dict[str, _Out] = {}
        self.inbox: dict[str, str | None] = {}  # message id -> saga id
        self._dead: builtins.list[DeadLetter] = []
        self._schedules: dict[str, Schedule] = {}
        self._order = 0
        # (participant, message id) -> (handled at, reply); a lock per command being handled
        self._handled: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._handling: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self._locks: builtins.list[_lockplan.LockRow] = []

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        return cls()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def commit(self, writes: Sequence[Write]) -> list[str | None]:
        results: list[str | None] = []
        for w in writes:
            st = w.state
            if w.insert:
                key = (st.name, st.idempotency_key) if st.idempotency_key is not None else None
                if key is not None and key in self._idempotency:
                    results.append(self._idempotency[key])
                    continue
                if st.id in self._rows:
                    results.append(None)
                    continue
                row = _Row(_encode(st, w.wake_at), w.owner, w.lease_expires)
                self._rows[st.id] = row
                if key is not None:
                    self._idempotency[key] = st.id
            else:
                found = self._rows.get(st.id)
                if found is None or found.revision != w.expected_revision:
                    results.append(None)
                    continue
                row = found
                row.values = _encode(st, w.wake_at)
                row.lease_owner = w.owner
                row.lease_expires = w.lease_expires
            row.history.extend((st.revision, i, h) for i, h in enumerate(w.history))
            for m in w.outbox:
                if m.id not in self.outbox:
                    self._order += 1
                    self.outbox[m.id] = _Out(m, st.updated_at, self._order, created_at=st.updated_at)
            self.inbox.update(dict.fromkeys(w.inbox, st.id))
            results.append(st.id)
            if w.unlock_all or w.unlock or w.lock_wait:
                self._commit_locks(w, row)
        return results

    def _commit_locks(self, w: Write, row: _Row) -> None:
        st = w.state
        if w.unlock_all or w.unlock:
            self._apply_locks(_lockplan.release(self._locks, st.id, None if w.unlock_all else w.unlock), st.updated_at)
        if w.lock_wait and w.owner is None and _lockplan.waiting_for_nothing(self._locks, st.id):
            row.values[10] = st.updated_at

    def _apply_locks(self, plan: _lockplan.Plan, now: float) -> None:
        gone = set(plan.deleted)
        granted = set(plan.granted)
        rows = [r._replace(held=True) if (r.key, r.saga_id) in granted else r for r in self._locks]
        self._locks = [r for r in rows if (r.key, r.saga_id) not in gone] + plan.inserted
        for sid in plan.woken:
            r = self._rows.get(sid)
            if r is not None and r.lease_owner is None and r.values[3] in _ACTIVE:
                r.values[10] = now

    async def acquire_locks(
        self,
        saga_id: str,
        keys: Sequence[str],
        now: float,
        *,
        fail: bool = False,
        give_up: bool = False,
        owner: str | None = None,
        wake_at: float | None = None,
    ) -> LockAnswer:
        r = self._rows.get(saga_id)
        if r is None or r.values[3] not in _ACTIVE or not waits_for(r.values[15] or "{}", keys):
            return LockAnswer("stale")
        plan, answer = _lockplan.acquire(self._locks, saga_id, keys, now, fail=fail, give_up=give_up)
        self._apply_locks(plan, now)
        released = False
        if answer.outcome == "waiting" and owner is not None and r.lease_owner == owner:
            r.lease_owner = None
            r.lease_expires = None
            r.values[10] = wake_at
            released = True
        return LockAnswer(answer.outcome, answer.reason, answer.blockers, released)

    async def locks(self, *, saga_id: str | None = None, limit: int = 1000) -> builtins.list[LockEntry]:
        rows = sorted(
            (r for r in self._locks if saga_id is None or r.saga_id == saga_id),
            key=lambda r: (r.key, not r.held, r.ticket),
        )[:limit]
        out = []
        for x in rows:
            found = self._rows.get(x.saga_id)
            name = found.values[1] if found is not None else None
            out.append(LockEntry(x.key, x.saga_id, x.held, x.ticket, x.since, name if isinstance(name, str) else None))
        return out

    async def append_history(self, saga_id: str, revision: int, entries: Sequence[HistoryEntry]) -> None:
        row = self._rows.get(saga_id)
        if row is not None:
            row.history.extend((revision, 1000 + i, h) for i, h in enumerate(entries))

    async def claim(
        self, owner: str, now: float, lease_until: float, limit: int, kinds: Collection[tuple[str, int]] | None = None
    ) -> list[SagaState]:
        wanted = None if kinds is None else set(kinds)
        due = [
            r
            for r in self._rows.values()
            if r.wake_at is not None
            and r.wake_at <= now
            and (r.lease_owner is None or (r.lease_expires or 0.0) <= now)
            and (wanted is None or (r.values[1], r.values[2]) in wanted)
        ]
        due.sort(key=lambda r: r.wake_at or 0.0)
        return [self._take(r, owner, lease_until) for r in due[:limit]]

    def _take(self, r: _Row, owner: str, lease_until: float) -> SagaState:
        r.lease_owner = owner
        r.lease_expires = lease_until
        if r.wake_at is not None:
            r.values[10] = lease_until
        r.values[14] = r.revision + 1
        return decode_row(r.values)

    async def claim_saga(self, saga_id: str, owner: str, now: float, lease_until: float) -> SagaState | None:
        r = self._rows.get(saga_id)
        if r is None:
            raise SagaNotFound(saga_id)
        if r.lease_owner not in (None, owner) and (r.lease_expires or 0.0) > now:
            return None
        return self._take(r, owner, lease_until)

    async def claim_sagas(
        self, saga_ids: Sequence[str], owner: str, now: float, lease_until: float
    ) -> dict[str, SagaState | None]:
        got: dict[str, SagaState | None] = {}
        for sid in sorted(set(saga_ids)):
            r = self._rows.get(sid)
            if r is None:
                continue
            if r.lease_owner not in (None, owner) and (r.lease_expires or 0.0) > now:
                got[sid] = None
            else:
                got[sid] = self._take(r, owner, lease_until)
        return got

    async def renew(
        self, owner: str, saga_ids: Sequence[str], lease_until: float, *, now: float | None = None
    ) -> set[str]:
        lost: set[str] = set()
        for sid in saga_ids:
            r = self._rows.get(sid)
            if r is None or r.lease_owner != owner:
                lost.add(sid)
                continue
            r.lease_expires = lease_until
            r.values[10] = lease_until
        return lost

    async def release_leases(self, owner: str | None, wake_at: float) -> int:
        n = 0
        for r in self._rows.values():
            if r.lease_owner is not None and (owner is None or r.lease_owner == owner):
                r.lease_owner = None
                r.lease_expires = None
                if r.wake_at is not None:
                    r.values[10] = wake_at
                n += 1
        return n

    async def release(self, owner: str, sagas: Sequence[tuple[str, float | None]]) -> None:
        for sid, wake in sagas:
            r = self._rows.get(sid)
            if r is not None and r.lease_owner == owner:
                r.lease_owner = None
                r.lease_expires = None
                if r.wake_at is not None:
                    r.values[10] = wake

    async def get(self, saga_id: str) -> SagaState | None:
        r = self._rows.get(saga_id)
        return decode_row(r.values) if r else None

    async def load(self, saga_id: str) -> tuple[SagaState, builtins.list[HistoryEntry]] | None:
        """The saga and its history together."""
        st = await self.get(saga_id)
        if st is None:
            return None
        return st, await self.history(saga_id)

    async def history(self, saga_id: str) -> list[HistoryEntry]:
        r = self._rows.get(saga_id)
        if r is None:
            return []
        return [h for _, _, h in sorted(r.history, key=lambda t: (t[0], t[1]))]

    def _matching(self, q: SagaQuery) -> list[_Row]:
        out = []
        statuses = None if q.statuses is None else {s.value for s in q.statuses}
        unfinished = {s.value for s in UNFINISHED}
        for r in self._rows.values():
            v = r.values
            if q.status is not None and v[3] != q.status.value:
                continue
            if statuses is not None and v[3] not in statuses:
                continue
            if q.name is not None and v[1] != q.name:
                continue
            if q.version is not None and v[2] != q.version:
                continue
            if q.correlation_id is not None and v[8] != q.correlation_id:
                continue
            if q.id_prefix is not None and not str(v[0]).startswith(q.id_prefix):
                continue
            created, updated = v[6], v[7]
            assert isinstance(created, float | int)
            assert isinstance(updated, float | int)
            if q.created_after is not None and created < q.created_after:
                continue
            if q.created_before is not None and created >= q.created_before:
                continue
            if q.updated_after is not None and updated < q.updated_after:
                continue
            if q.updated_before is not None and updated >= q.updated_before:
                continue
            if q.data_equals and not _data_matches(v[4], q.data_equals):
                continue
            if q.overdue_before is not None and (
                v[3] not in unfinished or r.wake_at is None or r.wake_at >= q.overdue_before
            ):
                continue
            out.append(r)
        return out

    async def list(self, query: SagaQuery) -> list[SagaState]:
        rows = self._matching(query)
        rows.sort(key=lambda r: (r.values[6], r.values[0]), reverse=True)
        return [decode_row(r.values) for r in rows[query.offset : query.offset + query.limit]]

    async def correlated(self, name: str, correlation_ids: Sequence[str]) -> dict[str, str]:
        wanted = set(correlation_ids)
        rows = [
            r for r in self._rows.values() if r.values[8] in wanted and r.values[1] == name and r.values[3] in _ACTIVE
        ]
        rows.sort(key=lambda r: (r.values[6], r.values[0]))
        return {str(r.values[8]): str(r.values[0]) for r in rows}  # the newest last

    async def count(self, query: SagaQuery) -> int:
        return len(self._matching(query))

    async def count_by_status(self, query: SagaQuery | None = None) -> dict[SagaStatus, int]:
        counts = dict.fromkeys(SagaStatus, 0)
        for r in self._matching(query or SagaQuery()):
            status = r.values[3]
            assert isinstance(status, str)
            counts[SagaStatus(status)] += 1
        return counts

    async def next_wake(self, kinds: Collection[tuple[str, int]] | None = None) -> float | None:
        wanted = None if kinds is None else set(kinds)
        wakes = [
            r.wake_at
            for r in self._rows.values()
            if r.wake_at is not None and (wanted is None or (r.values[1], r.values[2]) in wanted)
        ]
        return min(wakes) if wakes else None

    async def outbox_claim(
        self, owner: str, now: float, claimed_until: float, limit: int
    ) -> builtins.list[OutboxRecord]:
        entries = list(self.outbox.values())

        def blocked(e: _Out) -> bool:
            # Another relay holds one of its saga's messages, or an earlier one waits for a retry.
            saga_id = e.message.saga_id
            return any(
                h is not e
                and h.message.saga_id == saga_id
                and (
                    (h.claimed_by not in (None, owner) and (h.claimed_until or 0.0) > now)
                    or (h.order < e.order and h.available_at > now)
                )
                for h in entries
            )

        ready = [
            e
            for e in entries
            if e.available_at <= now and (e.claimed_by is None or (e.claimed_until or 0.0) <= now) and not blocked(e)
        ]
        ready.sort(key=lambda e: e.order)
        out: builtins.list[OutboxRecord] = []
        for e in ready[:limit]:
            e.claimed_by, e.claimed_until = owner, claimed_until
            e.attempts += 1
            m = e.message
            out.append(OutboxRecord(m.id, m.saga_id, m.destination, m.payload, dict(m.headers), e.attempts))
        return out

    async def outbox_done(self, owner: str, ids: Sequence[str]) -> None:
        for i in ids:
            e = self.outbox.get(i)
            if e is not None and e.claimed_by == owner:
                del self.outbox[i]

    async def outbox_retry(self, owner: str, ids: Sequence[str], available_at: float) -> None:
        for i in ids:
            e = self.outbox.get(i)
            if e is not None and e.claimed_by == owner:
                e.claimed_by, e.claimed_until, e.available_at = None, None, available_at

    async def outbox_pending(self) -> int:
        return len(self.outbox)

    async def outbox_oldest(self) -> float | None:
        """When the oldest message still in the outbox was written (None: the outbox is empty)."""
        return min((e.created_at for e in self.outbox.values()), default=None)

    async def inbox_seen(self, message_id: str) -> bool:
        return message_id in self.inbox

    async def dead_letter(self, letter: DeadLetter) -> None:
        self._dead.append(letter)

    async def request(self, request_id: str, saga_id: str, event: str, at: float) -> None:
        self._requests[request_id] = _Request(saga_id, event, at)

    async def open_requests(self) -> builtins.list[tuple[str, str, str]]:
        pending = sorted((r.at, rid) for rid, r in self._requests.items() if r.outcome is None)
        return [(rid, self._requests[rid].saga_id, self._requests[rid].event) for _, rid in pending]

    async def answer_request(self, request_id: str, outcome: str) -> None:
        r = self._requests.get(request_id)
        if r is not None and r.outcome is None:
            r.outcome = outcome

    async def request_outcome(self, request_id: str) -> str | None:
        r = self._requests.get(request_id)
        return None if r is None else r.outcome

    async def withdraw_request(self, request_id: str) -> bool:
        r = self._requests.get(request_id)
        if r is None or r.outcome is not None:
            return False
        del self._requests[request_id]
        return True

    async def drop_request(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    async def worker_alive(
        self, worker_id: str, kinds: Collection[tuple[str, int]], until: float, *, now: float | None = None
    ) -> None:
        self._workers[worker_id] = (sorted(kinds), until, now)

    async def worker_gone(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def live_workers(self, now: float) -> dict[str, builtins.list[tuple[str, int]]]:
        return {w: list(kinds) for w, (kinds, until, _) in sorted(self._workers.items()) if until > now}

    async def workers(self, now: float) -> builtins.list[WorkerInfo]:
        return [
            WorkerInfo(w, tuple(kinds), until, seen)
            for w, (kinds, until, seen) in sorted(self._workers.items())
            if until > now
        ]

    async def leases(self, now: float, limit: int = 1000) -> builtins.list[Lease]:
        held = []
        for r in self._rows.values():
            if r.lease_owner is not None and r.wake_at is not None and (r.lease_expires or 0.0) > now:
                name, version = r.values[1], r.values[2]
                assert isinstance(name, str) and isinstance(version, int)
                held.append(Lease(str(r.values[0]), name, version, r.lease_owner, float(r.lease_expires or 0.0)))
        held.sort(key=lambda x: (x.owner, x.expires, x.saga_id))
        return held[:limit]

    async def dead_letters(self, limit: int = 100, offset: int = 0) -> builtins.list[DeadLetter]:
        newest = sorted(self._dead, key=lambda d: d.received_at, reverse=True)
        return newest[offset : offset + limit]

    async def schedule_put(self, schedule: Schedule) -> None:
        old = self._schedules.get(schedule.key)
        new = dataclasses.replace(schedule, data=loads(dumps(schedule.data)), last_at=None, last_saga=None)
        if old is not None:  # the last start and the creation time are kept
            new = dataclasses.replace(new, created_at=old.created_at, last_at=old.last_at, last_saga=old.last_saga)
        self._schedules[schedule.key] = new

    async def schedule_remove(self, key: str) -> bool:
        return self._schedules.pop(key, None) is not None

    async def schedules(self) -> builtins.list[Schedule]:
        return sorted(self._schedules.values(), key=lambda s: (s.next_at, s.key))

    async def schedules_due(self, now: float, limit: int) -> builtins.list[Schedule]:
        return [s for s in await self.schedules() if s.next_at <= now][:limit]

    async def schedule_advance(
        self, key: str, expected_next_at: float, next_at: float, last_at: float, last_saga: str
    ) -> bool:
        s = self._schedules.get(key)
        if s is None or s.next_at != expected_next_at:
            return False
        self._schedules[key] = dataclasses.replace(s, next_at=next_at, last_at=last_at, last_saga=last_saga)
        return True

    async def prune_sagas(
        self,
        before: float,
        statuses: Collection[SagaStatus],
        *,
        after: tuple[float, str] | None,
        limit: int,
        dry_run: bool = False,
    ) -> tuple[Pruned, tuple[float, str] | None]:
        wanted = {s.value for s in statuses}
        start = after or (float("-inf"), "")

        def key(r: _Row) -> tuple[float, str]:
            return (float(r.values[6]), str(r.values[0]))  # type: ignore[arg-type]

        def prunable(r: _Row) -> bool:
            updated = float(r.values[7])  # type: ignore[arg-type]
            lease_gone = r.lease_owner is None or (r.lease_expires is not None and r.lease_expires < before)
            return r.values[3] in wanted and updated < before and lease_gone

        picked = sorted((r for r in self._rows.values() if key(r) > start and prunable(r)), key=key)[:limit]
        if not picked:
            return Pruned(), None
        gone = {str(r.values[0]) for r in picked}
        # as the SQL stores count them: one row per (revision, part), part 1 for appended entries
        history = sum(len({(rev, idx >= 1000) for rev, idx, _ in r.history}) for r in picked)
        inbox = [m for m, sid in self.inbox.items() if sid in gone]
        outbox = [i for i, e in self.outbox.items() if e.message.saga_id in gone]
        if not dry_run:
            for r in picked:
                del self._rows[str(r.values[0])]
                if r.values[9] is not None:
                    self._idempotency.pop((str(r.values[1]), str(r.values[9])), None)
            for m in inbox:
                del self.inbox[m]
            for i in outbox:
                del self.outbox[i]
            for rid in [rid for rid, q in self._requests.items() if q.saga_id in gone]:
                del self._requests[rid]
        cursor = key(picked[-1]) if len(picked) == limit else None
        return Pruned(len(picked), history, len(inbox), len(outbox)), cursor

    async def prune_dead_letters(self, before: float, *, limit: int, dry_run: bool = False) -> int:
        old = [d for d in self._dead if d.received_at < before]
        if dry_run:
            return len(old)
        doomed = {id(d) for d in sorted(old, key=lambda d: d.received_at)[:limit]}
        self._dead = [d for d in self._dead if id(d) not in doomed]
        return len(doomed)

    @contextlib.asynccontextmanager
    async def handling(self, participant: str, message_id: str, at: float) -> AsyncIterator[Handling]:
        key = (participant, message_id)
        lock, users = self._handling.get(key) or (asyncio.Lock(), 0)
        self._handling[key] = (lock, users + 1)
        try:
            async with lock:
                done = self._handled.get(key)
                if done is not None:
                    yield Handling(True, done[1])
                    return
                h = Handling(False)
                yield h
                self._handled[key] = (at, h.reply)
        finally:
            lock, users = self._handling[key]
            if users == 1:
                del self._handling[key]
            else:
                self._handling[key] = (lock, users - 1)

    async def prune_handled(self, participant: str | None, before: float, *, limit: int) -> int:
        old = sorted(
            (at, key)
            for key, (at, _) in self._handled.items()
            if at < before and (participant is None or key[0] == participant)
        )[:limit]
        for _, key in old:
            del self._handled[key]
        return len(old)


def _data_matches(encoded: object, wanted: Mapping[str, str | int | float | bool]) -> bool:
    """Whether the saga's data has every business key, compared as text like the SQL stores do."""
    data = loads(encoded) if isinstance(encoded, str | bytes) else None
    if not isinstance(data, dict):
        return False
    for key, value in wanted.items():
        have = data.get(key)
        if have is None or isinstance(have, dict | list) or data_text(have) != data_text(value):
            return False
    return True


@dataclass(slots=True)
class _Out:
    message: OutboxMessage
    available_at: float
    order: int
    claimed_by: str | None = None
    claimed_until: float | None = None
    attempts: int = 0
    created_at: float = 0.0
