"""The operations API from Python: search, counts, timeline, graph, actions (single and bulk), masking."""

from __future__ import annotations

import asyncio
import re

import pytest

from sagakit import SagaEngine, SagaNotFound, SagaStateError, SagaStatus
from sagakit._masking import MASK
from sagakit.admin import (
    DefinitionMissing,
    DefinitionsNotLoaded,
    InvalidParameter,
    Masker,
    Operations,
    SagaFilter,
    load_definitions,
    parse_filter,
)

from . import sample_app
from .conftest import Seed

# ---------------------------------------------------------------- search


async def test_search_by_status_name_version_and_correlation(ops: Operations, seed: Seed) -> None:
    page = await ops.search(SagaFilter(statuses=(SagaStatus.FAILED,)))
    assert {s.id for s in page.items} == set(seed.failed)
    assert page.total == 2
    assert all(not s.history for s in page.items)  # lists carry no history
    both = await ops.search(SagaFilter(statuses=(SagaStatus.FAILED, SagaStatus.COMPLETED)))
    assert {s.id for s in both.items} == set(seed.failed + seed.completed)
    assert (await ops.search(SagaFilter(name="order", version=1))).total == len(seed.all)
    assert (await ops.search(SagaFilter(version=2))).total == 0
    assert (await ops.search(SagaFilter(name="refund"))).total == 0
    page = await ops.search(SagaFilter(correlation_id="c-ok"))
    assert {s.id for s in page.items} == set(seed.completed)


async def test_search_by_business_key_and_time_ranges(ops: Operations, seed: Seed) -> None:
    page = await ops.search(SagaFilter(data_equals={"order_id": "bad-1"}))
    assert [s.id for s in page.items] == [seed.failed[1]]
    # Values compare as text, whatever their JSON type.
    page = await ops.search(SagaFilter(data_equals={"customer": "0"}))
    assert {s.id for s in page.items} == {seed.completed[0], seed.failed[0]}
    first = await ops.get(seed.completed[0])
    last = await ops.get(seed.pending[0])
    after = await ops.search(SagaFilter(created_after=last.created_at))
    assert [s.id for s in after.items] == seed.pending
    before = await ops.search(SagaFilter(created_before=first.created_at + 1e-6))
    assert [s.id for s in before.items] == [seed.completed[0]]
    updated = await ops.search(SagaFilter(updated_after=last.updated_at))
    assert seed.pending[0] in {s.id for s in updated.items}
    assert (await ops.search(SagaFilter(updated_before=first.created_at))).total == 0


async def test_search_pages_newest_first(ops: Operations, seed: Seed) -> None:
    everything = await ops.search(limit=100)
    assert everything.total == 6
    assert [s.id for s in everything.items][0] == seed.pending[0]
    created = [s.created_at for s in everything.items]
    assert created == sorted(created, reverse=True)
    pages = [await ops.search(limit=4, offset=o) for o in (0, 4)]
    assert [s.id for p in pages for s in p.items] == [s.id for s in everything.items]
    with pytest.raises(InvalidParameter, match="limit"):
        await ops.search(limit=0)
    with pytest.raises(InvalidParameter, match="offset"):
        await ops.search(offset=-1)


async def test_stuck_is_failed_or_overdue(seed: Seed) -> None:
    now = [0.0]
    engine = SagaEngine(seed.url, clock=lambda: now[0] or __import__("time").time())
    engine.register(sample_app.order)
    async with Operations(engine, owns_engine=True) as ops:
        # Right now the pending saga is due, not yet overdue by 60 s: only the failed ones are stuck.
        stuck = await ops.search(SagaFilter(stuck_for=60))
        assert {s.id for s in stuck.items} == set(seed.failed)
        # Ten minutes on, nobody ran the pending saga: it is overdue, hence stuck too.
        pending = await ops.get(seed.pending[0])
        assert pending.wake_at is not None
        now[0] = pending.wake_at + 600
        stuck = await ops.search(SagaFilter(stuck_for=60))
        assert {s.id for s in stuck.items} == {*seed.failed, *seed.pending}
        assert stuck.total == 3
        assert stuck.to_dict()["items"][0]["overdue_seconds"] == pytest.approx(600, abs=1)
        only_pending = await ops.search(SagaFilter(stuck_for=60, statuses=(SagaStatus.PENDING,)))
        assert [s.id for s in only_pending.items] == seed.pending
        # Pages through the merged list.
        pages = [await ops.search(SagaFilter(stuck_for=60), limit=2, offset=o) for o in (0, 2)]
        assert [s.id for p in pages for s in p.items] == [s.id for s in stuck.items]
        counts = await ops.counts(SagaFilter(stuck_for=60))
        assert counts[SagaStatus.FAILED] == 2
        assert counts[SagaStatus.PENDING] == 1
        assert sum(counts.values()) == 3


