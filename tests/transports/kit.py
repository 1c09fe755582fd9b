"""Helpers of the transport tests: reachability checks, collecting handlers."""

from __future__ import annotations

import asyncio
import importlib
import socket
from collections.abc import Callable

from sagakit._transport import Delivery

NATS_ADDR = ("127.0.0.1", 4222)
RABBIT_ADDR = ("127.0.0.1", 5672)
REDIS_ADDR = ("127.0.0.1", 6379)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
