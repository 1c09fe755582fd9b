"""A TCP proxy that a test owns: it takes a server away from its clients without touching the server.

The machine's servers serve more than this suite, so a test that needs a
server to go away puts a ``TcpProxy`` in front of it and cuts the proxy:
every proxied connection is aborted and new ones are refused (the port is
closed) until ``restore()``. ``ProxyThread`` runs the same proxy on an event
loop of its own, for clients in other processes or behind blocking calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class TcpProxy:
    """Forwards 127.0.0.1:<port> to *target*; ``cut()`` makes the target unreachable, ``restore()`` heals it."""

    target: tuple[str, int]
    port: int = 0
    _server: asyncio.AbstractServer | None = None
    _conns: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> TcpProxy:
        # The same port after a cut, so that clients reconnect to the address they know.
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        if self._server is None:  # cut while connecting upstream: this connection must not survive the cut
            up_writer.transport.abort()
            writer.transport.abort()
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
        server, self._server = self._server, None
        server.close()
        # Abort before waiting: from Python 3.12 on, wait_closed() waits for the open connections too.
        for w in list(self._conns):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._conns.clear()
        await server.wait_closed()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        if self._server is not None:
            await self.cut()


class ProxyThread:
    """A ``TcpProxy`` on an event loop in a thread of its own, driven by blocking calls."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self.proxy = self._call(TcpProxy(target).start())

    @property
    def port(self) -> int:
        return self.proxy.port

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def cut(self) -> None:
        self._call(self.proxy.cut())

    async def _shutdown(self) -> None:
        await self.proxy.close()
        # The connections' handlers end once their sockets are aborted; let them, so the loop closes empty.
        rest = asyncio.all_tasks() - {asyncio.current_task()}
        if rest:
            _, pending = await asyncio.wait(rest, timeout=5)
            for task in pending:
                task.cancel()

    def restore(self) -> None:
        self._call(self.proxy.restore())

    def close(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