async def test_counts_per_status(ops: Operations, seed: Seed) -> None:
    counts = await ops.counts()
    assert counts == {
        SagaStatus.PENDING: 1,
        SagaStatus.RUNNING: 0,
        SagaStatus.COMPENSATING: 0,
        SagaStatus.COMPLETED: 2,
        SagaStatus.COMPENSATED: 1,
        SagaStatus.FAILED: 2,
        SagaStatus.ABORTED: 0,
    }
    assert (await ops.counts(SagaFilter(correlation_id="c-bad")))[SagaStatus.FAILED] == 2


async def test_overview(ops: Operations, seed: Seed) -> None:
    o = await ops.overview(window=600, bucket=60, stuck_for=60)
    d = o.to_dict()
    assert d["total"] == 6
    assert d["counts"]["failed"] == 2
    assert len(d["throughput"]) == 10
    assert sum(b["started"] for b in d["throughput"]) == 6
    assert sum(b["completed"] for b in d["throughput"]) == 2
    assert sum(b["failed"] for b in d["throughput"]) == 2
    assert {s["id"] for s in d["stuck"]["items"]} == set(seed.failed)
    assert d["definitions"] == [{"name": "order", "version": 1}]
    with pytest.raises(InvalidParameter, match="window"):
        await ops.overview(window=10_000_000, bucket=1)


# ---------------------------------------------------------------- inspecting


async def test_get_masks_secrets_in_data_results_errors_and_history(ops: Operations, seed: Seed) -> None:
    snap = await ops.get(seed.failed[0])
    assert snap.data["password"] == MASK
    assert snap.data["card"] == MASK
    assert snap.data["order_id"] == "bad-0"
    assert snap.steps["charge"].result["card_token"] == MASK
    assert snap.steps["charge"].result["amount"] == 42
    assert "hunter2" not in (snap.steps["ship"].error or "")
    assert "password=***" in (snap.steps["ship"].error or "")
    assert "hunter2" not in repr(snap)
    assert "4111" not in repr(snap)
    with pytest.raises(SagaNotFound):
        await ops.get("no-such-saga")


async def test_masking_is_configurable(seed: Seed) -> None:
    async with Operations.for_store(seed.url, [sample_app.order], mask=r"^order_id$") as ops:
        snap = await ops.get(seed.failed[0])
        assert snap.data["order_id"] == MASK
        assert snap.data["password"] == "hunter2"
    async with Operations.for_store(seed.url, mask=None) as ops:
        assert (await ops.get(seed.failed[0])).data["card"]["cvv"] == "123"


def test_masker_on_values_and_text() -> None:
    m = Masker()
    value = {"Password": "p", "nested": [{"api_key": 1, "apiKey": 2, "ok": "x"}], "IBAN": "DE..", "note": "token=abc"}
    assert m.value(value) == {
        "Password": MASK,
        "nested": [{"api_key": MASK, "apiKey": MASK, "ok": "x"}],
        "IBAN": MASK,
        "note": f"token={MASK}",
    }
    text = """failed: {"card_number": "4111 1111", "amount": 3} and secret='s p' then password: hunter2, ok"""
    masked = m.text(text)
    assert "4111" not in masked
    assert "s p" not in masked
    assert "hunter2" not in masked
    assert '"amount": 3' in masked
    assert m.text(None) is None
    with pytest.raises(ValueError, match="bad mask pattern"):
        Masker("(")


