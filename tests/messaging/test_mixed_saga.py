"""Mixed local and message sagas on the in-memory transport (tests/transports runs them on real brokers)."""

from __future__ import annotations

from tests.messaging.mixed import (
    failure_event_reason_reaches_compensation,
    local_result_reaches_commands_and_outcome,
    participant_fault_fails_the_step_at_once,
)
from tests.messaging.test_message_saga import MakeTransport, broker, transports

__all__ = ["broker", "transports"]  # the fixtures, shared with test_message_saga


async def test_local_result_reaches_commands_and_outcome(store_url: str, transports: MakeTransport) -> None:
    await local_result_reaches_commands_and_outcome(store_url, transports)


async def test_failure_event_reason_reaches_compensation(store_url: str, transports: MakeTransport) -> None:
    await failure_event_reason_reaches_compensation(store_url, transports)


async def test_participant_fault_fails_the_step_at_once(store_url: str, transports: MakeTransport) -> None:
    await participant_fault_fails_the_step_at_once(store_url, transports)
