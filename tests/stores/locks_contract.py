"""The store contract for semantic locks (part of ``StoreContract``): acquisitions, releases in commits, wake-ups."""

from __future__ import annotations

from typing import Any

from sagakit import SagaStatus
from sagakit._store import LockAnswer, Store, Write
from sagakit.machine import LOCKS, SagaState


def waiting(st: SagaState, keys: list[str], **more: Any) -> SagaState:
    st.meta = {LOCKS: {"wanted": keys, "held": [], **more}}
    return st


async def insert(store: Store, st: SagaState, wake_at: float | None = 10.0, owner: str | None = None) -> None:
    st.wake_at = wake_at
    (res,) = await store.commit(
        [Write(st, 0, [], wake_at, owner=owner, lease_expires=None if owner is None else 1e12, insert=True)]
    )
    assert res == st.id


async def rewrite(store: Store, st: SagaState, **kw: Any) -> SagaState:
    """Commit *st* one revision on, with the write's lock fields in *kw*."""
    new = st.copy()
    new.revision = st.revision + 1
    new.updated_at = st.updated_at + 1
    for k in ("status", "meta"):
        if k in kw:
            setattr(new, k, kw.pop(k))
    wake = kw.pop("wake_at", None)
    (res,) = await store.commit([Write(new, st.revision, [], wake, **kw)])
    assert res == st.id
    return new


class LockContract:
    """Semantic locks, the same on every store."""

    async def _saga(self, store: Store, sid: str, keys: list[str], **kw: Any) -> SagaState:
        from tests.stores.contract import saga

        st = waiting(saga(sid), keys)
        await insert(store, st, **kw)
        return st

    async def test_an_acquisition_is_all_or_nothing_and_queues_first_come_first_served(self, store: Store) -> None:
        a = await self._saga(store, "a", ["k1", "k2"])
        assert await store.acquire_locks("a", ["k1", "k2"], 1.0) == LockAnswer("granted")
        assert await store.acquire_locks("a", ["k1", "k2"], 1.5) == LockAnswer("granted")  # asked again: no change
        await self._saga(store, "b", ["k2", "k3"])
        assert await store.acquire_locks("b", ["k2", "k3"], 2.0) == LockAnswer("waiting", "", (("k2", "a"),))
        await self._saga(store, "c", ["k3"])
        assert await store.acquire_locks("c", ["k3"], 3.0) == LockAnswer("waiting", "", (("k3", "b"),))
        entries = [(e.key, e.saga_id, e.held) for e in await store.locks()]
        assert entries == [
            ("k1", "a", True),
            ("k2", "a", True),
            ("k2", "b", False),
            ("k3", "b", False),
            ("k3", "c", False),
        ]
        assert {e.saga_name for e in await store.locks()} == {"order"}
        assert [e.key for e in await store.locks(saga_id="b")] == ["k2", "k3"]
        # a ends: b gets both its keys in a's final write and is due at once; c still waits behind b.
        await rewrite(store, a, status=SagaStatus.COMPLETED, unlock_all=True)
        entries = [(e.key, e.saga_id, e.held) for e in await store.locks()]
        assert entries == [("k2", "b", True), ("k3", "b", True), ("k3", "c", False)]
        b = await store.get("b")
        assert b is not None and b.wake_at == 101.0  # the releasing write's time
        assert await store.acquire_locks("b", ["k2", "k3"], 4.0) == LockAnswer("granted")

    async def test_fail_and_give_up_leave_the_queue_and_name_the_holder(self, store: Store) -> None:
        await self._saga(store, "a", ["k"])
        await store.acquire_locks("a", ["k"], 1.0)
        await self._saga(store, "b", ["k"])
        assert await store.acquire_locks("b", ["k"], 2.0, fail=True) == LockAnswer("refused", "taken", (("k", "a"),))
        assert await store.acquire_locks("b", ["k"], 2.0) == LockAnswer("waiting", "", (("k", "a"),))
        assert await store.acquire_locks("b", ["k"], 3.0, give_up=True) == LockAnswer(
            "refused", "timeout", (("k", "a"),)
        )
        assert [e.saga_id for e in await store.locks()] == ["a"]

    async def test_an_acquisition_the_saga_no_longer_waits_for_is_stale(self, store: Store) -> None:
        a = await self._saga(store, "a", ["k"])
        assert await store.acquire_locks("a", ["other"], 1.0) == LockAnswer("stale")
        assert await store.acquire_locks("nobody", ["k"], 1.0) == LockAnswer("stale")
        await rewrite(store, a, status=SagaStatus.ABORTED, unlock_all=True)
        assert await store.acquire_locks("a", ["k"], 1.0) == LockAnswer("stale")
        assert await store.locks() == []

    async def test_a_queued_saga_gives_up_its_lease_in_the_same_transaction(self, store: Store) -> None:
        await self._saga(store, "a", ["k"])
        await store.acquire_locks("a", ["k"], 1.0)
        await self._saga(store, "b", ["k"], owner="w1")
        answer = await store.acquire_locks("b", ["k"], 2.0, owner="w1", wake_at=50.0)
        assert answer.outcome == "waiting" and answer.released
        leases = [lease.saga_id for lease in await store.leases(0.0)]
        assert "b" not in leases
        b = await store.get("b")
        assert b is not None and b.wake_at == 50.0

    async def test_a_write_letting_go_of_a_saga_whose_keys_were_granted_meanwhile_makes_it_due(
        self, store: Store
    ) -> None:
        a = await self._saga(store, "a", ["k"])
        await store.acquire_locks("a", ["k"], 1.0)
        b = await self._saga(store, "b", ["k"], owner="w1")
        await store.acquire_locks("b", ["k"], 2.0)  # queued, still leased: busy with another branch
        await rewrite(store, a, status=SagaStatus.COMPLETED, unlock_all=True)  # granted; leased, so not woken
        b = await rewrite(store, b, wake_at=None, lock_wait=True, meta=b.meta)  # its worker lets go of it
        stored = await store.get("b")
        assert stored is not None and stored.wake_at == b.updated_at

    async def test_a_release_of_some_keys_keeps_the_others(self, store: Store) -> None:
        a = await self._saga(store, "a", ["k1", "k2"])
        await store.acquire_locks("a", ["k1", "k2"], 1.0)
        await rewrite(store, a, unlock=("k1",))
        assert [(e.key, e.held) for e in await store.locks()] == [("k2", True)]

    async def test_a_fenced_write_releases_nothing(self, store: Store) -> None:
        a = await self._saga(store, "a", ["k"])
        await store.acquire_locks("a", ["k"], 1.0)
        new = a.copy()
        new.revision = a.revision + 5
        (res,) = await store.commit([Write(new, a.revision + 4, [], None, unlock_all=True)])
        assert res is None
        assert [e.saga_id for e in await store.locks()] == ["a"]
