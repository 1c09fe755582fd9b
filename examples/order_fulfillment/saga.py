"""The order-fulfilment saga: reserve stock, charge the card, ship; undo in reverse when a step fails."""

from __future__ import annotations

from sagakit import RetryPolicy, SagaBuilder, send
from sagakit._definition import SagaDefinition

from .messages import (
    ChargePayment,
    InventoryReleased,
    InventoryReserved,
    InventoryUnavailable,
    OrderCancelled,
    OrderFulfilled,
    OrderPlaced,
    OrderShipped,
    OrderState,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
    ReleaseInventory,
    ReserveInventory,
    ShipOrder,
    ShippingFailed,
)

# A command whose reply does not come within REPLY_TIMEOUT is sent again (same
# message id: the service answers from its de-duplication memory), up to 10 times.
REPLY_TIMEOUT = 10.0
RESEND = RetryPolicy(max_attempts=10, initial_delay=0.1, max_delay=2.0)


def definition() -> SagaDefinition:
    b = SagaBuilder("order_fulfillment", version=1)
    b.trigger(OrderPlaced, correlation=lambda e: e.order_id)
    b.state(OrderState)
    b.step(
        "reserve_inventory",
        action=send(ReserveInventory, success=InventoryReserved, failure=InventoryUnavailable,
                    reply_timeout=REPLY_TIMEOUT),
        compensation=send(ReleaseInventory, success=InventoryReleased, reply_timeout=REPLY_TIMEOUT),
        retry=RESEND,
        compensation_retry=RESEND,
    )  # fmt: skip
    b.step(
        "charge_payment",
        action=send(ChargePayment, success=PaymentCharged, failure=PaymentDeclined, reply_timeout=REPLY_TIMEOUT),
        compensation=send(RefundPayment, success=PaymentRefunded, reply_timeout=REPLY_TIMEOUT),
        retry=RESEND,
        compensation_retry=RESEND,
    )
    b.step(
        "ship_order",
        action=send(ShipOrder, success=OrderShipped, failure=ShippingFailed, reply_timeout=REPLY_TIMEOUT),
        retry=RESEND,
    )
    b.on_completed(OrderFulfilled)
    b.on_failed(OrderCancelled)
    return b.build()
