"""A participant process for the crash test: stops for good once its handler's transaction has committed.

It handles ``Charge`` commands with a store (one effect per command, counted
in the store's database), prints ``ready`` once subscribed and ``committed``
once a handler's transaction has committed and its reply is about to be
published: that publish never returns, so the command is never acknowledged.
The test then kills the process.

Usage: python -m tests.transports.participant_child TRANSPORT_URL STORE_URL
"""

from __future__ import annotations

import asyncio
import sys

from sagakit._transport import transport_from_url
from sagakit.participant import Participant
from tests.participant.scenarios import HeldReplies, charging


async def main(url: str, store_url: str) -> None:
    held = HeldReplies(transport_from_url(url))
    payments = Participant(held, name="payments", store=store_url)
    charging(payments)
    async with payments:
        print("ready", flush=True)
        await held.reached.wait()
        print("committed", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
