"""The HTTP API: every endpoint, every error answer, access control and security headers."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from sagakit import SagaStatus, StoreError
from sagakit.admin import AccessDenied, AuthInput, Operations, create_app
from sagakit.admin._openapi import openapi_document

from . import sample_app
from .conftest import AUTH, TOKEN, Seed, client_for


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    assert err["code"]
    assert err["message"]
    return err


# ---------------------------------------------------------------- reads


async def test_info(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/info")
    assert r.status_code == 200
    assert r.json() == {
        "version": "0.1.0",
        "read_only": False,
        "actions_enabled": True,
        "auth": "bearer",
        "private": False,
        "definitions": [{"name": "order", "version": 1}],
        "actions": ["retry", "skip", "compensate", "abort", "fork"],
    }


async def test_overview(client: httpx.AsyncClient, seed: Seed) -> None:
    r = await client.get("/api/overview", params={"window": 300, "bucket": 60, "stuck": 30})
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 6
    assert body["counts"]["failed"] == 2
    assert len(body["throughput"]) == 5
    assert {s["id"] for s in body["stuck"]["items"]} == set(seed.failed)
    assert body["stuck_for"] == 30


async def test_counts(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/counts", params={"status": ["failed", "completed"]})
    assert r.status_code == 200
    assert r.json()["total"] == 4
    assert r.json()["counts"]["failed"] == 2


async def test_search_with_filters_and_paging(client: httpx.AsyncClient, seed: Seed) -> None:
    r = await client.get("/api/sagas", params={"status": "failed"})
    assert r.status_code == 200
    page = r.json()
    assert page["total"] == 2
    assert {s["id"] for s in page["items"]} == set(seed.failed)
    item = page["items"][0]
    assert item["status"] == "failed"
    assert item["steps_total"] == 4
    assert "data" not in item  # lists carry no payloads
    r = await client.get("/api/sagas", params={"key": "order_id=bad-1", "name": "order", "version": 1})
    assert [s["id"] for s in r.json()["items"]] == [seed.failed[1]]
    r = await client.get("/api/sagas", params={"status": "failed,completed", "limit": 3, "offset": 1})
    assert (r.json()["total"], len(r.json()["items"]), r.json()["offset"]) == (4, 3, 1)
    r = await client.get("/api/sagas", params={"stuck": 60})
    assert {s["id"] for s in r.json()["items"]} == set(seed.failed)
    r = await client.get("/api/sagas", params={"created_after": "2000-01-01T00:00:00Z", "updated_before": "2100-01-01"})
    assert r.json()["total"] == 6


async def test_saga_timeline_graph_and_allowed_actions(client: httpx.AsyncClient, seed: Seed) -> None:
    sid = seed.failed[0]
    r = await client.get(f"/api/sagas/{sid}")
    assert r.status_code == 200
    saga = r.json()
    assert saga["id"] == sid
    assert saga["status"] == "failed"
    assert saga["definition_registered"] is True
    assert saga["data"]["password"] == "***"
    assert saga["steps"]["charge"]["result"]["card_token"] == "***"
    assert "hunter2" not in r.text
    assert "4111" not in r.text
    assert any(h["kind"] == "step_failed" for h in saga["history"])

    t = (await client.get(f"/api/sagas/{sid}/timeline")).json()
    ship = [a for a in t["attempts"] if a["step"] == "ship"]
    assert ship[0]["outcome"] == "failed"
    assert ship[0]["duration"] is not None
    assert "password=***" in ship[0]["error"]

    g = (await client.get(f"/api/sagas/{sid}/graph")).json()
    assert {n["name"]: n["state"] for n in g["nodes"]}["ship"] == "failed"
    assert {"from": "charge", "to": "ship"} in g["edges"]

    a = (await client.get(f"/api/sagas/{sid}/actions")).json()
    assert a["saga_id"] == sid
    assert a["retry"]["allowed"] is True
    assert a["compensate"]["allowed"] is False
    assert a["skip"]["steps"] == ["ship"]


async def test_dashboard_page_and_assets(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    # No inline script or style (the CSP forbids them), nothing from another origin.
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
    assert " style=" not in html
    assert "<style" not in html
    # Relative URLs only, so that the app works mounted under a prefix.
    assert re.findall(r"(?:src|href)=\"(?!static/|#)", html) == []
    for name, media in (("app.js", "text/javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        r = await client.get(f"/static/{name}")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith(media)
        assert "http://" not in r.text.replace("http://www.w3.org", "")
        assert "https://" not in r.text
    r = await client.get("/static/index.html")
    assert r.status_code == 404
    r = await client.get("/static/..%2F_app.py")
    assert r.status_code == 404


# ---------------------------------------------------------------- errors of reads


@pytest.mark.parametrize("suffix", ["", "/timeline", "/graph", "/actions"])
async def test_unknown_saga_is_404(client: httpx.AsyncClient, suffix: str) -> None:
    r = await client.get(f"/api/sagas/no-such-saga{suffix}")
    assert r.status_code == 404
    assert error_of(r) == {"code": "not_found", "message": "no saga with id 'no-such-saga'"}


@pytest.mark.parametrize(
    ("path", "params", "parameter", "value"),
    [
        ("/api/sagas", {"status": "bogus"}, "status", "bogus"),
        ("/api/sagas", {"version": "one"}, "version", "one"),
        ("/api/sagas", {"key": "order_id"}, "key", "order_id"),
        ("/api/sagas", {"created_after": "yesterday"}, "created_after", "yesterday"),
        ("/api/sagas", {"updated_before": "inf"}, "updated_before", "inf"),
        ("/api/sagas", {"stuck": "-5"}, "stuck", "-5"),
        ("/api/sagas", {"limit": "0"}, "limit", "0"),
        ("/api/sagas", {"limit": "5000"}, "limit", "5000"),
        ("/api/sagas", {"offset": "x"}, "offset", "x"),
        ("/api/counts", {"status": "running,bogus"}, "status", "bogus"),
        ("/api/overview", {"bucket": "0"}, "bucket", "0"),
        ("/api/overview", {"window": "abc"}, "window", "abc"),
    ],
)
async def test_bad_filters_are_400_naming_parameter_and_value(
    client: httpx.AsyncClient, path: str, params: dict[str, str], parameter: str, value: str
) -> None:
    r = await client.get(path, params=params)
    assert r.status_code == 400
    err = error_of(r)
    assert err["code"] == "bad_parameter"
    assert (err["parameter"], err["value"]) == (parameter, value)
    assert parameter in err["message"]
    assert value in err["message"]


async def test_unknown_path_and_method_are_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/nothing")
    assert r.status_code == 404
    assert error_of(r)["code"] == "not_found"
    r = await client.delete("/api/sagas")
    assert r.status_code == 405
    assert error_of(r)["code"] == "method_not_allowed"


# ---------------------------------------------------------------- actions


async def test_retry_skip_compensate_abort_fork(client: httpx.AsyncClient, seed: Seed, ops: Operations) -> None:
    r = await client.post(f"/api/sagas/{seed.failed[0]}/retry", json={"reason": "carrier back", "actor": "alice"},
                          headers=AUTH)  # fmt: skip
    assert r.status_code == 200
    assert r.json() == {"saga_id": seed.failed[0], "action": "retry", "outcome": "ok", "status": "running"}
    (retry,) = [h for h in (await ops.get(seed.failed[0])).history if h.kind == "retry"]
    assert retry.message.endswith("by alice: carrier back")

    r = await client.post(f"/api/sagas/{seed.failed[1]}/skip", json={"step": "ship", "result": {"t": 1}}, headers=AUTH)
    assert r.status_code == 200
    assert r.json()["outcome"] == "ok"
    assert (await ops.get(seed.failed[1])).steps["ship"].result == {"t": 1}

    r = await client.post(f"/api/sagas/{seed.pending[0]}/compensate", json={}, headers=AUTH)
    assert r.status_code == 200
    r = await client.post(f"/api/sagas/{seed.completed[0]}/fork", json={"from_step": "ship", "reason": "resend"},
                          headers=AUTH)  # fmt: skip
    assert r.status_code == 200
    new_id = r.json()["new_id"]
    assert (await ops.get(new_id)).name == "order"
    r = await client.post(f"/api/sagas/{new_id}/abort", json={"reason": "duplicate"}, headers=AUTH)
    assert r.status_code == 200
    assert r.json()["status"] == "aborted"
    # Without an actor in the body, the history says the action came over HTTP.
    assert (await ops.get(new_id)).history[-1].message == "aborted by http: duplicate"


async def test_action_not_allowed_is_409_with_the_machines_reason(client: httpx.AsyncClient, seed: Seed) -> None:
    r = await client.post(f"/api/sagas/{seed.completed[0]}/retry", json={}, headers=AUTH)
    assert r.status_code == 409
    err = error_of(r)
    assert err["code"] == "not_allowed"
    assert err["reason"] == "saga is completed: only a failed saga or a waiting step can be retried"
    r = await client.post(f"/api/sagas/{seed.failed[0]}/compensate", json={}, headers=AUTH)
    assert r.status_code == 409
    assert error_of(r)["reason"] == "saga is failed: only a pending or running saga can be compensated"
    r = await client.post(f"/api/sagas/{seed.failed[0]}/skip", json={"step": "charge"}, headers=AUTH)
    assert r.status_code == 409
    assert "only a waiting or failed step can be skipped" in error_of(r)["reason"]


async def test_action_without_the_definition_is_409(seed: Seed) -> None:
    async with Operations.for_store(seed.url) as bare, client_for(create_app(bare, token=TOKEN)) as c:
        r = await c.post(f"/api/sagas/{seed.failed[0]}/retry", json={}, headers=AUTH)
        assert r.status_code == 409
        err = error_of(r)
        assert err["code"] == "definition_missing"
        assert "not registered" in err["reason"]


async def test_action_errors(client: httpx.AsyncClient, seed: Seed) -> None:
    sid = seed.failed[0]
    r = await client.post("/api/sagas/no-such-saga/retry", json={}, headers=AUTH)
    assert r.status_code == 404
    r = await client.post(f"/api/sagas/{sid}/skip", json={}, headers=AUTH)
    assert (r.status_code, error_of(r)["parameter"]) == (400, "step")
    r = await client.post(f"/api/sagas/{sid}/fork", json={"from_step": 3}, headers=AUTH)
    assert (r.status_code, error_of(r)["parameter"]) == (400, "from_step")
    r = await client.post(f"/api/sagas/{sid}/retry", json={"reason": "x" * 2000}, headers=AUTH)
    assert (r.status_code, error_of(r)["parameter"]) == (400, "reason")
    r = await client.post(
        f"/api/sagas/{sid}/retry", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
    )
    assert (r.status_code, error_of(r)["parameter"]) == (400, "body")
    r = await client.post(f"/api/sagas/{sid}/retry", json=[1, 2], headers=AUTH)
    assert (r.status_code, error_of(r)["parameter"]) == (400, "body")
    r = await client.post(f"/api/sagas/{sid}/retry", content=b"x" * (1 << 20 + 1),
                          headers={**AUTH, "content-type": "application/json"})  # fmt: skip
    assert (r.status_code, error_of(r)["code"]) == (413, "too_large")


async def test_csrf_safe_only_json_bodies_with_the_bearer_header(client: httpx.AsyncClient, seed: Seed) -> None:
    """A cross-site form (urlencoded or multipart, no custom header) can never act."""
    sid = seed.failed[0]
    r = await client.post(f"/api/sagas/{sid}/retry", data={"reason": "csrf"}, headers=AUTH)
    assert (r.status_code, error_of(r)["code"]) == (415, "unsupported_media_type")
    r = await client.post(f"/api/sagas/{sid}/retry", content=b"{}", headers={**AUTH, "content-type": "text/plain"})
    assert r.status_code == 415
    # A cookie is no credential.
    r = await client.post(f"/api/sagas/{sid}/retry", json={}, headers={"cookie": f"token={TOKEN}"})
    assert r.status_code == 401
    assert "access-control-allow-origin" not in r.headers


async def test_bulk(client: httpx.AsyncClient, seed: Seed) -> None:
    r = await client.post("/api/bulk/abort", json={"filter": {"status": ["failed", "completed"]}, "dry_run": True},
                          headers=AUTH)  # fmt: skip
    assert r.status_code == 200
    assert (r.json()["matched"], r.json()["acted_on"], r.json()["dry_run"]) == (4, 0, True)
    r = await client.post(
        "/api/bulk/abort", json={"filter": {"status": "failed,completed"}, "reason": "cleanup"}, headers=AUTH
    )
    body = r.json()
    assert (body["matched"], body["ok"], body["rejected"]) == (4, 2, 2)
    rejected = [o for o in body["outcomes"] if o["outcome"] == "rejected"]
    assert {o["saga_id"] for o in rejected} == set(seed.completed)
    assert rejected[0]["reason"] == "saga is completed: it has already finished"
    r = await client.post("/api/bulk/retry", json={"filter": {"key": ["order_id=later"]}}, headers=AUTH)
    assert r.json()["matched"] == 1


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        ({}, "filter"),
        ({"filter": {}}, "filter"),
        ({"filter": {"colour": "red"}}, "filter.colour"),
        ({"filter": {"status": "bogus"}}, "status"),
        ({"filter": {"name": {"a": 1}}}, "filter.name"),
        ({"filter": {"name": "x"}, "limit": 0}, "limit"),
        ({"filter": {"name": "x"}, "dry_run": "yes"}, "dry_run"),
    ],
)
async def test_bulk_bad_requests_are_400(client: httpx.AsyncClient, body: dict[str, Any], parameter: str) -> None:
    r = await client.post("/api/bulk/abort", json=body, headers=AUTH)
    assert r.status_code == 400
    assert error_of(r)["parameter"] == parameter


async def test_bulk_unknown_action_is_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/bulk/explode", json={"filter": {"name": "x"}}, headers=AUTH)
    assert r.status_code == 404


# ---------------------------------------------------------------- access control


async def test_missing_token_is_401_and_wrong_token_403(client: httpx.AsyncClient, seed: Seed) -> None:
    sid = seed.failed[0]
    r = await client.post(f"/api/sagas/{sid}/retry", json={})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert error_of(r)["code"] == "unauthorized"
    r = await client.post(f"/api/sagas/{sid}/retry", json={}, headers={"Authorization": "Bearer wrong"})
    assert (r.status_code, error_of(r)["code"]) == (403, "forbidden")
    r = await client.post(f"/api/sagas/{sid}/retry", json={}, headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status_code == 401
    r = await client.post("/api/bulk/abort", json={"filter": {"status": "failed"}})
    assert r.status_code == 401
    assert (await client.get(f"/api/sagas/{sid}")).json()["status"] == "failed"  # nothing happened
    # Reads are open.
    assert (await client.get(f"/api/sagas/{sid}")).status_code == 200


async def test_read_only_refuses_actions_with_403(ops: Operations, seed: Seed) -> None:
    async with client_for(create_app(ops, token=TOKEN, read_only=True)) as c:
        r = await c.post(f"/api/sagas/{seed.failed[0]}/retry", json={}, headers=AUTH)
        assert (r.status_code, error_of(r)["code"]) == (403, "read_only")
        r = await c.post("/api/bulk/abort", json={"filter": {"status": "failed"}}, headers=AUTH)
        assert r.status_code == 403
        assert (await c.get("/api/info")).json()["read_only"] is True
        assert (await c.get(f"/api/sagas/{seed.failed[0]}")).status_code == 200


async def test_without_a_token_actions_are_disabled(ops: Operations, seed: Seed) -> None:
    async with client_for(create_app(ops)) as c:
        r = await c.post(f"/api/sagas/{seed.failed[0]}/retry", json={}, headers=AUTH)
        assert (r.status_code, error_of(r)["code"]) == (403, "actions_disabled")
        assert (await c.get("/api/info")).json()["actions_enabled"] is False


async def test_private_server_needs_the_token_for_reads(ops: Operations, seed: Seed) -> None:
    async with client_for(create_app(ops, token=TOKEN, private=True)) as c:
        assert (await c.get("/api/sagas")).status_code == 401
        assert (await c.get("/api/sagas", headers={"Authorization": "Bearer nope"})).status_code == 403
        assert (await c.get("/api/sagas", headers=AUTH)).status_code == 200


async def test_auth_hook_decides_and_names_the_actor(ops: Operations, seed: Seed) -> None:
    seen: list[AuthInput] = []

    async def hook(request: AuthInput) -> str | None:
        seen.append(request)
        if request.token == "alice-key":
            return "alice"
        if request.token == "mallory-key":
            raise AccessDenied("mallory may not act")
        return None if request.mutating else "anonymous"

    async with client_for(create_app(ops, auth=hook)) as c:
        assert (await c.get("/api/sagas")).status_code == 200
        assert seen[-1].mutating is False
        r = await c.post(f"/api/sagas/{seed.failed[0]}/abort", json={"actor": "someone-else"})
        assert r.status_code == 401
        r = await c.post(f"/api/sagas/{seed.failed[0]}/abort", json={}, headers={"Authorization": "Bearer mallory-key"})
        assert (r.status_code, error_of(r)["message"]) == (403, "mallory may not act")
        r = await c.post(
            f"/api/sagas/{seed.failed[0]}/abort",
            json={"actor": "someone-else", "reason": "fraud"},
            headers={"Authorization": "Bearer alice-key"},
        )
        assert r.status_code == 200
        assert seen[-1].mutating is True
        assert seen[-1].path == f"/api/sagas/{seed.failed[0]}/abort"
        # The hook's identity is the actor; the body cannot claim another.
        assert (await ops.get(seed.failed[0])).history[-1].message == "aborted by alice: fraud"
        assert (await c.get("/api/info")).json()["auth"] == "hook"


async def test_security_headers_on_every_response(client: httpx.AsyncClient) -> None:
    for path in ("/", "/api/info", "/static/app.js", "/api/nothing", "/openapi.json"):
        r = await client.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    assert (await client.get("/api/info")).headers["cache-control"] == "no-store"


async def test_allowed_hosts_guard_against_dns_rebinding(ops: Operations) -> None:
    async with client_for(create_app(ops, allowed_hosts=["127.0.0.1", "localhost"])) as c:
        assert (await c.get("/api/info", headers={"host": "127.0.0.1:8080"})).status_code == 200
        assert (await c.get("/api/info", headers={"host": "evil.example"})).status_code == 400


# ---------------------------------------------------------------- no stack traces, no secrets


async def test_internal_errors_carry_no_stack_trace_or_secret(
    ops: Operations, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("db password is hunter2")

    monkeypatch.setattr(ops, "search", boom)
    async with client_for(create_app(ops, token=TOKEN)) as c:
        r = await c.get("/api/sagas")
    assert r.status_code == 500
    assert error_of(r) == {"code": "internal", "message": "internal error; see the server log"}
    assert "hunter2" not in r.text
    assert "Traceback" not in r.text
    assert "hunter2" in caplog.text  # the operator finds it in the log


async def test_store_errors_are_503(ops: Operations, monkeypatch: pytest.MonkeyPatch) -> None:
    async def down(*args: object, **kwargs: object) -> None:
        raise StoreError("PostgreSQL store postgresql://app@db/x: connecting failed")

    monkeypatch.setattr(ops, "counts", down)
    async with client_for(create_app(ops, token=TOKEN)) as c:
        r = await c.get("/api/counts")
    assert (r.status_code, error_of(r)["code"]) == (503, "store_unavailable")
    assert "postgresql://" not in r.text


# ---------------------------------------------------------------- OpenAPI


async def test_openapi_document_describes_every_route(client: httpx.AsyncClient, ops: Operations) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc == openapi_document("0.1.0")
    assert doc["openapi"].startswith("3.1")
    app = create_app(ops, token=TOKEN)
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or ())
        if method != "HEAD"
    }
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert served == documented
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["operationId"], (path, method)
            assert "200" in op["responses"], (path, method)
            for name in re.findall(r"{(\w+)}", path):
                assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"]), (path, name)
            if method == "post":
                assert op["requestBody"]["required"] is True
                assert {"400", "401", "403", "404", "413", "415"} <= set(op["responses"])
    assert {p["name"] for p in doc["paths"]["/api/sagas"]["get"]["parameters"]} == {
        "status", "name", "version", "correlation_id", "key", "created_after", "created_before",
        "updated_after", "updated_before", "stuck", "limit", "offset",
    }  # fmt: skip
    assert set(doc["components"]["schemas"]["Counts"]["properties"]) == {s.value for s in SagaStatus}


def test_sample_app_shape() -> None:
    assert [s.name for s in sample_app.order.steps] == ["reserve", "check_fraud", "charge", "ship"]


async def test_a_participant_fault_shows_in_the_sagas_history_and_timeline(store_url: str) -> None:
    from functools import partial

    from sagakit.transports.memory import MemoryBroker, MemoryTransport
    from tests.messaging.mixed import Order, _run

    name = "mixed_fault_dashboard"
    snap, *_ = await _run(store_url, partial(MemoryTransport, MemoryBroker()), Order(customer="broken", amount=5), name)
    o = Operations.for_store(store_url, [])
    async with o, client_for(create_app(o, token=TOKEN)) as c:
        saga = (await c.get(f"/api/sagas/{snap.id}")).json()
        timeline = (await c.get(f"/api/sagas/{snap.id}/timeline")).json()
    assert saga["status"] == "compensated"
    faults = [h for h in saga["history"] if h["kind"] == "fault"]
    assert [(h["step"], h["attempt"]) for h in faults] == [("reserve_credit", 1), ("reserve_credit", 2)]
    assert all("participant fault: ConnectionError: credit database unreachable" in h["message"] for h in faults)
    # The timeline the dashboard draws: each faulted attempt failed with the fault, and the fault events.
    tried = [(a["attempt"], a["outcome"], a["error"]) for a in timeline["attempts"]
             if a["step"] == "reserve_credit" and a["direction"] == "action"]  # fmt: skip
    why = "participant fault: ConnectionError: credit database unreachable"
    assert tried == [(1, "failed", why), (2, "failed", why)]
    assert [e["attempt"] for e in timeline["events"] if e["kind"] == "fault"] == [1, 2]
    # The failed attempts carry the handler's traceback, as the participant sent it.
    failed = [h for h in saga["history"] if h["kind"] == "step_failed" and h["step"] == "reserve_credit"]
    assert len(failed) == 2
    assert all("ConnectionError: credit database unreachable" in (h["traceback"] or "") for h in failed)
