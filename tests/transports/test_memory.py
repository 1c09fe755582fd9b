"""The transport contract on the in-memory transport (the reference semantics)."""

from __future__ import annotations

from typing import Any

from sagakit._transport import Delivery, Transport
from sagakit.transports.memory import MemoryBroker, MemoryTransport

from .contract import DeadLetters, Kit, TransportContract
from .kit import wait_until


class TestMemoryTransport(TransportContract):
    out_of_process = False

    def make(self, kit: Kit, address: tuple[str, int] | None, **options: Any) -> Transport:
        broker = self._broker(kit)
        if "max_deliveries" in options:
            broker.max_deliveries = options["max_deliveries"]
        if "redelivery_delay" in options:
            broker.redelivery_delay = options["redelivery_delay"]
        return MemoryTransport(broker, concurrency=options.get("concurrency", 16))

    @staticmethod
    def _broker(kit: Kit) -> MemoryBroker:
        broker: MemoryBroker | None = getattr(kit, "broker", None)
        if broker is None:
            broker = MemoryBroker(redelivery_delay=0.01)
            kit.broker = broker  # type: ignore[attr-defined]
        return broker

    async def dead_letter_reader(self, kit: Kit) -> DeadLetters:
        broker = self._broker(kit)

        async def wait(n: int, timeout: float) -> list[Delivery]:
            await wait_until(lambda: len(broker.dead_letters) >= n, timeout, f"{n} dead letters")
            return [
                Delivery(
                    dl.destination,
                    dl.body,
                    dl.message_id,
                    headers={"x-sagakit-reason": dl.reason, "x-sagakit-destination": dl.destination},
                )
                for dl in broker.dead_letters
            ]

        return wait
