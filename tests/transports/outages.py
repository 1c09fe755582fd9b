"""Brokers that one test takes down and brings back, without touching the machine's servers.

The machine's Redis, NATS and RabbitMQ serve more than this suite, so an
outage happens to something the test owns:

- Redis and NATS: a private server, a child process on a free port with its
  data in the test's directory, stopped (SIGTERM) and started again on the
  same port. Redis runs without persistence, so a restart loses what it held;
  NATS keeps its JetStream file store across the restart.
- RabbitMQ: a node of its own is impractical, so a ``TcpProxy`` in front of
  the machine's server is cut (every connection aborted, new ones refused)
  and restored. The broker keeps its queues; the clients lose their
  connections, and RabbitMQ requeues what they had not acknowledged.
- Kafka: a private Tansu (``tansu.py``) that advertises the port of a
  ``TcpProxy`` in front of it, so that every connection the clients make
  after bootstrapping goes through the proxy, which is cut and restored.
  (Tansu keeps its data in memory: a restart would lose every topic, group
  and offset, which a Kafka cluster does not.)
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.proxy import TcpProxy

from .brokers import Broker
from .kit import RABBIT_ADDR, broker_missing, free_port, reachable
from .tansu import Tansu, tansu_missing

MODULES = {
    "nats": ("nats", "nats"),
    "rabbitmq": ("aio_pika", "rabbitmq"),
    "redis": ("redis", "redis"),
    "kafka": ("aiokafka", "kafka"),
}


def find_binary(name: str) -> str | None:
    """*name* on PATH, or in /usr/sbin (Debian's nats-server is there, off a user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def redis_argv(binary: str, port: int, data: Path) -> list[str]:
    # No RDB, no AOF: like the machine's Redis, a restart comes back empty.
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--logfile", ""]  # fmt: skip


def nats_argv(binary: str, port: int, data: Path) -> list[str]:
    return [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data)]


class PrivateServer:
    """A server process on 127.0.0.1:<port> that a test starts, stops and starts again."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None, f"{self.name} is already running"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not await asyncio.to_thread(reachable, ("127.0.0.1", self.port), 0.5):
            if self.proc.poll() is not None or loop.time() > end:
                await self.stop()
                tail = self.log.read_text(errors="replace")[-2000:]
                raise AssertionError(f"private {self.name} on port {self.port} did not come up:\n{tail}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)


class Outage:
    """A broker for one test, with ``down()`` and ``up()``; ``broker`` makes transports that point at it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.broker = Broker(name)

    def missing(self) -> str | None:
        """Why this outage cannot be staged here, or None."""
        module, extra = MODULES[self.name]
        try:
            importlib.import_module(module)
        except ImportError:
            return f"{module} is not installed (pip install 'sagakit[{extra}]')"
        return None

    async def open(self) -> None:
        raise NotImplementedError

    async def down(self) -> None:
        raise NotImplementedError

    async def up(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class ServerOutage(Outage):
    """A private Redis or NATS server, stopped and started again."""

    def __init__(self, name: str, binary: str, argv: Callable[[str, int, Path], list[str]], tmp: Path) -> None:
        super().__init__(name)
        self.binary = find_binary(binary)
        self.wanted = binary
        self.argv = argv
        self.tmp = tmp

    def missing(self) -> str | None:
        if self.binary is None:
            return f"{self.wanted} is not installed (apt-get install {self.wanted})"
        return super().missing()

    async def open(self) -> None:
        assert self.binary is not None
        port = free_port()
        data = self.tmp / f"{self.name}-data"
        data.mkdir()
        self.server = PrivateServer(self.name, self.argv(self.binary, port, data), port, self.tmp / f"{self.name}.log")
        await self.server.start()
        self.broker.address = ("127.0.0.1", port)

    async def down(self) -> None:
        await self.server.stop()

    async def up(self) -> None:
        await self.server.start()

    async def close(self) -> None:
        # Nothing to clean up on the broker: the private server and its data go with the test.
        await self.server.stop()


class ProxyOutage(Outage):
    """The machine's RabbitMQ behind a proxy that is cut and restored."""

    def missing(self) -> str | None:
        return broker_missing("RabbitMQ", RABBIT_ADDR, "aio_pika", "rabbitmq")

    async def open(self) -> None:
        self.proxy = await TcpProxy(RABBIT_ADDR).start()
        self.broker.address = ("127.0.0.1", self.proxy.port)

    async def down(self) -> None:
        await self.proxy.cut()

    async def up(self) -> None:
        await self.proxy.restore()

    async def close(self) -> None:
        await self.proxy.close()
        # The test's exchange and queues live on the machine's server: remove them there.
        await self.broker.cleanup()


class KafkaOutage(Outage):
    """A private Tansu whose clients all go through a proxy that is cut and restored."""

    def __init__(self, tmp: Path) -> None:
        super().__init__("kafka")
        self.tmp = tmp

    def missing(self) -> str | None:
        return tansu_missing()

    async def open(self) -> None:
        advertised = free_port()
        self.tansu = Tansu(free_port(), self.tmp / "tansu.log", advertised)
        await asyncio.to_thread(self.tansu.start)
        self.proxy = await TcpProxy(self.tansu.address, port=advertised).start()
        self.broker.address = ("127.0.0.1", advertised)

    async def down(self) -> None:
        await self.proxy.cut()

    async def up(self) -> None:
        await self.proxy.restore()

    async def close(self) -> None:
        await self.proxy.close()
        await asyncio.to_thread(self.tansu.stop)  # its topics and groups go with it


def make_outage(name: str, tmp: os.PathLike[str]) -> Outage:
    tmp = Path(tmp)
    if name == "redis":
        return ServerOutage(name, "redis-server", redis_argv, tmp)
    if name == "nats":
        return ServerOutage(name, "nats-server", nats_argv, tmp)
    if name == "rabbitmq":
        return ProxyOutage(name)
    if name == "kafka":
        return KafkaOutage(tmp)
    raise ValueError(f"no outage for broker {name!r} (known: {', '.join(MODULES)})")