async def test_timeline_has_attempts_with_durations_errors_and_admin_actions(ops: Operations, seed: Seed) -> None:
    t = await ops.timeline(seed.failed[0])
    by_step = {a.step: a for a in t.attempts if a.direction == "action"}
    assert set(by_step) == {"reserve", "check_fraud", "charge", "ship"}
    assert by_step["reserve"].outcome == "completed"
    assert by_step["reserve"].duration is not None
    assert by_step["reserve"].duration >= 0
    ship = by_step["ship"]
    assert ship.outcome == "failed"
    assert ship.error is not None
    assert ship.error.startswith("NonRetryableError: carrier API down")
    assert "hunter2" not in ship.error
    assert t.admin_actions == ()
    await ops.abort(seed.failed[0], reason="customer cancelled", actor="alice")
    t = await ops.timeline(seed.failed[0])
    (action,) = t.admin_actions
    assert (action.action, action.actor, action.reason) == ("abort", "alice", "customer cancelled")
    d = t.to_dict()
    assert d["attempts"][0]["duration"] is not None
    assert d["events"][-1]["kind"] == "abort"

    comp = await ops.timeline(seed.compensated[0])
    outcomes = [(a.step, a.direction, a.outcome) for a in comp.attempts]
    assert ("reserve", "action", "failed") in outcomes


async def test_timeline_of_a_skip_names_who_and_why(ops: Operations, seed: Seed) -> None:
    await ops.skip(seed.failed[1], "ship", {"tracking": "by hand"}, reason="shipped by hand", actor="bob")
    t = await ops.timeline(seed.failed[1])
    (action,) = t.admin_actions
    assert (action.action, action.actor, action.reason, action.step) == ("skip", "bob", "shipped by hand", "ship")


async def test_graph_colours_each_step_by_its_state(ops: Operations, seed: Seed) -> None:
    g = await ops.graph(seed.failed[0])
    states = {n.name: n.state for n in g.nodes}
    assert states == {"reserve": "done", "check_fraud": "done", "charge": "done", "ship": "failed"}
    nodes = {n.name: n for n in g.nodes}
    assert nodes["charge"].pivot
    assert nodes["reserve"].compensation == "local"
    assert nodes["check_fraud"].compensation is None
    assert [(n.name, n.layer, n.row) for n in g.nodes] == [
        ("reserve", 0, 0),
        ("check_fraud", 0, 1),
        ("charge", 1, 0),
        ("ship", 2, 0),
    ]
    assert set(g.edges) == {("reserve", "charge"), ("check_fraud", "charge"), ("charge", "ship")}
    assert (g.layers, g.rows) == (3, 2)
    comp = {n.name: n.state for n in (await ops.graph(seed.compensated[0])).nodes}
    # reserve fails first; check_fraud, started beside it, is cancelled by the rollback
    assert comp == {"reserve": "failed", "check_fraud": "failed", "charge": "remaining", "ship": "remaining"}
    pending = {n.name: n.state for n in (await ops.graph(seed.pending[0])).nodes}
    assert set(pending.values()) == {"remaining"}


async def test_graph_without_the_definition_shows_stored_steps(seed: Seed) -> None:
    async with Operations.for_store(seed.url) as ops:
        g = await ops.graph(seed.failed[0])
        assert not g.definition_known
        assert [n.name for n in g.nodes] == ["reserve", "check_fraud", "charge", "ship"]
        assert g.edges == []
        assert {n.name: n.state for n in g.nodes}["ship"] == "failed"


def test_step_states_while_running_and_waiting() -> None:
    from sagakit import StepStatus
    from sagakit._snapshot import StepSnapshot
    from sagakit.admin._graph import step_state

    def snap(status: StepStatus, attempts: int = 1, nxt: float | None = None) -> StepSnapshot:
        return StepSnapshot("s", status, attempts, 0, None, None, None, None, nxt)

    assert step_state(snap(StepStatus.RUNNING), None) == "running"
    assert step_state(snap(StepStatus.PENDING, 1, 5.0), None) == "waiting"  # retry back-off
    assert step_state(snap(StepStatus.PENDING, 0), None) == "remaining"
    assert step_state(snap(StepStatus.COMPENSATING), None) == "running"
    assert step_state(snap(StepStatus.COMPENSATING, 1, 5.0), None) == "waiting"
    assert step_state(snap(StepStatus.COMPENSATED), None) == "compensated"
    assert step_state(snap(StepStatus.COMPENSATION_FAILED), None) == "failed"
    assert step_state(snap(StepStatus.SKIPPED), None) == "done"
    # A finished saga runs nothing: what it left running did not finish.
    assert step_state(snap(StepStatus.RUNNING), None, saga_finished=True) == "remaining"


