"""The transport contract: one suite that the in-memory transport and every broker's transport pass.

Subclass ``TransportContract`` per transport (``tests/transports/test_<broker>.py``)
and implement ``url`` (or ``make``), ``missing`` and ``cleanup``. Every test
gets a fresh namespace (destinations, groups, dead-letter destination, and
the broker-side stream/exchange/prefix), removed again afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import pytest

from sagakit._transport import Delivery, Transport, TransportError, transport_from_url
from tests.conftest import require_service
from tests.proxy import TcpProxy

from .kit import Collector, wait_until

DeadLetters = Callable[[int, float], Awaitable[list[Delivery]]]
HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))


class Kit:
    """One test's namespace on the broker and the transports opened in it."""

    def __init__(self, contract: TransportContract, ns: str) -> None:
        self.contract = contract
        self.ns = ns
        self.opened: list[Transport] = []
        self.subscribed: set[tuple[str, str]] = set()  # (group, destination)
        self.proxies: list[TcpProxy] = []
        self.closers: list[Callable[[], Awaitable[Any]]] = []

    def on_close(self, closer: Callable[[], Awaitable[Any]]) -> None:
        """Await *closer* when the test ends, after its transports and proxies are closed."""
        self.closers.append(closer)

    @property
    def dead_letter(self) -> str:
        return f"{self.ns}.dead_letter"

    def dest(self, name: str = "Thing") -> str:
        return f"{self.ns}.events.{name}"

    def group(self, name: str = "g") -> str:
        return f"{self.ns}-{name}"

    async def transport(self, *, via: TcpProxy | None = None, **options: Any) -> Transport:
        address = ("127.0.0.1", via.port) if via is not None else None
        t = self.contract.make(self, address, **options)
        await t.start()
        self.opened.append(t)
        return t

    async def subscribe(self, t: Transport, destinations: list[str], group: str, handler: Any) -> None:
        self.subscribed.update((group, d) for d in destinations)
        await t.subscribe(destinations, group, handler)

    async def proxy(self) -> TcpProxy:
        p = await self.contract.proxy(self)
        self.proxies.append(p)
        return p


