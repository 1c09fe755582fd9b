"""Saga and step statuses."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["SagaStatus", "StepStatus"]


class SagaStatus(StrEnum):
    """Where a saga stands. ``COMPLETED``, ``COMPENSATED``, ``FAILED`` and ``ABORTED`` are terminal."""

    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.ABORTED})


class StepStatus(StrEnum):
    """Where one step of a saga stands."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    SKIPPED = "skipped"
