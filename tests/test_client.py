"""SagaClient from plain threads, no event loop in the caller: a worker engine on its own thread runs the sagas."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from sagakit import (
    NonRetryableError,
    RetryPolicy,
    SagaBuilder,
    SagaClient,
    SagaDefinition,
    SagaEngine,
    SagaNotFound,
    SagaSnapshot,
    SagaStateError,
    SagaStatus,
    StepContext,
    StepStatus,
)
from tests.worker.sagas import Approved, approval_saga

RAN: list[str] = []


def _order_saga() -> SagaDefinition:
    def reserve(ctx: StepContext) -> dict[str, Any]:
        RAN.append(ctx.saga_id)
        return {"reserved": ctx.data["order_id"]}

    async def charge(ctx: StepContext) -> dict[str, Any]:
        return {"charged": ctx.data["order_id"]}

    b = SagaBuilder("order")
    b.step("reserve", reserve)
    b.step("charge", charge)
    return b.build()


def _flaky_saga() -> SagaDefinition:
    """A step that fails and then waits a long back-off: the operator acts while it waits."""

    async def gateway(ctx: StepContext) -> dict[str, Any]:
        if ctx.data.get("fatal"):
            raise NonRetryableError("card declined")
        raise RuntimeError("gateway down")

    async def undo(ctx: StepContext) -> None:
        return None

    async def first(ctx: StepContext) -> str:
        return "done"

    b = SagaBuilder("flaky")
    b.step("first", first, undo)
    b.step("gateway", gateway, retry=RetryPolicy(max_attempts=100, initial_delay=60.0, max_delay=60.0, jitter=0))
    b.step("after", first)
    return b.build()


ORDER = _order_saga()
FLAKY = _flaky_saga()


@contextmanager
def worker(url: str, *definitions: SagaDefinition) -> Iterator[None]:
    """A SagaEngine running on a thread of its own, as a worker process would."""
    stop = threading.Event()
    ready = threading.Event()
    failed: list[BaseException] = []

    async def run() -> None:
        engine = SagaEngine(url, poll_interval=0.05)
        engine.register(*definitions)
        async with engine:
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.02)

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as e:
            failed.append(e)
            ready.set()

    thread = threading.Thread(target=main, name="test-worker")
    thread.start()
    assert ready.wait(30), "the worker did not start"
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
    assert not failed, failed


def until(
    read: Callable[[], SagaSnapshot], cond: Callable[[SagaSnapshot], bool], timeout: float = 20.0
) -> SagaSnapshot:
    deadline = time.monotonic() + timeout
    while True:
        snap = read()
        if cond(snap):
            return snap
        if time.monotonic() > deadline:
            raise AssertionError(f"saga {snap.id} never got there: {snap.status} {snap.steps}")
        time.sleep(0.02)


def test_threads_share_one_client_to_start_and_wait(store_url: str) -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # the caller has no event loop
    results: dict[int, SagaSnapshot] = {}
    errors: list[BaseException] = []
    with SagaClient(store_url, [ORDER]) as client, worker(store_url, ORDER):

        def request(i: int) -> None:
            try:
                sid = client.start("order", {"order_id": f"o-{i}"}, idempotency_key=f"o-{i}")
                assert client.start("order", {"order_id": "other"}, idempotency_key=f"o-{i}") == sid
                results[i] = client.wait(sid, timeout=30)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=request, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert client.count(status="completed", name="order") == 8
        listed = client.list(name="order", limit=100)
    assert sorted(results) == list(range(8))
    for i, snap in results.items():
        assert snap.status is SagaStatus.COMPLETED
        assert snap.steps["charge"].result == {"charged": f"o-{i}"}
    assert {s.id for s in listed} == {s.id for s in results.values()}


def test_the_client_never_runs_a_saga_itself(store_url: str) -> None:
    with SagaClient(store_url, [ORDER]) as client:
        sid = client.start("order", {"order_id": "o-late"})
        with pytest.raises(TimeoutError, match="still pending"):
            client.wait(sid, timeout=0.5)
        assert sid not in RAN and client.get(sid).status is SagaStatus.PENDING
        with worker(store_url, ORDER):
            snap = client.wait(sid, timeout=30)
    assert snap.status is SagaStatus.COMPLETED and sid in RAN


def test_notify_hands_an_event_to_a_waiting_step(store_url: str) -> None:
    with SagaClient(store_url, [approval_saga]) as client, worker(store_url, approval_saga):
        sid = client.start("approval", {"order": "o-1"})
        until(lambda: client.get(sid), lambda s: s.steps["approve"].status is StepStatus.RUNNING)
        client.notify(sid, Approved(approver="ann"), message_id="m-1")
        client.notify(sid, Approved(approver="bob"), message_id="m-1")  # the same message again: ignored
        snap = client.wait(sid, timeout=30)
    assert snap.status is SagaStatus.COMPLETED and snap.data["approver"] == "ann"


def test_operator_actions(store_url: str) -> None:
    def waiting_for_retry(s: SagaSnapshot) -> bool:
        return s.steps["gateway"].attempts >= 1 and s.steps["gateway"].next_attempt_at is not None

    with SagaClient(store_url, [FLAKY]) as client, worker(store_url, FLAKY):
        skipped, compensated, aborted, retried = (client.start("flaky", {}) for _ in range(4))
        for sid in (skipped, compensated, aborted, retried):
            until(lambda sid=sid: client.get(sid), waiting_for_retry)

        client.skip(skipped, "gateway", result={"paid": "by hand"}, reason="paid at the till")
        assert client.wait(skipped, timeout=30).status is SagaStatus.COMPLETED

        client.compensate(compensated, reason="customer cancelled")
        snap = client.wait(compensated, timeout=30)
        assert snap.status is SagaStatus.COMPENSATED and snap.steps["first"].status is StepStatus.COMPENSATED

        assert client.abort(aborted, reason="test order").status is SagaStatus.ABORTED
        with pytest.raises(SagaStateError):
            client.compensate(aborted)  # finished: the machine refuses, with its reason

        client.retry(retried, reason="gateway is back")  # runs the step now instead of in 60 s
        snap = until(lambda: client.get(retried), lambda s: s.steps["gateway"].attempts >= 2)
        assert any("gateway is back" in h.message for h in snap.history)

        with pytest.raises(SagaNotFound):
            client.get("no-such-saga")


def test_close_stops_the_thread_and_refuses_further_calls(store_url: str) -> None:
    client = SagaClient(store_url, [ORDER])
    sid = client.start("order", {"order_id": "o-1"})
    thread = client._thread
    assert thread is not None and thread.is_alive() and thread.daemon
    client.close()
    client.close()  # twice is fine
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        client.get(sid)
    with SagaClient(store_url, [ORDER]) as again:
        assert again.get(sid).status is SagaStatus.PENDING


def test_a_scheduled_start_waits_and_can_be_aborted(store_url: str) -> None:
    with SagaClient(store_url, [ORDER]) as client, worker(store_url, ORDER):
        sid = client.start("order", {"order_id": "o-later"}, delay=3600)
        time.sleep(0.3)  # a worker that looks now finds nothing due
        snap = client.get(sid)
        assert snap.status is SagaStatus.PENDING and snap.wake_at is not None and snap.wake_at > time.time() + 3000
        assert client.abort(sid, reason="not needed").status is SagaStatus.ABORTED
    assert sid not in RAN


def test_a_client_made_before_fork_works_in_the_child(store_url: str) -> None:
    """A pre-forking server (gunicorn --preload) forks after the client was made and used."""
    import os

    with SagaClient(store_url, [ORDER]) as client:
        parent_saga = client.start("order", {"order_id": "parent"})
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: the parent's loop thread did not come along
            code = 1
            try:
                parents = client._finalizer
                sid = client.start("order", {"order_id": "child"})
                assert client.get(parent_saga).status is SagaStatus.PENDING
                assert parents is not None and not parents.alive  # the parent's loop is not closed at our exit
                client.close()
                os.write(write, sid.encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        child_saga = os.read(read, 100).decode()
        os.close(read)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.get(child_saga).data == {"order_id": "child"}  # the parent's client still works


def test_schedules_and_typed_data_through_the_client(store_url: str) -> None:
    from decimal import Decimal

    from pydantic import BaseModel

    class Nightly(BaseModel):
        region: str
        budget: Decimal

    with SagaClient(store_url, [ORDER]) as client:
        s = client.schedule("order", Nightly(region="eu", budget=Decimal("10.50")), cron="0 3 * * *", key="nightly")
        assert s.data == {"region": "eu", "budget": "10.50"}  # stored in its JSON form
        assert [x.key for x in client.schedules()] == ["nightly"]
        assert client.unschedule("nightly") is True and client.schedules() == []
        assert client.dead_letters() == []
