"""The transport contract on Kafka's protocol, against Tansu brokers the tests start (``tansu.py``).

One Tansu serves the session; the unreachable-broker test starts one of its
own that advertises a proxy's port, so that every connection the client
makes after bootstrapping goes through the proxy it cuts.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from sagakit._transport import TransportError, transport_from_url
from tests.proxy import TcpProxy

from .contract import Kit, TransportContract
from .kit import Collector, free_port
from .tansu import Tansu, tansu_missing


def kafka_url(ns: str, address: tuple[str, int], **options: Any) -> str:
    options.pop("ack_timeout", None)  # Kafka has none: a member's partitions move when it leaves the group
    # Tansu holds a new group's first join for half the session timeout: shorter than the default 10 s.
    options.setdefault("session_timeout", 6)
    host, port = address
    return f"kafka://{host}:{port}?{urlencode({'prefix': ns, **options})}"


async def drop_topics(ns: str, address: tuple[str, int]) -> None:
    """Delete the topics of namespace *ns* (``<ns>.…``) from the broker at *address*."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=f"{address[0]}:{address[1]}")
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(f"{ns}.")]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()


class TestKafkaTransport(TransportContract):
    counts_crash_redeliveries = False
    options = {"redelivery_delay": 0.01}

    @pytest.fixture(autouse=True)
    def _tansu(self, request: pytest.FixtureRequest) -> None:
        # A class attribute: the contract's fixtures may run on another instance of the class than the test.
        if tansu_missing() is None:
            type(self).address = request.getfixturevalue("tansu")

    def missing(self) -> str | None:
        return tansu_missing()

    def url(self, kit: Kit, address: tuple[str, int] | None = None, **options: Any) -> str:
        assert self.address is not None
        return kafka_url(kit.ns, address or self.address, **options)

    async def cleanup(self, kit: Kit) -> None:
        assert self.address is not None
        await drop_topics(kit.ns, self.address)

    async def proxy(self, kit: Kit) -> TcpProxy:
        """A Tansu of the test's own that advertises the proxy's port: the client cannot go around the proxy."""
        port, advertised = free_port(), free_port()
        log = Path(tempfile.mkdtemp(prefix="tansu-")) / "tansu.log"
        tansu = await asyncio.to_thread(Tansu(port, log, advertised).start)
        kit.on_close(lambda: asyncio.to_thread(tansu.stop))
        return await TcpProxy(tansu.address, port=advertised).start()

    async def test_from_url_reads_the_options(self, kit: Kit) -> None:
        from sagakit.transports.kafka import KafkaTransport

        t = transport_from_url(
            self.url(kit, max_deliveries=7, partitions=3, replication=2, idempotence="off", heartbeat=0.5)
        )
        assert isinstance(t, KafkaTransport)
        assert (t.prefix, t.max_deliveries, t.partitions, t.replication) == (kit.ns, 7, 3, 2)
        assert (t.idempotence, t.session_timeout, t.heartbeat) == ("off", 6.0, 0.5)
        assert t.url == f"kafka://127.0.0.1:{self.address[1]}"  # type: ignore[index]
        assert transport_from_url(self.url(kit)).idempotence == "auto"  # type: ignore[attr-defined]

    async def test_an_unknown_idempotence_value_is_refused_with_the_choices(self, kit: Kit) -> None:
        with pytest.raises(TransportError, match=r"idempotence='always' is not one of auto, required, off"):
            transport_from_url(self.url(kit, idempotence="always"))

    async def test_without_producer_ids_it_publishes_plainly_after_one_warning(
        self, kit: Kit, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.WARNING, logger="sagakit.transport.kafka"):
            t: Any = await kit.transport()  # Tansu refuses InitProducerId
            got = Collector()
            await kit.subscribe(t, [kit.dest()], kit.group(), got)
            for i in range(3):
                await t.publish(kit.dest(), b"x", message_id=f"m-{i}")
            await got.wait(3)
        assert t.idempotent is False
        warnings = [r for r in caplog.records if r.name == "sagakit.transport.kafka" and r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "does not support idempotent producers" in warnings[0].getMessage()
        assert "idempotence=required" in warnings[0].getMessage()

    async def test_idempotence_required_refuses_to_start_on_a_broker_without_it(self, kit: Kit) -> None:
        t = transport_from_url(self.url(kit, idempotence="required"))
        with pytest.raises(TransportError, match=r"does not support idempotent producers.*idempotence=required"):
            await t.start()
        await t.close()

    async def test_idempotence_off_asks_nothing_and_warns_nothing(
        self, kit: Kit, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.WARNING, logger="sagakit.transport.kafka"):
            t: Any = await kit.transport(idempotence="off")
        assert t.idempotent is False
        assert [r for r in caplog.records if r.name == "sagakit.transport.kafka"] == []

    async def test_close_closes_the_connections_of_a_consumer_whose_stop_fails(self, kit: Kit) -> None:
        # aiokafka's consumer.stop() awaits the fetch tasks it cancels, so their cancellation escapes it
        # and skips the closing of its connections: the transport closes those itself.
        t: Any = await kit.transport()
        await kit.subscribe(t, [kit.dest()], kit.group(), Collector())
        [(consumer, _)] = t._consumers
        hanging = asyncio.get_running_loop().create_future()
        consumer._fetcher._pending_tasks.add(hanging)  # a fetch in progress: stop() cancels and awaits it
        conns = list(consumer._client._conns.values())
        assert conns and any(c.connected() for c in conns)
        await t.close()
        assert hanging.cancelled()
        assert [c for c in consumer._client._conns.values() if c.connected()] == []


def kafka_doc_blocks() -> list[str]:
    """The Python blocks of docs/transports.md that use Kafka."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "transports.md").read_text()
    return [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "kafka://" in b]


def test_the_kafka_docs_example_runs_as_written(tansu: tuple[str, int], tmp_path: Path) -> None:
    [block] = kafka_doc_blocks()
    script = tmp_path / "kafka_example.py"
    script.write_text(block.replace("127.0.0.1:9092", f"{tansu[0]}:{tansu[1]}"))
    out = subprocess.run(
        [sys.executable, str(script)], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=90
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "idempotent: False"
    assert out.stdout.splitlines()[1].startswith("refused: Kafka at 127.0.0.1:")
    assert "does not support idempotent producers" in out.stdout
    assert out.stderr.count("does not support idempotent producers") == 1  # the one warning of "auto"
