"""A consumer process for the crash test: prints ``ready``, then ``handling <id>`` and hangs until killed.

Usage: python -m tests.transports.consumer_child URL GROUP DESTINATION
"""

from __future__ import annotations

import asyncio
import sys

from sagakit._transport import Delivery, transport_from_url


async def main(url: str, group: str, destination: str) -> None:
    transport = transport_from_url(url)
    await transport.start()

    async def hang(d: Delivery) -> None:
        print(f"handling {d.message_id}", flush=True)
        await asyncio.Event().wait()

    await transport.subscribe([destination], group, hang)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
