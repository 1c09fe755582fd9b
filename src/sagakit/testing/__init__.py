"""Testing sagas: a virtual clock, engines on it, failure injection and a fake participant."""

from ._clock import VirtualClock
from ._crash import CrashReport, CrashRun, crash_at_every_commit, kill
from ._deliveries import DeliveryReport, DeliveryRun, check_deliveries
from ._env import SagaTestEnv, needs_operator, run_to_end, settle
from ._failures import FailurePath, FailureReport, explore_failures
from ._harness import InjectedFailure
from ._idempotency import DoubleRun, IdempotencyReport, check_idempotency
from ._participant import FakeParticipant, Received

__all__ = [
    "CrashReport",
    "CrashRun",
    "DeliveryReport",
    "DeliveryRun",
    "DoubleRun",
    "FailurePath",
    "FailureReport",
    "FakeParticipant",
    "IdempotencyReport",
    "InjectedFailure",
    "Received",
    "SagaTestEnv",
    "VirtualClock",
    "check_deliveries",
    "check_idempotency",
    "crash_at_every_commit",
    "explore_failures",
    "kill",
    "needs_operator",
    "run_to_end",
    "settle",
]