async def test_allowed_actions_is_a_dry_run(ops: Operations, seed: Seed) -> None:
    failed = await ops.allowed_actions(seed.failed[0])
    assert failed["retry"] == {"allowed": True, "reason": None}
    assert failed["abort"]["allowed"]
    assert not failed["compensate"]["allowed"]
    assert "only a pending or running saga" in failed["compensate"]["reason"]
    assert failed["skip"]["steps"] == ["ship"]
    assert failed["fork"]["steps"] == ["reserve", "check_fraud", "charge", "ship"]
    done = await ops.allowed_actions(seed.completed[0])
    assert not done["retry"]["allowed"]
    assert not done["abort"]["allowed"]
    assert (await ops.get(seed.failed[0])).status is SagaStatus.FAILED  # nothing was written
    with pytest.raises(SagaNotFound):
        await ops.allowed_actions("nope")
    async with Operations.for_store(seed.url) as bare:
        missing = await bare.allowed_actions(seed.failed[0])
        assert not missing["retry"]["allowed"]
        assert "not registered" in missing["retry"]["reason"]


# ---------------------------------------------------------------- acting


async def wait_status(ops: Operations, saga_id: str, status: SagaStatus, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while (await ops.get(saga_id)).status is not status:
        assert loop.time() < end, f"saga {saga_id} did not become {status.value}"
        await asyncio.sleep(0.05)


async def test_retry_from_an_engine_without_workers_is_run_by_a_worker(ops: Operations, seed: Seed) -> None:
    """The admin engine records the retry and releases the saga due now; a worker finishes it at once."""
    outcome = await ops.retry(seed.failed[0], reason="carrier is back", actor="carol")
    assert outcome.ok
    assert outcome.status == "running"
    async with SagaEngine(seed.url) as worker:
        worker.register(sample_app.order)
        snap = await worker.wait(seed.failed[0], timeout=5)  # well before a 30 s lease would expire
    assert snap.status is SagaStatus.COMPLETED
    messages = [h.message for h in snap.history if h.kind == "retry"]
    assert messages == ["retry of steps ['ship'] by carol: carrier is back"]


async def test_actions_on_a_running_engine(seed: Seed) -> None:
    async with SagaEngine(seed.url) as engine:
        engine.register(sample_app.order)
        async with Operations(engine) as ops:
            ok = await ops.retry(seed.failed[0], actor="dave")
            assert ok.ok
            await wait_status(ops, seed.failed[0], SagaStatus.COMPLETED)
            skipped = await ops.skip(seed.failed[1], "ship", {"tracking": "manual"}, reason="by hand")
            assert skipped.ok
            await wait_status(ops, seed.failed[1], SagaStatus.COMPLETED)
            assert (await ops.get(seed.failed[1])).steps["ship"].result == {"tracking": "manual"}


async def test_compensate_abort_and_fork(ops: Operations, seed: Seed) -> None:
    out = await ops.compensate(seed.pending[0], reason="not wanted", actor="erin")
    assert out.ok
    assert out.status in ("compensated", "compensating")
    out = await ops.abort(seed.failed[0], reason="fraud", actor="erin")
    assert (out.ok, out.status) == (True, "aborted")
    fork = await ops.fork(seed.failed[1], "ship", reason="new carrier", actor="erin")
    assert fork.ok
    assert fork.new_id is not None
    new = await ops.get(fork.new_id)
    assert new.steps["charge"].result["amount"] == 42  # copied from the old saga (masked key aside)
    assert any(h.kind == "fork" and "erin" in h.message for h in new.history)
    old = await ops.timeline(seed.failed[1])
    assert [a.action for a in old.admin_actions] == ["fork"]


async def test_action_errors(ops: Operations, seed: Seed) -> None:
    with pytest.raises(SagaStateError, match="only a failed saga or a waiting step can be retried") as e:
        await ops.retry(seed.completed[0])
    assert e.value.reason.startswith("saga is completed")
    with pytest.raises(SagaNotFound):
        await ops.abort("nope")
    with pytest.raises(SagaStateError, match="has no step 'nope'"):
        await ops.skip(seed.failed[0], "nope")
    with pytest.raises(InvalidParameter, match="step"):
        await ops.act("skip", seed.failed[0])
    with pytest.raises(InvalidParameter, match="action"):
        await ops.act("explode", seed.failed[0])
    with pytest.raises(InvalidParameter, match="actor"):
        await ops.retry(seed.failed[0], actor="  ")
    with pytest.raises(InvalidParameter, match="reason"):
        await ops.retry(seed.failed[0], reason="x" * 1001)
    with pytest.raises(InvalidParameter, match="result"):
        await ops.skip(seed.failed[0], "ship", object())
    async with Operations.for_store(seed.url, definitions_hint="pass --app") as bare:
        with pytest.raises(DefinitionMissing, match=r"definition order v1 is not registered here .*pass --app"):
            await bare.retry(seed.failed[0])


async def test_bulk_actions_report_each_saga(ops: Operations, seed: Seed) -> None:
    f = SagaFilter(statuses=(SagaStatus.FAILED, SagaStatus.COMPLETED))
    dry = await ops.bulk("abort", f, dry_run=True)
    assert dry.matched == 4
    assert {o.saga_id for o in dry.outcomes} == set(seed.failed + seed.completed)
    assert (await ops.counts())[SagaStatus.ABORTED] == 0
    result = await ops.bulk("abort", f, reason="cleanup", actor="ops-bot")
    assert (result.matched, result.ok, result.rejected) == (4, 2, 2)
    by_id = {o.saga_id: o for o in result.outcomes}
    for sid in seed.failed:
        assert by_id[sid].ok
        assert by_id[sid].status == "aborted"
    for sid in seed.completed:
        assert by_id[sid].outcome == "rejected"
        assert by_id[sid].code == "not_allowed"
        assert by_id[sid].reason == "saga is completed: it has already finished"
    d = result.to_dict()
    assert (d["acted_on"], d["ok"], d["rejected"]) == (4, 2, 2)
    limited = await ops.bulk("retry", SagaFilter(name="order"), limit=1)
    assert (limited.matched, len(limited.outcomes)) == (6, 1)


async def test_bulk_refuses_an_empty_filter(ops: Operations) -> None:
    with pytest.raises(InvalidParameter, match="at least one filter"):
        await ops.bulk("abort", SagaFilter())
    with pytest.raises(InvalidParameter, match="limit"):
        await ops.bulk("abort", SagaFilter(name="order"), limit=0)


async def test_bulk_without_the_definition_rejects_each_saga(seed: Seed) -> None:
    async with Operations.for_store(seed.url) as bare:
        result = await bare.bulk("retry", SagaFilter(statuses=(SagaStatus.FAILED,)))
        assert {o.code for o in result.outcomes} == {"definition_missing"}
        assert result.ok == 0


# ---------------------------------------------------------------- parsing and loading


def test_parse_filter() -> None:
    f = parse_filter(
        {
            "status": ["failed,running", "failed"],
            "name": ["order"],
            "version": ["2"],
            "key": ["order_id=o-1", "note=a=b"],
            "created_after": ["2026-01-31T08:00:00Z"],
            "updated_before": ["1700000000.5"],
            "stuck": ["90"],
            "unrelated": ["x"],
        }
    )
    assert f.statuses == (SagaStatus.FAILED, SagaStatus.RUNNING)
    assert f.data_equals == {"order_id": "o-1", "note": "a=b"}
    assert f.created_after == 1769846400.0
    assert f.updated_before == 1700000000.5
    assert f.stuck_for == 90
    assert "status=failed,running" in f.describe()
    assert parse_filter({}).empty


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"status": ["bogus"]}, "status"),
        ({"version": ["x"]}, "version"),
        ({"version": ["0"]}, "version"),
        ({"version": ["99999999999"]}, "version"),
        ({"key": ["order_id"]}, "key"),
        ({"key": ["a.b=1"]}, "key"),
        ({"created_after": ["yesterday"]}, "created_after"),
        ({"updated_before": ["nan"]}, "updated_before"),
        ({"stuck": ["-1"]}, "stuck"),
        ({"stuck": ["inf"]}, "stuck"),
        ({"name": ["a", "b"]}, "name"),
        ({"name": ["x\x00"]}, "name"),
    ],
)
def test_parse_filter_errors_name_the_parameter_and_value(params: dict[str, list[str]], parameter: str) -> None:
    with pytest.raises(InvalidParameter) as e:
        parse_filter(params)
    assert e.value.parameter == parameter
    assert re.search(r"bad value .* for " + parameter, str(e.value))


