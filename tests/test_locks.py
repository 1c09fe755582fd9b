"""Semantic locks, rule by rule: the definition's checks and the machine's decisions."""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import DefinitionError, SagaBuilder, SagaStatus, StepStatus
from sagakit.machine import (
    LOCKS,
    Abort,
    AcquireLocks,
    Compensate,
    LocksGranted,
    LocksRefused,
    ReleaseLocks,
    Resume,
    RunStep,
    StepFailed,
    StepSucceeded,
    Timer,
    decide,
    new_saga,
)


def act(ctx: Any) -> None:
    return None


def order(data: dict[str, Any]) -> list[str]:
    return [f"order:{data['order_id']}"]


def saga(**kw: Any) -> Any:
    b = SagaBuilder("locked", locks=order, **kw)
    b.step("reserve", act, act)
    b.step("charge", act)
    return b.build()


def test_a_saga_waits_for_its_keys_before_its_first_step() -> None:
    d = new_saga(saga(lock_timeout=5.0), "s1", {"order_id": 7}, 10.0)
    assert d.state.status is SagaStatus.RUNNING
    assert d.effects == [AcquireLocks(("order:7",), False, False)]
    assert d.state.meta[LOCKS]["wanted"] == ["order:7"] and d.state.wake_at == 15.0
    assert d.history[-1].kind == "lock_waiting"
    d = decide(saga(), d.state, LocksGranted(("order:7",)), 11.0)
    assert [type(e) for e in d.effects] == [RunStep] and d.state.meta[LOCKS]["held"] == ["order:7"]
    assert d.history[0].kind == "lock_acquired" and "after 1.000s" in d.history[0].message


def test_keys_are_released_in_the_final_transition_of_every_ending() -> None:
    defn = saga()
    d = new_saga(defn, "s1", {"order_id": 7}, 0.0)
    d = decide(defn, d.state, LocksGranted(("order:7",)), 1.0)
    done = decide(defn, d.state, StepSucceeded("reserve", d.effects[0].token), 2.0)
    done = decide(defn, done.state, StepSucceeded("charge", done.effects[0].token), 3.0)
    assert done.state.status is SagaStatus.COMPLETED and ReleaseLocks(None) in done.effects
    aborted = decide(defn, d.state, Abort("x"), 2.0)
    assert aborted.state.status is SagaStatus.ABORTED and ReleaseLocks(None) in aborted.effects
    failed = decide(defn, d.state, StepFailed("reserve", d.effects[0].token, "no", retryable=False), 2.0)
    assert failed.state.status is SagaStatus.COMPENSATED and ReleaseLocks(None) in failed.effects
    assert failed.state.meta[LOCKS]["held"] == []


def test_fail_policy_names_the_key_and_the_holder() -> None:
    defn = saga(lock_policy="fail")
    d = new_saga(defn, "s1", {"order_id": 7}, 0.0)
    assert d.effects == [AcquireLocks(("order:7",), True, False)]
    d = decide(defn, d.state, LocksRefused(("order:7",), "taken", (("order:7", "other-saga"),)), 1.0)
    assert d.state.status is SagaStatus.COMPENSATED
    assert d.state.error == "could not acquire lock 'order:7', taken by saga other-saga (lock_policy 'fail')"
    assert all(s.status is StepStatus.PENDING and s.attempts == 0 for s in d.state.steps.values())


def test_the_wait_times_out_with_a_last_ask_then_fails_naming_the_holder() -> None:
    defn = saga(lock_timeout=2.0)
    d = new_saga(defn, "s1", {"order_id": 7}, 0.0)
    early = decide(defn, d.state, Timer(), 1.0)
    assert early.effects == []
    d = decide(defn, d.state, Timer(), 2.5)
    assert d.effects == [AcquireLocks(("order:7",), False, True)] and d.state.wake_at is None
    again = decide(defn, d.state, Resume(), 3.0)  # its worker died: the last ask goes out again
    assert again.effects == [AcquireLocks(("order:7",), False, True)]
    d = decide(defn, d.state, LocksRefused(("order:7",), "timeout", (("order:7", "s0"),)), 3.0)
    assert d.state.error == "timed out after 2.0s waiting for lock 'order:7', taken by saga s0"
    assert d.state.status is SagaStatus.COMPENSATED


def test_a_grant_for_keys_no_longer_wanted_is_ignored() -> None:
    defn = saga()
    d = new_saga(defn, "s1", {"order_id": 7}, 0.0)
    d = decide(defn, d.state, Compensate("stop"), 1.0)
    assert d.state.status is SagaStatus.COMPENSATED and ReleaseLocks(("order:7",)) in d.effects
    late = decide(defn, d.state, LocksGranted(("order:7",)), 2.0)
    assert late.effects == [] and late.history == []


