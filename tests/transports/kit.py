"""Helpers of the transport tests: reachability checks, a cuttable TCP proxy, collecting handlers."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sagakit._transport import Delivery

NATS_ADDR = ("127.0.0.1", 4222)
RABBIT_ADDR = ("127.0.0.1", 5672)
REDIS_ADDR = ("127.0.0.1", 6379)
KAFKA = os.environ.get("SAGAKIT_KAFKA", "127.0.0.1:9092")


def reachable(addr: tuple[str, int], timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(addr, timeout=timeout):
            return True
    except OSError:
        return False


def broker_missing(name: str, addr: tuple[str, int], module: str, extra: str) -> str | None:
    """None when *module* imports and *addr* accepts connections, else why the broker's tests cannot run."""
    try:
        importlib.import_module(module)
    except ImportError:
        return f"{module} is not installed (pip install 'sagakit[{extra}]')"
    if not reachable(addr):
        return f"{name} at {addr[0]}:{addr[1]} is not reachable"
    return None


class Collector:
    """A handler that records its deliveries; optionally fails, blocks or dawdles."""

    def __init__(
        self,
        *,
        fail: int = 0,
        error: Exception | None = None,
        block: asyncio.Event | None = None,
        delay: float = 0.0,
    ) -> None:
        self.deliveries: list[Delivery] = []
        self.fail = fail  # raise on this many deliveries (all of them when error is given and fail is 0)
        self.error = error
        self.block = block
        self.delay = delay
        self.started = asyncio.Event()
        self.done: list[Delivery] = []

    async def __call__(self, d: Delivery) -> None:
        self.deliveries.append(d)
        self.started.set()
        if self.block is not None:
            await self.block.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None and (self.fail == 0 or len(self.deliveries) <= self.fail):
            raise self.error
        if self.fail and len(self.deliveries) <= self.fail:
            raise RuntimeError(f"failing delivery {len(self.deliveries)} on purpose")
        self.done.append(d)

    @property
    def ids(self) -> list[str]:
        return [d.message_id for d in self.deliveries]

    async def wait(self, n: int, timeout: float = 15.0) -> list[Delivery]:
        await wait_until(lambda: len(self.deliveries) >= n, timeout, f"{n} deliveries (have {self.ids})")
        return self.deliveries


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class TcpProxy:
    """Forwards 127.0.0.1:<port> to a broker; ``cut()`` makes the broker unreachable, ``restore()`` heals it."""

    target: tuple[str, int]
    port: int = 0
    _server: asyncio.AbstractServer | None = None
    _conns: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, up_writer))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._conns.difference_update((writer, up_writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        for w in list(self._conns):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._conns.clear()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        if self._server is not None:
            await self.cut()


def pid_listening(port: int) -> int | None:
    """The pid of the process listening on 127.0.0.1:*port* (from ``ss``), or None."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",", 1)[0])
    return None


def wait_port(addr: tuple[str, int], up: bool, timeout: float) -> None:
    end = time.monotonic() + timeout
    while reachable(addr, 0.5) != up:
        if time.monotonic() > end:
            raise AssertionError(f"{addr} still {'down' if up else 'up'} after {timeout}s")
        time.sleep(0.1)


# ---------------------------------------------------------------- stopping and starting the real servers


def _run(cmd: list[str] | str) -> None:
    subprocess.run(cmd, shell=isinstance(cmd, str), check=True, capture_output=True, timeout=120)


def _stop_nats() -> None:
    pid = pid_listening(NATS_ADDR[1])
    assert pid is not None, "no nats-server listens on 4222"
    os.kill(pid, 15)


SERVERS: dict[str, tuple[tuple[str, int], Callable[[], None], Callable[[], None]]] = {
    # name: (address, stop, start) -- the start commands are the machine's own
    "redis": (
        REDIS_ADDR,
        lambda: _run(["redis-cli", "shutdown", "nosave"]),
        lambda: _run(
            'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
            "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
        ),
    ),
    "rabbitmq": (
        RABBIT_ADDR,
        lambda: _run(["rabbitmqctl", "stop_app"]),
        lambda: _run(["rabbitmqctl", "start_app"]),
    ),
    "nats": (
        NATS_ADDR,
        _stop_nats,
        lambda: _run(
            "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- "
            "-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
        ),
    ),
}


def stop_server(name: str) -> None:
    addr, stop, _ = SERVERS[name]
    stop()
    wait_port(addr, up=False, timeout=60)


def start_server(name: str) -> None:
    """Start the server unless it already answers."""
    addr, _, start = SERVERS[name]
    if not reachable(addr, 0.5):
        start()
    wait_port(addr, up=True, timeout=90)
