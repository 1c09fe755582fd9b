"""The HTTP API of the workers and definitions pages, bulk actions on chosen ids, the app under a prefix,
and id prefixes in the operations API."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from sagakit import SagaBuilder, SagaEngine, SagaNotFound, StepContext
from sagakit.admin import AmbiguousSagaId, Operations, create_app

from . import sample_app
from .conftest import AUTH, TOKEN, Seed, client_for


async def noop(ctx: StepContext) -> None:
    return None


def _definition(name: str, version: int) -> Any:
    b = SagaBuilder(name, version=version)
    b.step("send", noop)
    return b.build()


invoice = _definition("invoice", 2)


async def _start(url: str, definition: Any) -> str:
    """A saga of *definition*, started by an engine that runs no worker."""
    engine = SagaEngine(url)
    engine.register(definition)
    try:
        return await engine.start(definition.name, {})
    finally:
        await engine.close()


@pytest.fixture
async def worker(seed: Seed) -> AsyncIterator[SagaEngine]:
    """A running engine (a worker) on the seeded store, running ``order`` and ``invoice``."""
    engine = SagaEngine(seed.url)
    engine.register(sample_app.order, invoice)
    await engine.run()
    try:
        yield engine
    finally:
        await engine.close()


async def test_workers_lists_alive_workers_their_heartbeat_and_leases(
    client: httpx.AsyncClient, ops: Operations, seed: Seed
) -> None:
    r = await client.get("/api/workers")
    assert r.status_code == 200
    assert r.json()["workers"] == []  # nothing runs yet
    engine = SagaEngine(seed.url)
    engine.register(sample_app.order, invoice)
    await engine.run()
    try:
        # A lease held by a worker that is not in the registry (one that stopped answering),
        # on a saga of a definition the running worker does not have.
        parked = await _start(seed.url, _definition("parked", 1))
        now = ops.now()
        assert await ops.engine.store.claim_saga(parked, "gone-worker", now, now + 60) is not None
        body = (await client.get("/api/workers")).json()
        (w,) = body["workers"]
        assert w["worker_id"] == engine.worker_id
        assert w["definitions"] == [{"name": "invoice", "version": 2}, {"name": "order", "version": 1}]
        assert w["last_heartbeat"] is not None and w["last_heartbeat"] <= body["now"]
        assert 0 <= w["heartbeat_age"] < 30
        assert w["alive_until"] > body["now"]
        # It may be running the seeded pending saga; it holds nothing else.
        assert {x["saga_id"] for x in w["leases"]} <= set(seed.pending)
        assert all(x["owner"] == engine.worker_id for x in w["leases"])
        (orphan,) = body["orphan_leases"]
        assert orphan["saga_id"] == parked
        assert (orphan["owner"], orphan["name"], orphan["version"]) == ("gone-worker", "parked", 1)
        assert 0 < orphan["expires_in"] <= 60
        assert body["leases_truncated"] is False
    finally:
        await engine.close()
    # A worker that stops leaves the registry.
    assert (await client.get("/api/workers")).json()["workers"] == []


async def test_definitions_lists_registered_and_running_ones_with_counts(
    client: httpx.AsyncClient, seed: Seed, worker: SagaEngine
) -> None:
    r = await client.get("/api/definitions")
    assert r.status_code == 200
    defs = {(d["name"], d["version"]): d for d in r.json()["definitions"]}
    assert list(defs) == [("invoice", 2), ("order", 1)]
    order = defs["order", 1]
    assert order["registered"] is True
    assert order["workers"] == [worker.worker_id]
    assert order["total"] == len(seed.all)
    assert order["counts"]["failed"] == 2 and order["counts"]["compensated"] == 1
    assert order["steps"] == 4
    assert {n["name"]: n["after"] for n in order["graph"]["nodes"]} == {
        "reserve": [], "check_fraud": [], "charge": ["reserve", "check_fraud"], "ship": ["charge"],
    }  # fmt: skip
    assert {n["state"] for n in order["graph"]["nodes"]} == {"remaining"}
    # Run by a worker but not registered with this server: no graph, no actions, still counted.
    other = defs["invoice", 2]
    assert (other["registered"], other["graph"], other["steps"]) == (False, None, None)
    assert other["workers"] == [worker.worker_id]
    assert other["total"] == 0


async def test_bulk_on_chosen_ids(client: httpx.AsyncClient, seed: Seed) -> None:
    ids = [*seed.failed, seed.completed[0], "no-such-saga", seed.failed[0]]
    r = await client.post("/api/bulk/retry", json={"ids": ids, "dry_run": True}, headers=AUTH)
    assert r.status_code == 200
    dry = r.json()
    assert (dry["matched"], dry["acted_on"], dry["dry_run"]) == (4, 0, True)  # duplicates once
    assert [o["outcome"] for o in dry["outcomes"]] == ["matched"] * 4
    assert (await client.get(f"/api/sagas/{seed.failed[0]}")).json()["status"] == "failed"

    body = {"ids": ids, "reason": "carrier is back", "actor": "ann"}
    r = await client.post("/api/bulk/retry", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["filter"], out["matched"], out["ok"], out["rejected"]) == ("4 selected saga(s)", 4, 2, 2)
    codes = {o["saga_id"]: o.get("code") for o in out["outcomes"]}
    assert codes == {seed.failed[0]: None, seed.failed[1]: None, seed.completed[0]: "not_allowed",
                     "no-such-saga": "not_found"}  # fmt: skip
    timeline = (await client.get(f"/api/sagas/{seed.failed[1]}/timeline")).json()
    assert [(a["action"], a["actor"], a["reason"]) for a in timeline["admin_actions"]] == [
        ("retry", "ann", "carrier is back")
    ]
    # Actions need the token, as every action does.
    r = await client.post("/api/bulk/abort", json={"ids": [seed.pending[0]]})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"ids": []}, "give a list of 1 to 1000 saga ids"),
        ({"ids": "abc"}, "give a list of 1 to 1000 saga ids"),
        ({"ids": ["x"] * 1001}, "give a list of 1 to 1000 saga ids"),
        ({"ids": ["ok", 7]}, "each id must be a non-empty string"),
        ({"ids": [""]}, "each id must be a non-empty string"),
        ({"ids": ["a"], "filter": {"status": "failed"}}, "give ids or a filter, not both"),
        ({"ids": ["a"], "dry_run": "yes"}, "must be true or false"),
    ],
)
async def test_bulk_ids_bad_requests_are_400(client: httpx.AsyncClient, body: dict[str, Any], problem: str) -> None:
    r = await client.post("/api/bulk/abort", json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert problem in r.json()["error"]["message"]


async def test_the_app_under_a_prefix(ops: Operations, seed: Seed) -> None:
    outer = Starlette(routes=[Mount("/sagas", app=create_app(ops, token=TOKEN))])
    async with client_for(outer) as c:
        r = await c.get("/sagas")
        assert r.status_code in (307, 308)
        assert r.headers["location"] == "http://testserver/sagas/"
        r = await c.get("/sagas/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        for url in re.findall(r'(?:src|href)="([^"#]+)"', r.text):
            assert not url.startswith("/"), url  # relative: resolved under /sagas/
            assert (await c.get(f"/sagas/{url}")).status_code == 200, url
        r = await c.get("/sagas/api/sagas?status=failed")
        assert r.status_code == 200
        assert {s["id"] for s in r.json()["items"]} == set(seed.failed)
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-frame-options"] == "DENY"
        r = await c.post(f"/sagas/api/sagas/{seed.failed[0]}/abort", json={"reason": "r"}, headers=AUTH)
        assert (r.status_code, r.json()["status"]) == (200, "aborted")
        r = await c.get("/sagas/api/nope")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
        assert (await c.get("/sagas/static/app.js")).headers["cache-control"] == "no-cache"  # not the API's
        assert (await c.get("/")).status_code == 404  # nothing leaks out of the mount


async def test_resolve_takes_the_id_or_a_unique_prefix(ops: Operations, seed: Seed) -> None:
    one = seed.failed[0]
    assert await ops.resolve(one) == one
    # The shortest prefix that only this id has, and every longer one.
    others = [i for i in seed.all if i != one]
    n = next(k for k in range(1, len(one) + 1) if not any(o.startswith(one[:k]) for o in others))
    for k in (n, n + 3, len(one) - 1):
        assert await ops.resolve(one[:k]) == one
    # Ids made in the same millisecond share their first 12 digits: a short prefix is ambiguous.
    shared = one[:4]
    matching = sorted(i for i in seed.all if i.startswith(shared))
    assert len(matching) > 1
    with pytest.raises(AmbiguousSagaId) as caught:
        await ops.resolve(shared)
    assert sorted(caught.value.candidates) == matching
    assert caught.value.total == len(matching)
    assert f"{len(matching)} sagas' ids start with it" in str(caught.value)
    assert caught.value.parameter == "saga_id"
    with pytest.raises(AmbiguousSagaId, match=r"and \d+ more"):
        await ops.resolve(shared, shown=1)
    with pytest.raises(SagaNotFound):
        await ops.resolve("zz-no-such")