def test_release_after_a_step_lets_the_rest_run_without_the_keys() -> None:
    defn = saga(release_locks_after="reserve")
    d = new_saga(defn, "s1", {"order_id": 7}, 0.0)
    d = decide(defn, d.state, LocksGranted(("order:7",)), 1.0)
    d = decide(defn, d.state, StepSucceeded("reserve", d.effects[0].token), 2.0)
    assert d.effects[0] == ReleaseLocks(("order:7",)) and isinstance(d.effects[1], RunStep)
    assert d.state.meta[LOCKS]["released"] is True and d.state.meta[LOCKS]["held"] == []


def test_a_step_takes_its_own_keys_before_its_first_attempt() -> None:
    b = SagaBuilder("stepped")
    b.step("reserve", act)
    b.step("ship", act, locks=lambda data: ["warehouse:1", "warehouse:1"])
    defn = b.build()
    d = new_saga(defn, "s1", {}, 0.0)
    assert [e.step for e in d.effects if isinstance(e, RunStep)] == ["reserve"]
    d = decide(defn, d.state, StepSucceeded("reserve", d.effects[0].token), 1.0)
    assert d.effects == [AcquireLocks(("warehouse:1",), False, False)]
    d = decide(defn, d.state, LocksGranted(("warehouse:1",)), 2.0)
    assert [e.step for e in d.effects if isinstance(e, RunStep)] == ["ship"]


def test_keys_that_cannot_be_read_fail_the_saga_with_the_reason() -> None:
    b = SagaBuilder("bad", locks=lambda data: [data["missing"]])
    b.step("one", act)
    d = new_saga(b.build(), "s1", {}, 0.0)
    assert d.state.status is SagaStatus.COMPENSATED
    assert d.state.error == "the saga's locks cannot be read: the locks function raised KeyError: 'missing'"


def test_a_retried_failed_saga_takes_its_keys_again() -> None:
    b = SagaBuilder("pivoted", locks=order, lock_timeout=2.0)
    b.step("pay", act, pivot=True)
    b.step("ship", act)
    defn = b.build()
    d = new_saga(defn, "s1", {"order_id": 1}, 0.0)
    d = decide(defn, d.state, LocksGranted(("order:1",)), 1.0)
    d = decide(defn, d.state, StepSucceeded("pay", d.effects[0].token), 2.0)
    d = decide(defn, d.state, StepFailed("ship", d.effects[0].token, "down", retryable=False), 3.0)
    assert d.state.status is SagaStatus.FAILED and ReleaseLocks(None) in d.effects
    from sagakit.machine import Retry

    d = decide(defn, d.state, Retry("again"), 4.0)
    assert d.effects == [AcquireLocks(("order:1",), False, False)]
    refused = decide(defn, d.state, LocksRefused(("order:1",), "timeout", (("order:1", "other"),)), 5.0)
    assert refused.state.status is SagaStatus.FAILED  # past its pivot: no rollback, an operator again
    assert refused.state.error == (
        "the saga cannot go on without the saga's locks: timed out after 2.0s waiting for lock 'order:1', "
        "taken by saga other"
    )
    d = decide(defn, d.state, LocksGranted(("order:1",)), 5.0)
    assert [e.step for e in d.effects if isinstance(e, RunStep)] == ["ship"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"locks": "order"}, "locks must be a function"),
        ({"locks": order, "lock_policy": "queue"}, "lock_policy must be 'wait' or 'fail', got 'queue'"),
        ({"locks": order, "lock_timeout": 0}, "lock_timeout must be > 0 seconds or None, got 0"),
        ({"locks": order, "release_locks_after": "reserv"}, "unknown step 'reserv' (did you mean 'reserve'?)"),
        ({"lock_timeout": 3.0}, "need locks= on the saga or on a step"),
    ],
)
def test_bad_lock_settings_are_refused_by_build(kw: dict[str, Any], message: str) -> None:
    b = SagaBuilder("bad", **kw)
    b.step("reserve", act)
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        b.build()


async def test_a_step_waiting_for_a_key_while_its_saga_runs_another_branch_gets_it(store_url: str) -> None:
    """The grant reaches a saga whose worker holds it busy with another branch: it is not lost."""
    import asyncio

    from sagakit import SagaEngine, StepContext

    holder_gate = asyncio.Event()
    branch_gate = asyncio.Event()
    shipped: list[str] = []

    async def hold(ctx: StepContext) -> None:
        await holder_gate.wait()

    async def branch(ctx: StepContext) -> None:
        await branch_gate.wait()

    async def ship(ctx: StepContext) -> None:
        shipped.append(ctx.saga_id)

    h = SagaBuilder("holder", locks=lambda data: ["warehouse:1"])
    h.step("hold", hold)
    b = SagaBuilder("shipper")
    b.step("branch", branch, after=[])
    b.step("ship", ship, after=[], locks=lambda data: ["warehouse:1"])
    async with SagaEngine(store_url) as engine:
        engine.register(h.build(), b.build())
        holder = await engine.start("holder", {})
        for _ in range(200):
            if any(e.held for e in await engine.store.locks()):
                break
            await asyncio.sleep(0.02)
        shipper = await engine.start("shipper", {})
        for _ in range(200):
            if any(not e.held for e in await engine.store.locks()):
                break
            await asyncio.sleep(0.02)
        holder_gate.set()
        assert (await engine.wait(holder, timeout=10)).status is SagaStatus.COMPLETED
        branch_gate.set()
        snap = await engine.wait(shipper, timeout=10)
    assert snap.status is SagaStatus.COMPLETED and shipped == [shipper]
    kinds = [(e.kind, e.step) for e in snap.history if e.kind.startswith("lock")]
    assert kinds == [("lock_waiting", "ship"), ("lock_acquired", "ship"), ("locks_released", None)]


