"""One masking policy on every surface: one saga full of secrets, read through each way out of sagakit.

The ``leaky`` fixture is that saga (``secret_app``): its data, step results,
errors and history hold passwords, a ``pwd``, ``Authorization`` headers, an
API key, card numbers and IBANs. Every surface (the operations API, ``sagakit
show`` and ``list``, the HTTP API, the endpoints the dashboard reads, ``sagakit
serve``) must show none of them and still show the fields that are not secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from click.testing import CliRunner, Result

from sagakit import SagaEngine, SagaStatus
from sagakit._masking import DEFAULT_MASK_PATTERN, MASK, Masker, iban_valid, luhn_valid
from sagakit.admin import Operations, SagaFilter, create_app
from sagakit.cli._main import cli

from . import secret_app
from .conftest import AUTH, TOKEN, ServedApp, client_for
from .secret_app import SECRETS, VISIBLE

APP = ["--app", "tests.admin.secret_app:leaky"]


@dataclass(frozen=True)
class Leaky:
    url: str
    saga_id: str


async def _seed(url: str) -> str:
    async with SagaEngine(url) as engine:
        engine.register(secret_app.leaky)
        sid = await engine.start("leaky", secret_app.DATA, correlation_id="c-leaky")
        await engine.wait(sid, timeout=10)
        # An operator's reason lands in the history too.
        await engine.retry(sid, reason="customer read card 4111111111111111 on the phone", actor="ops")
        snap = await engine.wait(sid, timeout=10)
        assert snap.status is SagaStatus.FAILED
    return sid


@pytest.fixture
def leaky(store_url: str) -> Leaky:
    """The saga full of secrets, FAILED (its notification step failed after the pivot), retried once."""
    return Leaky(store_url, asyncio.run(_seed(store_url)))


def assert_masked(text: str, visible: tuple[str, ...] = VISIBLE) -> None:
    """No fragment of any secret in *text*; each of *visible* in it."""
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"secrets shown: {leaked}\n{text}"
    missing = [v for v in visible if v not in text]
    assert not missing, f"non-secret fields masked or missing: {missing}\n{text}"


def dump(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    # Wide enough that no table cell is folded: a folded secret would hide from the substring checks.
    return CliRunner(env={"COLUMNS": "1000", **(env or {})}).invoke(cli, list(args), catch_exceptions=False)


def test_the_fixture_really_holds_the_secrets(leaky: Leaky) -> None:
    async def raw() -> str:
        async with SagaEngine(leaky.url) as engine:
            return dump((await engine.get(leaky.saga_id)).to_dict())

    text = asyncio.run(raw())
    # Every fragment is there, but for the card of the error message without its dashes.
    assert [s for s in SECRETS if s not in text] == ["5555555555554444"]


# ---------------------------------------------------------------- the surfaces


async def test_operations_api(leaky: Leaky) -> None:
    async with Operations.for_store(leaky.url, [secret_app.leaky]) as ops:
        snap = await ops.get(leaky.saga_id)
        assert_masked(dump(snap.to_dict()))
        assert snap.data["password"] == snap.data["pwd"] == snap.data["api_key"] == MASK
        assert snap.data["headers"] == {"Authorization": MASK, "Accept": "application/json"}
        assert snap.data["payment"]["number"] == MASK
        assert snap.data["payout_account"] == MASK
        assert snap.steps["charge"].result == {"receipt": "r-9", "amount": 42, "charged": MASK, "refund_to": MASK}
        page = await ops.search(SagaFilter(name="leaky"))
        assert_masked(dump(page.to_dict()), ("leaky", "gateway said"))
        assert_masked(dump((await ops.timeline(leaky.saga_id)).to_dict()), ("gateway said", "on the phone"))
        assert_masked(dump((await ops.graph(leaky.saga_id)).to_dict()), ("gateway said",))
        assert_masked(dump((await ops.overview()).to_dict()), ("gateway said",))
        # A rejected action's reason, and a bulk action's filter, go through the policy too.
        bulk = await ops.bulk("compensate", SagaFilter(data_equals={"password": "hunter2-pw"}), dry_run=True)
        assert [o.saga_id for o in bulk.outcomes] == [leaky.saga_id]
        assert_masked(dump(bulk.to_dict()), ())
        outcomes = await ops.act_many("compensate", [leaky.saga_id])
        assert outcomes[0].code == "not_allowed"
        assert_masked(dump([o.to_dict() for o in outcomes]), ())


def test_cli_show_and_list(leaky: Leaky) -> None:
    outputs = {
        # The table cuts the data at 200 characters.
        "show": (run("show", leaky.saga_id, "--store", leaky.url), ("o-77", "Ada Lovelace", "r-9", "gateway said")),
        "show --json": (run("show", leaky.saga_id, "--store", leaky.url, "--json"), VISIBLE),
        "list": (run("list", "--store", leaky.url), ("leaky", "step 'notify' failed")),  # errors cut at 60
        "list --json": (run("list", "--store", leaky.url, "--json"), VISIBLE),  # lists carry the data
    }
    for name, (r, visible) in outputs.items():
        assert r.exit_code == 0, f"{name}: {r.output}"
        assert_masked(r.output, visible)
    saga = json.loads(outputs["show --json"][0].stdout)
    assert saga["data"]["pwd"] == MASK
    assert "card *** declined" in saga["steps"]["notify"]["error"]
    assert "Authorization: ***" in saga["steps"]["notify"]["error"]
    assert "refund to ***" in saga["steps"]["notify"]["error"]


def test_cli_actions_mask_what_they_print(leaky: Leaky) -> None:
    r = run("compensate", leaky.saga_id, "--store", leaky.url, *APP, "--json")
    assert r.exit_code == 1, r.output
    assert json.loads(r.stdout)["code"] == "not_allowed"
    assert_masked(r.output, ())
    r = run("compensate", "--key", "password=hunter2-pw", "--store", leaky.url, *APP, "--yes")
    assert r.exit_code == 1, r.output
    assert_masked(r.output, ("rejected",))


async def test_http_api(leaky: Leaky) -> None:
    sid = leaky.saga_id
    async with (
        Operations.for_store(leaky.url, [secret_app.leaky]) as ops,
        client_for(create_app(ops, token=TOKEN)) as c,
    ):
        reads = [
            f"/api/sagas/{sid}",
            f"/api/sagas/{sid}/timeline",
            f"/api/sagas/{sid}/graph",
            f"/api/sagas/{sid}/actions",
            "/api/sagas?name=leaky",
            "/api/sagas?key=password=hunter2-pw",
            "/api/overview",
        ]
        for path in reads:
            r = await c.get(path)
            assert r.status_code == 200, (path, r.text)
            assert_masked(r.text, ("gateway said",) if "actions" not in path else ())
        r = await c.get(f"/api/sagas/{sid}")
        assert_masked(r.text)
        assert r.json()["data"]["headers"]["Authorization"] == MASK
        # Errors and outcomes: a rejected action, a bulk action on a secret filter.
        r = await c.post(f"/api/sagas/{sid}/compensate", json={"reason": "pwd=x"}, headers=AUTH)
        assert r.status_code == 409
        assert_masked(r.text, ())
        body = {"filter": {"key": "password=hunter2-pw"}, "dry_run": True}
        r = await c.post("/api/bulk/retry", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["matched"] == 1
        assert_masked(r.text, ())


# The endpoints the dashboard reads, as app.js spells them, and the same request here.
DASHBOARD_CALLS = {
    'api("api/info")': "/api/info",
    'api("api/overview")': "/api/overview",
    "api(`api/sagas?${query.toString()}`)": "/api/sagas?status=failed",
    "api(`api/sagas/${enc}`)": "/api/sagas/{id}",
    "api(`api/sagas/${enc}/graph`)": "/api/sagas/{id}/graph",
    "api(`api/sagas/${enc}/timeline`)": "/api/sagas/{id}/timeline",
    "api(`api/sagas/${enc}/actions`)": "/api/sagas/{id}/actions",
    'api("api/workers")': "/api/workers",
    'api("api/resources")': "/api/resources",
    'api("api/definitions")': "/api/definitions",
    'api("api/schedules")': "/api/schedules",
    'api("api/locks")': "/api/locks",
    "api(`api/locks?saga_id=${enc}`)": "/api/locks?saga_id={id}",
}


def test_show_masks_as_the_http_api_does(leaky: Leaky) -> None:
    """``sagakit show --json`` prints what the dashboard shows: the same masked saga, field for field."""
    r = run("show", leaky.saga_id, "--store", leaky.url, "--json")
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)

    async def from_the_api() -> dict[str, Any]:
        ops = Operations.for_store(leaky.url, [secret_app.leaky])
        async with ops, client_for(create_app(ops, token=TOKEN)) as c:
            return dict((await c.get(f"/api/sagas/{leaky.saga_id}")).json())

    served = asyncio.run(from_the_api())
    served.pop("definition_registered")
    assert shown == served
    assert_masked(r.stdout)
    # The table too, and by an id prefix.
    r = run("show", leaky.saga_id[:-4], "--store", leaky.url)
    assert r.exit_code == 0, r.output
    assert_masked(r.stdout, ("o-77", "r-9", "gateway said"))


def test_dashboard_endpoints(leaky: Leaky) -> None:
    source = (resources.files("sagakit.admin") / "static" / "app.js").read_text()
    reads = set(re.findall(r"""\bapi\((?:"[^"]*"|`[^`]*`)\)""", source))
    assert reads == set(DASHBOARD_CALLS), "the dashboard reads another endpoint: add it to DASHBOARD_CALLS"
    ops = Operations.for_store(leaky.url, [secret_app.leaky])
    with ServedApp(create_app(ops, token=TOKEN)) as served, httpx.Client(base_url=served.url) as c:
        assert c.get("/").status_code == 200
        seen = []
        for path in DASHBOARD_CALLS.values():
            r = c.get(path.format(id=leaky.saga_id))
            assert r.status_code == 200, (path, r.text)
            seen.append(r.text)
        assert_masked("\n".join(seen))