class TransportContract:
    """The behaviour every transport must have (see ``sagakit._transport``)."""

    address: ClassVar[tuple[str, int] | None] = None  # the broker's address, for the proxy tests
    dedupes: ClassVar[bool] = False  # drops a repeated publish of one message id
    out_of_process: ClassVar[bool] = True  # a consumer in another process shares its groups
    options: ClassVar[dict[str, Any]] = {}  # transport options of every test (fast redelivery)
    counts_crash_redeliveries: ClassVar[bool] = True  # a redelivery after a crash has attempt >= 2
    retries_transport_errors: ClassVar[bool] = True  # a handler's TransportError is not the message's fault

    # ------------------------------------------------------------ per transport

    def missing(self) -> str | None:
        """Why the broker cannot be used here, or None."""
        return None

    def url(self, kit: Kit, address: tuple[str, int] | None = None, **options: Any) -> str:
        raise NotImplementedError

    def make(self, kit: Kit, address: tuple[str, int] | None, **options: Any) -> Transport:
        options = {**self.options, **options}
        close_grace = options.pop("close_grace", None)
        t: Any = transport_from_url(self.url(kit, address, dead_letter=kit.dead_letter, **options))
        if close_grace is not None:
            t.close_grace = close_grace
        return t  # type: ignore[no-any-return]

    async def cleanup(self, kit: Kit) -> None:
        """Remove what the test left on the broker."""

    async def proxy(self, kit: Kit) -> TcpProxy:
        """A started proxy in front of the broker, for the test that makes the broker unreachable."""
        assert self.address is not None
        return await TcpProxy(self.address).start()

    async def dead_letter_reader(self, kit: Kit) -> DeadLetters:
        """Start reading the dead letters of the test's transports; returns ``wait(n, timeout)``."""
        t = await kit.transport()
        reader = Collector()
        await kit.subscribe(t, [kit.dead_letter], "dead-letters", reader)
        return reader.wait

    # ------------------------------------------------------------ fixture

    @pytest.fixture
    async def kit(self) -> AsyncIterator[Kit]:
        require_service(self.missing())
        kit = Kit(self, f"t{uuid.uuid4().hex[:10]}")
        try:
            yield kit
        finally:
            try:
                for t in reversed(kit.opened):
                    if hasattr(t, "close_grace"):
                        t.close_grace = 0.5
                    await t.close()
                for p in kit.proxies:
                    await p.close()
            finally:  # a private server is stopped even when a transport's close failed
                for closer in reversed(kit.closers):
                    await closer()
            await self.cleanup(kit)

    # ------------------------------------------------------------ the contract

    async def test_publish_subscribe_round_trip(self, kit: Kit) -> None:
        t = await kit.transport()
        got = Collector()
        await kit.subscribe(t, [kit.dest()], kit.group(), got)
        await t.publish(kit.dest(), b'{"x": 1}', message_id="m-1", headers={"message_id": "m-1", "k": "v"})
        [d] = await got.wait(1)
        assert d.destination == kit.dest()
        assert d.body == b'{"x": 1}'
        assert d.message_id == "m-1"
        assert d.attempt == 1
        assert d.headers["k"] == "v"
        assert d.headers["message_id"] == "m-1"

    async def test_acknowledged_only_after_the_handler_returns(self, kit: Kit) -> None:
        release = asyncio.Event()
        a = await kit.transport(ack_timeout=1.0)
        b = await kit.transport(ack_timeout=1.0)
        slow, other = Collector(block=release), Collector()
        await kit.subscribe(a, [kit.dest()], kit.group(), slow)
        await a.publish(kit.dest(), b"x", message_id="m-slow")
        await asyncio.wait_for(slow.started.wait(), 15)
        await kit.subscribe(b, [kit.dest()], kit.group(), other)
        await asyncio.sleep(2.5)  # longer than ack_timeout: the busy consumer keeps its message
        assert other.deliveries == []
        release.set()
        await wait_until(lambda: len(slow.done) == 1, 5, "the handler to return")
        await a.close()
        await asyncio.sleep(2.5)  # acknowledged: nobody gets it again
        assert other.deliveries == []
        assert slow.ids == ["m-slow"]

    async def test_redelivered_when_the_handler_raises(self, kit: Kit) -> None:
        t = await kit.transport()
        got = Collector(fail=1)
        await kit.subscribe(t, [kit.dest()], kit.group(), got)
        await t.publish(kit.dest(), b"again", message_id="m-2")
        first, second = await got.wait(2)
        assert (first.message_id, first.body, first.attempt) == ("m-2", b"again", 1)
        assert (second.message_id, second.body, second.attempt) == ("m-2", b"again", 2)
        await asyncio.sleep(0.5)
        assert len(got.deliveries) == 2  # acknowledged after the second delivery

    async def test_competing_consumers_split_the_work(self, kit: Kit) -> None:
        a = await kit.transport(concurrency=2)
        b = await kit.transport(concurrency=2)
        got_a, got_b = Collector(delay=0.03), Collector(delay=0.03)
        await kit.subscribe(a, [kit.dest()], kit.group(), got_a)
        await kit.subscribe(b, [kit.dest()], kit.group(), got_b)
        ids = [f"m-{i}" for i in range(30)]
        for mid in ids:
            await a.publish(kit.dest(), mid.encode(), message_id=mid)
        await wait_until(lambda: set(got_a.ids) | set(got_b.ids) == set(ids), 20, "all 30 messages")
        await asyncio.sleep(0.3)
        assert sorted(got_a.ids + got_b.ids) == sorted(ids)  # each handled once
        assert got_a.ids and got_b.ids, (got_a.ids, got_b.ids)

    async def test_each_group_gets_every_message(self, kit: Kit) -> None:
        a = await kit.transport()
        b = await kit.transport()
        got_1, got_2 = Collector(), Collector()
        await kit.subscribe(a, [kit.dest("A"), kit.dest("B")], kit.group("one"), got_1)
        await kit.subscribe(b, [kit.dest("B")], kit.group("two"), got_2)
        for i in range(10):
            await a.publish(kit.dest("B"), b"b", message_id=f"b-{i}")
        await a.publish(kit.dest("A"), b"a", message_id="a-0")
        await got_1.wait(11)
        await got_2.wait(10)
        await asyncio.sleep(0.3)
        assert sorted(got_1.ids) == sorted(["a-0"] + [f"b-{i}" for i in range(10)])
        assert sorted(got_2.ids) == sorted(f"b-{i}" for i in range(10))
        assert {d.destination for d in got_2.deliveries} == {kit.dest("B")}

    async def test_dead_lettered_with_the_reason_after_max_deliveries(self, kit: Kit) -> None:
        reader = await self.dead_letter_reader(kit)
        t = await kit.transport(max_deliveries=3, redelivery_delay=0.01)
        got = Collector(error=ValueError("boom: cannot parse"))
        await kit.subscribe(t, [kit.dest()], kit.group(), got)
        await t.publish(kit.dest(), b"poison", message_id="m-poison", headers={"k": "v"})
        [letter] = await reader(1, 20)
        assert [d.attempt for d in got.deliveries] == [1, 2, 3]
        assert letter.message_id == "m-poison"
        assert letter.body == b"poison"
        assert "boom: cannot parse" in letter.headers["x-sagakit-reason"]
        assert "delivery 3" in letter.headers["x-sagakit-reason"]
        assert letter.headers["x-sagakit-destination"] == kit.dest()
        await asyncio.sleep(0.5)
        assert len(got.deliveries) == 3

    async def test_a_handler_failing_on_a_broker_outage_is_retried_not_dead_lettered(self, kit: Kit) -> None:
        if not self.retries_transport_errors:
            pytest.skip("this transport counts a handler's TransportError like any failure")
        t = await kit.transport(max_deliveries=2, redelivery_delay=0.01)
        got = Collector(fail=4, error=TransportError("broker unreachable"))
        await kit.subscribe(t, [kit.dest()], kit.group(), got)
        await t.publish(kit.dest(), b"x", message_id="m-outage")
        await wait_until(lambda: len(got.done) == 1, 20, "the handler to succeed")
        assert len(got.deliveries) == 5
        assert {d.attempt for d in got.deliveries} == {1}  # retried in place: one delivery

    async def test_redelivered_after_a_consumer_closes_without_acknowledging(self, kit: Kit) -> None:
        a = await kit.transport(close_grace=0.2, ack_timeout=1.0)
        stuck = Collector(block=asyncio.Event())  # never released
        await kit.subscribe(a, [kit.dest()], kit.group(), stuck)
        await a.publish(kit.dest(), b"x", message_id="m-stuck")
        await asyncio.wait_for(stuck.started.wait(), 15)
        b = await kit.transport(ack_timeout=1.0)
        other = Collector()
        await kit.subscribe(b, [kit.dest()], kit.group(), other)
        await a.close()  # the handler is cancelled: no acknowledgement
        [d] = await other.wait(1, timeout=30)
        assert d.message_id == "m-stuck"
        assert d.attempt >= (2 if self.counts_crash_redeliveries else 1)

    async def test_redelivered_after_a_consumer_process_is_killed(self, kit: Kit) -> None:
        if not self.out_of_process:
            pytest.skip("the in-memory broker lives inside one process")
        url = self.url(kit, None, dead_letter=kit.dead_letter, **{**self.options, "ack_timeout": 1.0})
        kit.subscribed.add((kit.group(), kit.dest()))
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.transports.consumer_child", url, kit.group(), kit.dest()],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert (await asyncio.to_thread(child.stdout.readline)).strip() == "ready"
            t = await kit.transport(ack_timeout=1.0)
            await t.publish(kit.dest(), b"x", message_id="m-killed")
            line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 20)
            assert line.strip() == "handling m-killed"
            child.send_signal(signal.SIGKILL)  # mid-handler: never acknowledged
            child.wait(10)
            other = Collector()
            await kit.subscribe(t, [kit.dest()], kit.group(), other)
            [d] = await other.wait(1, timeout=30)
            assert d.message_id == "m-killed"
            assert d.attempt >= (2 if self.counts_crash_redeliveries else 1)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
            if child.stdout is not None:
                child.stdout.close()

    async def test_publish_while_the_broker_is_unreachable_raises_and_consumers_resume(self, kit: Kit) -> None:
        if self.address is None:
            pytest.skip("the in-memory broker cannot be unreachable")
        proxy = await kit.proxy()
        t = await kit.transport(via=proxy)
        got = Collector()
        await kit.subscribe(t, [kit.dest()], kit.group(), got)
        await t.publish(kit.dest(), b"1", message_id="m-before")
        await got.wait(1)
        await proxy.cut()
        loop = asyncio.get_running_loop()
        raised = None
        end = loop.time() + 15
        while raised is None and loop.time() < end:
            started = loop.time()
            try:
                await t.publish(kit.dest(), b"2", message_id="m-during")
            except TransportError as e:
                raised = e
                assert loop.time() - started < 8, "publish should fail, not hang, while the broker is down"
            else:
                await asyncio.sleep(0.1)  # the client has not noticed yet
        assert raised is not None, "publish never raised TransportError while the broker was unreachable"
        await proxy.restore()
        end = loop.time() + 30
        while True:
            try:
                await t.publish(kit.dest(), b"3", message_id="m-after")
                break
            except TransportError:
                if loop.time() > end:
                    raise
                await asyncio.sleep(0.2)
        await wait_until(lambda: "m-after" in got.ids, 30, "the consumer to resume after reconnecting")

    async def test_destination_names_are_mapped_safely(self, kit: Kit) -> None:
        t = await kit.transport()
        names = [
            kit.dest("a.b"),
            kit.dest("a_b"),
            kit.dest("a%2Eb"),
            kit.dest("*"),
            kit.dest(">"),
            kit.dest("#"),
            kit.dest("x y*z>#"),
            kit.dest("f.<locals>.Foo"),
            kit.dest("..double"),
            kit.dest("trailing."),
            kit.dest("ünï.cödé"),
            kit.dest("L" * 300),
            kit.dest("L" * 299 + "M"),
        ]
        got = {n: Collector() for n in names}
        for n in names:
            await kit.subscribe(t, [n], kit.group(), got[n])
        for i, n in enumerate(names):
            await t.publish(n, n.encode(), message_id=f"m-{i}")
        for i, n in enumerate(names):
            [d] = await got[n].wait(1)
            assert (d.message_id, d.destination, d.body) == (f"m-{i}", n, n.encode())
        await asyncio.sleep(0.5)
        assert {n: len(c.deliveries) for n, c in got.items()} == dict.fromkeys(names, 1)

    async def test_repeated_publish_of_one_message_id(self, kit: Kit) -> None:
        t = await kit.transport()
        got = Collector()
        await kit.subscribe(t, [kit.dest()], kit.group(), got)
        for _ in range(2):
            await t.publish(kit.dest(), b"x", message_id="m-twice")
        await got.wait(1)
        await asyncio.sleep(1.0)
        expected = 1 if self.dedupes else 2  # without broker de-duplication the receiver's inbox drops it
        assert got.ids == ["m-twice"] * expected

    async def test_many_messages_with_concurrent_handlers(self, kit: Kit) -> None:
        t = await kit.transport(concurrency=8)
        got = Collector(delay=0.01)
        await kit.subscribe(t, [kit.dest()], kit.group(), got)
        await asyncio.gather(*(t.publish(kit.dest(), b"x", message_id=f"m-{i}") for i in range(200)))
        await got.wait(200, timeout=30)
        assert sorted(got.ids) == sorted(f"m-{i}" for i in range(200))
