"""Retry policies: bounded exponential back-off with jitter."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

from ._errors import DefinitionError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how fast a step (or compensation) is retried.

    Args:
        max_attempts: attempts in all, the first one included (1 = no retry).
        initial_delay: seconds before the second attempt.
        multiplier: each further delay is the previous one times this.
        max_delay: upper bound of one delay, in seconds.
        jitter: fraction of each delay added or removed at random (0 turns it off).
        non_retryable: exception types that fail the attempt without retry.
    """

    max_attempts: int = 3
    initial_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1
    non_retryable: tuple[type[BaseException], ...] = ()

    def validate(self, where: str) -> None:
        """Raise DefinitionError naming *where* if a field is out of range."""
        for name in ("initial_delay", "multiplier", "max_delay", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise DefinitionError(f"{where}: {name} must be a finite number, got {value!r}")
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise DefinitionError(f"{where}: max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if self.initial_delay < 0:
            raise DefinitionError(f"{where}: initial_delay must be >= 0, got {self.initial_delay!r}")
        if self.multiplier < 1:
            raise DefinitionError(f"{where}: multiplier must be >= 1, got {self.multiplier!r}")
        if self.max_delay < self.initial_delay:
            raise DefinitionError(
                f"{where}: max_delay ({self.max_delay!r}) must be >= initial_delay ({self.initial_delay!r})"
            )
        if not 0 <= self.jitter <= 1:
            raise DefinitionError(f"{where}: jitter must be between 0 and 1, got {self.jitter!r}")
        for exc in self.non_retryable:
            if not (isinstance(exc, type) and issubclass(exc, BaseException)):
                raise DefinitionError(f"{where}: non_retryable must hold exception types, got {exc!r}")

    def delay(self, failed_attempt: int, key: str) -> float:
        """Seconds to wait after attempt number *failed_attempt* (1-based) failed.

        The jitter is derived from *key* and the attempt number, so the same
        saga, step and attempt always get the same delay (the state machine
        stays deterministic) while different sagas spread out.
        """
        base = min(self.initial_delay * self.multiplier ** (failed_attempt - 1), self.max_delay)
        if self.jitter and base:
            h = zlib.crc32(f"{key}:{failed_attempt}".encode()) / 0xFFFFFFFF
            base = min(base * (1.0 + self.jitter * (2.0 * h - 1.0)), self.max_delay)
        return base

    def is_retryable(self, exc: BaseException) -> bool:
        return not isinstance(exc, self.non_retryable)
