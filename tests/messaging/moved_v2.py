"""The same message classes after a move to another module: same wire names (see test_message_names.py)."""

from __future__ import annotations

from pydantic import BaseModel

from sagakit import message_name


@message_name("payments.ChargeCard")
class ChargeCard(BaseModel):
    order_id: str
    amount: float


@message_name("payments.CardCharged")
class CardCharged(BaseModel):
    order_id: str
    charge_id: str
