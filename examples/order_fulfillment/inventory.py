"""The inventory service: reserves stock for orders and releases it when a saga compensates."""

from __future__ import annotations

from sagakit.participant import Participant

from ._service import Ledger, main
from .messages import (
    SOLD_OUT_SKU,
    InventoryReleased,
    InventoryReserved,
    InventoryUnavailable,
    ReleaseInventory,
    ReserveInventory,
)


def build(service: Participant, ledger: Ledger) -> None:
    @service.handles(ReserveInventory)
    def reserve(cmd: ReserveInventory) -> InventoryReserved | InventoryUnavailable:
        if cmd.sku == SOLD_OUT_SKU:
            return InventoryUnavailable(order_id=cmd.order_id, reason=f"{cmd.sku} is sold out")
        ledger.record("reserved", cmd.order_id)
        return InventoryReserved(order_id=cmd.order_id, reservation_id=f"r-{cmd.order_id}")

    @service.handles(ReleaseInventory)
    def release(cmd: ReleaseInventory) -> InventoryReleased:
        ledger.record("released", cmd.order_id)
        return InventoryReleased(order_id=cmd.order_id)


if __name__ == "__main__":
    main("inventory", build)
