"""Shared brokers: applications with different transport prefixes share one broker without colliding.

Each application's URL sets only ``?prefix=`` — the options a user would write —
and both run the same saga with the same message types, the worst case for a
collision: each completes its own sagas, and no command, reply or outcome
event of one reaches the other (a reply that reached the wrong engine would be
dead-lettered there; a command that reached the wrong participant would be
handled there).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sagakit import SagaEngine, SagaStatus
from sagakit._transport import Transport, TransportError, transport_from_url
from tests.conftest import require_service
from tests.messaging.test_message_saga import Outcomes, Services, definition, saga_for

from .brokers import NAMES, Broker
from .kit import NATS_ADDR, RABBIT_ADDR, REDIS_ADDR
from .test_nats import drop_stream
from .test_rabbitmq import drop_topology
from .test_redis import drop_keys


class App:
    """One application's namespace on a shared broker: a transport URL with only ``?prefix=`` set."""

    def __init__(self, broker: str, prefix: str, address: tuple[str, int] | None = None) -> None:
        self.broker = broker
        self.prefix = prefix
        self.address = address  # Kafka: the Tansu this session started
        self.subscribed: set[tuple[str, str]] = set()

    @property
    def url(self) -> str:
        if self.broker == "nats":
            return f"nats://{NATS_ADDR[0]}:{NATS_ADDR[1]}?prefix={self.prefix}"
        if self.broker == "rabbitmq":
            return f"amqp://guest:guest@{RABBIT_ADDR[0]}:{RABBIT_ADDR[1]}/?prefix={self.prefix}"
        if self.broker == "kafka":
            assert self.address is not None
            return f"kafka://{self.address[0]}:{self.address[1]}?prefix={self.prefix}"
        return f"redis://{REDIS_ADDR[0]}:{REDIS_ADDR[1]}/0?prefix={self.prefix}"

    def transport(self) -> Transport:
        t: Any = transport_from_url(self.url)
        subscribe = t.subscribe

        async def recording(destinations: Any, group: str, handler: Any) -> None:
            self.subscribed.update((group, d) for d in destinations)
            await subscribe(destinations, group, handler)

        t.subscribe = recording
        return t  # type: ignore[no-any-return]

    async def cleanup(self) -> None:
        if self.broker == "nats":
            from sagakit.transports.nats import stream_for

            await drop_stream(stream_for(self.prefix))
        elif self.broker == "rabbitmq":
            await drop_topology(self.prefix, self.subscribed, "sagakit.dead_letter")
        elif self.broker == "kafka":
            from . import test_kafka

            assert self.address is not None
            await test_kafka.drop_topics(self.prefix, self.address)
        else:
            await drop_keys(self.prefix)


@pytest.fixture(params=NAMES)
async def apps(request: pytest.FixtureRequest) -> AsyncIterator[tuple[App, App]]:
    require_service(Broker(request.param).missing())
    address = request.getfixturevalue("tansu") if request.param == "kafka" else None
    ns = uuid.uuid4().hex[:8]
    pair = (App(request.param, f"app{ns}a", address), App(request.param, f"app{ns}b", address))
    try:
        yield pair
    finally:
        for app in pair:
            await app.cleanup()


async def test_two_applications_share_a_broker_by_prefix(tmp_path: Any, apps: tuple[App, App]) -> None:
    one, two = apps
    async with (
        Outcomes(one.transport) as seen_by_one,
        Outcomes(two.transport) as seen_by_two,
        Services(one.transport) as services_one,
        Services(two.transport) as services_two,
        SagaEngine(f"sqlite:///{tmp_path}/one.db", transport=one.transport()) as engine_one,
        SagaEngine(f"sqlite:///{tmp_path}/two.db", transport=two.transport()) as engine_two,
    ):
        engine_one.register(definition())
        engine_two.register(definition())
        for engine, orders in ((engine_one, ["a-1", "a-2"]), (engine_two, ["b-1"])):
            for order in orders:
                await engine.start("order_processing", {"order_id": order, "amount": 10}, correlation_id=order)
        done_one = [await saga_for(engine_one, o) for o in ("a-1", "a-2")]
        done_two = [await saga_for(engine_two, "b-1")]
        await seen_by_one.wait_for(2)
        await seen_by_two.wait_for(1)
        letters = (await engine_one.dead_letters(), await engine_two.dead_letters())
    assert [s.status for s in done_one + done_two] == [SagaStatus.COMPLETED] * 3
    assert sorted(services_one.charged) == ["a-1", "a-2"]
    assert services_two.charged == ["b-1"]
    assert sorted(e.payload["order_id"] for e in seen_by_one.events) == ["a-1", "a-2"]
    assert [e.payload["order_id"] for e in seen_by_two.events] == ["b-1"]
    assert letters == ([], [])


