"""Participants: the services on the other side of a saga.

A participant handles commands and publishes their reply events with the
saga's correlation headers copied, so a service joins a saga in a few lines::

    payments = Participant("nats://localhost:4222", name="payments", store="sqlite:///payments.db")

    @payments.handles(ProcessPayment)
    async def process(cmd: ProcessPayment, ctx: MessageContext) -> PaymentProcessed | PaymentFailed:
        ctx.connection.execute("INSERT INTO charges (key, amount) VALUES (?, ?)",
                               (ctx.idempotency_key, cmd.amount))
        return PaymentProcessed(order_id=cmd.order_id, payment_id=ctx.idempotency_key)

    async with payments:
        await asyncio.Event().wait()

- **Context.** A handler takes the command, or the command and a
  ``MessageContext``: message id, saga id, step, attempt token, correlation
  id, headers, the step's idempotency key (the one its saga step sees, stable
  across resends and retries) and, with a store, the database connection of
  the handling transaction.
- **Once per command.** A command seen before is not handled again: the reply
  recorded the first time is published again (with the new attempt's token),
  which is what a saga that resent after a reply timeout, or a broker's
  redelivery, needs. Without a store the record is the process's memory (the
  last ``remember`` commands). With ``store=`` (SQLite, PostgreSQL: sagakit's
  own store code, table ``sagakit_handled``) it is written in one transaction
  with the handler's writes on ``ctx.connection``, committed before the reply
  is published and the command acknowledged: after a crash the redelivered
  command finds it and is answered from it, its writes not repeated. Effects
  elsewhere (an HTTP call) run again in that window: key them with
  ``ctx.idempotency_key``.
- **Faults.** A handler that raises does not leave the saga waiting: its
  transaction rolls back (nothing is recorded), a ``Fault`` (error type, text,
  command type, the end of the traceback) is published as the reply, and the
  command is acknowledged. The saga's step fails at once and its retry policy
  applies; a retry's command is handled anew. A *business* failure is a
  reply too, the step's failure event, not an exception. A command whose
  payload does not validate is a fault as well.
- **Errors of the record itself** (the database is down) are no fault: the
  command is not acknowledged and is delivered again.
- **Tracing.** With OpenTelemetry installed, a handler runs in a span that
  continues the saga's trace from the command's ``traceparent`` header, and
  the reply (or fault) carries that span's context, so the saga's trace goes
  from the command through the handler (and what it calls) to the reply. A
  reply published again from the record carries the context of the handling.
- **The wire format**, for code that talks to a broker without a participant
  (a service publishing a saga's trigger, a test watching events): an
  ``Envelope`` wraps a command or event (``Envelope.wrap``, ``to_bytes``) and
  reads one back (``Envelope.from_bytes``, raising ``EnvelopeError``);
  ``message_type_name(cls)`` is the name a type travels under.
"""

from .._messages import FAULT_TYPE_NAME, Envelope, EnvelopeError, Fault, message_type_name
from ._context import MessageContext
from ._participant import Participant

__all__ = [
    "FAULT_TYPE_NAME",
    "Envelope",
    "EnvelopeError",
    "Fault",
    "MessageContext",
    "Participant",
    "message_type_name",
]
