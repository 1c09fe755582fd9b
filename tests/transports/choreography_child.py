"""A tracker process for the choreography worker test: an engine that observes the shop's order flow.

Prints ``ready`` once its subscriptions are live, then runs until it is
killed. Its leases are short, so that another tracker takes over its sagas
soon after it dies.

Usage: python -m tests.transports.choreography_child TRANSPORT_URL STORE_URL
"""

from __future__ import annotations

import asyncio
import sys

from sagakit import SagaEngine
from sagakit._transport import transport_from_url
from tests.messaging.choreography import order_flow


async def main(url: str, store_url: str) -> None:
    engine = SagaEngine(store_url, transport=transport_from_url(url), lease_seconds=2.0)
    engine.register(order_flow())
    async with engine:
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