async def test_serve_applies_the_policy_and_its_options(leaky: Leaky, monkeypatch: pytest.MonkeyPatch) -> None:
    apps = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, sockets=None: apps.append(server.config.app))
    monkeypatch.setenv("SAGAKIT_MASK_EXTRA", "^customer$ holder")
    r = run("serve", "--store", leaky.url, "--port", "0")
    assert r.exit_code == 0, r.output
    (app,) = apps
    try:
        # A loopback server accepts only its own names in the Host header.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            r = await c.get(f"/api/sagas/{leaky.saga_id}")
        assert_masked(r.text, ("o-77", "gift wrap"))
        assert "Ada Lovelace" not in r.text
    finally:
        await app.state.ops.close()


async def test_logs_and_traces(store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from sagakit import LoggingObserver
    from sagakit.otel import OpenTelemetryObserver

    caplog.set_level(logging.INFO, logger="sagakit.events")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observers = [LoggingObserver(), OpenTelemetryObserver(provider)]
    async with SagaEngine(store_url, observers=observers) as engine:
        engine.register(secret_app.leaky)
        snap = await engine.wait(await engine.start("leaky", secret_app.DATA), timeout=10)
    assert snap.status is SagaStatus.FAILED
    assert_masked(caplog.text, ("gateway said",))
    statuses = [s.status.description or "" for s in exporter.get_finished_spans()]
    assert_masked("\n".join(statuses), ("gateway said",))


def test_cli_errors_hide_the_password_of_the_store_url() -> None:
    r = run("list", "--store", "postgresql://app:hunter2-pw@127.0.0.1:1/app")  # nothing listens on port 1
    assert r.exit_code == 4
    assert "cannot read store postgresql://app:***@127.0.0.1:1/app" in r.output
    assert_masked(r.output, ())


# ---------------------------------------------------------------- configuring


def test_cli_mask_options(leaky: Leaky) -> None:
    r = run("show", leaky.saga_id, "--store", leaky.url, "--json", "--mask-extra", "note")
    assert json.loads(r.stdout)["data"]["note"] == MASK
    assert_masked(r.output, ("o-77",))
    r = run("show", leaky.saga_id, "--store", leaky.url, "--json", env={"SAGAKIT_MASK_EXTRA": "order_id"})
    assert json.loads(r.stdout)["data"]["order_id"] == MASK
    # --mask replaces the key patterns; the values that look like secrets stay masked.
    r = run("show", leaky.saga_id, "--store", leaky.url, "--json", "--mask", "^note$")
    data = json.loads(r.stdout)["data"]
    assert (data["note"], data["pwd"], data["payment"]["number"]) == (MASK, "pwd-s3cr3t", MASK)
    # '' shows the raw values, for an operator who needs them.
    r = run("show", leaky.saga_id, "--store", leaky.url, "--json", "--mask", "")
    assert json.loads(r.stdout)["data"] == secret_app.DATA
    r = run("list", "--store", leaky.url, "--mask-extra", "(")
    assert r.exit_code == 2
    assert "bad mask pattern '('" in r.output


async def test_operations_mask_extra(leaky: Leaky) -> None:
    async with Operations.for_store(leaky.url, mask_extra=["^note$"]) as ops:
        data = (await ops.get(leaky.saga_id)).data
        assert (data["note"], data["password"], data["order_id"]) == (MASK, MASK, "o-77")
    async with Operations.for_store(leaky.url, mask=Masker(None, values=True)) as ops:
        data = (await ops.get(leaky.saga_id)).data
        assert (data["password"], data["payment"]["number"]) == ("hunter2-pw", MASK)


# ---------------------------------------------------------------- the policy


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("card 4111 1111 1111 1111 expires", "card *** expires"),
        ("card 4111-1111-1111-1111.", "card ***."),
        ("Amex 3782 822463 10005 ok", "Amex *** ok"),
        ("paid with 5555555555554444 in 2026", "paid with *** in 2026"),
        ("4111 1111 1111 1111 2026", "*** 2026"),  # a card number followed by a year
        ("qty 3 4111111111111111", "qty 3 ***"),  # … and after a quantity
        ("cards 4111111111111111 5555-5555-5555-4444 2", "cards *** *** 2"),  # two in one run
        ("IBAN GB82 WEST 1234 5698 7654 32 DE89370400440532013000", "IBAN *** ***"),
        ("IBAN DE89 3704 0044 0532 0130 00, thanks", "IBAN ***, thanks"),
        ("to GB82WEST12345698765432 NOW", "to *** NOW"),
        ("Authorization: Bearer abc.def-123456", "Authorization: ***"),
        ("sent bearer abcdef123456 twice", "sent bearer *** twice"),
        ("header authorization=Basic QWxhZGRpbg==", "header authorization=***"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig-nature", "jwt ***"),
        ("keys sk_live_4eC39HqLyjWDarjtT1zdp7dc AKIAIOSFODNN7EXAMPLE", "keys *** ***"),
        ("dsn postgresql://app:hunter2@db:5432/app", "dsn postgresql://app:***@db:5432/app"),
        ('{"pwd": "a b", "amount": 3}', '{"pwd": "***", "amount": 3}'),
        ("user_password: x, client_secret='y' API-KEY=z", "user_password: ***, client_secret='***' API-KEY=***"),
    ],
)
def test_masked_in_text(text: str, masked: str) -> None:
    assert Masker().text(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "created 1765000000000 ms",  # a timestamp: starts with 1, not an issuer's digit
        "card 4111 1111 1111 1112 fails the Luhn check",
        "order 2026-12-07 12:00, qty 3 of 40",
        "IBAN-like DE00370400440532013000 with bad check digits",
        "sha 9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        "scores 3 4 5 6 7 8 9 0 1 2 3 4 5 6",  # 14 digits that pass the Luhn check, but no card's groups
        "the bearer of bad news",
        "author: Ada, token count 5",
    ],
)
def test_not_masked_in_text(text: str) -> None:
    assert Masker().text(text) == text


