"""A service process: a sagakit Participant whose handlers record their effects in a ledger."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from sagakit.participant import Participant

from ._process import parser, say, setup, until_stopped


class Ledger:
    """Effects by kind and order id; a count above 1 would be an effect applied twice."""

    def __init__(self) -> None:
        self.effects: dict[str, Counter[str]] = {}

    def record(self, kind: str, order_id: str) -> None:
        self.effects.setdefault(kind, Counter())[order_id] += 1

    def summary(self) -> dict[str, object]:
        return {
            "effects": {kind: len(c) for kind, c in self.effects.items()},
            "twice": sorted(f"{kind}:{oid}" for kind, c in self.effects.items() for oid, n in c.items() if n > 1),
        }


def main(name: str, build: Callable[[Participant, Ledger], None]) -> None:
    """Run the service *name* until SIGTERM; *build* registers its handlers."""
    args = parser(f"the {name} service of the order-fulfilment example").parse_args()
    setup(args, name)

    async def run() -> None:
        participant = Participant(args.transport, name=name)
        ledger = Ledger()
        build(participant, ledger)
        async with participant:
            say("ready", process=name)
            await until_stopped()
        say(
            "summary",
            process=name,
            handled=participant.handled,
            duplicates=participant.duplicates,
            **ledger.summary(),
        )

    asyncio.run(run())
