"""The command line on real SQLite files: demo, list, show and bench."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sagakit.cli._main import cli

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Result]:
    path = tmp_path_factory.mktemp("demo") / "d.db"
    url = f"sqlite:///{path}"
    result = run("demo", "--orders", "40", "--failure-rate", "0.3", "--seed", "7", "--store", url)
    return url, result


def test_demo_exits_zero_and_prints_the_outcomes(demo_store: tuple[str, Result]) -> None:
    _, result = demo_store
    assert result.exit_code == 0, result.output
    out = result.output
    assert "40 orders, 12 planned to fail" in out
    assert "outcomes" in out
    for row in (
        "completed",
        "compensated, failed at reserve_inventory",
        "compensated, failed at process_payment",
        "compensated, failed at ship_order",
        "step attempts (incl. retries)",
        "compensations run",
        "throughput",
    ):
        assert row in out, row  # fmt: skip
    assert "sagas/s" in out
    assert "consistent" in out and "inconsistent" not in out


def test_list_json_returns_every_saga_of_the_demo(demo_store: tuple[str, Result]) -> None:
    url, _ = demo_store
    result = run("list", "--store", url, "--json")
    assert result.exit_code == 0, result.output
    sagas = json.loads(result.output)
    assert len(sagas) == 40
    assert {s["name"] for s in sagas} == {"order_fulfillment"}
    statuses = [s["status"] for s in sagas]
    assert statuses.count("completed") == 28
    assert statuses.count("compensated") == 12
    created = [s["created_at"] for s in sagas]
    assert created == sorted(created, reverse=True)  # newest first
    for s in sagas:
        assert list(s["steps"]) == ["reserve_inventory", "process_payment", "ship_order"]
        assert s["correlation_id"] == s["data"]["order_id"]
        assert s["history"] == []
        if s["status"] == "completed":
            assert all(st["status"] == "completed" for st in s["steps"].values())
        else:
            failed = [n for n, st in s["steps"].items() if st["status"] == "failed"]
            assert failed == [s["data"]["fail_at"]]
            assert "NonRetryableError" in s["error"]


def test_list_filters_and_pages(demo_store: tuple[str, Result]) -> None:
    url, _ = demo_store
    comp = json.loads(run("list", "--store", url, "--json", "--status", "compensated").output)
    assert len(comp) == 12 and {s["status"] for s in comp} == {"compensated"}
    page = json.loads(run("list", "--store", url, "--json", "--limit", "5", "--offset", "10").output)
    everything = json.loads(run("list", "--store", url, "--json").output)
    assert [s["id"] for s in page] == [s["id"] for s in everything[10:15]]
    one = json.loads(run("list", "--store", url, "--json", "--correlation-id", "o-00003").output)
    assert [s["data"]["order_id"] for s in one] == ["o-00003"]
    none = json.loads(run("list", "--store", url, "--json", "--name", "other").output)
    assert none == []


def test_list_table(demo_store: tuple[str, Result]) -> None:
    url, _ = demo_store
    result = run("list", "--store", url, "--limit", "3", "--status", "compensated")
    assert result.exit_code == 0, result.output
    ids = [s["id"] for s in json.loads(
        run("list", "--store", url, "--json", "--limit", "3", "--status", "compensated").output)]  # fmt: skip
    for sid in ids:
        assert sid in result.output
    assert "compensated" in result.output
    assert "1-3 of 12" in result.output


def test_store_from_environment(demo_store: tuple[str, Result]) -> None:
    url, _ = demo_store
    result = run("list", "--json", "--limit", "1", env={"SAGAKIT_STORE": url})
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)) == 1


def test_show_json_and_table(demo_store: tuple[str, Result]) -> None:
    url, _ = demo_store
    sagas = json.loads(run("list", "--store", url, "--json", "--status", "compensated").output)
    target = next(s for s in sagas if s["data"]["fail_at"] == "ship_order")
    result = run("show", target["id"], "--store", url, "--json")
    assert result.exit_code == 0, result.output
    snap = json.loads(result.output)
    assert snap["id"] == target["id"]
    assert snap["status"] == "compensated"
    steps = snap["steps"]
    assert steps["ship_order"]["status"] == "failed"
    for name in ("reserve_inventory", "process_payment"):
        assert steps[name]["status"] == "compensated"
        assert steps[name]["compensation_attempts"] >= 1
    kinds = [h["kind"] for h in snap["history"]]
    assert kinds[0] == "created" and kinds[-1] == "compensated"
    times = [h["at"] for h in snap["history"]]
    assert times == sorted(times)

    table = run("show", target["id"], "--store", url)
    assert table.exit_code == 0, table.output
    for text in (target["id"], "steps", "history", "ship_order", "pay-o-", "compensated"):
        assert text in table.output, text


def test_show_unknown_id_exits_3(demo_store: tuple[str, Result]) -> None:
    url, _ = demo_store
    result = run("show", "no-such-saga", "--store", url)
    assert result.exit_code == 3
    assert "no-such-saga" in result.stderr


def test_text_file_store_exits_4_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes\n")
    url = f"sqlite:///{path}"
    for args in (["list"], ["show", "abc"], ["demo", "--orders", "5"]):
        result = run(*args, "--store", url)
        assert result.exit_code == 4, (args, result.output)
        assert "error:" in result.stderr
    assert path.read_text() == "these are my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_missing_store_file_exits_4_and_creates_nothing(tmp_path: Path) -> None:
    result = run("list", "--store", f"sqlite:///{tmp_path}/absent.db")
    assert result.exit_code == 4
    assert "no SQLite store" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_store_scheme_exits_4() -> None:
    result = run("list", "--store", "mysql://localhost/db")
    assert result.exit_code == 4
    assert "unknown store URL" in result.stderr


def test_bad_usage_exits_2(demo_store: tuple[str, Result]) -> None:
    url, _ = demo_store
    assert run("list", "--store", url, "--status", "sleeping").exit_code == 2
    assert run("list", "--store", url, "--limit", "0").exit_code == 2


def test_demo_refuses_to_delete_a_database_with_other_tables(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO customers VALUES (1)")
    conn.close()
    result = run("demo", "--orders", "5", "--store", f"sqlite:///{path}")
    assert result.exit_code == 4
    assert "will not delete" in result.stderr
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT id FROM customers").fetchall() == [(1,)]
    conn.close()


def test_demo_recreates_the_store_unless_keep(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/d.db"
    for args in ([], [], ["--keep"]):
        result = run("demo", "--orders", "10", "--failure-rate", "0.5", "--store", url, *args)
        assert result.exit_code == 0, result.output
    assert len(json.loads(run("list", "--store", url, "--json").output)) == 20


def test_bench_prints_figures_and_a_ratio() -> None:
    result = run("bench", "--n", "200", "--runs", "1")
    assert result.exit_code == 0, result.output
    for text in (
        "SAGAKIT SAGAS/S",
        "RAW SQLITE3 SAGAS/S",
        "SAGAKIT / RAW",
        "A: 3 no-op steps",
        "B: step 3 fails",
    ):
        assert text in result.output, text  # fmt: skip
    assert "ratio" in result.stderr  # one progress line per run


def test_bench_json() -> None:
    result = run("bench", "--n", "100", "--runs", "2", "--workload", "B", "--in-flight", "20",
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n"] == 100 and summary["runs"] == 2 and summary["in_flight"] == 20
    assert list(summary["workloads"]) == ["B"]
    b = summary["workloads"]["B"]
    assert len(b["sagakit"]["sagas_per_s"]["values"]) == 2
    assert b["sagakit"]["sagas_per_s"]["median"] > 0
    assert b["raw"]["transactions_per_saga"] == 6
    assert b["ratio"]["median"] > 0
    # 3 actions and 2 compensations per saga
    ratio = b["sagakit"]["steps_per_s"]["median"] / b["sagakit"]["sagas_per_s"]["median"]
    assert ratio == pytest.approx(5)


def test_standalone_benchmark_runner() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_sqlite.py"),
         "--n", "50", "--runs", "1", "--workload", "A", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["workloads"]["A"]["raw"]["transactions_per_saga"] == 4


def test_bench_workloads_c_and_d_run_on_sqlite() -> None:
    result = run("bench", "--n", "40", "--runs", "1", "--workload", "D", "--json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)["workloads"]["D"]
    assert d["raw"]["transactions_per_saga"] == 10  # created, then 8 parallel steps and the join
    assert d["sagakit"]["steps_per_s"]["median"] / d["sagakit"]["sagas_per_s"]["median"] == pytest.approx(9)


def test_bench_refuses_workers_on_sqlite() -> None:
    result = run("bench", "--n", "10", "--runs", "1", "--workers", "2")
    assert result.exit_code == 1
    assert "PostgreSQL" in result.output


@pytest.mark.postgres
@pytest.mark.slow
def test_bench_on_postgres_in_process_and_with_a_worker_process() -> None:
    from tests.conftest import PG_DSN, pg_available, require_service

    require_service(pg_available())
    result = run("bench", "--store", PG_DSN, "--n", "60", "--runs", "1", "--workers", "0,1", "--no-dbos", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["store"] == "postgresql" and summary["workload"] == "A" and summary["dbos"] is None
    assert set(summary["modes"]) == {"0", "1"}
    for mode in summary["modes"].values():
        assert mode["sagakit"]["sagas_per_s"]["median"] > 0
        assert mode["dbos"] is None


def test_prune_deletes_finished_sagas_older_than_the_age(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    assert run("demo", "--orders", "12", "--failure-rate", "0.3", "--seed", "7", "--store", url).exit_code == 0
    sagas = json.loads(run("list", "--store", url, "--json").output)
    finished = [s for s in sagas if s["status"] in ("completed", "compensated", "aborted")]
    assert finished

    kept = run("prune", "--older-than", "30d", "--store", url)
    assert kept.exit_code == 0, kept.output
    assert "deleted 0 sagas" in kept.output

    dry = run("prune", "--older-than", "0.001s", "--dry-run", "--json", "--store", url)
    assert dry.exit_code == 0, dry.output
    counts = json.loads(dry.output)
    assert counts["dry_run"] is True
    assert counts["sagas"] == len(finished)
    assert counts["history"] >= len(finished)
    assert len(json.loads(run("list", "--store", url, "--json").output)) == len(sagas)

    done = run("prune", "--older-than", "0.001s", "--store", url)
    assert done.exit_code == 0, done.output
    assert f"deleted {len(finished)} sagas (completed, compensated, aborted)" in done.output
    left = json.loads(run("list", "--store", url, "--json").output)
    assert len(left) == len(sagas) - len(finished)


def test_prune_refuses_a_bad_age_and_a_missing_store(tmp_path: Path) -> None:
    bad = run("prune", "--older-than", "30 days", "--store", f"sqlite:///{tmp_path / 'x.db'}")
    assert bad.exit_code == 2
    assert "bad age '30 days'" in bad.output
    missing = run("prune", "--older-than", "30d", "--store", f"sqlite:///{tmp_path / 'x.db'}")
    assert missing.exit_code == 4
    assert "no SQLite store" in missing.output


# ---------------------------------------------------------------- list filters, id prefixes, foreign files


def list_json(url: str, *args: str) -> list[dict]:
    result = run("list", "--store", url, "--json", "--limit", "1000", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_list_has_the_filters_of_the_http_api(demo_store: tuple[str, Result]) -> None:
    url, _ = demo_store
    everything = list_json(url)
    # Repeated --status: any of them, all kept.
    both = list_json(url, "--status", "completed", "--status", "compensated")
    assert len(both) == 40
    assert len(list_json(url, "--status", "compensated", "--status", "failed")) == 12
    # Business key, version, name.
    (one,) = list_json(url, "--key", "order_id=o-00007")
    assert one["data"]["order_id"] == "o-00007"
    assert list_json(url, "--key", "order_id=o-00007", "--status", "completed") in ([], [one])
    assert len(list_json(url, "--version", "1", "--name", "order_fulfillment")) == 40
    assert list_json(url, "--version", "2") == []
    # Created and updated ranges, in ISO 8601 or Unix seconds.
    created = sorted(s["created_at"] for s in everything)
    middle = created[20]
    after = list_json(url, "--created-after", str(middle))
    before = list_json(url, "--created-before", str(middle))
    assert len(after) + len(before) == 40
    assert all(s["created_at"] >= middle for s in after) and all(s["created_at"] < middle for s in before)
    assert list_json(url, "--created-after", "2999-01-01T00:00:00Z") == []
    assert len(list_json(url, "--updated-before", "2999-01-01")) == 40
    # Stuck: every demo saga finished, and none failed.
    assert list_json(url, "--stuck", "0") == []
    table = run("list", "--store", url, "--status", "failed")
    assert table.exit_code == 0
    assert "no sagas status=failed match" in table.output


def test_list_options_are_the_filters_of_the_http_apis_saga_list() -> None:
    """Every query parameter of ``GET /api/sagas`` is an option of ``sagakit list``, and the other way round."""
    from sagakit.admin._openapi import openapi_document
    from sagakit.cli._ops import list_command

    api = {p["name"] for p in openapi_document("test")["paths"]["/api/sagas"]["get"]["parameters"]}
    flags = {p.opts[0].removeprefix("--").replace("-", "_"): p for p in list_command.params}
    shown = {"store", "json", "mask", "mask_extra"}  # where to read and how to print: no filters
    assert set(flags) - shown == api
    assert flags["status"].multiple and flags["key"].multiple  # repeatable, as status= and key= in the query


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--key", "order_id"], "--key"),
        (["--created-after", "yesterday"], "--created-after"),
        (["--stuck", "-1"], "--stuck"),
        (["--status", "lost"], "--status"),
        (["--limit", "1001"], "--limit"),
    ],
)
def test_list_bad_filters_exit_2_naming_the_option(demo_store: tuple[str, Result], args: list[str], hint: str) -> None:
    url, _ = demo_store
    result = run("list", "--store", url, *args)
    assert result.exit_code == 2, result.output
    assert hint in result.output


def test_list_shows_whole_ids_and_show_takes_a_unique_prefix(demo_store: tuple[str, Result]) -> None:
    url, _ = demo_store
    everything = list_json(url)
    ids = [s["id"] for s in everything]
    table = run("list", "--store", url)
    for sid in ids:
        assert sid in table.output  # whole: ids of one millisecond differ only at the end
    target = ids[5]
    others = [i for i in ids if i != target]
    n = next(k for k in range(1, len(target)) if not any(o.startswith(target[:k]) for o in others))
    result = run("show", target[:n], "--store", url, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["id"] == target
    # A prefix that several ids share: a usage error naming some of them.
    shared = target[:3]
    result = run("show", shared, "--store", url)
    assert result.exit_code == 2
    assert "sagas' ids start with it" in result.stderr
    assert "give more of the id" in result.stderr
    named = [i for i in ids if i in result.stderr]
    assert 1 < len(named) <= 10
    result = run("show", "zzzz", "--store", url)
    assert result.exit_code == 3
    assert "zzzz" in result.stderr


def _tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]


def test_read_commands_leave_a_foreign_sqlite_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('Ada')")
    conn.close()
    before = path.read_bytes()
    url = f"sqlite:///{path}"
    for args in (
        ["list"],
        ["list", "--stuck", "60"],
        ["show", "abc"],
        ["retry", "abc"],
        ["abort", "--status", "failed"],
    ):
        result = run(*args, "--store", url)
        assert result.exit_code == 4, (args, result.output)
        assert "is not a sagakit store (its tables: customers); it was left untouched" in result.stderr, args
    assert _tables(path) == ["customers"]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]  # no -wal, no -shm


def test_read_commands_refuse_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    result = run("list", "--store", f"sqlite:///{path}")
    assert result.exit_code == 4
    assert "is not a sagakit store (it has no tables)" in result.stderr
    assert path.read_bytes() == b""
