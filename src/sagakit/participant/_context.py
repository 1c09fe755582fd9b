"""What a participant's handler may know about the command it handles."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._messages import Envelope, message_id

__all__ = ["MessageContext", "idempotency_key"]


def idempotency_key(env: Envelope) -> str:
    """The idempotency key of the command in *env*: the one its saga step sees.

    A saga sends one step's command with the same message id on every attempt
    (``message_id(saga, step, 0, direction)``), and its step function's
    ``StepContext.idempotency_key`` is ``saga id:step:action`` (or
    ``:compensation``): recognising which of the two the message id is gives the
    participant the same key. A command that no saga sent has its message id
    as its key.
    """
    if env.saga_id is not None and env.step is not None:
        for direction in ("action", "compensation"):
            if env.message_id == message_id(env.saga_id, env.step, 0, direction):
                return f"{env.saga_id}:{env.step}:{direction}"
    return env.message_id


@dataclass(frozen=True, slots=True)
class MessageContext:
    """The second argument of a handler that takes two: the command's envelope and delivery.

    Attributes:
        message_id: the command's message id; a saga resends one step's command
            with the same id, so it names the command across resends.
        type_name: the command's wire type name.
        saga_id: the saga that sent the command (None for a command no saga sent).
        step: the step that sent it.
        token: the attempt token of the step; the reply carries it back.
        correlation_id: the saga's business correlation id.
        headers: the envelope's headers (the trace context, among others).
        idempotency_key: the key the saga's step sees (``saga id:step:action``,
            or ``:compensation``), stable across every resend and retry of the
            step: use it as the key of the handler's side effect downstream.
            For a command no saga sent, its message id.
        delivery_count: how many times the broker has delivered the message (1 the
            first time).
        connection: with ``Participant(..., store=...)``, the database
            connection of the transaction that records the command as handled
            (``sqlite3.Connection`` on SQLite, an asyncpg connection on
            PostgreSQL): writes made on it commit together with that record, or
            not at all. None without a store, or with ``memory://``.
    """

    message_id: str
    type_name: str
    saga_id: str | None
    step: str | None
    token: int | None
    correlation_id: str | None
    headers: Mapping[str, str]
    idempotency_key: str
    delivery_count: int = 1
    connection: Any = None

    @classmethod
    def of(cls, env: Envelope, *, delivery_count: int = 1, connection: Any = None) -> MessageContext:
        """The context of the command in *env*."""
        return cls(
            message_id=env.message_id,
            type_name=env.type_name,
            saga_id=env.saga_id,
            step=env.step,
            token=env.token,
            correlation_id=env.correlation_id,
            headers=dict(env.headers),
            idempotency_key=idempotency_key(env),
            delivery_count=delivery_count,
            connection=connection,
        )