def test_sagakit_locks_lists_keys_holders_and_queues(tmp_path: Any) -> None:
    """``sagakit locks`` (and ``--json``, ``--saga``) over a store the admin test seeds for its dashboard."""
    import asyncio
    import json

    from click.testing import CliRunner

    from sagakit.cli._main import cli
    from tests.admin.test_locks_browser import seed

    holder, first, second = asyncio.run(seed(tmp_path / "sagas.db"))
    url = f"sqlite:///{tmp_path}/sagas.db"
    out = CliRunner().invoke(cli, ["locks", "--store", url, "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    [key] = json.loads(out.output)["locks"]
    assert key["key"] == "order:1" and key["holder"]["saga_id"] == holder
    assert [(q["saga_id"], q["position"]) for q in key["queue"]] == [(first, 1), (second, 2)]
    out = CliRunner().invoke(cli, ["locks", "--store", url], catch_exceptions=False, env={"COLUMNS": "250"})
    assert out.exit_code == 0 and "order:1" in out.output and f"{first}, {second}" in out.output
    out = CliRunner().invoke(cli, ["locks", "--store", url, "--saga", second[:3], "--json"], catch_exceptions=False)
    assert [k["key"] for k in json.loads(out.output)["locks"]] == ["order:1"]


def test_a_deadline_ends_the_wait_and_leaves_the_queue() -> None:
    b = SagaBuilder("hurried", locks=order, deadline=5.0)
    b.step("reserve", act)
    defn = b.build()
    d = new_saga(defn, "s1", {"order_id": 3}, 0.0)
    assert d.state.wake_at == 5.0
    d = decide(defn, d.state, Resume(), 6.0)  # claimed when the deadline is due
    assert ReleaseLocks(("order:3",)) in d.effects
    assert d.state.status is SagaStatus.COMPENSATED and d.state.error == "deadline of 5.0s exceeded"
    assert not d.state.meta[LOCKS]["wanted"]


async def test_aborting_a_parked_saga_releases_its_keys(store_url: str) -> None:
    """An engine without the saga's definition (it is parked there) aborts it: its keys go to the next in line."""
    from sagakit import SagaEngine
    from sagakit._store import Write, store_from_url

    defn = saga()
    store = store_from_url(store_url)
    await store.open()
    ids = []
    for i in range(3):  # as the machine and the store leave them: the first holds order:4, two wait
        d = new_saga(defn, f"s{i}", {"order_id": 4}, 100.0 + i)
        await store.commit([Write(d.state, 0, d.history, d.state.wake_at, insert=True)])
        assert (await store.acquire_locks(f"s{i}", ["order:4"], 100.0 + i)).outcome in ("granted", "waiting")
        ids.append(f"s{i}")
    await store.close()
    engine = SagaEngine(store_url)  # no definition registered: every one of these sagas is parked here
    try:
        await engine.abort("s1", reason="not this one")
        assert [(e.saga_id, e.held) for e in await engine.locks()] == [("s0", True), ("s2", False)]
        await engine.abort("s0", reason="unblock")
        assert [(e.saga_id, e.held) for e in await engine.locks()] == [("s2", True)]
        assert (await engine.get("s2")).wake_at is not None  # due: a worker with the definition goes on
    finally:
        await engine.close()


async def test_sagas_without_locks_make_no_lock_calls_and_no_lock_writes() -> None:
    from collections.abc import Sequence

    from sagakit import SagaEngine
    from sagakit._store import LockAnswer, Write
    from sagakit.stores.memory import MemoryStore

    class Counting(MemoryStore):
        asked = 0
        lock_writes = 0
        writes = 0

        async def acquire_locks(self, *args: Any, **kw: Any) -> LockAnswer:
            self.asked += 1
            return await super().acquire_locks(*args, **kw)

        async def commit(self, writes: Sequence[Write]) -> list[str | None]:
            self.writes += len(writes)
            self.lock_writes += sum(1 for w in writes if w.locks)
            return await super().commit(writes)

    b = SagaBuilder("plain")
    b.step("one", act)
    b.step("two", act)
    store = Counting()
    async with SagaEngine(store) as engine:
        engine.register(b.build())
        ids = [await engine.start("plain", {"n": i}) for i in range(20)]
        done = [await engine.wait(sid, timeout=10) for sid in ids]
    assert {s.status for s in done} == {SagaStatus.COMPLETED}
    assert store.writes > 0 and store.asked == 0 and store.lock_writes == 0
    assert all(not s.history or all(not h.kind.startswith("lock") for h in s.history) for s in done)
