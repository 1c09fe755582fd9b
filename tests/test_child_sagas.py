"""Child sagas on a real store (SQLite, or PostgreSQL with SAGAKIT_TEST_DB=postgres): one engine, several, processes.

The sagas are in ``tests/child_sagas.py``: ``order`` reserves, runs
``shipping`` (pack, send) as a child saga, then charges.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    DefinitionError,
    SagaBuilder,
    SagaEngine,
    SagaSnapshot,
    SagaStatus,
    StepContext,
    StepStatus,
    child,
)
from sagakit._runtime.children import Children
from sagakit.machine import ABORTING, CHILDREN, PARENT, StartChild, child_id
from tests.child_sagas import order, shipping

ROOT = Path(__file__).resolve().parent.parent
SHIP_TOKEN = 2  # the token of the child step's first attempt: "reserve" is dispatched first, with 1


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "the condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await check():
        if loop.time() > end:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.02)


async def the_child(engine: SagaEngine, parent: SagaSnapshot | str) -> SagaSnapshot:
    pid = parent if isinstance(parent, str) else parent.id
    st = await engine.store.get(pid)
    assert st is not None
    cid = st.meta[CHILDREN]["ship"]
    return await engine.get(cid)


def engine_on(url: str, **kw: Any) -> SagaEngine:
    e = SagaEngine(url, **kw)
    e.register(order, shipping)
    return e


async def test_the_parent_step_completes_with_the_childs_data_and_the_two_are_linked(store_url: str) -> None:
    async with engine_on(store_url) as engine:
        pid = await engine.start("order", {"order_id": "o-1"})
        snap = await engine.wait(pid, timeout=20)
        assert snap.status is SagaStatus.COMPLETED
        kid = await the_child(engine, snap)
        assert kid.status is SagaStatus.COMPLETED
        assert kid.name == "shipping"
        assert kid.data == {"order_id": "o-1", "reserved": "reserve"}
        ship = snap.steps["ship"]
        assert ship.status is StepStatus.COMPLETED
        assert ship.result == {
            "saga_id": kid.id,
            "data": kid.data,
            "results": {"pack": {"step": "pack"}, "send": {"step": "send"}},
        }
        # Linked both ways: the child names its parent and step, the parent its child.
        stored = await engine.store.get(kid.id)
        assert stored is not None and stored.meta[PARENT] == {"id": pid, "step": "ship"}
        assert kid.id == child_id(pid, "ship", SHIP_TOKEN)
        assert any(h.kind == "child" and pid in h.message for h in kid.history)
        assert len(await engine.list(name="shipping")) == 1


async def test_a_compensated_child_fails_the_step_and_the_parent_rolls_back(store_url: str) -> None:
    async with engine_on(store_url) as engine:
        pid = await engine.start("order", {"order_id": "o-2", "fail_send": True})
        snap = await engine.wait(pid, timeout=20)
        kid = await the_child(engine, snap)
    assert kid.status is SagaStatus.COMPENSATED
    assert kid.steps["pack"].status is StepStatus.COMPENSATED
    assert snap.status is SagaStatus.COMPENSATED
    ship = snap.steps["ship"]
    assert ship.status is StepStatus.FAILED
    assert ship.error is not None
    assert f"child saga {kid.id} was compensated" in ship.error and "send refused" in ship.error
    assert snap.steps["reserve"].status is StepStatus.COMPENSATED
    assert snap.steps["charge"].status is StepStatus.PENDING


async def test_a_completed_child_is_reopened_and_compensated_when_the_parent_rolls_back(store_url: str) -> None:
    async with engine_on(store_url) as engine:
        pid = await engine.start("order", {"order_id": "o-3", "fail_charge": True})
        snap = await engine.wait(pid, timeout=20)
        kid = await the_child(engine, snap)
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["ship"].status is StepStatus.COMPENSATED
    assert kid.status is SagaStatus.COMPENSATED
    assert [kid.steps[n].status for n in ("pack", "send")] == [StepStatus.COMPENSATED] * 2
    kinds = [h.kind for h in kid.history]
    assert kinds.index("completed") < kinds.index("compensating") < kinds.index("compensated")
    undone = [h.step for h in kid.history if h.kind == "compensation_completed"]
    assert undone == ["send", "pack"]  # in reverse order
    # The parent undid the child before the step the child depends on.
    order_of = [h.step for h in snap.history if h.kind == "compensation_completed"]
    assert order_of == ["ship", "reserve"]


async def test_compensating_the_parent_compensates_a_running_child(store_url: str) -> None:
    async with engine_on(store_url) as engine:
        pid = await engine.start("order", {"order_id": "o-4", "hold_send": 30})

        async def sending() -> bool:
            st = await engine.store.get(pid)
            if st is None or CHILDREN not in st.meta:
                return False
            kid = await engine.store.get(st.meta[CHILDREN]["ship"])
            return kid is not None and kid.steps["send"].status is StepStatus.RUNNING

        await until(sending, what="the child's send step running")
        await engine.compensate(pid, reason="customer cancelled")
        snap = await engine.wait(pid, timeout=20)
        kid = await the_child(engine, snap)
    assert snap.status is SagaStatus.COMPENSATED
    assert snap.steps["ship"].status is StepStatus.COMPENSATED
    assert kid.status is SagaStatus.COMPENSATED
    assert kid.steps["pack"].status is StepStatus.COMPENSATED
    assert kid.steps["send"].status is StepStatus.COMPENSATED  # cancelled: it may have had its effect
    assert kid.error is not None and f"its parent saga {pid} is rolled back" in kid.error


async def test_aborting_the_parent_aborts_a_running_child(store_url: str) -> None:
    async with engine_on(store_url) as engine:
        pid = await engine.start("order", {"order_id": "o-5", "hold_pack": 30})

        async def packing() -> bool:
            st = await engine.store.get(pid)
            if st is None or CHILDREN not in st.meta:
                return False
            kid = await engine.store.get(st.meta[CHILDREN]["ship"])
            return kid is not None and kid.steps["pack"].status is StepStatus.RUNNING

        await until(packing, what="the child's pack step running")
        await engine.abort(pid, reason="fraud")
        kid_id = (await engine.store.get(pid)).meta[CHILDREN]["ship"]  # type: ignore[union-attr]
        kid = await engine.wait(kid_id, timeout=20)
        snap = await engine.get(pid)
    assert snap.status is SagaStatus.ABORTED
    assert kid.status is SagaStatus.ABORTED
    assert kid.error is not None and f"its parent saga {pid} was aborted" in kid.error and "fraud" in kid.error


async def test_the_childs_end_reaches_the_parent_when_the_worker_dies_before_telling_it(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child's notification is lost (its worker died after the child's end); the parent's look finds it."""
    told: list[str] = []

    async def lost(self: Children, parent_id: str, outcome: Any) -> None:
        told.append(outcome.child_id)

    async with engine_on(store_url) as engine:
        monkeypatch.setattr(Children, "_tell_parent", lost)
        pid = await engine.start("order", {"order_id": "o-6"})

        async def child_done() -> bool:
            st = await engine.store.get(pid)
            if st is None or CHILDREN not in st.meta:
                return False
            kid = await engine.store.get(st.meta[CHILDREN]["ship"])
            return kid is not None and kid.status is SagaStatus.COMPLETED

        await until(child_done, what="the child's completion")

        async def notified() -> bool:  # the notification is an effect carried out after the child's end is committed
            return bool(told)

        await until(notified, what="the child's notification (made, and lost)")
        assert (await engine.get(pid)).steps["ship"].status is StepStatus.RUNNING
        monkeypatch.undo()  # the parent's next look (check_every=0.5s) reports the child's end
        snap = await engine.wait(pid, timeout=20)
    assert snap.status is SagaStatus.COMPLETED
    assert snap.steps["ship"].result["data"]["order_id"] == "o-6"


