"""Testing sagas: a virtual clock, engines on it, failure injection and a fake participant."""

from ._clock import VirtualClock
from ._env import SagaTestEnv, needs_operator, run_to_end, settle
from ._failures import FailurePath, FailureReport, explore_failures
from ._harness import InjectedFailure
from ._participant import FakeParticipant, Received

__all__ = [
    "FailurePath",
    "FailureReport",
    "FakeParticipant",
    "InjectedFailure",
    "Received",
    "SagaTestEnv",
    "VirtualClock",
    "explore_failures",
    "needs_operator",
    "run_to_end",
    "settle",
]
