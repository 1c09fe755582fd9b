"""``sagakit retry/skip/compensate/abort/fork`` and ``sagakit serve`` on a seeded store."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from sagakit import SagaStatus
from sagakit.cli._main import cli
from sagakit.cli._serve import is_loopback

from .conftest import AUTH, TOKEN, Seed, free_port, seed_sync

APP = ["--app", "tests.admin.sample_app:order"]


@pytest.fixture
def seeded(tmp_path: Path) -> Seed:
    return seed_sync(f"sqlite:///{tmp_path}/sagas.db")


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def show(seed: Seed, saga_id: str) -> dict:
    r = run("show", saga_id, "--store", seed.url, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_retry_one_saga(seeded: Seed) -> None:
    sid = seeded.failed[0]
    r = run("retry", sid, "--store", seeded.url, *APP, "--reason", "carrier is back", "--actor", "alice")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"retried saga {sid}; it is now running"
    saga = show(seeded, sid)
    assert saga["status"] == "running"
    assert any(h["kind"] == "retry" and h["message"].endswith("by alice: carrier is back") for h in saga["history"])


def test_actor_defaults_to_the_os_user(seeded: Seed) -> None:
    r = run("abort", seeded.failed[0], "--store", seeded.url, *APP)
    assert r.exit_code == 0, r.output
    assert show(seeded, seeded.failed[0])["history"][-1]["message"] == f"aborted by {getpass.getuser()}"


def test_rejected_action_exits_1_with_the_reason(seeded: Seed) -> None:
    r = run("retry", seeded.completed[0], "--store", seeded.url, *APP, "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout) == {
        "saga_id": seeded.completed[0],
        "action": "retry",
        "outcome": "rejected",
        "reason": "saga is completed: only a failed saga or a waiting step can be retried",
        "code": "not_allowed",
    }
    r = run("compensate", seeded.failed[0], "--store", seeded.url, *APP)
    assert r.exit_code == 1
    assert "only a pending or running saga can be compensated" in r.stdout


def test_missing_definition_is_a_clear_rejection(seeded: Seed) -> None:
    r = run("retry", seeded.failed[0], "--store", seeded.url)
    assert r.exit_code == 1
    assert "definition order v1 is not registered here" in r.stdout
    assert "--app module:attr" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["retry"], "give a saga id, or filters"),
        (["retry", "some-id", "--status", "failed"], "not both"),
        (["retry", "--created-after", "yesterday"], "--created-after"),
        (["retry", "--key", "no-equals-sign"], "--key"),
        (["retry", "--status", "bogus"], "bogus"),
        (["skip", "some-id"], "--step"),
        (["skip", "some-id", "--step", "ship", "--result", "{nope"], "--result"),
        (["fork", "some-id"], "--from-step"),
        (["retry", "some-id", "--app", "no_such_module_xyz"], "cannot import 'no_such_module_xyz'"),
    ],
)
def test_usage_errors_exit_2(seeded: Seed, args: list[str], message: str) -> None:
    r = run(*args, "--store", seeded.url)
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_unknown_saga_exits_3_and_missing_store_4(seeded: Seed, tmp_path: Path) -> None:
    r = run("retry", "no-such-saga", "--store", seeded.url, *APP)
    assert r.exit_code == 3
    assert "no saga with id 'no-such-saga'" in r.output
    r = run("retry", "x", "--store", f"sqlite:///{tmp_path}/missing.db", *APP)
    assert r.exit_code == 4
    assert "no SQLite store" in r.output
    r = run("retry", "x", "--store", "nosuch://db", *APP)
    assert r.exit_code == 4


def test_store_from_the_environment(seeded: Seed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAKIT_STORE", seeded.url)
    r = run("abort", seeded.pending[0], *APP, "--reason", "not needed")
    assert r.exit_code == 0, r.output


def test_skip_with_a_result_and_fork(seeded: Seed) -> None:
    r = run("skip", seeded.failed[0], "--step", "ship", "--result", '{"tracking": "manual"}', "--store", seeded.url,
            *APP)  # fmt: skip
    assert r.exit_code == 0, r.output
    saga = show(seeded, seeded.failed[0])
    assert saga["steps"]["ship"] == {**saga["steps"]["ship"], "status": "skipped", "result": {"tracking": "manual"}}
    r = run("fork", seeded.failed[1], "--from-step", "ship", "--store", seeded.url, *APP, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["outcome"] == "ok"
    assert show(seeded, out["new_id"])["steps"]["charge"]["status"] == "skipped"  # copied, not run again


def test_bulk_asks_for_confirmation_showing_the_count(seeded: Seed) -> None:
    r = run("abort", "--status", "failed", "--store", seeded.url, *APP, input="n\n")
    assert r.exit_code == 1
    assert f"abort 2 saga(s) matching status=failed in {seeded.url}?" in r.output
    assert "nothing done" in r.output
    assert {show(seeded, s)["status"] for s in seeded.failed} == {"failed"}
    r = run("abort", "--status", "failed", "--store", seeded.url, *APP, "--reason", "cleanup", input="y\n")
    assert r.exit_code == 0, r.output
    assert "abort: 2 ok, 0 rejected" in r.output
    assert {show(seeded, s)["status"] for s in seeded.failed} == {"aborted"}


def test_bulk_json_with_rejections_exits_1(seeded: Seed) -> None:
    r = run("abort", "--status", "failed", "--status", "completed", "--store", seeded.url, *APP, "--yes", "--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert (out["matched"], out["ok"], out["rejected"]) == (4, 2, 2)
    by_id = {o["saga_id"]: o for o in out["outcomes"]}
    assert {by_id[s]["outcome"] for s in seeded.failed} == {"ok"}
    assert {by_id[s]["code"] for s in seeded.completed} == {"not_allowed"}


def test_bulk_by_business_key_and_limit(seeded: Seed) -> None:
    r = run("retry", "--key", "order_id=bad-1", "--store", seeded.url, *APP, "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert [o["saga_id"] for o in json.loads(r.stdout)["outcomes"]] == [seeded.failed[1]]
    r = run("abort", "--name", "order", "--limit", "1", "--store", seeded.url, *APP, input="n\n")
    assert "abort 1 saga(s) matching name=order (the newest 1 of 6 matching; raise --limit for more)" in r.output


def test_bulk_with_no_match(seeded: Seed) -> None:
    r = run("retry", "--status", "aborted", "--store", seeded.url, *APP, "--yes")
    assert r.exit_code == 0
    assert "no sagas match status=aborted" in r.output


# ---------------------------------------------------------------- serve


def test_serve_refuses_a_non_loopback_address_without_a_token(seeded: Seed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGAKIT_TOKEN", raising=False)
    r = run("serve", "--store", seeded.url, "--host", "0.0.0.0")
    assert r.exit_code == 2
    assert "refusing to serve on 0.0.0.0" in r.output
    r = run("serve", "--store", seeded.url, "--worker")
    assert r.exit_code == 2
    assert "--worker runs the sagas' steps" in r.output
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("[::1]")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.168.1.10")
    assert not is_loopback("example.com")


def test_serve_runs_the_api_and_dashboard(seeded: Seed) -> None:
    port = free_port()
    env = {**os.environ, "SAGAKIT_TOKEN": TOKEN, "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-c", "from sagakit.cli import main; main()", "serve", "--store", seeded.url,
           "--port", str(port), *APP, "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                info = httpx.get(f"{base}/api/info", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "sagakit serve did not start"
                time.sleep(0.1)
        assert info.json()["actions_enabled"] is True
        assert httpx.get(f"{base}/").status_code == 200
        assert httpx.get(f"{base}/api/sagas", params={"status": "failed"}).json()["total"] == 2
        r = httpx.post(f"{base}/api/sagas/{seeded.failed[0]}/retry", json={"reason": "http"}, headers=AUTH)
        assert (r.status_code, r.json()["status"]) == (200, SagaStatus.RUNNING.value)
        r = httpx.post(f"{base}/api/sagas/{seeded.failed[1]}/retry", json={})
        assert r.status_code == 401
        # A request naming another host (DNS rebinding) is refused on a loopback server.
        assert httpx.get(f"{base}/api/info", headers={"host": "attacker.example"}).status_code == 400
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "dashboard at http://127.0.0.1" in out
    assert "Traceback" not in out


def test_a_saga_no_worker_can_run_is_stuck_and_aborted_from_the_cli(tmp_path: Path) -> None:
    import asyncio

    from sagakit import SagaBuilder, SagaEngine

    url = f"sqlite:///{tmp_path}/retired.db"
    b = SagaBuilder("retired_flow", version=1)
    b.step("a", lambda ctx: 1)

    async def store_one() -> str:
        engine = SagaEngine(url)
        engine.register(b.build())
        try:
            return await engine.start("retired_flow")
        finally:
            await engine.close()

    sid = asyncio.run(store_one())
    # No process has the definition: the bulk abort finds it among the stuck sagas
    # (overdue by more than 0 s) and stops it, with no --app to give.
    r = run("abort", "--stuck", "0", "--store", url, "--yes", "--reason", "flow retired", "--actor", "ops")
    assert r.exit_code == 0, r.output
    saga = show_url(url, sid)
    assert saga["status"] == "aborted"
    assert saga["history"][-1]["message"] == "aborted by ops: flow retired"


def show_url(url: str, saga_id: str) -> dict:
    r = run("show", saga_id, "--store", url, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_actions_take_a_unique_id_prefix(seeded: Seed) -> None:
    sid = seeded.failed[0]
    others = [i for i in seeded.all if i != sid]
    n = next(k for k in range(1, len(sid)) if not any(o.startswith(sid[:k]) for o in others))
    r = run("abort", sid[:n], "--store", seeded.url, *APP, "--reason", "by prefix")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"aborted saga {sid}; it is now aborted"
    assert show(seeded, sid[: n + 2])["status"] == "aborted"
    # Ambiguous: nothing is done, the candidates are named.
    r = run("abort", sid[:2], "--store", seeded.url, *APP)
    assert r.exit_code == 2
    assert "sagas' ids start with it" in r.stderr
    assert sum(1 for i in seeded.all if i in r.stderr) > 1
    assert show(seeded, seeded.failed[1])["status"] == "failed"
