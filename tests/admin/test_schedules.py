"""Schedules in the operations API, over HTTP and in the CLI: recurring starts and sagas waiting to begin."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from sagakit import SagaBuilder, SagaEngine, StepContext
from sagakit.admin import Operations, create_app
from sagakit.cli._main import cli

from .conftest import AUTH, TOKEN, client_for


async def remind(ctx: StepContext) -> None:
    return None


def _reminder() -> object:
    b = SagaBuilder("reminder")
    b.step("remind", remind)
    return b.build()


reminder = _reminder()


async def _fill(url: str) -> tuple[str, str]:
    """A recurring schedule with a secret in its data, and a saga due in an hour (no worker runs)."""
    engine = SagaEngine(url)
    engine.register(reminder)  # type: ignore[arg-type]
    try:
        await engine.schedule("reminder", {"region": "EU", "password": "hunter2"}, cron="30 2 * * *", key="eu-nightly")
        later = await engine.start("reminder", {"customer": "ann"}, delay=3600)
        soon = await engine.start("reminder", {"customer": "bob"}, delay=1800)
        return later, soon
    finally:
        await engine.close()


@pytest.fixture
async def filled(store_url: str) -> tuple[str, str, str]:
    later, soon = await _fill(store_url)
    return store_url, later, soon


@pytest.fixture
async def client(filled: tuple[str, str, str]) -> AsyncIterator[httpx.AsyncClient]:
    ops = Operations.for_store(filled[0], [reminder])  # type: ignore[list-item]
    async with ops, client_for(create_app(ops, token=TOKEN)) as c:
        yield c


async def test_schedules_lists_recurring_starts_masked_and_sagas_waiting_soonest_first(
    client: httpx.AsyncClient, filled: tuple[str, str, str]
) -> None:
    _, later, soon = filled
    r = await client.get("/api/schedules")
    assert r.status_code == 200
    body = r.json()
    [s] = body["schedules"]
    assert (s["key"], s["name"], s["cron"], s["last_at"], s["last_saga"]) == (
        "eu-nightly",
        "reminder",
        "30 2 * * *",
        None,
        None,
    )
    assert s["data"]["region"] == "EU" and s["data"]["password"] != "hunter2"
    assert 0 < s["next_in"] <= 86400
    waiting = body["scheduled_sagas"]
    assert [w["id"] for w in waiting] == [soon, later]
    assert 1700 < waiting[0]["starts_in"] <= 1800 and 3500 < waiting[1]["starts_in"] <= 3600
    assert body["scheduled_truncated"] is False


async def test_unschedule_needs_the_token_and_names_a_missing_key(client: httpx.AsyncClient) -> None:
    assert (await client.delete("/api/schedules/eu-nightly")).status_code == 401
    r = await client.delete("/api/schedules/nope", headers=AUTH)
    assert r.status_code == 404 and "'nope'" in r.json()["error"]["message"]
    r = await client.delete("/api/schedules/eu-nightly", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"key": "eu-nightly", "removed": True}
    assert (await client.get("/api/schedules")).json()["schedules"] == []


async def test_a_scheduled_saga_aborted_before_it_begins_leaves_the_list(
    client: httpx.AsyncClient, filled: tuple[str, str, str]
) -> None:
    _, later, soon = filled
    r = await client.post(f"/api/sagas/{soon}/abort", json={"reason": "not needed"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert [w["id"] for w in (await client.get("/api/schedules")).json()["scheduled_sagas"]] == [later]


def test_cli_lists_and_stops_schedules(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sagas.db"
    later, soon = asyncio.run(_fill(url))
    runner = CliRunner()
    out = runner.invoke(cli, ["schedules", "--store", url, "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    body = json.loads(out.output)
    assert [s["key"] for s in body["schedules"]] == ["eu-nightly"]
    assert body["schedules"][0]["data"]["password"] != "hunter2"
    assert [w["id"] for w in body["scheduled_sagas"]] == [soon, later]
    table = runner.invoke(cli, ["schedules", "--store", url], catch_exceptions=False)
    assert table.exit_code == 0 and "eu-nightly" in table.output and "30 2 * * *" in table.output
    assert "hunter2" not in table.output
    missing = runner.invoke(cli, ["unschedule", "nope", "--store", url])
    assert missing.exit_code == 3 and "'nope'" in missing.output
    done = runner.invoke(cli, ["unschedule", "eu-nightly", "--store", url], catch_exceptions=False)
    assert done.exit_code == 0 and "stopped" in done.output
    after = json.loads(runner.invoke(cli, ["schedules", "--store", url, "--json"]).output)
    assert after["schedules"] == [] and len(after["scheduled_sagas"]) == 2
    assert time.time() < after["scheduled_sagas"][0]["start_at"]
