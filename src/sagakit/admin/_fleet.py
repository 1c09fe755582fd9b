"""What runs the sagas: the workers alive now with their leases, and the definitions with their counts.

Read from the store's workers registry (each running engine says every few
seconds that it is alive, which definitions it runs and until when to count
on it) and from the lease columns of the sagas it holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._definition import SagaDefinition
from .._status import SagaStatus
from .._store import Lease, SagaQuery, Store, WorkerInfo
from ._graph import SagaGraph, definition_graph

__all__ = ["DefinitionInfo", "WorkerReport", "WorkersPage", "definition_infos", "workers_page"]

_LEASE_LIMIT = 1000


def _lease(x: Lease, now: float) -> dict[str, Any]:
    return {
        "saga_id": x.saga_id,
        "name": x.name,
        "version": x.version,
        "owner": x.owner,
        "expires_at": x.expires,
        "expires_in": x.expires - now,
    }


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One worker alive now: the definitions it runs, its last heartbeat, the sagas it holds."""

    info: WorkerInfo
    leases: tuple[Lease, ...]

    def to_dict(self, now: float) -> dict[str, Any]:
        seen = self.info.seen_at
        return {
            "worker_id": self.info.worker_id,
            "definitions": [{"name": n, "version": v} for n, v in self.info.definitions],
            "last_heartbeat": seen,
            "heartbeat_age": None if seen is None else max(0.0, now - seen),
            "alive_until": self.info.alive_until,
            "leases": [_lease(x, now) for x in self.leases],
        }


@dataclass(frozen=True, slots=True)
class WorkersPage:
    """The workers alive at ``now``, and live leases held by workers that are not (any more) in the registry.

    ``leases_truncated`` is True when there were more live leases than were read.
    """

    now: float
    workers: tuple[WorkerReport, ...]
    orphan_leases: tuple[Lease, ...]
    leases_truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "workers": [w.to_dict(self.now) for w in self.workers],
            "orphan_leases": [_lease(x, self.now) for x in self.orphan_leases],
            "leases_truncated": self.leases_truncated,
        }


@dataclass(frozen=True, slots=True)
class DefinitionInfo:
    """A saga definition: registered here or not, which alive workers run it, its sagas per status, its graph."""

    name: str
    version: int
    registered: bool
    workers: tuple[str, ...]
    counts: Mapping[SagaStatus, int]
    graph: SagaGraph | None
    choreographed: bool | None = None
    """A choreographed saga's definition (``sagakit.choreography``); None when it is not registered here."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "registered": self.registered,
            "workers": list(self.workers),
            "counts": {s.value: n for s, n in self.counts.items()},
            "total": sum(self.counts.values()),
            "steps": None if self.graph is None else len(self.graph.nodes),
            "graph": None if self.graph is None else self.graph.to_dict(),
            "choreographed": self.choreographed,
        }


async def workers_page(store: Store, now: float, *, lease_limit: int = _LEASE_LIMIT) -> WorkersPage:
    """The workers alive at *now* with the leases they hold (up to *lease_limit* leases in all)."""
    infos = await store.workers(now)
    leases = await store.leases(now, lease_limit + 1)
    truncated = len(leases) > lease_limit
    leases = leases[:lease_limit]
    by_owner: dict[str, list[Lease]] = {}
    for x in leases:
        by_owner.setdefault(x.owner, []).append(x)
    known = {w.worker_id for w in infos}
    reports = tuple(WorkerReport(w, tuple(by_owner.get(w.worker_id, ()))) for w in infos)
    orphans = tuple(x for x in leases if x.owner not in known)
    return WorkersPage(now, reports, orphans, truncated)


async def definition_infos(
    store: Store, registered: Mapping[tuple[str, int], SagaDefinition], now: float
) -> list[DefinitionInfo]:
    """Every definition registered here or run by an alive worker, with its sagas per status."""
    run_by: dict[tuple[str, int], list[str]] = {}
    for w in await store.workers(now):
        for kind in w.definitions:
            run_by.setdefault(kind, []).append(w.worker_id)
    out = []
    for name, version in sorted(set(registered) | set(run_by)):
        counts = dict.fromkeys(SagaStatus, 0)
        counts.update(await store.count_by_status(SagaQuery(name=name, version=version)))
        defn = registered.get((name, version))
        graph = None if defn is None else definition_graph(defn)
        out.append(
            DefinitionInfo(
                name,
                version,
                defn is not None,
                tuple(run_by.get((name, version), ())),
                counts,
                graph,
                None if defn is None else defn.choreography is not None,
            )
        )
    return out
