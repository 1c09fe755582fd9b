"""For-each steps on a real store (SQLite file, or PostgreSQL with SAGAKIT_TEST_DB=postgres).

The machine's rules are covered by tests/test_for_each_properties.py; these
tests check that the engine carries them out: item functions get their item,
index and idempotency key, at most ``parallelism`` run at once, results come
back in input order, a failing item rolls back only what may have happened,
and the item list and per-item state survive a restart and a killed worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sagakit import NonRetryableError, RetryPolicy, SagaBuilder, SagaEngine, SagaStatus, StepContext, StepStatus

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02, jitter=0)


async def wait_until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_items_run_at_most_parallelism_at_once_and_results_come_in_input_order(store_url: str) -> None:
    running = 0
    most = 0
    release = asyncio.Event()
    calls: list[tuple[int, str, Any]] = []

    async def reserve(line: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        nonlocal running, most
        calls.append((ctx.item_index or 0, ctx.idempotency_key, ctx.item))
        running += 1
        most = max(most, running)
        try:
            await release.wait()
            # later items finish first: the order of the results must not depend on it
            await asyncio.sleep(0.001 * (10 - (ctx.item_index or 0)))
        finally:
            running -= 1
        return {"sku": line["sku"], "reserved": line["qty"]}

    def total(ctx: StepContext) -> int:
        return sum(r["reserved"] for r in ctx.results["reserve"])

    b = SagaBuilder("order")
    b.for_each(
        "reserve",
        items=lambda data, results: data["lines"],
        action=reserve,
        key=lambda line: line["sku"],
        parallelism=3,
    )
    b.step("total", total)
    lines = [{"sku": f"sku-{i}", "qty": i + 1} for i in range(8)]
    engine = SagaEngine(store_url, poll_interval=0.05)
    engine.register(b.build())
    async with engine:
        sid = await engine.start("order", {"lines": lines})
        await wait_until(lambda: running == 3, "three items in flight")
        snap = await engine.get(sid)
        items = snap.steps["reserve"].items
        assert items is not None and [i.status for i in items].count(StepStatus.RUNNING) == 3
        assert [i.status for i in items[3:]] == [StepStatus.PENDING] * 5
        release.set()
        final = await engine.wait(sid, timeout=30)
    assert final.status is SagaStatus.COMPLETED
    assert most == 3, f"at most 3 items at once, saw {most}"
    assert final.steps["reserve"].result == [{"sku": ln["sku"], "reserved": ln["qty"]} for ln in lines]
    assert final.steps["total"].result == sum(range(1, 9))
    assert sorted(calls) == [(i, f"{sid}:reserve:sku-{i}:action", lines[i]) for i in range(8)]
    items = final.steps["reserve"].items
    assert items is not None and [(i.index, i.key, i.status, i.attempts) for i in items] == [
        (i, f"sku-{i}", StepStatus.COMPLETED, 1) for i in range(8)
    ]


async def test_a_failing_item_rolls_back_only_completed_and_uncertain_items_in_reverse_order(store_url: str) -> None:
    """Two at a time: items 0-1 complete, 2 fails for good while 3 hangs (cancelled: uncertain); 4-5 never start.

    The rollback cancels item 3 and compensates 3, 1 and 0, started in that
    order; a compensation that fails once is retried; 2 (failed outright), 4
    and 5 are not touched.
    """
    hang = asyncio.Event()
    started: set[int] = set()
    comp_calls: list[int] = []
    undone: dict[int, tuple[str, Any]] = {}

    async def reserve(line: str, ctx: StepContext) -> str:
        i = ctx.item_index or 0
        started.add(i)
        if i == 2:
            await wait_until(lambda: 3 in started, "item 3 started")
            raise NonRetryableError("out of stock")
        if i == 3:
            await hang.wait()  # never set: cancelled by the rollback
        return f"held-{line}"

    async def release(line: str, ctx: StepContext) -> None:
        i = ctx.item_index or 0
        comp_calls.append(i)
        if i == 1 and ctx.attempt == 1:
            raise RuntimeError("warehouse busy")
        undone[i] = (ctx.idempotency_key, ctx.result)

    b = SagaBuilder("rollback")
    b.step("first", lambda ctx: "ok", lambda ctx: None)
    b.for_each(
        "reserve",
        items=lambda data, results: data["lines"],
        action=reserve,
        compensation=release,
        parallelism=2,
        compensation_retry=FAST,
    )
    engine = SagaEngine(store_url, poll_interval=0.05)
    engine.register(b.build())
    async with engine:
        sid = await engine.start("rollback", {"lines": ["a", "b", "c", "d", "e", "f"]})
        final = await engine.wait(sid, timeout=30)
    assert final.status is SagaStatus.COMPENSATED
    assert started == {0, 1, 2, 3}
    assert list(dict.fromkeys(comp_calls)) == [3, 1, 0], "compensations start in reverse order"
    assert sorted(comp_calls) == [0, 1, 1, 3]
    assert undone == {
        3: (f"{sid}:reserve:3:compensation", None),  # cancelled: it has no result
        1: (f"{sid}:reserve:1:compensation", "held-b"),
        0: (f"{sid}:reserve:0:compensation", "held-a"),
    }
    step = final.steps["reserve"]
    assert step.status is StepStatus.COMPENSATED
    assert step.items is not None
    assert [(i.status, i.uncertain) for i in step.items] == [
        (StepStatus.COMPENSATED, False),
        (StepStatus.COMPENSATED, False),
        (StepStatus.FAILED, False),
        (StepStatus.COMPENSATED, True),
        (StepStatus.PENDING, False),
        (StepStatus.PENDING, False),
    ]
    assert step.items[2].error == "NonRetryableError: out of stock"
    assert step.items[1].compensation_attempts == 2
    assert final.steps["first"].status is StepStatus.COMPENSATED
    assert "item 2 (key '2') failed: NonRetryableError: out of stock" in (final.error or "")
    kinds = [h.kind for h in final.history]
    assert "item_cancelled" in kinds and "item_compensation_failed" in kinds


async def test_each_item_retries_by_its_policy_and_times_out_by_its_timeout(store_url: str) -> None:
    attempts: dict[int, list[tuple[int, str]]] = {}

    def ship(item: int, ctx: StepContext) -> int:
        attempts.setdefault(item, []).append((ctx.attempt, ctx.idempotency_key))
        if item == 1 and ctx.attempt < 3:
            raise ConnectionError("carrier down")
        if item == 2 and ctx.attempt == 1:
            time.sleep(0.5)  # over the timeout: cut off, and tried again
        return item * 10

    b = SagaBuilder("ship")
    b.for_each("ship", items=lambda data, results: data["parcels"], action=ship, retry=FAST, timeout=0.2)
    engine = SagaEngine(store_url, poll_interval=0.05)
    engine.register(b.build())
    async with engine:
        sid = await engine.start("ship", {"parcels": [0, 1, 2]})
        final = await engine.wait(sid, timeout=30)
    assert final.status is SagaStatus.COMPLETED
    assert final.steps["ship"].result == [0, 10, 20]
    key = f"{sid}:ship:1:action"
    assert attempts[1] == [(1, key), (2, key), (3, key)]
    assert [a for a, _ in attempts[2]] == [1, 2]
    items = final.steps["ship"].items
    assert items is not None
    assert [i.attempts for i in items] == [1, 3, 2]
    assert items[2].uncertain  # its first attempt was cut off mid-way
    timed_out = [h.message for h in final.history if h.kind == "item_failed" and "item 2" in h.message]
    assert timed_out and "timed out after 0.2s" in timed_out[0]


async def test_an_empty_list_completes_the_step_at_once_with_an_empty_list(store_url: str) -> None:
    def never(item: Any, ctx: StepContext) -> None:
        raise AssertionError("no item, no call")

    b = SagaBuilder("empty")
    b.for_each("each", items=lambda data, results: data["xs"], action=never)
    b.step("after", lambda ctx: ctx.results["each"])
    engine = SagaEngine(store_url, poll_interval=0.05)
    engine.register(b.build())
    async with engine:
        final = await engine.wait(await engine.start("empty", {"xs": []}), timeout=30)
    assert final.status is SagaStatus.COMPLETED
    assert final.steps["each"].result == [] and final.steps["after"].result == []
    assert final.steps["each"].items == ()


async def test_an_item_list_that_cannot_be_read_fails_the_step_and_rolls_back(store_url: str) -> None:
    undone: list[str] = []
    b = SagaBuilder("bad-list")
    b.step("first", lambda ctx: 1, lambda ctx: undone.append(ctx.step))
    b.for_each("each", items=lambda data, results: data["lines"], action=lambda item, ctx: None)
    engine = SagaEngine(store_url, poll_interval=0.05)
    engine.register(b.build())
    async with engine:
        final = await engine.wait(await engine.start("bad-list", {"lines": "not a list"}), timeout=30)
    assert final.status is SagaStatus.COMPENSATED
    assert undone == ["first"]
    err = final.steps["each"].error or ""
    assert final.steps["each"].status is StepStatus.FAILED
    assert err == "the items of for-each step 'each' must be a list, but items() returned str: 'not a list'"


async def test_item_state_survives_a_restart_of_the_engine(store_url: str) -> None:
    """Items that completed before a restart are not run again; the list is the one read first."""
    gate = asyncio.Event()
    runs: list[str] = []

    async def act(item: str, ctx: StepContext) -> str:
        runs.append(item)
        if item == "slow":
            await gate.wait()
        return item.upper()

    def definition() -> Any:
        b = SagaBuilder("restart")
        b.for_each("each", items=lambda data, results: data["xs"], action=act, parallelism=2)
        return b.build()

    engine = SagaEngine(store_url, poll_interval=0.05, lease_seconds=1.0)
    engine.register(definition())
    async with engine:
        sid = await engine.start("restart", {"xs": ["a", "slow", "b"]})

        async def two_done() -> bool:
            items = (await engine.get(sid)).steps["each"].items
            return items is not None and sum(i.status is StepStatus.COMPLETED for i in items) == 2

        deadline = time.monotonic() + 20
        while not await two_done():
            assert time.monotonic() < deadline, "items a and b did not complete"
            await asyncio.sleep(0.02)
    # The engine closed with "slow" in flight; a new one runs it again, and only it.
    assert sorted(runs) == ["a", "b", "slow"]
    gate.set()
    runs.clear()
    engine = SagaEngine(store_url, poll_interval=0.05, lease_seconds=1.0)
    engine.register(definition())
    async with engine:
        final = await engine.wait(sid, timeout=30)
    assert runs == ["slow"]
    assert final.status is SagaStatus.COMPLETED
    assert final.steps["each"].result == ["A", "SLOW", "B"]
    items = final.steps["each"].items
    assert items is not None and items[1].uncertain and items[1].attempts == 1
    assert final.to_dict()["steps"]["each"]["items"][1]["status"] == "completed"


@pytest.mark.slow
async def test_a_killed_worker_leaves_its_items_to_another_which_sees_the_same_list(
    store_url: str, tmp_path: Path
) -> None:
    """A worker process reads the list and is killed mid-way; the list's source then changes.

    Another worker process resumes the saga: it runs the same items (the
    stored list), each item's side effect exactly once by its idempotency key.
    """
    from tests.crash.for_each_child import effects, make_definition

    source = tmp_path / "lines.json"
    source.write_text(json.dumps(["a", "b", "c", "d", "e", "f"]))
    effects_db = tmp_path / "effects.db"
    root = Path(__file__).resolve().parent.parent

    def worker(mode: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.crash.for_each_child", store_url, str(source), str(effects_db), mode],
            cwd=root,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    first = worker("start")
    try:
        deadline = time.monotonic() + 60
        while len(effects(str(effects_db))) < 3:
            if first.poll() is not None:
                err = first.stderr.read().decode() if first.stderr else ""
                pytest.fail(f"the first worker ended early: {err}")
            assert time.monotonic() < deadline, "the first worker made no progress"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
        for stream in (first.stdout, first.stderr):
            if stream is not None:
                stream.close()
    assert first.returncode == -signal.SIGKILL
    done_before = effects(str(effects_db))
    assert 3 <= len(done_before) < 6, "the kill came too late: nothing was left to resume"
    source.write_text(json.dumps(["x"]))  # a list read again would be different

    second = worker("resume")
    try:
        out, err = second.communicate(timeout=90)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)
    assert second.returncode == 0, err.decode()
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["status"] == "completed"
    assert report["result"] == ["A", "B", "C", "D", "E", "F"]
    keys = effects(str(effects_db))
    sid = report["id"]
    # Six effects, one per item of the first list, each under its stable key (a re-run item reuses its key).
    assert sorted(keys) == [f"{sid}:upper:{i}:action" for i in range(6)]

    engine = SagaEngine(store_url)
    engine.register(make_definition(str(source), str(effects_db)))
    snap = await engine.get(sid)
    await engine.close()
    assert snap.steps["upper"].items is not None
    assert [i.item for i in snap.steps["upper"].items] == list("abcdef")


def _item(item: Any, ctx: StepContext) -> None:
    return None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"items": "lines"}, "for-each step 'each': items must be a function of (data, results) returning the list"),
        ({"items": lambda data: data}, "for-each step 'each': items must accept two arguments"),
        ({"parallelism": 0}, "for-each step 'each': parallelism must be an integer >= 1, got 0"),
        ({"parallelism": True}, "for-each step 'each': parallelism must be an integer >= 1, got True"),
        ({"key": "sku"}, "for-each step 'each': key must be a function of the item, got 'sku'"),
        ({"action": lambda ctx: None}, "for-each step 'each': action must accept two arguments (the item and the"),
        ({"compensation": 3}, "for-each step 'each': compensation must be a function of (item, ctx), got 3"),
        ({"timeout": 0}, "step 'each': timeout must be > 0 seconds, got 0"),
    ],
)
def test_build_refuses_a_bad_for_each_step_naming_the_field(options: dict[str, Any], message: str) -> None:
    from sagakit import DefinitionError

    args: dict[str, Any] = {"items": lambda data, results: data["lines"], "action": _item, **options}
    b = SagaBuilder("bad")
    b.for_each("each", **args)
    with pytest.raises(DefinitionError) as e:
        b.build()
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({"lines": {"a": 1}}, None, "must be a list, but items() returned dict: {'a': 1}"),
        ({"lines": [1, 1]}, lambda item: item, "items 0 and 1 of for-each step 'each' have the same key '1'"),
        ({"lines": [1]}, lambda item: [item], "the key of item 0 of for-each step 'each' must be a string or an"),
        ({"lines": [{"x": 1}]}, lambda item: item["sku"], "key() raised KeyError: 'sku'"),
        ({}, None, "the items of for-each step 'each' could not be read: items() raised KeyError: 'lines'"),
    ],
)
def test_an_item_list_or_key_that_cannot_be_used_fails_the_step_with_the_reason(
    data: dict[str, Any], key: Any, message: str
) -> None:
    from sagakit.machine import new_saga

    b = SagaBuilder("bad-items")
    b.for_each("each", items=lambda data, results: data["lines"], action=_item, key=key)
    d = new_saga(b.build(), "s-1", data, 0.0)
    s = d.state.steps["each"]
    assert s.status is StepStatus.FAILED and d.state.status is SagaStatus.COMPENSATED
    assert message in (s.error or "")
    assert d.effects == []


async def test_an_operator_retries_an_item_compensation_that_gave_up(store_url: str) -> None:
    """Item 1's compensation gives up: the saga is FAILED; a retry undoes item 1 only, and the saga is compensated."""
    broken = {"release": True}
    undone: list[int] = []

    def act(item: int, ctx: StepContext) -> int:
        if item == 3:
            raise NonRetryableError("no")
        return item

    def release(item: int, ctx: StepContext) -> None:
        if item == 1 and broken["release"]:
            raise RuntimeError("ledger offline")
        undone.append(item)

    b = SagaBuilder("retry-undo")
    b.for_each(
        "each",
        items=lambda data, results: data["xs"],
        action=act,
        compensation=release,
        parallelism=1,
        compensation_retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0),
    )
    engine = SagaEngine(store_url, poll_interval=0.05)
    engine.register(b.build())
    async with engine:
        sid = await engine.start("retry-undo", {"xs": [0, 1, 2, 3]})
        failed = await engine.wait(sid, timeout=30)
        assert failed.status is SagaStatus.FAILED
        assert sorted(undone) == [0, 2]
        step = failed.steps["each"]
        assert step.status is StepStatus.COMPENSATION_FAILED
        assert step.items is not None and step.items[1].status is StepStatus.COMPENSATION_FAILED
        assert step.items[1].compensation_attempts == 2
        assert "compensation of item 1 (key '1') gave up: RuntimeError: ledger offline" in (failed.error or "")
        broken["release"] = False
        await engine.retry(sid, reason="ledger back")
        final = await engine.wait(sid, timeout=30)
    assert final.status is SagaStatus.COMPENSATED
    assert sorted(undone) == [0, 1, 2]
    items = final.steps["each"].items
    assert items is not None
    assert [i.status for i in items] == [StepStatus.COMPENSATED] * 3 + [StepStatus.FAILED]


