"""The commands and events the processes exchange (pydantic models; the wire name is ``module.Class``)."""

from __future__ import annotations

from pydantic import BaseModel

# Values the services refuse: the driver puts them into the orders it wants to fail.
SOLD_OUT_SKU = "SKU-SOLD-OUT"
DECLINED_CARD = "4000-0000-0000-0002"
STOLEN_CARD = "4000-0000-0000-0119"
UNKNOWN_ADDRESS = "nowhere"
BROKEN_ADDRESS = "1 Printer Jam Rd"  # the shipping service's handler raises on it: a fault, not an answer


class OrderPlaced(BaseModel):
    """Published by the shop; starts one saga per order id."""

    order_id: str
    sku: str
    quantity: int
    amount: float
    card: str
    address: str


class OrderState(BaseModel):
    """The saga's state: the order, what the orchestrator's own step set, what the services answered."""

    order_id: str
    sku: str
    quantity: int
    amount: float
    card: str
    address: str
    order_number: str | None = None  # set by the local step open_order
    cancel_reason: str | None = None  # set by its compensation, from the failure that undid the order
    reservation_id: str | None = None
    payment_id: str | None = None
    tracking: str | None = None


class ReserveInventory(BaseModel):
    order_id: str
    sku: str
    quantity: int


class InventoryReserved(BaseModel):
    order_id: str
    reservation_id: str


class InventoryUnavailable(BaseModel):
    order_id: str
    reason: str


class ReleaseInventory(BaseModel):
    order_id: str
    reservation_id: str


class InventoryReleased(BaseModel):
    order_id: str


class ChargePayment(BaseModel):
    order_id: str
    order_number: str  # from the saga's data, set by open_order
    invoice_id: str  # from open_order's result
    amount: float
    card: str


class PaymentCharged(BaseModel):
    order_id: str
    payment_id: str


class PaymentDeclined(BaseModel):
    order_id: str
    reason: str


class FraudSuspected(BaseModel):
    order_id: str
    reason: str


class RefundPayment(BaseModel):
    order_id: str
    payment_id: str


class PaymentRefunded(BaseModel):
    order_id: str


class ShipOrder(BaseModel):
    order_id: str
    sku: str
    quantity: int
    address: str


class OrderShipped(BaseModel):
    order_id: str
    tracking: str


class ShippingFailed(BaseModel):
    order_id: str
    reason: str


class OrderFulfilled(BaseModel):
    """Published when a saga completed."""

    order_id: str
    saga_id: str


class OrderCancelled(BaseModel):
    """Published when a saga was compensated (or failed)."""

    order_id: str
    saga_id: str
    reason: str
