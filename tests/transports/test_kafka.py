"""The transport contract on Kafka, where one is reachable (``SAGAKIT_KAFKA``, default 127.0.0.1:9092).

No Kafka runs on sagakit's development machines, so these tests are skipped
there (with that reason), and they fail under CI only when a broker was
promised with ``SAGAKIT_KAFKA``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlencode

import pytest

from .contract import Kit, TransportContract
from .kit import KAFKA, broker_missing


class TestKafkaTransport(TransportContract):
    counts_crash_redeliveries = False
    options = {"redelivery_delay": 0.01}

    @property
    def address(self) -> tuple[str, int]:  # type: ignore[override]
        host, _, port = KAFKA.partition(":")
        return host, int(port or 9092)

    def missing(self) -> str | None:
        reason = broker_missing("Kafka", self.address, "aiokafka", "kafka")
        if reason is not None and "SAGAKIT_KAFKA" not in os.environ:
            pytest.skip(f"{reason} (no Kafka runs here; set SAGAKIT_KAFKA=host:port to run these tests)")
        return reason

    def url(self, kit: Kit, address: tuple[str, int] | None = None, **options: Any) -> str:
        host, port = address or self.address
        options.pop("ack_timeout", None)
        return f"kafka://{host}:{port}?{urlencode({'prefix': kit.ns, **options})}"

    async def test_publish_while_the_broker_is_unreachable_raises_and_consumers_resume(self, kit: Kit) -> None:
        pytest.skip("Kafka clients learn broker addresses from the cluster metadata, bypassing the test's proxy")
