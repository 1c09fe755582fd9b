"""The store contract: one abstract suite that every Store implementation passes.

A backend's test module subclasses ``StoreContract`` and provides the
``make_store`` fixture: a factory of *new, unopened* store objects on one and
the same database (a second object is a second worker or a restarted
process). Backend-specific facts (schema version, the due-work index) come
through the small hooks at the end of the class.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sagakit import Resource, SagaNotFound, SagaStatus, StepStatus
from sagakit._resources import PermitKey
from sagakit._store import Lease, OutboxMessage, SagaQuery, Store, WorkerInfo, Write
from sagakit.machine import HistoryEntry, ItemState, SagaState, StepState
from sagakit.stores._sql import SCHEMA_VERSION
from tests.stores.locks_contract import LockContract

StoreFactory = Callable[[], Store]


def saga(
    saga_id: str,
    *,
    name: str = "order",
    status: SagaStatus = SagaStatus.RUNNING,
    created_at: float = 100.0,
    revision: int = 1,
    correlation_id: str | None = None,
    idempotency_key: str | None = None,
    data: Any = None,
) -> SagaState:
    """A small saga state with two steps."""
    return SagaState(
        id=saga_id,
        name=name,
        version=1,
        status=status,
        data={"order_id": saga_id} if data is None else data,
        steps={"reserve": StepState(StepStatus.COMPLETED, 1, result={"ok": True}), "charge": StepState()},
        created_at=created_at,
        updated_at=created_at,
        correlation_id=correlation_id,
        idempotency_key=idempotency_key,
        revision=revision,
    )


def entry(text: str, at: float = 1.0) -> HistoryEntry:
    return HistoryEntry(at, "note", text)


async def put(
    store: Store,
    st: SagaState,
    wake_at: float | None = 10.0,
    *,
    owner: str | None = None,
    lease_expires: float | None = None,
    history: list[HistoryEntry] | None = None,
) -> str | None:
    """Insert one saga; returns what commit returned for it."""
    st.wake_at = wake_at
    w = Write(st, 0, history or [], wake_at, owner=owner, lease_expires=lease_expires, insert=True)
    (result,) = await store.commit([w])
    return result


# Schema version 2 kept one history row per entry. A store opened on such a database
# packs them (migration 3); these are what the migration tests put there and expect.
V2_HISTORY_TABLE = (
    "CREATE TABLE sagakit_history (saga_id TEXT NOT NULL, revision {bigint} NOT NULL, idx INTEGER NOT NULL, "
    "at {real} NOT NULL, kind TEXT NOT NULL, step TEXT, attempt INTEGER, message TEXT NOT NULL)"
)
V2_HISTORY_INDEX = "CREATE INDEX sagakit_history_saga ON sagakit_history (saga_id, revision, idx)"
# (saga_id, revision, idx, at, kind, step, attempt, message), stored out of order on purpose.
V2_HISTORY_ROWS = [
    ("old", 1, 1, 1.25, "step_started", "reserve", 1, "step 'reserve' attempt 1"),
    ("old", 0, 0, 1.0, "created", None, None, "saga order v1 created"),
    ("old", 1, 1000, 3.5, "fenced", None, None, "worker w1 lost its lease"),
    ("old", 1, 0, 1.125, "started", None, None, "saga started"),
    ("old", 2, 0, 2.0000001, "step_completed", "reserve", 1, "step 'reserve' completed"),
    ("other", 0, 0, 9.0, "created", None, None, "another saga"),
]
V2_HISTORY_EXPECTED = [
    HistoryEntry(1.0, "created", "saga order v1 created"),
    HistoryEntry(1.125, "started", "saga started"),
    HistoryEntry(1.25, "step_started", "step 'reserve' attempt 1", "reserve", 1),
    HistoryEntry(3.5, "fenced", "worker w1 lost its lease"),
    HistoryEntry(2.0000001, "step_completed", "step 'reserve' completed", "reserve", 1),
]


def update(
    st: SagaState, *, expected: int | None = None, history: list[HistoryEntry] | None = None, **changes: Any
) -> Write:
    """A write moving *st* one revision on (fenced at its current revision unless *expected*)."""
    new = st.copy()
    new.revision = st.revision + 1
    new.updated_at = st.updated_at + 1
    wake_at = changes.pop("wake_at", st.wake_at)
    owner = changes.pop("owner", None)
    lease_expires = changes.pop("lease_expires", None)
    data_changed = changes.pop("data_changed", True)
    for k, v in changes.items():
        setattr(new, k, v)
    new.wake_at = wake_at
    return Write(
        new,
        st.revision if expected is None else expected,
        history if history is not None else [entry(f"r{new.revision}")],
        wake_at,
        owner=owner,
        lease_expires=lease_expires,
        data_changed=data_changed,
    )


class StoreContract(LockContract):
    """What every store must do. Subclasses provide the ``make_store`` fixture."""

    # ------------------------------------------------------------ fixtures

    @pytest.fixture
    async def store(self, make_store: StoreFactory) -> AsyncIterator[Store]:
        s = make_store()
        await s.open()
        yield s
        await s.close()

    # ------------------------------------------------------------ hooks

    async def schema_version(self, store: Store) -> int | None:
        """The schema version the store recorded; None for a store without a schema."""
        return None

    # ------------------------------------------------------------ opening

    async def test_is_a_store(self, store: Store) -> None:
        assert isinstance(store, Store)
        assert isinstance(store.url, str)

    async def test_open_creates_schema_and_is_idempotent(self, store: Store, make_store: StoreFactory) -> None:
        version = await self.schema_version(store)
        assert version in (None, SCHEMA_VERSION)
        await store.open()  # a second open of the same object does nothing
        assert await put(store, saga("s1")) == "s1"
        again = make_store()  # another worker, or the same process restarted
        await again.open()
        try:
            got = await again.get("s1")
            assert got is not None
            assert got.id == "s1"
            assert await self.schema_version(again) == version
        finally:
            await again.close()

    # ------------------------------------------------------------ inserts

    async def test_insert_and_get_round_trip_every_field(self, store: Store) -> None:
        st = SagaState(
            id="s-1",
            name="order_fulfillment",
            version=3,
            status=SagaStatus.COMPENSATING,
            data={"order": {"id": "o-1", "lines": [1, 2.5, None, True]}, "note": "héllo ✓"},
            steps={
                "reserve": StepState(
                    StepStatus.COMPENSATING,
                    attempts=2,
                    compensation_attempts=1,
                    token=7,
                    result={"reservation": "r-9"},
                    error="boom",
                    wake_at=123.5,
                    started_at=101.25,
                    finished_at=102.75,
                ),
                "charge": StepState(StepStatus.FAILED, attempts=3, error="card declined"),
                "ship": StepState(),
            },
            created_at=100.5,
            updated_at=103.0,
            correlation_id="corr-1",
            idempotency_key="o-1",
            wake_at=123.5,
            deadline_at=500.0,
            error="charge failed",
            seq=42,
            revision=5,
            meta={"trace": {"traceparent": "00-abc-def-01"}, "parked": None},
        )
        assert await put(store, st, wake_at=123.5) == "s-1"
        got = await store.get("s-1")
        assert got == st
        assert await store.get("nope") is None

    async def test_the_items_of_a_for_each_step_round_trip_and_change_with_a_commit(self, store: Store) -> None:
        items = [
            ItemState({"sku": "a", "qty": 2}, "a", StepStatus.COMPLETED, 1, 0, 0, {"held": 2}),
            ItemState("b", "1", StepStatus.RUNNING, 2, 0, 9, None, "timed out", None, True),
            ItemState(None, "2", StepStatus.PENDING, 1, 0, 0, None, "busy", 130.5),
            ItemState([1, 2], "3", StepStatus.COMPENSATION_FAILED, 1, 3, 0, 7, "gave up"),
            ItemState(3, "4"),
        ]
        st = saga("s-items")
        st.steps = {
            "each": StepState(StepStatus.RUNNING, attempts=1, wake_at=130.5, items=items),
            "empty": StepState(StepStatus.COMPLETED, attempts=1, result=[], items=[]),
            "plain": StepState(),
        }
        await put(store, st, wake_at=130.5)
        got = await store.get("s-items")
        assert got == st
        assert got is not None and got.steps["plain"].items is None and got.steps["empty"].items == []
        nxt = got.copy()
        nxt.revision = got.revision + 1
        changed = nxt.steps["each"].items
        assert changed is not None
        changed[1] = changed[1]._replace(status=StepStatus.COMPLETED, token=0, result="B")
        await store.commit([Write(nxt, got.revision, [], None)])
        again = await store.get("s-items")
        assert again is not None and again.steps["each"].items == changed
        assert got.steps["each"].items == items, "the state read before is not changed by the copy"

    async def test_insert_without_optional_fields(self, store: Store) -> None:
        st = saga("s-2", data=[1, "two"])
        st.meta = {}
        assert await put(store, st, wake_at=None) == "s-2"
        got = await store.get("s-2")
        assert got == st
        assert got is not None
        assert got.wake_at is None
        assert got.meta == {}

    async def test_insert_with_existing_idempotency_key_returns_existing_id(self, store: Store) -> None:
        assert await put(store, saga("a", idempotency_key="k"), history=[entry("first")]) == "a"
        assert await put(store, saga("b", idempotency_key="k"), history=[entry("second")]) == "a"
        assert await store.get("b") is None
        assert [h.message for h in await store.history("a")] == ["first"]
        assert await store.history("b") == []
        # Keys are unique per definition name only.
        assert await put(store, saga("c", name="refund", idempotency_key="k")) == "c"
        # The same saga inserted again (a retried start) is the existing saga, with no new history.
        assert await put(store, saga("a", idempotency_key="k"), history=[entry("again")]) == "a"
        assert [h.message for h in await store.history("a")] == ["first"]

    async def test_several_inserts_in_one_commit(self, store: Store) -> None:
        assert await put(store, saga("old", idempotency_key="k0")) == "old"
        writes = [
            Write(saga("n1", idempotency_key="k1"), 0, [entry("n1")], 10.0, insert=True),
            Write(saga("n2", idempotency_key="k1"), 0, [entry("n2")], 10.0, insert=True),  # k1 again: n1 wins
            Write(saga("n3", idempotency_key="k0"), 0, [entry("n3")], 10.0, insert=True),  # key of a stored saga
            Write(saga("n4"), 0, [entry("n4")], 10.0, insert=True),
            Write(saga("n4", data={"v": 2}), 0, [entry("n4 again")], 10.0, insert=True),  # the same id twice
            Write(saga("old"), 0, [entry("old again")], 10.0, insert=True),  # an id already stored
            Write(saga("n5", name="refund", idempotency_key="k1"), 0, [entry("n5")], None, insert=True),
        ]
        assert await store.commit(writes) == ["n1", "n1", "old", "n4", None, None, "n5"]
        for sid in ("n2", "n3"):
            assert await store.get(sid) is None
        got = await store.get("n4")
        assert got is not None and got.data == {"order_id": "n4"}
        assert [h.message for h in await store.history("n4")] == ["n4"]
        assert [h.message for h in await store.history("n1")] == ["n1"]
        assert await store.history("old") == []
        assert await store.count(SagaQuery()) == 4

    async def test_insert_of_an_existing_id_is_refused(self, store: Store) -> None:
        assert await put(store, saga("a", data={"v": 1})) == "a"
        assert await put(store, saga("a", data={"v": 2}), history=[entry("x")]) is None
        got = await store.get("a")
        assert got is not None
        assert got.data == {"v": 1}
        assert await store.history("a") == []

    # ------------------------------------------------------------ fenced commits

    async def test_commit_applies_at_the_expected_revision(self, store: Store) -> None:
        st = saga("a")
        await put(store, st)
        w = update(st, status=SagaStatus.COMPLETED, error="done", wake_at=None, data={"x": 1})
        assert await store.commit([w]) == ["a"]
        got = await store.get("a")
        assert got is not None
        assert (got.revision, got.status, got.error, got.wake_at, got.data) == (
            2,
            SagaStatus.COMPLETED,
            "done",
            None,
            {"x": 1},
        )

    async def test_commit_with_wrong_revision_is_refused_and_writes_nothing(self, store: Store) -> None:
        st = saga("a")
        await put(store, st, history=[entry("created")])
        stale = update(st, expected=7, status=SagaStatus.FAILED, history=[entry("stale")])
        stale.outbox.append(OutboxMessage("m1", "a", "orders", b'{"x":1}'))
        stale.inbox.append("in-1")
        assert await store.commit([stale]) == [None]
        got = await store.get("a")
        assert got == st
        assert [h.message for h in await store.history("a")] == ["created"]
        assert await store.commit([update(st, expected=st.revision + 1)]) == [None]

    async def test_update_without_data_change_keeps_data(self, store: Store) -> None:
        # data_changed=False says the data is what the row holds: a store may skip writing it.
        st = saga("a", data={"keep": True})
        await put(store, st)
        w = update(st, data_changed=False, status=SagaStatus.COMPENSATING)
        assert await store.commit([w]) == ["a"]
        got = await store.get("a")
        assert got is not None
        assert got.data == {"keep": True}
        assert got.status is SagaStatus.COMPENSATING

    async def test_group_commit_of_many_writes_mixed_fenced_and_applied(self, store: Store) -> None:
        states = [saga(f"s{i:02d}") for i in range(30)]
        for st in states:
            await put(store, st)
        writes = []
        for i, st in enumerate(states):
            stale = i % 3 == 0
            w = update(
                st,
                expected=st.revision + 10 if stale else None,
                status=SagaStatus.COMPLETED,
                data={"n": i},
                history=[entry(f"{st.id} a"), entry(f"{st.id} b")],
            )
            w.outbox.append(OutboxMessage(f"m{i}", st.id, "orders", b"{}", {"h": "1"}))
            w.inbox.append(f"in-{i}")
            writes.append(w)
        new = saga("new-1")
        new.wake_at = 5.0
        writes.insert(7, Write(new, 0, [entry("born")], 5.0, insert=True))
        results = await store.commit(writes)
        expected = [None if i % 3 == 0 else st.id for i, st in enumerate(states)]
        expected.insert(7, "new-1")
        assert results == expected
        for i, st in enumerate(states):
            got = await store.get(st.id)
            assert got is not None
            history = [h.message for h in await store.history(st.id)]
            if i % 3 == 0:
                assert got == st
                assert history == []
            else:
                assert (got.revision, got.status, got.data) == (2, SagaStatus.COMPLETED, {"n": i})
                assert history == [f"{st.id} a", f"{st.id} b"]
        assert [h.message for h in await store.history("new-1")] == ["born"]

    async def test_group_commit_of_plain_transitions_mixed_refused_and_applied(self, store: Store) -> None:
        """Inserts and updates with history only (no outbox, inbox or locks): what a local saga commits."""
        states = [saga(f"p{i:02d}") for i in range(12)]
        for st in states:
            await put(store, st)
        await put(store, saga("taken", idempotency_key="k-1"))
        writes = [
            update(st, expected=st.revision + 10 if i % 4 == 0 else None, status=SagaStatus.COMPLETED,
                   data={"n": i}, history=[entry(f"{st.id} done")])
            for i, st in enumerate(states)
        ]  # fmt: skip
        fresh = saga("fresh", data={"big": "x" * 5000})
        same_key = saga("again", idempotency_key="k-1")
        existing = saga("p01")
        writes.insert(
            3, Write(fresh, 0, [entry("fresh born")], 5.0, insert=True, data_json='{"big":"' + "x" * 5000 + '"}')
        )
        writes.insert(5, Write(same_key, 0, [entry("again born")], 5.0, insert=True))
        writes.append(Write(existing, 0, [entry("p01 born twice")], 5.0, insert=True))
        results = await store.commit(writes)
        expected: list[str | None] = [None if i % 4 == 0 else st.id for i, st in enumerate(states)]
        expected.insert(3, "fresh")
        expected.insert(5, "taken")  # the idempotency key's saga
        expected.append(None)  # an existing id
        assert results == expected
        for i, st in enumerate(states):
            history = [h.message for h in await store.history(st.id)]
            got = await store.get(st.id)
            assert got is not None
            if i % 4 == 0:
                assert got == st and history == []
            else:
                assert (got.revision, got.status, got.data) == (2, SagaStatus.COMPLETED, {"n": i})
                assert history == [f"{st.id} done"]
        stored = await store.get("fresh")
        assert stored is not None and stored.data == {"big": "x" * 5000}
        assert [h.message for h in await store.history("fresh")] == ["fresh born"]
        assert await store.get("again") is None and await store.history("again") == []

    async def test_commit_of_nothing(self, store: Store) -> None:
        assert await store.commit([]) == []

    async def test_two_transitions_of_one_saga_in_one_commit(self, store: Store) -> None:
        st = saga("a")
        await put(store, st)
        first = update(st, status=SagaStatus.COMPENSATING, history=[entry("one")])
        second = update(first.state, status=SagaStatus.COMPENSATED, history=[entry("two")])
        assert await store.commit([first, second]) == ["a", "a"]
        got = await store.get("a")
        assert got is not None
        assert (got.revision, got.status) == (3, SagaStatus.COMPENSATED)
        assert [h.message for h in await store.history("a")] == ["one", "two"]

    # ------------------------------------------------------------ claims

    async def test_claim_takes_only_due_unleased_or_expired_sagas(self, store: Store) -> None:
        await put(store, saga("due"), wake_at=10.0)
        await put(store, saga("future"), wake_at=1000.0)
        await put(store, saga("finished", status=SagaStatus.COMPLETED), wake_at=None)
        await put(store, saga("held"), wake_at=500.0, owner="w0", lease_expires=500.0)
        await put(store, saga("expired"), wake_at=40.0, owner="w0", lease_expires=40.0)
        claimed = await store.claim("w1", 50.0, 80.0, 10)
        assert sorted(s.id for s in claimed) == ["due", "expired"]
        for s in claimed:
            assert s.revision == 2  # bumped: the previous holder can no longer commit
            assert s.wake_at == 80.0  # a held saga is due again when its lease runs out
        for sid in ("due", "expired"):
            got = await store.get(sid)
            assert got is not None
            assert (got.revision, got.wake_at) == (2, 80.0)
        # Leased now: nobody else gets them until the lease expires.
        assert await store.claim("w2", 60.0, 90.0, 10) == []
        assert sorted(s.id for s in await store.claim("w2", 80.0, 120.0, 10)) == ["due", "expired"]
        # The old holder's write is fenced.
        held = saga("due")
        assert await store.commit([update(held, status=SagaStatus.COMPLETED)]) == [None]

    async def test_claim_takes_only_sagas_of_the_given_definitions(self, store: Store) -> None:
        await put(store, saga("o1", name="order"), wake_at=1.0)
        await put(store, saga("s1", name="shipping"), wake_at=2.0)
        await put(store, saga("o2", name="order"), wake_at=3.0)
        assert await store.next_wake([("shipping", 1)]) == 2.0
        assert await store.next_wake([("order", 2)]) is None  # another version: not ours
        assert await store.claim("w1", 10.0, 40.0, 10, [("order", 2)]) == []
        assert sorted(s.id for s in await store.claim("w1", 10.0, 40.0, 10, [("order", 1)])) == ["o1", "o2"]
        assert await store.claim("w1", 10.0, 40.0, 10, []) == []  # no definitions: nothing
        assert [s.id for s in await store.claim("w2", 10.0, 40.0, 10)] == ["s1"]  # None: any

    async def test_operator_requests_are_answered_once(self, store: Store) -> None:
        await store.request("r1", "s1", '{"kind": "abort"}', 2.0)
        await store.request("r0", "s2", '{"kind": "retry"}', 1.0)
        assert await store.open_requests() == [("r0", "s2", '{"kind": "retry"}'), ("r1", "s1", '{"kind": "abort"}')]
        assert await store.request_outcome("r1") is None
        await store.answer_request("r1", "")
        await store.answer_request("r1", "too late")  # the first answer stands
        assert await store.request_outcome("r1") == ""
        assert await store.open_requests() == [("r0", "s2", '{"kind": "retry"}')]
        assert not await store.withdraw_request("r1")  # answered: kept for its requester
        await store.drop_request("r1")
        assert await store.request_outcome("r1") is None
        assert await store.withdraw_request("r0")
        assert await store.open_requests() == []

    async def test_live_workers_and_their_definitions(self, store: Store) -> None:
        await store.worker_alive("w1", [("order", 1), ("order", 2)], 100.0)
        await store.worker_alive("w2", [("ship", 1)], 50.0)
        assert await store.live_workers(10.0) == {"w1": [("order", 1), ("order", 2)], "w2": [("ship", 1)]}
        assert await store.live_workers(60.0) == {"w1": [("order", 1), ("order", 2)]}  # w2 went silent
        await store.worker_alive("w2", [], 200.0)  # alive again, with no definitions
        await store.worker_gone("w1")
        assert await store.live_workers(60.0) == {"w2": []}

    async def test_workers_with_their_last_heartbeat(self, store: Store) -> None:
        await store.worker_alive("w2", [("ship", 1)], 50.0, now=20.0)
        await store.worker_alive("w1", [("order", 1), ("order", 2)], 100.0, now=40.0)
        await store.worker_alive("w3", [], 100.0)  # a worker that does not say when
        assert await store.workers(10.0) == [
            WorkerInfo("w1", (("order", 1), ("order", 2)), 100.0, 40.0),
            WorkerInfo("w2", (("ship", 1),), 50.0, 20.0),
            WorkerInfo("w3", (), 100.0, None),
        ]
        await store.worker_alive("w1", [("order", 2)], 160.0, now=100.0)
        assert await store.workers(60.0) == [
            WorkerInfo("w1", (("order", 2),), 160.0, 100.0),
            WorkerInfo("w3", (), 100.0, None),
        ]

    async def test_leases_lists_live_leases_by_owner(self, store: Store) -> None:
        await put(store, saga("free"), wake_at=10.0)
        await put(store, saga("done", status=SagaStatus.COMPLETED), wake_at=None)
        await put(store, saga("b2"), wake_at=90.0, owner="w2", lease_expires=90.0)
        await put(store, saga("a1"), wake_at=80.0, owner="w1", lease_expires=80.0)
        await put(store, saga("a2", name="ship"), wake_at=70.0, owner="w1", lease_expires=70.0)
        await put(store, saga("gone"), wake_at=30.0, owner="w9", lease_expires=30.0)
        assert await store.leases(50.0) == [
            Lease("a2", "ship", 1, "w1", 70.0),
            Lease("a1", "order", 1, "w1", 80.0),
            Lease("b2", "order", 1, "w2", 90.0),
        ]
        assert [x.saga_id for x in await store.leases(50.0, limit=2)] == ["a2", "a1"]
        assert await store.leases(100.0) == []

    async def test_list_by_id_prefix(self, store: Store) -> None:
        for sid in ("abc-1", "abc-2", "abd", "a_c", "a%c", "x\\y"):
            await put(store, saga(sid))

        async def ids(prefix: str) -> list[str]:
            return sorted(s.id for s in await store.list(SagaQuery(id_prefix=prefix)))

        assert await ids("abc") == ["abc-1", "abc-2"]
        assert await ids("ab") == ["abc-1", "abc-2", "abd"]
        assert await ids("abc-2") == ["abc-2"]
        assert await ids("a_") == ["a_c"]  # LIKE's wildcards are taken literally
        assert await ids("a%") == ["a%c"]
        assert await ids("x\\") == ["x\\y"]
        assert await ids("zz") == []
        assert await store.count(SagaQuery(id_prefix="abc")) == 2

    async def test_claim_respects_limit_and_wake_order(self, store: Store) -> None:
        for sid, wake in [("e", 5.0), ("a", 1.0), ("d", 4.0), ("b", 2.0), ("c", 3.0)]:
            await put(store, saga(sid), wake_at=wake)
        first = await store.claim("w1", 10.0, 100.0, 2)
        assert sorted(s.id for s in first) == ["a", "b"]
        rest = await store.claim("w1", 10.0, 100.0, 10)
        assert sorted(s.id for s in rest) == ["c", "d", "e"]
        assert await store.claim("w1", 10.0, 100.0, 10) == []

    async def test_claimed_state_is_the_stored_state(self, store: Store) -> None:
        st = saga("a", data={"deep": [1, {"x": "y"}]}, correlation_id="c")
        await put(store, st, wake_at=3.0)
        (claimed,) = await store.claim("w1", 10.0, 70.0, 5)
        expected = st.copy()
        expected.revision = 2
        expected.wake_at = 70.0
        assert claimed == expected

    async def test_concurrent_claimers_never_get_the_same_saga(self, make_store: StoreFactory) -> None:
        stores = [make_store() for _ in range(3)]
        for s in stores:
            await s.open()
        try:
            for i in range(40):
                await put(stores[0], saga(f"s{i:02d}"), wake_at=float(i % 7))
            now = 100.0
            for _ in range(25):
                claims = await asyncio.gather(*(s.claim(f"w{n}", now, now + 50.0, 16) for n, s in enumerate(stores)))
                ids = [c.id for claim in claims for c in claim]
                assert len(ids) == len(set(ids)), "a saga was claimed twice"
                assert len(ids) == 40  # 3 x 16 >= 40: together they took everything due
                now += 100.0  # every lease of this round has expired in the next
        finally:
            for s in stores:
                await s.close()

    async def test_claim_saga(self, store: Store) -> None:
        await put(store, saga("a"), wake_at=1000.0)
        await put(store, saga("done", status=SagaStatus.COMPLETED), wake_at=None)
        got = await store.claim_saga("a", "w1", 10.0, 40.0)  # not due: taken all the same
        assert got is not None
        assert (got.revision, got.wake_at) == (2, 40.0)
        assert await store.claim_saga("a", "w2", 20.0, 50.0) is None  # busy
        again = await store.claim_saga("a", "w1", 20.0, 60.0)  # its holder may take it again
        assert again is not None
        assert again.revision == 3
        taken = await store.claim_saga("a", "w2", 60.0, 90.0)  # lease expired
        assert taken is not None
        assert taken.revision == 4
        finished = await store.claim_saga("done", "w1", 10.0, 40.0)
        assert finished is not None
        assert finished.wake_at is None  # a finished saga never becomes due
        with pytest.raises(SagaNotFound):
            await store.claim_saga("nope", "w1", 10.0, 40.0)

    async def test_claim_sagas_claims_several_in_one_call(self, store: Store) -> None:
        claim_sagas = store.claim_sagas  # type: ignore[attr-defined]  # optional beside the protocol
        for sid in ("a", "b", "c"):
            await put(store, saga(sid), wake_at=1000.0)
        await put(store, saga("done", status=SagaStatus.COMPLETED), wake_at=None)
        assert await store.claim_saga("c", "w2", 10.0, 40.0) is not None
        got = await claim_sagas(["b", "a", "c", "done", "nope", "a"], "w1", 10.0, 40.0)
        assert set(got) == {"a", "b", "c", "done"}  # no saga "nope": left out
        assert got["c"] is None  # w2's lease is live
        for sid in ("a", "b"):  # not due: taken all the same
            assert (got[sid].id, got[sid].revision, got[sid].wake_at) == (sid, 2, 40.0)
        assert got["done"] is not None and got["done"].wake_at is None  # a finished saga never becomes due
        assert await store.claim_saga("a", "w2", 20.0, 50.0) is None  # now held by w1
        again = await claim_sagas(["a", "c"], "w1", 50.0, 80.0)  # w1 again; w2's lease on c expired at 40
        assert again["a"] is not None and again["a"].revision == 3
        assert again["c"] is not None and again["c"].revision == 3
        assert await claim_sagas([], "w1", 50.0, 80.0) == {}

    async def test_large_data_round_trips_through_every_read_and_write(self, store: Store) -> None:
        """Saga data of 100 KB: stored, claimed, read, searched, replaced (large, small, large) and pruned."""
        big = {"order": "o-1", "vip": True, "blob": "x" * 100_000}
        st = saga("big", data=big, created_at=100.0)
        await put(store, st, wake_at=5.0)
        await put(store, saga("small", data={"order": "o-2"}, created_at=100.0), wake_at=None)
        (claimed,) = await store.claim("w1", 10.0, 40.0, 5)
        assert (claimed.id, claimed.data) == ("big", big)
        got = await store.get("big")
        assert got is not None and got.data == big
        found = await store.list(SagaQuery(data_equals={"order": "o-1", "vip": True}))
        assert [(f.id, f.data) for f in found] == [("big", big)]
        assert [f.id for f in await store.list(SagaQuery(data_equals={"order": "o-2"}))] == ["small"]
        # A transition that leaves the data alone keeps it; one that changes it replaces it.
        w = update(claimed, data_changed=False, status=SagaStatus.RUNNING)
        assert await store.commit([w]) == ["big"]
        assert (await store.get("big")).data == big  # type: ignore[union-attr]
        for data in ({"order": "o-1", "note": "small now"}, {**big, "blob": "y" * 120_000}):
            w = update(w.state, data=data)
            assert await store.commit([w]) == ["big"]
            again = await store.get("big")
            assert again is not None and again.data == data
        fenced = update(w.state, expected=1, data={"lost": "x" * 50_000})  # a stale revision: refused
        assert await store.commit([fenced]) == [None]
        assert (await store.get("big")).data == w.state.data  # type: ignore[union-attr]
        done = update(w.state, status=SagaStatus.COMPLETED, data_changed=False, wake_at=None)
        assert await store.commit([done]) == ["big"]
        pruned = await self._prune_all(store, 1e9)
        assert pruned.sagas == 1  # the finished one; "small" is still running
        assert await store.get("big") is None
        assert [f.id for f in await store.list(SagaQuery())] == ["small"]

    async def test_correlated_finds_the_newest_unfinished_saga_of_each_correlation_id(self, store: Store) -> None:
        correlated = store.correlated  # type: ignore[attr-defined]  # optional beside the protocol
        await put(store, saga("old", correlation_id="k1", created_at=100.0))
        await put(store, saga("new", correlation_id="k1", created_at=200.0))
        await put(store, saga("done", correlation_id="k1", created_at=300.0, status=SagaStatus.COMPLETED))
        await put(store, saga("other", name="refund", correlation_id="k1", created_at=400.0))
        await put(store, saga("k2", correlation_id="k2", status=SagaStatus.COMPENSATING))
        await put(store, saga("k3", correlation_id="k3", status=SagaStatus.ABORTED))
        await put(store, saga("k4", correlation_id="k4", status=SagaStatus.PENDING))
        got = await correlated("order", ["k1", "k2", "k3", "k4", "k5", "k1"])
        assert got == {"k1": "new", "k2": "k2", "k4": "k4"}
        assert await correlated("refund", ["k1"]) == {"k1": "other"}
        many = await correlated("order", [f"x{i}" for i in range(1200)] + ["k4"])  # more than one chunk
        assert many == {"k4": "k4"}

    async def test_renew_extends_held_leases_and_returns_lost_ones(self, store: Store) -> None:
        for sid, wake in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
            await put(store, saga(sid), wake_at=wake)
        assert sorted(s.id for s in await store.claim("w1", 10.0, 40.0, 2)) == ["a", "b"]
        assert len(await store.claim("w2", 10.0, 40.0, 5)) == 1  # c
        lost = await store.renew("w1", ["a", "b", "c", "nope"], 100.0)
        assert lost == {"c", "nope"}
        for sid, wake in (("a", 100.0), ("b", 100.0), ("c", 40.0)):
            got = await store.get(sid)
            assert got is not None
            assert got.wake_at == wake
            assert got.revision == 2  # renewing does not move the revision
        assert [s.id for s in await store.claim("w3", 50.0, 150.0, 5)] == ["c"]
        assert await store.renew("w1", [], 200.0) == set()

    async def test_release_restores_wake_time(self, store: Store) -> None:
        for sid in ("a", "b", "c"):
            await put(store, saga(sid), wake_at=1.0)
        assert len(await store.claim("w1", 10.0, 40.0, 5)) == 3
        for sid in ("b", "c"):  # finished while held
            await store.commit([update(saga(sid, revision=2), status=SagaStatus.COMPLETED, wake_at=None, owner="w1")])
        await store.release("w2", [("a", 5.0)])  # not the holder: nothing happens
        got = await store.get("a")
        assert got is not None
        assert got.wake_at == 40.0
        await store.release("w1", [("b", 25.0), ("c", None), ("a", 25.0)])
        a, b, c = await store.get("a"), await store.get("b"), await store.get("c")
        assert a is not None
        assert b is not None
        assert c is not None
        assert a.wake_at == 25.0
        assert (b.wake_at, c.wake_at) == (None, None)  # finished: they stay out of the due index
        assert [s.id for s in await store.claim("w2", 30.0, 60.0, 5)] == ["a"]
        await store.release("w2", [])

    # ------------------------------------------------------------ history and reads

    async def test_history_in_revision_order(self, store: Store) -> None:
        st = saga("a")
        await put(store, st, history=[entry("r1-0", 1.0), entry("r1-1", 2.0)])
        w = update(st, history=[entry("r2-0", 3.0), entry("r2-1", 4.0), entry("r2-2", 5.0)])
        await store.commit([w])
        await store.append_history("a", 2, [HistoryEntry(6.0, "fenced", "refused", "charge", 3)])
        w3 = update(w.state, history=[entry("r3-0", 7.0)])
        await store.commit([w3])
        history = await store.history("a")
        assert [h.message for h in history] == ["r1-0", "r1-1", "r2-0", "r2-1", "r2-2", "refused", "r3-0"]
        assert history[5] == HistoryEntry(6.0, "fenced", "refused", "charge", 3)
        assert await store.history("nope") == []

    async def test_load_reads_saga_and_history_together(self, store: Store) -> None:
        load = store.load
        st = saga("a")
        await put(store, st, history=[entry("one"), entry("two")])
        assert await load("a") == (await store.get("a"), await store.history("a"))
        assert await load("nope") is None

    async def test_list_filters_newest_first_and_count(self, store: Store) -> None:
        rows = [
            ("a", "order", SagaStatus.COMPLETED, 100.0, "c1"),
            ("b", "order", SagaStatus.RUNNING, 101.0, "c1"),
            ("c", "refund", SagaStatus.RUNNING, 102.0, None),
            ("d", "order", SagaStatus.FAILED, 103.0, "c2"),
            ("e", "order", SagaStatus.RUNNING, 103.0, None),  # same time as d: id breaks the tie
            ("f", "refund", SagaStatus.COMPLETED, 104.0, "c1"),
        ]
        for sid, name, status, created, corr in rows:
            await put(store, saga(sid, name=name, status=status, created_at=created, correlation_id=corr))

        async def ids(**kw: Any) -> list[str]:
            q = SagaQuery(**kw)
            found = [s.id for s in await store.list(q)]
            count_q = SagaQuery(**{k: v for k, v in kw.items() if k not in ("limit", "offset")})
            assert await store.count(count_q) >= len(found)
            return found

        assert await ids() == ["f", "e", "d", "c", "b", "a"]
        assert await ids(status=SagaStatus.RUNNING) == ["e", "c", "b"]
        assert await ids(name="refund") == ["f", "c"]
        assert await ids(correlation_id="c1") == ["f", "b", "a"]
        assert await ids(created_after=102.0) == ["f", "e", "d", "c"]
        assert await ids(created_before=102.0) == ["b", "a"]
        assert await ids(created_after=101.0, created_before=104.0, name="order") == ["e", "d", "b"]
        assert await ids(limit=2) == ["f", "e"]
        assert await ids(limit=2, offset=2) == ["d", "c"]
        assert await ids(offset=5) == ["a"]
        assert await ids(offset=6) == []
        assert await ids(status=SagaStatus.ABORTED) == []
        assert await store.count(SagaQuery()) == 6
        assert await store.count(SagaQuery(status=SagaStatus.RUNNING, name="order")) == 2
        assert await store.count(SagaQuery(correlation_id="c1", created_before=104.0)) == 2
        assert await store.count(SagaQuery(limit=1)) == 6  # count ignores paging
        listed = await store.list(SagaQuery(name="refund", limit=1))
        assert listed == [await store.get("f")]

    async def test_list_search_filters_and_count_by_status(self, store: Store) -> None:
        """Version, updated range, several statuses, business key in data, overdue (stuck)."""
        rows = [
            # id, status, version, created, updated, data, wake
            ("a", SagaStatus.COMPLETED, 1, 100.0, 110.0, {"order_id": "o-1", "n": 7}, None),
            ("b", SagaStatus.RUNNING, 2, 101.0, 120.0, {"order_id": "o-2", "n": 7.5, "vip": True}, 50.0),
            ("c", SagaStatus.RUNNING, 2, 102.0, 130.0, {"order_id": "o-1", "n": 8, "vip": False}, 500.0),
            ("d", SagaStatus.FAILED, 1, 103.0, 140.0, {"order_id": "o-3", "nested": {"x": 1}}, None),
            ("e", SagaStatus.PENDING, 1, 104.0, 104.0, ["not", "a", "mapping"], 40.0),
            ("f", SagaStatus.COMPENSATING, 2, 105.0, 150.0, {"order_id": "o'; DROP TABLE x"}, 60.0),
        ]
        for sid, status, version, created, updated, data, wake in rows:
            st = saga(sid, status=status, created_at=created, data=data)
            st.version = version
            st.updated_at = updated
            await put(store, st, wake_at=wake)

        async def ids(**kw: Any) -> list[str]:
            found = [s.id for s in await store.list(SagaQuery(**kw))]
            unpaged = SagaQuery(**{k: v for k, v in kw.items() if k not in ("limit", "offset")})
            assert await store.count(unpaged) == len(await store.list(unpaged))
            return found

        assert await ids(version=2) == ["f", "c", "b"]
        assert await ids(updated_after=130.0) == ["f", "d", "c"]
        assert await ids(updated_before=120.0) == ["e", "a"]
        assert await ids(updated_after=110.0, updated_before=140.0) == ["c", "b", "a"]
        assert await ids(statuses=(SagaStatus.FAILED, SagaStatus.PENDING)) == ["e", "d"]
        assert await ids(statuses=()) == []
        assert await ids(statuses=(SagaStatus.RUNNING,), status=SagaStatus.RUNNING) == ["c", "b"]
        assert await ids(data_equals={"order_id": "o-1"}) == ["c", "a"]
        assert await ids(data_equals={"order_id": "o-1", "n": 8}) == ["c"]
        assert await ids(data_equals={"n": 7}) == ["a"]
        assert await ids(data_equals={"n": "7"}) == ["a"]  # compared as text
        assert await ids(data_equals={"n": 7.5}) == ["b"]
        assert await ids(data_equals={"vip": True}) == ["b"]
        assert await ids(data_equals={"vip": False}) == ["c"]
        assert await ids(data_equals={"order_id": "o'; DROP TABLE x"}) == ["f"]
        assert await ids(data_equals={"missing": "x"}) == []
        # Unfinished sagas whose wake time passed before 100 (finished ones have none).
        assert await ids(overdue_before=100.0) == ["f", "e", "b"]
        assert await ids(overdue_before=45.0) == ["e"]
        assert await ids(overdue_before=100.0, version=2) == ["f", "b"]
        assert await ids(overdue_before=1000.0, limit=2, offset=1) == ["e", "c"]
        with pytest.raises(ValueError, match="business key"):
            SagaQuery(data_equals={"a.b": "x"})
        with pytest.raises(ValueError, match="business key"):
            SagaQuery(data_equals={"k": None})  # type: ignore[dict-item]

        counts = await store.count_by_status()
        assert counts == {
            SagaStatus.PENDING: 1,
            SagaStatus.RUNNING: 2,
            SagaStatus.COMPENSATING: 1,
            SagaStatus.COMPLETED: 1,
            SagaStatus.COMPENSATED: 0,
            SagaStatus.FAILED: 1,
            SagaStatus.ABORTED: 0,
        }
        by_version = await store.count_by_status(SagaQuery(version=1, limit=1))
        assert {k: v for k, v in by_version.items() if v} == {
            SagaStatus.PENDING: 1,
            SagaStatus.COMPLETED: 1,
            SagaStatus.FAILED: 1,
        }

    async def test_next_wake(self, store: Store) -> None:
        assert await store.next_wake() is None
        await put(store, saga("finished", status=SagaStatus.COMPLETED), wake_at=None)
        assert await store.next_wake() is None
        await put(store, saga("later"), wake_at=50.0)
        await put(store, saga("sooner"), wake_at=20.5)
        assert await store.next_wake() == 20.5
        await store.claim("w1", 30.0, 90.0, 5)  # "sooner" is now due at its lease expiry
        assert await store.next_wake() == 50.0

    # ------------------------------------------------------------ outbox, inbox, dead letters

    @staticmethod
    def _messaging(store: Store) -> None:
        import sagakit._store

        if not hasattr(sagakit._store, "OutboxRecord") or not hasattr(store, "outbox_claim"):
            pytest.skip(f"{type(store).__name__} has no outbox relay methods")

    async def test_outbox_is_written_with_applied_transitions_only(self, store: Store) -> None:
        self._messaging(store)
        a, b = saga("a"), saga("b")
        await put(store, a)
        await put(store, b)
        wa = update(a)
        wa.outbox += [
            OutboxMessage("a-1", "a", "payments", b'{"n":1}', {"type": "Charge"}),
            OutboxMessage("a-2", "a", "payments", b'{"n":2}'),
        ]
        wb = update(b, expected=9)
        wb.outbox.append(OutboxMessage("b-1", "b", "payments", b"{}"))
        assert await store.commit([wa, wb]) == ["a", None]
        s: Any = store
        assert await s.outbox_pending() == 2
        claimed = await s.outbox_claim("relay-1", 200.0, 230.0, 10)
        assert [(m.id, m.saga_id, m.destination, m.payload, m.headers, m.attempts) for m in claimed] == [
            ("a-1", "a", "payments", b'{"n":1}', {"type": "Charge"}, 1),
            ("a-2", "a", "payments", b'{"n":2}', {}, 1),
        ]

    async def test_outbox_claims_done_and_retry(self, store: Store) -> None:
        self._messaging(store)
        st = saga("a")
        await put(store, st)
        w = update(st)
        w.outbox += [OutboxMessage(f"m{i}", "a", "q", b"x") for i in range(3)]
        await store.commit([w])
        s: Any = store
        first = await s.outbox_claim("r1", 200.0, 230.0, 2)
        assert [m.id for m in first] == ["m0", "m1"]
        # One relay per saga at a time: r1 holds saga a's messages, so r2 gets none of them.
        assert await s.outbox_claim("r2", 200.0, 230.0, 10) == []
        await s.outbox_done("r2", ["m0"])  # not r2's: stays
        await s.outbox_done("r1", ["m0"])
        assert await s.outbox_pending() == 2
        await s.outbox_retry("r1", ["m1"], 300.0)
        # m1 waits for its retry; m2 comes after it, so it waits too.
        assert await s.outbox_claim("r3", 220.0, 250.0, 10) == []
        again = await s.outbox_claim("r3", 300.0, 330.0, 10)
        assert [(m.id, m.attempts) for m in again] == [("m1", 2), ("m2", 1)]
        await s.outbox_done("r3", ["m1", "m2"])
        assert await s.outbox_pending() == 0

    async def test_outbox_claim_of_a_dead_relay_expires(self, store: Store) -> None:
        self._messaging(store)
        st = saga("a")
        await put(store, st)
        w = update(st)
        w.outbox += [OutboxMessage(f"m{i}", "a", "q", b"x") for i in range(2)]
        await store.commit([w])
        s: Any = store
        assert [m.id for m in await s.outbox_claim("dead", 200.0, 230.0, 1)] == ["m0"]
        assert await s.outbox_claim("alive", 210.0, 240.0, 10) == []  # m0 is held: m1 waits
        taken = await s.outbox_claim("alive", 231.0, 260.0, 10)  # the dead relay's claim ran out
        assert [(m.id, m.attempts) for m in taken] == [("m0", 2), ("m1", 1)]

    async def test_inbox_records_messages_of_applied_transitions(self, store: Store) -> None:
        self._messaging(store)
        a, b = saga("a"), saga("b")
        await put(store, a)
        await put(store, b)
        wa = update(a)
        wa.inbox.append("in-a")
        wb = update(b, expected=9)
        wb.inbox.append("in-b")
        await store.commit([wa, wb])
        s: Any = store
        assert await s.inbox_seen("in-a") is True
        assert await s.inbox_seen("in-b") is False
        assert await s.inbox_seen("never") is False
        if hasattr(s, "inbox_seen_many"):  # optional beside the protocol
            assert await s.inbox_seen_many(["in-b", "in-a", "never", "in-a"]) == {"in-a"}
            assert await s.inbox_seen_many([f"x{i}" for i in range(1200)] + ["in-a"]) == {"in-a"}  # many at once
            assert await s.inbox_seen_many([]) == set()

    async def test_dead_letters_newest_first(self, store: Store) -> None:
        self._messaging(store)
        from sagakit._store import DeadLetter

        s: Any = store
        assert await s.dead_letters() == []
        letters = [DeadLetter(f"m{i}", float(i), None if i % 2 else "a", "Evt", "{}", f"r{i}") for i in range(5)]
        for letter in letters:
            await s.dead_letter(letter)
        assert await s.dead_letters() == letters[::-1]
        assert await s.dead_letters(limit=2, offset=1) == [letters[3], letters[2]]

    # ------------------------------------------------------------ recurring starts

    async def test_schedules_are_stored_found_due_advanced_once_and_removed(self, store: Store) -> None:
        from sagakit._store import Schedule

        a = Schedule("a", "report", None, {"region": "EU", "n": [1, 2]}, "*/5 * * * *", 300.0, 1.0)
        b = Schedule("b", "report", 2, None, "@hourly", 3600.0, 2.0)
        await store.schedule_put(b)
        await store.schedule_put(a)
        assert [s.key for s in await store.schedules()] == ["a", "b"]  # the next due first
        assert await store.schedules_due(299.0, 10) == []
        [due] = await store.schedules_due(300.0, 10)
        assert due == a
        # Two workers advance the same period: one wins.
        assert await store.schedule_advance("a", 300.0, 600.0, 300.0, "saga-1") is True
        assert await store.schedule_advance("a", 300.0, 600.0, 300.0, "saga-2") is False
        [moved, _] = await store.schedules()
        assert (moved.next_at, moved.last_at, moved.last_saga) == (600.0, 300.0, "saga-1")
        # Scheduling the key again replaces expression and data, and keeps the last start.
        await store.schedule_put(Schedule("a", "report", None, {"region": "US"}, "0 * * * *", 3600.0, 9.0))
        again = next(s for s in await store.schedules() if s.key == "a")
        assert (again.cron, again.data, again.last_saga, again.created_at) == (
            "0 * * * *",
            {"region": "US"},
            "saga-1",
            1.0,
        )
        assert await store.schedule_remove("a") is True
        assert await store.schedule_remove("a") is False
        assert [s.key for s in await store.schedules()] == ["b"]

    # ------------------------------------------------------------ retention

    async def _finished(
        self, store: Store, saga_id: str, status: SagaStatus, updated_at: float, *, created_at: float = 50.0
    ) -> None:
        """A saga created, then finished at *updated_at* with history, an inbox and an outbox row."""
        st = saga(saga_id, created_at=created_at)
        await put(store, st, history=[entry("created")])
        w = update(st, status=status, wake_at=None, history=[entry("finished")])
        w.state.updated_at = updated_at
        w.inbox.append(f"in-{saga_id}")
        w.outbox.append(OutboxMessage(f"out-{saga_id}", saga_id, "events", b"{}"))
        assert await store.commit([w]) == [saga_id]

    async def _prune_all(self, store: Store, before: float, statuses: Any = None, **kw: Any) -> Any:
        from sagakit._store import Pruned, prune

        total = Pruned()
        async for batch in prune(store, before, statuses, **kw):
            total += batch
        return total

    async def test_prune_deletes_old_finished_sagas_with_their_rows(self, store: Store) -> None:
        from sagakit._store import DeadLetter, Pruned

        self._messaging(store)
        s: Any = store
        for i, status in enumerate([SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.ABORTED]):
            await self._finished(store, f"old-{i}", status, 100.0 + i)
        await self._finished(store, "failed", SagaStatus.FAILED, 100.0)
        await self._finished(store, "recent", SagaStatus.COMPLETED, 300.0)
        await put(store, saga("running", created_at=10.0), wake_at=5.0)  # old but unfinished
        await put(store, saga("pending", status=SagaStatus.PENDING, created_at=10.0), wake_at=None)
        for i, at in enumerate([150.0, 199.0, 250.0]):
            await s.dead_letter(DeadLetter(f"d{i}", at, None, "Evt", "{}", "unknown saga"))

        pruned = await self._prune_all(store, 200.0, batch=2)

        assert pruned == Pruned(sagas=3, history=6, inbox=3, outbox=3, dead_letters=2)
        for i in range(3):
            assert await store.get(f"old-{i}") is None
            assert await store.history(f"old-{i}") == []
            assert await s.inbox_seen(f"in-old-{i}") is False
        for kept in ("failed", "recent", "running", "pending"):
            assert await store.get(kept) is not None
        assert [h.message for h in await store.history("failed")] == ["created", "finished"]
        assert await s.inbox_seen("in-failed") is True
        assert await s.outbox_pending() == 2  # failed's and recent's
        assert [d.message_id for d in await s.dead_letters()] == ["d2"]
        assert await self._prune_all(store, 200.0) == Pruned()  # nothing left to do

    async def test_prune_failed_only_when_asked(self, store: Store) -> None:
        await self._finished(store, "done", SagaStatus.COMPLETED, 100.0)
        await self._finished(store, "failed", SagaStatus.FAILED, 100.0)
        pruned = await self._prune_all(store, 200.0, [SagaStatus.FAILED])
        assert pruned.sagas == 1
        assert await store.get("failed") is None
        assert await store.get("done") is not None

    async def test_prune_refuses_unfinished_statuses(self, store: Store) -> None:
        with pytest.raises(ValueError, match="cannot prune sagas with status 'running'"):
            await self._prune_all(store, 200.0, [SagaStatus.RUNNING])

    async def test_prune_keeps_a_finished_saga_somebody_holds(self, store: Store) -> None:
        await self._finished(store, "held", SagaStatus.COMPLETED, 100.0)
        assert await store.claim_saga("held", "operator", 150.0, 500.0) is not None
        assert (await self._prune_all(store, 200.0)).sagas == 0
        assert await store.get("held") is not None

    async def test_prune_in_many_batches_with_equal_creation_times(self, store: Store) -> None:
        # The cursor is (created_at, id): sagas that share a creation time are neither skipped
        # nor taken twice, and kept sagas before them are not looked at again.
        await self._finished(store, "a-failed", SagaStatus.FAILED, 100.0, created_at=50.0)
        for i in range(7):
            await self._finished(store, f"s{i}", SagaStatus.COMPLETED, 100.0, created_at=60.0)
        batches = []
        from sagakit._store import prune

        async for batch in prune(store, 200.0, batch=3):
            batches.append(batch.sagas)
        assert batches == [3, 3, 1]
        assert await store.count(SagaQuery()) == 1

    async def test_prune_dry_run_changes_nothing(self, store: Store) -> None:
        from sagakit._store import DeadLetter, Pruned

        self._messaging(store)
        s: Any = store
        for i in range(5):
            await self._finished(store, f"old-{i}", SagaStatus.COMPLETED, 100.0)
        await s.dead_letter(DeadLetter("d", 150.0, None, "Evt", "{}", "unknown saga"))
        expected = Pruned(sagas=5, history=10, inbox=5, outbox=5, dead_letters=1)
        assert await self._prune_all(store, 200.0, batch=2, dry_run=True) == expected
        assert await store.count(SagaQuery()) == 5
        assert len(await store.history("old-0")) == 2
        assert await s.inbox_seen("in-old-0") is True
        assert await s.outbox_pending() == 5
        assert len(await s.dead_letters()) == 1
        assert await self._prune_all(store, 200.0) == expected

    # ------------------------------------------------------------ participants' handled commands

    async def test_a_handled_command_is_recorded_with_its_reply(self, store: Store, make_store: StoreFactory) -> None:
        async with store.handling("payments", "m-1", 10.0) as h:
            assert (h.handled, h.reply) == (False, None)
            h.reply = '{"ok": true}'
        async with store.handling("payments", "m-1", 11.0) as again:
            assert (again.handled, again.reply) == (True, '{"ok": true}')
        async with store.handling("shipping", "m-1", 11.0) as other:
            assert other.handled is False  # each participant handles a command once
        restarted = make_store()
        await restarted.open()
        try:
            async with restarted.handling("payments", "m-1", 12.0) as after:
                assert (after.handled, after.reply) == (True, '{"ok": true}')
        finally:
            if restarted is not store:
                await restarted.close()

    async def test_a_command_handled_without_a_reply_is_recorded(self, store: Store) -> None:
        async with store.handling("payments", "m-none", 10.0) as h:
            assert h.handled is False
        async with store.handling("payments", "m-none", 11.0) as again:
            assert (again.handled, again.reply) == (True, None)

    async def test_an_error_while_handling_records_nothing(self, store: Store) -> None:
        with pytest.raises(ZeroDivisionError):
            async with store.handling("payments", "m-2", 10.0) as h:
                h.reply = "never"
                1 / 0  # noqa: B018
        async with store.handling("payments", "m-2", 11.0) as again:
            assert again.handled is False

    async def test_a_second_claim_of_a_command_waits_for_the_first(
        self, store: Store, make_store: StoreFactory
    ) -> None:
        other = make_store()
        await other.open()
        first_in = asyncio.Event()
        release = asyncio.Event()
        seen: list[tuple[str, bool, str | None]] = []

        async def first() -> None:
            async with store.handling("payments", "m-3", 10.0) as h:
                seen.append(("first", h.handled, h.reply))
                first_in.set()
                await release.wait()
                h.reply = "r-first"

        async def second() -> None:
            await first_in.wait()
            async with other.handling("payments", "m-3", 10.5) as h:
                seen.append(("second", h.handled, h.reply))

        try:
            a = asyncio.create_task(first())
            b = asyncio.create_task(second())
            await first_in.wait()
            await asyncio.sleep(0.2)  # the second claim is waiting, not handling
            assert seen == [("first", False, None)]
            release.set()
            await asyncio.wait_for(asyncio.gather(a, b), 20)
        finally:
            if other is not store:
                await other.close()
        assert seen == [("first", False, None), ("second", True, "r-first")]

    async def test_forgetting_handled_commands(self, store: Store) -> None:
        for i, (who, at) in enumerate([("payments", 10.0), ("payments", 20.0), ("shipping", 10.0), ("payments", 5.0)]):
            async with store.handling(who, f"m-{i}", at):
                pass
        assert await store.prune_handled("payments", 15.0, limit=1) == 1
        assert await store.prune_handled("payments", 15.0, limit=10) == 1
        assert await store.prune_handled(None, 15.0, limit=10) == 1  # shipping's
        for i, handled in enumerate([False, True, False, False]):
            async with store.handling("shipping" if i == 2 else "payments", f"m-{i}", 30.0) as h:
                assert h.handled is handled, i

    # ------------------------------------------------------------ resource permits

    async def test_permits_go_in_order_up_to_the_concurrency_and_come_back_on_release(self, store: Store) -> None:
        limit = Resource("payments", concurrency=2)
        keys = [PermitKey(f"s{i}", "charge", 1) for i in range(3)]
        got = await store.permits_acquire(limit, "w1", keys, 30.0, 100.0)
        assert got.granted == keys[:2] and got.retry_after is None
        [usage] = await store.resources(100.0)
        assert (usage.name, usage.concurrency, usage.in_use, usage.waiting) == ("payments", 2, 2, 1)
        again = await store.permits_acquire(limit, "w1", keys, 30.0, 101.0)
        assert again.granted == keys[:2]  # held ones are told again; the third still waits
        await store.permits_release("payments", [keys[0], PermitKey("nobody", "x", 9)])
        got = await store.permits_acquire(limit, "w1", keys[2:], 30.0, 102.0)
        assert got.granted == keys[2:]
        await store.permits_release("payments", keys)
        [usage] = await store.resources(103.0)
        assert (usage.in_use, usage.waiting) == (0, 0)

    async def test_permits_of_a_holder_that_stops_renewing_expire(self, store: Store) -> None:
        limit = Resource("payments", concurrency=1)
        dead, alive = PermitKey("s1", "charge", 1), PermitKey("s2", "charge", 1)
        assert (await store.permits_acquire(limit, "dead", [dead], 10.0, 100.0)).granted == [dead]
        assert (await store.permits_acquire(limit, "alive", [alive], 10.0, 105.0)).granted == []
        await store.permits_renew("dead", 10.0, 108.0)  # still alive at 108: holds until 118
        assert (await store.permits_acquire(limit, "alive", [alive], 10.0, 115.0)).granted == []
        assert (await store.permits_acquire(limit, "alive", [alive], 10.0, 119.0)).granted == [alive]
        await store.permits_forget("alive")
        [usage] = await store.resources(119.5)
        assert (usage.in_use, usage.waiting) == (0, 0)

    async def test_the_rate_window_holds_permits_back_and_says_until_when(self, store: Store) -> None:
        limit = Resource("api", rate=2, per=1.0)
        keys = [PermitKey("s", "call", i) for i in range(1, 4)]
        got = await store.permits_acquire(limit, "w1", keys, 30.0, 100.0)
        assert got.granted == keys[:2] and got.retry_after == pytest.approx(1.0)
        await store.permits_release("api", keys[:2])  # released, but they started in this window
        got = await store.permits_acquire(limit, "w1", keys[2:], 30.0, 100.5)
        assert got.granted == [] and got.retry_after == pytest.approx(0.5)
        [usage] = await store.resources(100.5)
        assert (usage.rate, usage.recent, usage.waiting) == (2, 2, 1)
        assert (await store.permits_acquire(limit, "w1", keys[2:], 30.0, 101.0)).granted == keys[2:]
