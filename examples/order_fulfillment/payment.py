"""The payment service: charges cards and refunds them when a saga compensates."""

from __future__ import annotations

from sagakit.participant import Participant

from ._service import Ledger, main
from .messages import (
    DECLINED_CARD,
    STOLEN_CARD,
    ChargePayment,
    FraudSuspected,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
)


def build(service: Participant, ledger: Ledger) -> None:
    @service.handles(ChargePayment)
    def charge(cmd: ChargePayment) -> PaymentCharged | PaymentDeclined | FraudSuspected:
        if (cmd.order_number, cmd.invoice_id) != (f"N-{cmd.order_id}", f"INV-{cmd.order_id}"):
            return PaymentDeclined(order_id=cmd.order_id, reason="the invoice does not match the order")
        if cmd.card == DECLINED_CARD:
            return PaymentDeclined(order_id=cmd.order_id, reason="card declined")
        if cmd.card == STOLEN_CARD:
            return FraudSuspected(order_id=cmd.order_id, reason="card reported stolen")
        ledger.record("charged", cmd.order_id)
        return PaymentCharged(order_id=cmd.order_id, payment_id=f"p-{cmd.order_id}")

    @service.handles(RefundPayment)
    def refund(cmd: RefundPayment) -> PaymentRefunded:
        ledger.record("refunded", cmd.order_id)
        return PaymentRefunded(order_id=cmd.order_id)


if __name__ == "__main__":
    main("payments", build)
