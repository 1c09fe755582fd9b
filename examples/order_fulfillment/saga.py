"""The order-fulfilment saga: open the order here, reserve stock, charge the card, ship; undo in reverse on failure.

``open_order`` is a local step (it runs in the orchestrator): it gives the
order its number in the saga's data and returns the invoice id; the payment
command is built from both. Its compensation records why the order was
cancelled, read from the failure that rolled the saga back (``ctx.failure``):
a failure event's reason, or a participant's fault.
"""

from __future__ import annotations

from typing import Any

from sagakit import RetryPolicy, SagaBuilder, SagaDefinition, StepContext, send

from .messages import (
    ChargePayment,
    FraudSuspected,
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
# Shipping is tried three times: a fault (the service's handler raised) fails an attempt at once.
SHIP_TRIES = RetryPolicy(max_attempts=3, initial_delay=0.1, max_delay=0.5)


async def open_order(ctx: StepContext) -> dict[str, Any]:
    order_id = ctx.data["order_id"]
    ctx.update_data(order_number=f"N-{order_id}")
    return {"invoice_id": f"INV-{order_id}"}


async def close_order(ctx: StepContext) -> None:
    failure = ctx.failure
    if failure is None:
        reason = "cancelled"
    elif failure["fault"]:
        reason = f"{failure['payload']['error_type']}: {failure['payload']['message']}"
    else:
        reason = failure["payload"].get("reason", failure["event"])
    ctx.update_data(cancel_reason=reason)


def definition() -> SagaDefinition:
    b = SagaBuilder("order_fulfillment", version=1)
    b.trigger(OrderPlaced, correlation=lambda e: e.order_id)
    b.state(OrderState)
    b.step("open_order", open_order, close_order)
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
        action=send(
            ChargePayment,
            success=PaymentCharged,
            failure=(PaymentDeclined, FraudSuspected),
            reply_timeout=REPLY_TIMEOUT,
        ),
        compensation=send(RefundPayment, success=PaymentRefunded, reply_timeout=REPLY_TIMEOUT),
        retry=RESEND,
        compensation_retry=RESEND,
    )
    b.step(
        "ship_order",
        action=send(ShipOrder, success=OrderShipped, failure=ShippingFailed, reply_timeout=REPLY_TIMEOUT),
        retry=SHIP_TRIES,
    )
    b.on_completed(OrderFulfilled)
    b.on_failed(OrderCancelled)
    return b.build()