async def test_a_child_is_started_once_though_its_start_is_carried_out_again_after_a_restart(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker commits the child step's dispatch and dies before starting the child; the next starts it once."""

    async def dies(self: Children, *args: Any) -> None:
        return None

    first = engine_on(store_url, lease_seconds=1.0)
    monkeypatch.setattr(Children, "_start_child", dies)
    async with first:
        pid = await first.start("order", {"order_id": "o-7"})

        async def dispatched() -> bool:
            st = await first.store.get(pid)
            return st is not None and st.steps["ship"].status is StepStatus.RUNNING

        await until(dispatched, what="the child step's dispatch")
    monkeypatch.undo()
    async with engine_on(store_url, lease_seconds=1.0) as a, engine_on(store_url, lease_seconds=1.0) as b:
        snap = await a.wait(pid, timeout=30)
        assert snap.status is SagaStatus.COMPLETED
        kids = await b.list(name="shipping")
    assert [k.id for k in kids] == [snap.steps["ship"].result["saga_id"]]


async def test_an_unknown_child_definition_or_a_failing_data_hook_fails_the_step_clearly(store_url: str) -> None:
    def bad_data(data: Any, results: Any) -> Any:
        raise KeyError("customer")

    b = SagaBuilder("needs_unknown")
    b.step("go", action=child("nowhere"))
    c = SagaBuilder("bad_hook")
    c.step("go", action=child("shipping", data=bad_data))
    async with SagaEngine(store_url) as engine:
        engine.register(b.build(), c.build(), shipping)
        unknown = await engine.wait(await engine.start("needs_unknown", {}), timeout=20)
        hook = await engine.wait(await engine.start("bad_hook", {}), timeout=20)
    assert unknown.status is SagaStatus.COMPENSATED
    assert unknown.steps["go"].error is not None
    assert "child saga nowhere could not be started" in unknown.steps["go"].error
    assert "no saga named nowhere is registered" in unknown.steps["go"].error
    assert hook.steps["go"].error is not None and "KeyError" in hook.steps["go"].error


def test_bad_child_steps_are_refused_when_the_definition_is_built() -> None:
    def undo(ctx: StepContext) -> None: ...

    cases: list[tuple[Callable[[SagaBuilder], Any], str]] = [
        (lambda b: b.step("s", action=child("x"), compensation=undo), "a child saga step takes no compensation"),
        (lambda b: b.step("s", action=child("bad name!")), "child saga name 'bad name!' is invalid"),
        (lambda b: b.step("s", action=child("x", version=0)), "version must be an integer >= 1"),
        (lambda b: b.step("s", action=child("x", check_every=0)), "check_every must be a number of seconds > 0"),
        (lambda b: b.step("s", action=child("x", data=lambda d: d)), "data must accept two arguments"),
        (lambda b: b.step("s", action=child("x", data="d")), "data must be a function"),  # type: ignore[arg-type]
    ]
    for make, message in cases:
        b = SagaBuilder("p")
        with pytest.raises(DefinitionError, match=message.replace("(", r"\(")):
            make(b)  # refused by step() itself, or by
            b.build()
    b = SagaBuilder("p")
    b.step("go", lambda ctx: None, pivot=True)
    b.step("ship", action=child("x"))
    with pytest.raises(DefinitionError, match=r"runs after pivot step 'go'.*child\(\.\.\., compensate=False\)"):
        b.build()
    b = SagaBuilder("p")
    b.step("go", lambda ctx: None, pivot=True)
    b.step("ship", action=child("x", compensate=False))
    assert b.build().by_name["ship"].compensation is None


async def test_a_parent_waits_for_its_child_across_engines(store_url: str) -> None:
    """The child runs on one engine, the parent was started on another: the end still reaches the parent."""
    async with engine_on(store_url) as a, engine_on(store_url) as b:
        ids = [await a.start("order", {"order_id": f"o-{i}"}) for i in range(6)]
        snaps = [await b.wait(i, timeout=30) for i in ids]
        kids = await a.list(name="shipping")
    assert {s.status for s in snaps} == {SagaStatus.COMPLETED}
    assert sorted(k.id for k in kids) == sorted(s.steps["ship"].result["saga_id"] for s in snaps)


def _start_worker(url: str, log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "CHILD_SAGAS_LOG": str(log)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagakit", "worker", "tests.child_sagas", "--store", url, "--grace", "0.5",
         "--lease", "2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert "ready" in proc.stdout.readline()
    return proc


async def test_worker_processes_run_parents_and_children_one_child_each_even_when_one_is_killed(
    store_url: str, tmp_path: Path
) -> None:
    """Three worker processes; one is SIGKILLed midway. Every order completes or rolls back with its one child."""
    log = tmp_path / "steps.log"
    producer = SagaEngine(store_url)
    producer.register(order, shipping)
    procs = [_start_worker(store_url, log) for _ in range(3)]
    try:
        ids = []
        for i in range(24):
            data: dict[str, Any] = {"order_id": f"o-{i}", "hold_pack": 0.05}
            if i % 4 == 1:
                data["fail_send"] = True
            if i % 4 == 2:
                data["fail_charge"] = True
            ids.append(await producer.start("order", data))

        async def some_started() -> bool:
            return len(await producer.list(name="shipping")) >= 4

        await until(some_started, timeout=30, what="children started")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].communicate(timeout=10)
        snaps = [await producer.wait(i, timeout=60) for i in ids]
        kids = {k.id: k for k in await producer.list(name="shipping", limit=1000)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.communicate(timeout=30)
        await producer.close()
    for i, snap in enumerate(snaps):
        st = snap.status
        expected = SagaStatus.COMPLETED if i % 4 in (0, 3) else SagaStatus.COMPENSATED
        assert st is expected, (i, st, snap.error)
    # One child per order, and each ended as its parent says.
    assert len(kids) == len(ids)
    for i, snap in enumerate(snaps):
        [(step, kid_id)] = snap.children  # a resumed parent's tokens differ: its record names its child
        assert step == "ship" and kids[kid_id].parent_id == snap.id
        assert kids[kid_id].status is (SagaStatus.COMPLETED if i % 4 in (0, 3) else SagaStatus.COMPENSATED)
    # A killed worker may run a step again (at least once), but never starts a second child.
    lines = log.read_text().splitlines()
    started = {line.split()[1] for line in lines if line.startswith("shipping ")}
    assert started <= set(kids)


async def test_two_workers_carrying_out_the_same_start_make_one_child_that_runs_once(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second insert of a child's id is refused: that worker holds no copy of it and runs none of its steps."""
    log = tmp_path / "steps.log"
    monkeypatch.setenv("CHILD_SAGAS_LOG", str(log))
    real = Children._start_child

    async def later(self: Children, *args: Any) -> None:
        return None

    monkeypatch.setattr(Children, "_start_child", later)
    async with engine_on(store_url) as a, engine_on(store_url) as b:
        pid = await a.start("order", {"order_id": "o-8"})

        async def dispatched() -> bool:
            st = await a.store.get(pid)
            return st is not None and st.steps["ship"].status is StepStatus.RUNNING

        await until(dispatched, what="the child step's dispatch")
        parent = await a.store.get(pid)
        assert parent is not None
        start = StartChild("ship", parent.steps["ship"].token, parent.meta[CHILDREN]["ship"], "shipping", None)
        monkeypatch.setattr(Children, "_start_child", real)
        await asyncio.gather(a._child_effect(parent, order, start), b._child_effect(parent, order, start))
        snap = await a.wait(pid, timeout=20)
    assert snap.status is SagaStatus.COMPLETED
    kid = snap.children[0][1]
    runs = [line for line in log.read_text().splitlines() if line.startswith(f"shipping {kid} ")]
    assert sorted(runs) == [f"shipping {kid} pack do", f"shipping {kid} send do"]


async def test_an_abort_that_does_not_reach_the_child_is_sent_again_until_the_child_has_ended(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker that aborted the parent died before telling the child: the aborted parent stays due and tells it."""
    told: list[str] = []

    async def lost(self: Children, parent: Any, eff: Any) -> None:
        told.append(eff.child_id)

    async with engine_on(store_url) as engine:
        pid = await engine.start("order", {"order_id": "o-9", "hold_pack": 30})

        async def packing() -> bool:
            st = await engine.store.get(pid)
            if st is None or CHILDREN not in st.meta:
                return False
            kid = await engine.store.get(st.meta[CHILDREN]["ship"])
            return kid is not None and kid.steps["pack"].status is StepStatus.RUNNING

        await until(packing, what="the child's pack step running")
        monkeypatch.setattr(Children, "_abort_child", lost)
        await engine.abort(pid, reason="fraud")
        kid_id = (await engine.store.get(pid)).meta[CHILDREN]["ship"]  # type: ignore[union-attr]
        await until(lambda: _true(bool(told)), what="the lost abort request")
        parent = await engine.store.get(pid)
        assert parent is not None and parent.status is SagaStatus.ABORTED
        assert parent.meta[ABORTING]["children"] == {kid_id: "ship"} and parent.wake_at is not None
        assert (await engine.get(kid_id)).status is SagaStatus.RUNNING
        monkeypatch.undo()  # the parent's next look (check_every=0.5s) tells the child again
        kid = await engine.wait(kid_id, timeout=20)

        async def settled() -> bool:
            st = await engine.store.get(pid)
            return st is not None and ABORTING not in st.meta and st.wake_at is None

        await until(settled, what="the aborted parent letting go of its child")
        history = (await engine.get(pid)).history
    assert kid.status is SagaStatus.ABORTED and "fraud" in (kid.error or "")
    assert any(h.kind == "child_ended" and kid_id in h.message for h in history)


async def _true(value: bool) -> bool:
    return value


async def test_sagakit_show_prints_the_link_between_parent_and_child(store_url: str) -> None:
    from click.testing import CliRunner

    from sagakit.cli._main import cli

    async with engine_on(store_url) as engine:
        pid = await engine.start("order", {"order_id": "o-10"})
        snap = await engine.wait(pid, timeout=20)
    kid = snap.children[0][1]

    def show(*args: str) -> str:
        result = CliRunner().invoke(cli, ["show", *args, "--store", store_url], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    parent_text = await asyncio.to_thread(show, pid)  # one at a time: the runner swaps the process's stdout
    child_text = await asyncio.to_thread(show, kid)
    assert f"{kid} (step ship)" in parent_text and "child saga" in parent_text
    assert f"{pid} (step ship)" in child_text and "parent saga" in child_text
    as_json = json.loads(await asyncio.to_thread(show, kid, "--json"))
    assert as_json["parent"] == {"id": pid, "step": "ship"} and as_json["children"] == []


async def test_compensating_parents_from_another_process_cancels_their_children_running_in_worker_processes(
    store_url: str, tmp_path: Path
) -> None:
    """The rollback reaches each child through the worker process that holds it (the operator-request path)."""
    log = tmp_path / "steps.log"
    operator = SagaEngine(store_url)  # not running: like an admin CLI or an API process
    operator.register(order, shipping)
    procs = [_start_worker(store_url, log) for _ in range(2)]
    try:
        ids = [await operator.start("order", {"order_id": f"o-{i}", "hold_send": 300}) for i in range(4)]

        async def all_sending() -> bool:
            kids = await operator.list(name="shipping")
            return len(kids) == len(ids) and all(k.steps["send"].status is StepStatus.RUNNING for k in kids)

        await until(all_sending, timeout=30, what="every child's send step running in a worker process")
        for pid in ids:
            await operator.compensate(pid, reason="warehouse closed")
        snaps = [await operator.wait(pid, timeout=60) for pid in ids]
        kids = [await operator.get(s.children[0][1]) for s in snaps]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=30)
        await operator.close()
    for snap, kid in zip(snaps, kids, strict=True):
        assert snap.status is SagaStatus.COMPENSATED and snap.steps["ship"].status is StepStatus.COMPENSATED
        assert kid.status is SagaStatus.COMPENSATED
        cancelled = [h for h in kid.history if h.kind == "step_cancelled" and h.step == "send"]
        assert cancelled and "warehouse closed" in cancelled[0].message
        assert snap.steps["reserve"].status is StepStatus.COMPENSATED


async def test_the_parents_history_names_the_child_it_started_and_asked_to_roll_back(store_url: str) -> None:
    async with engine_on(store_url) as engine:
        snap = await engine.wait(await engine.start("order", {"order_id": "o-11", "fail_charge": True}), timeout=20)
    kid = snap.children[0][1]
    entries = [(h.kind, h.message) for h in snap.history if h.kind in ("child_started", "child_rollback")]
    assert entries == [
        ("child_started", f"step 'ship' starts child saga {kid}"),
        ("child_rollback", f"step 'ship' asks child saga {kid} to roll back"),
    ]