def test_structured_values() -> None:
    m = Masker()
    value = {
        "Password": "p",
        "nested": [{"api_key": 1, "apiKey": 2, "X-Api-Key": 3, "ok": "x"}],
        "Proxy-Authorization": "Basic x",
        "Set-Cookie": "s=1",
        "session_id": "abc",
        "headers": [("Authorization", "Basic abc"), ("Accept", "*/*")],
        "n": 4111111111111111,
        "count": 6011000000000000,  # an integer that fails the Luhn check
        "at": 1765000000000,
        "flag": True,
    }
    assert m.value(value) == {
        "Password": MASK,
        "nested": [{"api_key": MASK, "apiKey": MASK, "X-Api-Key": MASK, "ok": "x"}],
        "Proxy-Authorization": MASK,
        "Set-Cookie": MASK,
        "session_id": MASK,
        "headers": [["Authorization", MASK], ["Accept", "*/*"]],
        "n": MASK,
        "count": 6011000000000000,
        "at": 1765000000000,
        "flag": True,
    }


def test_policy_configuration() -> None:
    assert Masker(extra="^ssn$").value({"ssn": "1", "ssn_note": "2", "pwd": "3"}) == {
        "ssn": MASK,
        "ssn_note": "2",
        "pwd": MASK,
    }
    assert (
        Masker(extra=["routing", "sort_code"]).text("routing=123 sort_code: 40-00")
        == f"routing={MASK} sort_code: {MASK}"
    )
    nothing = Masker(None)
    assert not nothing.active
    assert nothing.value({"password": "p", "n": 4111111111111111}) == {"password": "p", "n": 4111111111111111}
    assert Masker(None, values=True).value({"password": "p", "n": "4111111111111111"}) == {"password": "p", "n": MASK}
    assert Masker("^only$", values=False).text("card 4111111111111111 only=1") == f"card 4111111111111111 only={MASK}"
    with pytest.raises(ValueError, match=r"bad mask pattern '\(': .*give a Python regular expression"):
        Masker(extra="(")
    assert "pwd" in DEFAULT_MASK_PATTERN


def test_checks() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000")
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("GB83WEST12345698765432")
    assert not iban_valid("ZZ89370400440532013000")
