"""The orchestrator worker: a SagaEngine on the shared store, consuming replies and triggers from the broker.

Run several (on PostgreSQL) and they share the sagas: claims use
``SKIP LOCKED`` and leases, replies are competing consumers of one group.
"""

from __future__ import annotations

import asyncio
import os

from sagakit import SagaEngine

from ._process import parser, say, setup, until_stopped
from .saga import definition

DEFAULT_STORE = "postgresql://postgres@127.0.0.1:5432/test"


def main() -> None:
    p = parser("the orchestrator worker of the order-fulfilment example")
    p.add_argument("--store", default=DEFAULT_STORE, help="postgresql://… or sqlite:///file.db")
    args = p.parse_args()
    setup(args, f"orchestrator-{os.getpid()}")

    async def run() -> None:
        engine = SagaEngine(args.store, transport=args.transport)
        engine.register(definition())
        async with engine:
            say("ready", process="orchestrator", pid=os.getpid())
            await until_stopped()
        say("summary", process="orchestrator", pid=os.getpid())

    asyncio.run(run())


if __name__ == "__main__":
    main()
