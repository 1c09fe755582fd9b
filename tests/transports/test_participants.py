"""The participant scenarios of tests/participant on each real broker."""

from __future__ import annotations

from tests.participant.scenarios import (
    a_fault_fails_the_saga_step_at_once,
    fault_is_replied_and_the_command_acknowledged,
    handler_gets_the_context,
    redelivery_after_a_restart_is_answered_from_the_record,
)

from .brokers import Broker


async def test_fault_is_replied_and_the_command_acknowledged(broker: Broker) -> None:
    await fault_is_replied_and_the_command_acknowledged(broker.transport)


async def test_handler_gets_the_context(broker: Broker) -> None:
    await handler_gets_the_context(broker.transport)


async def test_redelivery_after_a_restart_is_answered_from_the_record(broker: Broker, store_url: str) -> None:
    await redelivery_after_a_restart_is_answered_from_the_record(broker.transport, store_url)


async def test_a_fault_fails_the_saga_step_at_once(broker: Broker, store_url: str) -> None:
    await a_fault_fails_the_saga_step_at_once(broker.transport, store_url)


def test_a_second_parameter_with_a_default_is_not_the_context() -> None:
    from sagakit.participant import MessageContext
    from sagakit.participant._participant import _wants_context

    class Cmd:
        pass

    def closure(cmd: Cmd, reply: type = int) -> None: ...
    def with_ctx(cmd: Cmd, ctx: MessageContext) -> None: ...
    def optional_ctx(cmd: Cmd, ctx: MessageContext | None = None) -> None: ...
    def optional_named(cmd: Cmd, ctx: MessageContext = None) -> None: ...  # type: ignore[assignment]

    assert _wants_context(closure, Cmd) is False
    assert _wants_context(with_ctx, Cmd) is True
    assert _wants_context(optional_named, Cmd) is True
    assert _wants_context(optional_ctx, Cmd) is True
