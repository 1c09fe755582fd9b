"""The commands and events the processes exchange (pydantic models; the wire name is ``module.Class``)."""

from __future__ import annotations

from pydantic import BaseModel

# Values the services refuse: the driver puts them into the orders it wants to fail.
SOLD_OUT_SKU = "SKU-SOLD-OUT"
DECLINED_CARD = "4000-0000-0000-0002"
UNKNOWN_ADDRESS = "nowhere"


class OrderPlaced(BaseModel):
    """Published by the shop; starts one saga per order id."""

    order_id: str
    sku: str
    quantity: int
    amount: float
    card: str
    address: str


class OrderState(BaseModel):
    """The saga's state: the order plus what the services answered."""

    order_id: str
    sku: str
    quantity: int
    amount: float
    card: str
    address: str
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
    amount: float
    card: str


class PaymentCharged(BaseModel):
    order_id: str
    payment_id: str


class PaymentDeclined(BaseModel):
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