# ------------------------------------------------------------ NATS: which stream a prefix uses


def nats(prefix: str, **options: str) -> Any:
    from sagakit.transports.nats import NatsTransport

    query = "&".join(f"{k}={v}" for k, v in {"prefix": prefix, **options}.items())
    return NatsTransport.from_url(f"nats://{NATS_ADDR[0]}:{NATS_ADDR[1]}?{query}")


@pytest.fixture
async def nats_ns() -> AsyncIterator[str]:
    """A name prefix for this test's NATS streams; every stream starting with it is deleted afterwards."""
    require_service(Broker("nats").missing())
    import nats as nats_py

    ns = f"app{uuid.uuid4().hex[:8]}"
    yield ns
    nc = await nats_py.connect(f"nats://{NATS_ADDR[0]}:{NATS_ADDR[1]}")
    try:
        js = nc.jetstream()
        for name in await js.streams_info():
            if name.config.name.lower().startswith(ns):
                await drop_stream(name.config.name)
    finally:
        await nc.close()


async def round_trip(t: Any) -> None:
    """*t* delivers what it publishes to a subscriber."""
    got: list[bytes] = []

    async def handle(d: Any) -> None:
        got.append(d.body)

    await t.subscribe(["orders.Created"], "g", handle)
    await t.publish("orders.Created", b"x", message_id=uuid.uuid4().hex)
    for _ in range(1000):
        if got:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the published message was not delivered")


async def test_nats_stream_follows_the_prefix(nats_ns: str) -> None:
    from sagakit.transports.nats import stream_for

    one, two = nats(f"{nats_ns}a"), nats(f"{nats_ns}b")
    try:
        await one.start()
        await two.start()
        assert (one.stream, two.stream) == (stream_for(f"{nats_ns}a"), stream_for(f"{nats_ns}b"))
        assert one.stream == f"{nats_ns}A".upper()
        await round_trip(one)
        await round_trip(two)
    finally:
        await one.close()
        await two.close()


async def test_nats_prefix_uses_the_stream_that_holds_its_subjects(nats_ns: str) -> None:
    """A stream created under another name for exactly this prefix (as the default ``SAGAKIT`` once was) is used."""
    first = nats(nats_ns, stream=f"{nats_ns}OLD")
    later = nats(nats_ns)
    try:
        await first.start()
        await later.start()
        assert later.stream == f"{nats_ns}OLD"
        await round_trip(later)
    finally:
        await first.close()
        await later.close()


async def test_nats_stream_of_another_prefix_is_refused_with_what_to_set(nats_ns: str) -> None:
    owner = nats(f"{nats_ns}a")
    intruder = nats(f"{nats_ns}b", stream=f"{nats_ns}a".upper())
    try:
        await owner.start()
        with pytest.raises(TransportError, match=r"belongs to another application; set \?stream="):
            await intruder.start()
    finally:
        await intruder.close()
        await owner.close()


async def test_nats_prefixes_whose_stream_names_collide_are_refused_with_what_to_set(nats_ns: str) -> None:
    dotted, underscored = nats(f"{nats_ns}.x"), nats(f"{nats_ns}_x")
    try:
        await dotted.start()
        assert dotted.stream == underscored.stream  # both map to <NS>_X
        with pytest.raises(TransportError, match=r"map to one stream name: set \?stream="):
            await underscored.start()
    finally:
        await underscored.close()
        await dotted.close()


async def test_nats_prefix_inside_another_prefix_is_refused(nats_ns: str) -> None:
    """``shop.orders`` inside ``shop``: its subjects are the outer prefix's destinations ``orders.*``."""
    outer, inner = nats(nats_ns), nats(f"{nats_ns}.orders")
    try:
        await outer.start()
        with pytest.raises(TransportError, match=r"overlap them\. Set \?stream=.*choose a prefix"):
            await inner.start()
    finally:
        await inner.close()
        await outer.close()


@pytest.mark.parametrize("prefix", ["", "a..b", "a.*", "a b", ">"])
def test_nats_prefix_must_be_a_subject_prefix(prefix: str) -> None:
    from sagakit.transports.nats import NatsTransport

    with pytest.raises(TransportError, match="is not a subject prefix"):
        NatsTransport(prefix=prefix)
