"""The public names of sagakit.testing are pinned: changing them is a deliberate act."""

from __future__ import annotations

import sagakit.testing

EXPECTED = {
    "SagaTestEnv", "VirtualClock", "run_to_end", "settle", "needs_operator",
    "explore_failures", "FailurePath", "FailureReport", "InjectedFailure",
    "crash_at_every_commit", "CrashReport", "CrashRun", "kill",
    "check_idempotency", "IdempotencyReport", "DoubleRun",
    "check_deliveries", "DeliveryReport", "DeliveryRun",
    "FakeParticipant", "Received",
}  # fmt: skip


def test_all_is_pinned_and_every_name_exists() -> None:
    assert set(sagakit.testing.__all__) == EXPECTED
    public = {n for n in vars(sagakit.testing) if n.isidentifier() and not n.startswith("_")} - {"plugin"}
    assert public == EXPECTED
