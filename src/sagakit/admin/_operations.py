"""The operations API: find, inspect and fix sagas. The CLI and the HTTP API are thin layers over it.

Everything it returns has secrets masked by one policy (``Masker``, in
``sagakit._masking``): payloads, step results, errors, history lines and the
reasons of rejected actions. Every action goes through the engine, which
records it in the saga's history with the actor and the reason.

Errors (besides the engine's ``SagaNotFound``, ``SagaStateError``, ``SagaBusy``
and ``StoreError``)::

    InvalidParameter (SagaError, ValueError)   a filter or an input that cannot be used
    └── AmbiguousSagaId                         an id prefix that more than one saga's id starts with
    DefinitionMissing (SagaStateError)          an action on a saga whose definition is not registered
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from .._definition import SagaDefinition
from .._engine import SagaEngine
from .._errors import PayloadTooLarge, SagaBusy, SagaError, SagaNotFound, SagaStateError, UnknownSagaType
from .._masking import DEFAULT_MASK_PATTERN, Masker
from .._snapshot import SagaSnapshot
from .._status import SagaStatus, StepStatus
from .._store import UNFINISHED, SagaQuery, Store
from ..machine import Abort, Compensate, Event, Retry, Skip, decide
from ._filters import MAX_LIMIT, InvalidParameter, SagaFilter
from ._fleet import DefinitionInfo, WorkersPage, definition_infos, workers_page
from ._graph import SagaGraph, build_graph
from ._locks import LocksPage, locks_page
from ._schedules import SchedulesPage, schedules_page
from ._timeline import Timeline, build_timeline

__all__ = [
    "ACTIONS",
    "ActionOutcome",
    "AmbiguousSagaId",
    "BulkResult",
    "DefinitionMissing",
    "Operations",
    "Overview",
    "SagaPage",
    "summary",
]

ACTIONS = ("retry", "skip", "compensate", "abort", "fork")
TERMINAL = tuple(s for s in SagaStatus if s.terminal)
MAX_BULK = 10_000
_MAX_REASON = 1000
_MAX_ACTOR = 200
_MERGE_WINDOW = 10_000  # stuck searches merge two result lists: page depth is bounded
_BULK_CONCURRENCY = 8


class DefinitionMissing(SagaStateError):
    """An action needs the saga's definition (the state machine runs it), which is not registered."""


class AmbiguousSagaId(InvalidParameter):
    """An id prefix that several sagas' ids start with; ``candidates`` lists some of them."""

    def __init__(self, prefix: str, candidates: tuple[str, ...], total: int) -> None:
        more = f" and {total - len(candidates)} more" if total > len(candidates) else ""
        super().__init__(
            "saga_id", prefix, f"{total} sagas' ids start with it: {', '.join(candidates)}{more}; give more of the id"
        )
        self.candidates = candidates
        self.total = total


