"""A participant killed (SIGKILL) after its handler's transaction committed, before its ack, on each broker.

The command comes back to the restarted participant, which answers from its
record: the effect (counted per idempotency key in the store's database) is
applied once, and the saga gets its reply. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sagakit._messages import message_type_name
from sagakit.participant import Participant
from tests.participant.kit import Charge, Charged, Replies, create_effects, effects, saga_command, send_command
from tests.participant.scenarios import charging

from .brokers import Broker

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
async def test_a_participant_killed_after_its_commit_does_not_repeat_the_effect(
    broker: Broker, db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store_url = f"sqlite:///{tmp_path}/payments.db" if db == "sqlite" else str(request.getfixturevalue("pg_url"))
    await create_effects(store_url)
    broker.subscribed.add(("payments", message_type_name(Charge)))  # for the cleanup
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.transports.participant_child", broker.url(ack_timeout=1.0), store_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    sender = broker.transport()
    await sender.start()
    env = saga_command(Charge(order_id="o-1", amount=5), token=2)
    key = f"{env.saga_id}:charge:action"
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
        assert line.strip() == "ready"
        async with Replies(broker.transport) as replies:
            await send_command(sender, env)
            line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
            assert line.strip() == "committed"
            assert await effects(store_url) == {key: 1}
            child.send_signal(signal.SIGKILL)  # committed, not replied, not acknowledged
            await asyncio.to_thread(child.wait, 10)
            assert replies.envelopes == []
            restarted = Participant(broker.transport(ack_timeout=1.0), name="payments", store=store_url)
            charging(restarted)
            async with restarted:
                [reply] = await replies.wait(1, timeout=60)
    finally:
        await sender.close()
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert (restarted.handled, restarted.duplicates) == (0, 1)
    assert await effects(store_url) == {key: 1}
    assert reply.type_name == message_type_name(Charged)
    assert reply.payload == {"order_id": "o-1", "charge_key": key}
    assert (reply.saga_id, reply.step, reply.token, reply.causation_id) == (env.saga_id, "charge", 2, env.message_id)
