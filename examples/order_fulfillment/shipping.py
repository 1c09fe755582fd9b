"""The shipping service: ships orders (the last step: nothing to undo)."""

from __future__ import annotations

from sagakit.participant import Participant

from ._service import Ledger, main
from .messages import BROKEN_ADDRESS, UNKNOWN_ADDRESS, OrderShipped, ShipOrder, ShippingFailed


def build(service: Participant, ledger: Ledger) -> None:
    @service.handles(ShipOrder)
    def ship(cmd: ShipOrder) -> OrderShipped | ShippingFailed:
        if cmd.address == BROKEN_ADDRESS:
            raise RuntimeError("label printer jammed")  # the participant answers with a fault
        if cmd.address == UNKNOWN_ADDRESS:
            return ShippingFailed(order_id=cmd.order_id, reason=f"no route to {cmd.address!r}")
        ledger.record("shipped", cmd.order_id)
        return OrderShipped(order_id=cmd.order_id, tracking=f"t-{cmd.order_id}")


if __name__ == "__main__":
    main("shipping", build)