@dataclass(frozen=True, slots=True)
class SagaPage:
    """One page of a search: the sagas (without history), and how many match in all."""

    items: tuple[SagaSnapshot, ...]
    total: int
    limit: int
    offset: int
    now: float
    # Unfinished sagas that no running worker can run, with why (by saga id).
    parked: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": [summary(s, self.now, self.parked.get(s.id)) for s in self.items],
            "total": self.total,
            "limit": self.limit,
            "offset": self.offset,
        }


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """What one action on one saga did.

    ``outcome`` is ``ok`` or ``rejected``; ``code`` says why a rejection
    happened (``not_allowed``, ``not_found``, ``busy``, ``definition_missing``,
    ``invalid``); ``reason`` is the machine's or the engine's message.
    """

    saga_id: str
    action: str
    outcome: str
    status: str | None = None
    reason: str | None = None
    code: str | None = None
    new_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"saga_id": self.saga_id, "action": self.action, "outcome": self.outcome}
        for key in ("status", "reason", "code", "new_id"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class BulkResult:
    """Outcomes of one action applied to every saga a filter matched (up to a limit)."""

    action: str
    filter: str
    matched: int
    outcomes: tuple[ActionOutcome, ...]
    dry_run: bool = False

    @property
    def ok(self) -> int:
        return sum(1 for o in self.outcomes if o.ok)

    @property
    def rejected(self) -> int:
        return len(self.outcomes) - self.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "filter": self.filter,
            "matched": self.matched,
            "acted_on": 0 if self.dry_run else len(self.outcomes),
            "ok": 0 if self.dry_run else self.ok,
            "rejected": 0 if self.dry_run else self.rejected,
            "dry_run": self.dry_run,
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


@dataclass(frozen=True, slots=True)
class Overview:
    """The dashboard's first page: counts per status, throughput, stuck sagas."""

    now: float
    counts: Mapping[SagaStatus, int]
    throughput: tuple[Mapping[str, Any], ...]
    bucket_seconds: float
    stuck: SagaPage
    stuck_for: float
    definitions: tuple[tuple[str, int], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "counts": {s.value: n for s, n in self.counts.items()},
            "total": sum(self.counts.values()),
            "throughput": list(self.throughput),
            "bucket_seconds": self.bucket_seconds,
            "stuck": self.stuck.to_dict(),
            "stuck_for": self.stuck_for,
            "definitions": [{"name": n, "version": v} for n, v in self.definitions],
        }


def summary(s: SagaSnapshot, now: float, parked: str | None = None) -> dict[str, Any]:
    """A saga in a list: what it is and where it stands, without payloads.

    *parked* says why no running worker can run it, if none can.
    """
    overdue = None
    if s.status in UNFINISHED and s.wake_at is not None and s.wake_at < now:
        overdue = now - s.wake_at
    done = (StepStatus.COMPLETED, StepStatus.SKIPPED)
    return {
        "id": s.id,
        "name": s.name,
        "version": s.version,
        "status": s.status.value,
        "correlation_id": s.correlation_id,
        "error": s.error,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "wake_at": s.wake_at,
        "overdue_seconds": overdue,
        "parked": parked,
        "steps_done": sum(1 for x in s.steps.values() if x.status in done),
        "steps_total": len(s.steps),
        "choreographed": s.choreographed,
    }


class Operations:
    """Find, inspect and fix sagas on an engine's store.

    Args:
        engine: the engine to read and act through. It need not be running: an
            action's next attempts are then run by the workers.
        mask: regular expression of the keys whose values are masked
            (case-insensitive), replacing the default; None masks nothing; or
            a ``Masker`` to use as it is.
        mask_extra: key patterns masked besides *mask* (ignored with a ``Masker``).
        owns_engine: close the engine in ``close()``.
        definitions_hint: how to register a missing definition, for error messages.

    Use it as an async context manager, or call ``close()``.
    """

    def __init__(
        self,
        engine: SagaEngine,
        *,
        mask: str | re.Pattern[str] | Masker | None = DEFAULT_MASK_PATTERN,
        mask_extra: str | Iterable[str] = (),
        owns_engine: bool = False,
        definitions_hint: str = "register the saga's definition with the engine",
    ) -> None:
        self.engine = engine
        self.masker = mask if isinstance(mask, Masker) else Masker(mask, extra=mask_extra)
        self.owns_engine = owns_engine
        self.definitions_hint = definitions_hint
        self._opened = False

    @classmethod
    def for_store(
        cls,
        store: str | Store,
        definitions: Iterable[SagaDefinition] = (),
        **options: Any,
    ) -> Operations:
        """Operations on a store URL (or store), with an engine of its own that runs no workers."""
        engine = SagaEngine(store)
        engine.register(*definitions)
        return cls(engine, owns_engine=True, **options)

    async def __aenter__(self) -> Operations:
        await self._store()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.owns_engine:
            await self.engine.close()

    def now(self) -> float:
        return self.engine.clock()

    async def _store(self) -> Store:
        if not self._opened:
            # Any read opens the engine's store, and the engine then closes it.
            await self.engine.count(statuses=())
            self._opened = True
        return self.engine.store

    @property
    def definitions(self) -> dict[tuple[str, int], SagaDefinition]:
        return {d.key: d for d in self.engine.definitions}

    # ------------------------------------------------------------ reading

    async def search(self, f: SagaFilter | None = None, *, limit: int = 50, offset: int = 0) -> SagaPage:
        """Sagas matching *f*, newest first, one page; with the number matching in all."""
        f = f or SagaFilter()
        _check_page(limit, offset)
        now = self.now()
        queries = f.queries(now, limit=limit, offset=offset)
        store = await self._store()
        if len(queries) == 1:
            states = await store.list(queries[0])
            total = await store.count(queries[0])
        else:
            if offset + limit > _MERGE_WINDOW:
                raise InvalidParameter("offset", str(offset), f"a stuck search pages through {_MERGE_WINDOW} at most")
            found = []
            total = 0
            for q in queries:
                found.extend(await store.list(replace(q, limit=offset + limit, offset=0)))
                total += await store.count(q)
            found.sort(key=lambda st: (st.created_at, st.id), reverse=True)
            states = found[offset : offset + limit]
        items = tuple(self._mask(SagaSnapshot.from_state(st)) for st in states)
        return SagaPage(items, total, limit, offset, now, await self._parked(store, items, now))

    async def _parked(self, store: Store, items: tuple[SagaSnapshot, ...], now: float) -> dict[str, str]:
        """Why no running worker can run each unfinished saga of *items* that none can run."""
        unfinished = [s for s in items if s.status in UNFINISHED]
        if not unfinished:
            return {}
        live = await store.live_workers(now)
        if not live:
            return {s.id: "no worker is running" for s in unfinished}
        runnable = {kind for kinds in live.values() for kind in kinds}
        return {
            s.id: f"{s.name} v{s.version} is not registered on any worker"
            for s in unfinished
            if (s.name, s.version) not in runnable
        }

    async def counts(self, f: SagaFilter | None = None) -> dict[SagaStatus, int]:
        """How many sagas match *f*, per status (every status is a key)."""
        f = f or SagaFilter()
        store = await self._store()
        counts = dict.fromkeys(SagaStatus, 0)
        for q in f.queries(self.now()):
            for status, n in (await store.count_by_status(q)).items():
                counts[status] += n
        return counts

    async def get(self, saga_id: str) -> SagaSnapshot:
        """The saga with its history, masked.

        Raises:
            SagaNotFound: no such saga.
        """
        return self._mask(await self.engine.get(saga_id))

    async def resolve(self, saga_id: str, *, shown: int = 10) -> str:
        """The id of the saga whose id is *saga_id*, or the one saga whose id starts with it.

        Raises:
            SagaNotFound: no saga's id is or starts with *saga_id*.
            AmbiguousSagaId: several do (*shown* of them are named).
        """
        store = await self._store()
        if not saga_id or await store.get(saga_id) is not None:
            return saga_id
        query = SagaQuery(id_prefix=saga_id, limit=max(1, shown) + 1)
        found = [st.id for st in await store.list(query) if st.id.startswith(saga_id)]
        if not found:
            raise SagaNotFound(saga_id)
        if len(found) == 1:
            return found[0]
        total = max(len(found), await store.count(query))
        raise AmbiguousSagaId(saga_id, tuple(found[: max(1, shown)]), total)

    async def family(self, snap: SagaSnapshot) -> dict[str, Any]:
        """The parent (id, step, name, status) of a child saga, and the children (same) of a parent, oldest first.

        A child that a rollback or an abort of its parent found not yet started is
        stored ended all the same; one not stored at all shows as ``not started``.
        """
        store = await self._store()

        async def one(saga_id: str, step: str | None) -> dict[str, Any]:
            st = await store.get(saga_id)
            return {
                "id": saga_id,
                "step": step,
                "name": None if st is None else st.name,
                "status": "not started" if st is None else st.status.value,
            }

        parent = None if snap.parent_id is None else await one(snap.parent_id, snap.parent_step)
        children = [await one(cid, step) for step, cid in snap.children]
        return {"parent": parent, "children": children}

    async def workers(self) -> WorkersPage:
        """The workers alive now (their definitions, last heartbeat and leases), and leases of workers gone."""
        return await workers_page(await self._store(), self.now())

    async def schedules(self) -> SchedulesPage:
        """The recurring schedules (data masked) and the sagas waiting for their start time, soonest first."""
        return await schedules_page(await self._store(), self.now(), self.masker)

    async def unschedule(self, key: str) -> bool:
        """Stop the recurring schedule *key*; False if there is none. The sagas it started are not touched."""
        if not isinstance(key, str) or not key or len(key) > 200 or "\x00" in key:
            raise InvalidParameter("key", repr(key)[:80], "give the schedule's key, a non-empty string")
        await self._store()
        return await self.engine.unschedule(key)

    async def resources(self) -> dict[str, Any]:
        """Every resource permits were asked for: its limits, permits in use, attempts waiting for one."""
        now = self.now()
        usage = await (await self._store()).resources(now)
        return {"now": now, "resources": [u._asdict() for u in usage]}

    async def locks(self, saga_id: str | None = None) -> LocksPage:
        """Semantic locks by key: holder and queue; with *saga_id*, only the keys that saga holds or waits for."""
        return await locks_page(await self._store(), self.now(), saga_id)

    async def describe_definitions(self) -> list[DefinitionInfo]:
        """The definitions registered here or run by an alive worker: graph, workers, sagas per status."""
        return await definition_infos(await self._store(), self.definitions, self.now())

    async def timeline(self, saga_id: str) -> Timeline:
        """Every attempt (duration, error), compensation and admin action (who, why) of the saga."""
        return build_timeline(await self.get(saga_id))

    async def graph(self, saga_id: str) -> SagaGraph:
        """The saga's definition as a graph, each step with its state in this saga."""
        snap = await self.get(saga_id)
        return build_graph(snap, self.definitions.get((snap.name, snap.version)))

    async def allowed_actions(self, saga_id: str) -> dict[str, Any]:
        """Which actions the state machine would accept now, and why not (a dry run: nothing is written).

        ``skip`` and ``fork`` list the steps they can be given.
        """
        store = await self._store()
        st = await store.get(saga_id)
        if st is None:
            raise SagaNotFound(saga_id)
        defn = self.definitions.get((st.name, st.version))
        if defn is None:
            # Abort and skip need no step code: the machine decides them from the stored state alone.
            why = self._missing(st.name, st.version)
            now = self.now()
            parked: dict[str, Any] = {
                a: {"allowed": False, "reason": why, **({"steps": []} if a in ("skip", "fork") else {})}
                for a in ACTIONS
            }
            rejected = decide(None, st, Abort(), now).rejected
            parked["abort"] = {"allowed": rejected is None, "reason": rejected}
            steps = [n for n in st.steps if decide(None, st, Skip(n), now).rejected is None]
            parked["skip"] = {"allowed": bool(steps), "reason": None if steps else why, "steps": steps}
            return parked
        now = self.now()
        out: dict[str, Any] = {}
        events: dict[str, Event] = {"retry": Retry(), "compensate": Compensate(), "abort": Abort()}
        for name, event in events.items():
            rejected = decide(defn, st, event, now).rejected
            out[name] = {"allowed": rejected is None, "reason": rejected}
        skippable = [n for n in defn.order if decide(defn, st, Skip(n), now).rejected is None]
        out["skip"] = {
            "allowed": bool(skippable),
            "reason": None if skippable else "no step can be skipped in this status",
            "steps": skippable,
        }
        done = (StepStatus.COMPLETED, StepStatus.SKIPPED)
        forkable = [n for n in defn.order if all(st.steps[a].status in done for a in defn.ancestors[n])]
        out["fork"] = {
            "allowed": bool(forkable),
            "reason": None if forkable else "no step has all its dependencies completed",
            "steps": forkable,
        }
        return out

    async def overview(
        self,
        *,
        window: float = 900.0,
        bucket: float = 60.0,
        stuck_for: float = 60.0,
        stuck_limit: int = 10,
    ) -> Overview:
        """Counts per status, sagas started and finished per *bucket* seconds over the last
        *window* seconds (by ``created_at`` and ``updated_at``), and the stuck sagas."""
        if not (math.isfinite(bucket) and bucket >= 1):
            raise InvalidParameter("bucket", f"{bucket:g}", "must be at least 1 second")
        if not (math.isfinite(window) and bucket <= window <= 200 * bucket):
            raise InvalidParameter("window", f"{window:g}", "must be between one and 200 buckets long")
        store = await self._store()
        now = self.now()
        counts = await store.count_by_status()
        end = math.ceil(now / bucket) * bucket
        n = max(1, round(window / bucket))
        throughput = []
        for i in range(n):
            lo, hi = end - (n - i) * bucket, end - (n - i - 1) * bucket
            finished = await store.count_by_status(SagaQuery(updated_after=lo, updated_before=hi, statuses=TERMINAL))
            started = await store.count(SagaQuery(created_after=lo, created_before=hi))
            row: dict[str, Any] = {"start": lo, "end": hi, "started": started}
            row.update({s.value: finished[s] for s in TERMINAL})
            throughput.append(row)
        stuck = await self.search(SagaFilter(stuck_for=stuck_for), limit=stuck_limit)
        return Overview(now, counts, tuple(throughput), bucket, stuck, stuck_for, tuple(sorted(self.definitions)))

    async def matching_ids(self, f: SagaFilter, limit: int = MAX_BULK) -> tuple[list[str], int]:
        """Ids of up to *limit* sagas matching *f* (newest first), and how many match in all."""
        ids: list[str] = []
        total = 0
        while len(ids) < limit:
            page = await self.search(f, limit=min(MAX_LIMIT, limit - len(ids)), offset=len(ids))
            total = page.total
            ids.extend(s.id for s in page.items)
            if len(page.items) < page.limit:
                break
        return ids, total

    # ------------------------------------------------------------ acting

    async def retry(self, saga_id: str, *, reason: str = "", actor: str = "operator") -> ActionOutcome:
        """Re-run the failed step or compensation, or a step waiting for its retry, now."""
        return await self.act("retry", saga_id, reason=reason, actor=actor)

    async def skip(
        self, saga_id: str, step: str, result: Any = None, *, reason: str = "", actor: str = "operator"
    ) -> ActionOutcome:
        """Mark a waiting or failed step done with *result* and move on."""
        return await self.act("skip", saga_id, step=step, result=result, reason=reason, actor=actor)

    async def compensate(self, saga_id: str, *, reason: str = "", actor: str = "operator") -> ActionOutcome:
        """Start compensating a pending or running saga now."""
        return await self.act("compensate", saga_id, reason=reason, actor=actor)

    async def abort(self, saga_id: str, *, reason: str = "", actor: str = "operator") -> ActionOutcome:
        """Stop the saga where it stands, without compensation."""
        return await self.act("abort", saga_id, reason=reason, actor=actor)

    async def fork(
        self, saga_id: str, from_step: str, *, data: Any = None, reason: str = "", actor: str = "operator"
    ) -> ActionOutcome:
        """Start a new saga that re-runs this one from *from_step* on; ``new_id`` names it."""
        return await self.act("fork", saga_id, step=from_step, data=data, reason=reason, actor=actor)

    async def act(
        self,
        action: str,
        saga_id: str,
        *,
        reason: str = "",
        actor: str = "operator",
        step: str | None = None,
        result: Any = None,
        data: Any = None,
    ) -> ActionOutcome:
        """Apply one action (``retry``, ``skip``, ``compensate``, ``abort``, ``fork``) to one saga.

        *step* is the step to skip, or the step to fork from.

        Raises:
            InvalidParameter: unknown action, missing step, bad reason or actor.
            SagaNotFound: no such saga.
            SagaStateError: the machine does not allow the action in the saga's state
                (``DefinitionMissing`` when its definition is not registered).
            SagaBusy: another worker kept the saga too long.
        """
        _check_action(action, step, reason, actor)
        engine = self.engine
        await self._store()
        current = await engine.store.get(saga_id)
        if current is None:
            raise SagaNotFound(saga_id)
        if (current.name, current.version) not in self.definitions and action not in ("abort", "skip"):
            raise DefinitionMissing(saga_id, self._missing(current.name, current.version))
        try:
            if action == "fork":
                assert step is not None
                new_id = await engine.fork(saga_id, step, data=data, reason=reason, actor=actor)
                return ActionOutcome(saga_id, action, "ok", status=current.status.value, new_id=new_id)
            if action == "skip":
                assert step is not None
                snap = await engine.skip(saga_id, step, result, reason=reason, actor=actor)
            elif action == "retry":
                snap = await engine.retry(saga_id, reason=reason, actor=actor)
            elif action == "compensate":
                snap = await engine.compensate(saga_id, reason=reason, actor=actor)
            else:
                snap = await engine.abort(saga_id, reason=reason, actor=actor)
        except UnknownSagaType as e:
            raise DefinitionMissing(saga_id, str(e)) from None
        except (TypeError, PayloadTooLarge) as e:
            raise InvalidParameter("result" if action == "skip" else "data", "…", str(e)) from None
        return ActionOutcome(saga_id, action, "ok", status=snap.status.value)

    async def bulk(
        self,
        action: str,
        f: SagaFilter,
        *,
        reason: str = "",
        actor: str = "operator",
        step: str | None = None,
        result: Any = None,
        data: Any = None,
        limit: int = MAX_BULK,
        dry_run: bool = False,
        allow_all: bool = False,
    ) -> BulkResult:
        """Apply *action* to every saga *f* matches (the newest *limit* of them), one by one.

        An empty filter is refused unless *allow_all*. With *dry_run*, nothing
        is done: the outcomes list the sagas that would be acted on. Rejections
        (not allowed in a saga's status, not found, busy) are outcomes, never
        exceptions.
        """
        _check_action(action, step, reason, actor)
        if f.empty and not allow_all:
            raise InvalidParameter("filter", "", "give at least one filter: a bulk action on every saga is refused")
        if not 1 <= limit <= MAX_BULK:
            raise InvalidParameter("limit", str(limit), f"must be between 1 and {MAX_BULK}")
        ids, total = await self.matching_ids(f, limit)
        if dry_run:
            outcomes = tuple(ActionOutcome(i, action, "matched") for i in ids)
            return BulkResult(action, self.masker.text(f.describe()), total, outcomes, dry_run=True)
        outcomes = await self.act_many(action, ids, reason=reason, actor=actor, step=step, result=result, data=data)
        return BulkResult(action, self.masker.text(f.describe()), total, outcomes)

    async def act_many(
        self,
        action: str,
        saga_ids: Iterable[str],
        *,
        reason: str = "",
        actor: str = "operator",
        step: str | None = None,
        result: Any = None,
        data: Any = None,
    ) -> tuple[ActionOutcome, ...]:
        """Apply *action* to each saga; a saga's rejection is its outcome, never an exception."""
        _check_action(action, step, reason, actor)
        gate = asyncio.Semaphore(_BULK_CONCURRENCY)

        async def one(saga_id: str) -> ActionOutcome:
            async with gate:
                try:
                    return await self.act(
                        action, saga_id, reason=reason, actor=actor, step=step, result=result, data=data
                    )
                except SagaError as e:
                    return self.mask_outcome(rejection(saga_id, action, e))

        return tuple(await asyncio.gather(*(one(i) for i in saga_ids)))

    # ------------------------------------------------------------ helpers

    def _missing(self, name: str, version: int) -> str:
        known = ", ".join(f"{n} v{v}" for n, v in sorted(self.definitions)) or "none"
        return (
            f"definition {name} v{version} is not registered here (registered: {known}): "
            f"actions need it; {self.definitions_hint}"
        )

    def _mask(self, snap: SagaSnapshot) -> SagaSnapshot:
        return self.masker.snapshot(snap)

    def mask_outcome(self, outcome: ActionOutcome) -> ActionOutcome:
        """*outcome* with its reason masked (a rejection may quote the saga's error)."""
        if outcome.reason is None:
            return outcome
        return replace(outcome, reason=self.masker.text(outcome.reason))


def rejection(saga_id: str, action: str, e: SagaError) -> ActionOutcome:
    """An action's error as a rejected outcome (for bulk results)."""
    if isinstance(e, DefinitionMissing):
        return ActionOutcome(saga_id, action, "rejected", reason=e.reason, code="definition_missing")
    if isinstance(e, SagaStateError):
        return ActionOutcome(saga_id, action, "rejected", reason=e.reason, code="not_allowed")
    if isinstance(e, SagaNotFound):
        return ActionOutcome(saga_id, action, "rejected", reason=str(e), code="not_found")
    if isinstance(e, SagaBusy):
        return ActionOutcome(saga_id, action, "rejected", reason=str(e), code="busy")
    if isinstance(e, InvalidParameter):
        return ActionOutcome(saga_id, action, "rejected", reason=str(e), code="invalid")
    return ActionOutcome(saga_id, action, "rejected", reason=str(e), code="error")


def _check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidParameter("limit", str(limit), f"must be between 1 and {MAX_LIMIT}")
    if not 0 <= offset <= 1_000_000:
        raise InvalidParameter("offset", str(offset), "must be between 0 and 1000000")


def _check_action(action: str, step: str | None, reason: str, actor: str) -> None:
    if action not in ACTIONS:
        raise InvalidParameter("action", action, f"use one of: {', '.join(ACTIONS)}")
    if action in ("skip", "fork") and not step:
        raise InvalidParameter(
            "step", "", f"{action} needs the step ({'to skip' if action == 'skip' else 'to fork from'})"
        )
    if len(reason) > _MAX_REASON:
        raise InvalidParameter("reason", reason, f"longer than {_MAX_REASON} characters")
    if not actor.strip() or len(actor) > _MAX_ACTOR or any(c in actor for c in "\r\n\x00"):
        raise InvalidParameter("actor", actor, f"give a name of 1-{_MAX_ACTOR} characters on one line")


def json_value(text: str, parameter: str) -> Any:
    """A JSON value given as text (CLI ``--result``, ``--data``)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise InvalidParameter(parameter, text, f"not JSON: {e}") from None
