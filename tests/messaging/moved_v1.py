"""A payment service's message classes, where they lived first (see test_message_names.py)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from sagakit import message_name


@message_name("payments.ChargeCard")
class ChargeCard(BaseModel):
    order_id: str
    amount: float


class CardCharged(BaseModel):
    message_name: ClassVar[str] = "payments.CardCharged"

    order_id: str
    charge_id: str