def test_load_definitions() -> None:
    defs = load_definitions(["tests.admin.sample_app:order", "tests.admin.sample_app"])
    assert [d.key for d in defs] == [("order", 1)]
    with pytest.raises(DefinitionsNotLoaded, match="cannot import 'no_such_module'"):
        load_definitions(["no_such_module"])
    with pytest.raises(DefinitionsNotLoaded, match="has no attribute 'nope'"):
        load_definitions(["tests.admin.sample_app:nope"])
    with pytest.raises(DefinitionsNotLoaded, match="is not a SagaDefinition"):
        load_definitions(["tests.admin.sample_app:SHIPPING"])
    with pytest.raises(DefinitionsNotLoaded, match="has no SagaDefinition attributes"):
        load_definitions(["tests.admin.conftest"])
    with pytest.raises(DefinitionsNotLoaded, match="cannot load definition file"):
        load_definitions(["missing.json"])


def test_public_names_of_the_admin_package() -> None:
    import sagakit.admin

    assert sorted(sagakit.admin.__all__) == [
        "ACTIONS", "AccessDenied", "ActionOutcome", "AdminAction", "AmbiguousSagaId", "Attempt", "AuthInput",
        "BulkResult", "DEFAULT_MASK_PATTERN", "DefinitionInfo", "DefinitionMissing", "DefinitionsNotLoaded",
        "GraphNode", "InvalidParameter", "Masker", "Operations", "Overview", "SagaFilter", "SagaGraph", "SagaPage",
        "Timeline", "WorkerReport", "WorkersPage", "create_app", "load_definitions", "parse_filter",
    ]  # fmt: skip
    for name in sagakit.admin.__all__:
        assert getattr(sagakit.admin, name) is not None