def test_sagakit_show_lists_the_items_of_a_for_each_step(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sagakit.cli._main import cli

    def pack(item: str, ctx: StepContext) -> str:
        if item == "glass":
            raise NonRetryableError("fragile")
        return f"box-{item}"

    b = SagaBuilder("pack")
    b.for_each("pack", items=lambda data, results: data["things"], action=pack, compensation=lambda item, ctx: None)
    url = f"sqlite:///{tmp_path}/cli.db"

    async def seed() -> str:
        async with SagaEngine(url, poll_interval=0.05) as engine:
            engine.register(b.build())
            sid = await engine.start("pack", {"things": ["book", "glass"]})
            await engine.wait(sid, timeout=20)
            return sid

    sid = asyncio.run(seed())
    table = CliRunner().invoke(cli, ["show", sid, "--store", url], catch_exceptions=False, terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "items of pack" in table.output
    assert "NonRetryableError: fragile" in table.output
    as_json = CliRunner().invoke(cli, ["show", sid, "--store", url, "--json"], catch_exceptions=False)
    items = json.loads(as_json.output)["steps"]["pack"]["items"]
    assert [(i["key"], i["item"], i["status"]) for i in items] == [
        ("0", "book", "compensated"),
        ("1", "glass", "failed"),
    ]


class Quote(BaseModel):
    lines: list[str]
    rate: float


async def test_items_see_typed_results_of_earlier_steps_and_change_the_data(store_url: str) -> None:
    def quote(ctx: StepContext) -> Quote:
        return Quote(lines=ctx.data["lines"], rate=2.0)

    def price(line: str, ctx: StepContext) -> float:
        q = ctx.results["quote"]
        assert isinstance(q, Quote)  # read back as the model its action is annotated to return
        ctx.update_data({f"priced_{line}": True})
        return len(line) * q.rate

    b = SagaBuilder("typed")
    b.step("quote", quote)
    b.for_each("price", items=lambda data, results: results["quote"]["lines"], action=price)
    engine = SagaEngine(store_url, poll_interval=0.05)
    engine.register(b.build())
    async with engine:
        final = await engine.wait(await engine.start("typed", {"lines": ["ab", "cde"]}), timeout=30)
    assert final.status is SagaStatus.COMPLETED, final.error
    assert final.steps["price"].result == [4.0, 6.0]
    assert final.data == {"lines": ["ab", "cde"], "priced_ab": True, "priced_cde": True}


async def test_observers_see_each_item_attempt_with_its_index(store_url: str) -> None:
    from sagakit import AttemptInput, BaseObserver

    seen: list[tuple[str, int | None, str]] = []

    class Attempts(BaseObserver):
        def on_attempt(self, event: AttemptInput) -> None:
            seen.append((event.step, event.item, event.outcome))

    b = SagaBuilder("observed")
    b.step("first", lambda ctx: None)
    b.for_each("each", items=lambda data, results: ["x", "y"], action=lambda item, ctx: item)
    engine = SagaEngine(store_url, poll_interval=0.05, observers=[Attempts()])
    engine.register(b.build())
    async with engine:
        final = await engine.wait(await engine.start("observed", {}), timeout=30)
    assert final.status is SagaStatus.COMPLETED
    assert sorted(seen, key=repr) == sorted(
        [("first", None, "succeeded"), ("each", 0, "succeeded"), ("each", 1, "succeeded")], key=repr
    )


@pytest.mark.slow
async def test_two_worker_processes_racing_for_for_each_sagas_run_each_item_once(
    store_url: str, tmp_path: Path
) -> None:
    from tests.crash.for_each_child import executions, make_definition

    source = tmp_path / "lines.json"
    source.write_text(json.dumps(list("abcdef")))
    effects_db = tmp_path / "effects.db"
    root = Path(__file__).resolve().parent.parent
    definition = make_definition(str(source), str(effects_db), 0.0)
    starter = SagaEngine(store_url)  # stores the sagas; the workers run them
    starter.register(definition)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.crash.for_each_child", store_url, str(source), str(effects_db), "work"],
            cwd=root,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        for w in workers:  # both are claiming before the sagas are stored
            assert w.stdout is not None
            assert w.stdout.readline().decode().strip() == "working"
        ids = [await starter.start("for_each_crash", {}, idempotency_key=f"o-{i}") for i in range(12)]
        deadline = time.monotonic() + 90
        while True:
            snaps = [await starter.get(sid) for sid in ids]
            if all(s.status.terminal for s in snaps):
                break
            for w in workers:
                if w.poll() is not None:
                    err = w.stderr.read().decode() if w.stderr else ""
                    pytest.fail(f"a worker ended early: {err}")
            assert time.monotonic() < deadline, [s.status for s in snaps]
            await asyncio.sleep(0.1)
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(20)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(10)
            for stream in (w.stdout, w.stderr):
                if stream is not None:
                    stream.close()
        await starter.close()
    assert all(s.status is SagaStatus.COMPLETED for s in snaps)
    assert all(s.steps["upper"].result == list("ABCDEF") for s in snaps)
    runs = executions(str(effects_db))
    keys = sorted(k for k, _ in runs)
    assert keys == sorted(f"{sid}:upper:{i}:action" for sid in ids for i in range(6)), "each item ran exactly once"