async def test_a_rollback_that_stopped_moving_is_stuck(tmp_path: object) -> None:
    from dataclasses import dataclass

    from sagakit import NonRetryableError, SagaBuilder, StepContext, send

    @dataclass
    class CancelBooking:
        booking: str = ""

    @dataclass
    class BookingCancelled:
        booking: str = ""

    async def book(ctx: StepContext) -> str:
        return "b-1"

    async def pay(ctx: StepContext) -> None:
        raise NonRetryableError("card declined")

    b = SagaBuilder("trip")
    # The compensation sends a command and waits for its reply with no timeout: nothing
    # times it, so it has no wake time to be overdue by.
    b.step("book", book, send(CancelBooking, success=BookingCancelled))
    b.step("pay", pay)
    url = f"sqlite:///{tmp_path}/sagas.db"
    async with SagaEngine(url) as worker:
        worker.register(b.build())
        sid = await worker.start("trip")
        for _ in range(200):
            if (await worker.get(sid)).steps["book"].status.value == "compensating":
                break
            await asyncio.sleep(0.01)
    now = [0.0]
    engine = SagaEngine(url, clock=lambda: now[0] or __import__("time").time())
    async with Operations(engine, owns_engine=True) as ops:
        snap = await ops.get(sid)
        assert snap.status is SagaStatus.COMPENSATING and snap.wake_at is None
        assert [s.id for s in (await ops.search(SagaFilter(stuck_for=60))).items] == []
        now[0] = snap.updated_at + 600  # ten minutes on, the reply never came
        stuck = await ops.search(SagaFilter(stuck_for=60))
        assert [s.id for s in stuck.items] == [sid]
        counts = await ops.counts(SagaFilter(stuck_for=60))
        assert counts[SagaStatus.COMPENSATING] == 1


async def test_a_saga_no_running_worker_can_run_is_shown_as_parked(tmp_path: object) -> None:
    from sagakit import SagaBuilder

    def make(version: int) -> object:
        b = SagaBuilder("ver", version=version)
        b.step("a", lambda ctx: version)
        return b.build()

    url = f"sqlite:///{tmp_path}/sagas.db"
    starter = SagaEngine(url)
    starter.register(make(1))  # type: ignore[arg-type]
    sid = await starter.start("ver")
    await starter.close()
    now = [0.0]
    engine = SagaEngine(url, clock=lambda: now[0] or __import__("time").time())
    async with Operations(engine, owns_engine=True) as ops:
        pending = await ops.get(sid)
        assert pending.wake_at is not None
        now[0] = pending.wake_at + 600
        page = await ops.search(SagaFilter(stuck_for=60))
        assert page.to_dict()["items"][0]["parked"] == "no worker is running"
        async with SagaEngine(url, lease_seconds=3600) as worker:  # runs v2 only
            worker.register(make(2))  # type: ignore[arg-type]
            await asyncio.sleep(0.05)
            page = await ops.search(SagaFilter(stuck_for=60))
            assert [s.id for s in page.items] == [sid]
            assert page.to_dict()["items"][0]["parked"] == "ver v1 is not registered on any worker"
            worker.register(make(1))  # type: ignore[arg-type]
            done = await worker.wait(sid, timeout=10)  # a worker that has it runs it at once
        assert done.status is SagaStatus.COMPLETED
