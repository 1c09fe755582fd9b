"""The reports the harnesses return: a sequence of runs, each with its problems."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar, Protocol, TypeVar, overload

__all__ = ["Report"]


class _Run(Protocol):
    @property
    def problems(self) -> Sequence[str]: ...


R = TypeVar("R", bound=_Run)


class Report(Sequence[R]):
    """Runs in the order they ran; index by position, or by name where runs have one.

    Subclasses say what a run is called (``_label``, used in problem lines and
    for lookups by name) and what ``assert_ok`` reports (``_trouble``).
    """

    _kind: ClassVar[str] = "run"  # what a run is called in a lookup error ("scenario", "failure path")
    _trouble: ClassVar[str] = "problem(s)"  # how assert_ok's message starts, after the count

    def __init__(self, runs: list[R]) -> None:
        self.runs = runs

    def _label(self, run: R) -> str | None:
        """The run's name: its problems are prefixed with it, and ``report[name]`` finds it (None: no name)."""
        return None

    @overload
    def __getitem__(self, key: int) -> R: ...
    @overload
    def __getitem__(self, key: slice) -> Sequence[R]: ...
    @overload
    def __getitem__(self, key: str) -> R: ...

    def __getitem__(self, key: int | slice | str) -> R | Sequence[R]:
        if isinstance(key, str):
            for r in self.runs:
                if self._label(r) == key:
                    return r
            names = ", ".join(repr(self._label(r)) for r in self.runs)
            raise KeyError(f"no {self._kind} {key!r}; the {self._kind}s are: {names}")
        return self.runs[key]

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[R]:
        return iter(self.runs)

    @property
    def problems(self) -> list[str]:
        """Every run's problems, each prefixed with the run's name."""
        return [f"{self._label(r)}: {p}" for r in self.runs for p in r.problems]

    def assert_ok(self) -> None:
        """Raise AssertionError listing the problems, with the whole report."""
        problems = self.problems
        if problems:
            raise AssertionError(f"{len(problems)} {self._trouble}:\n{self}")

    def __str__(self) -> str:
        return "\n".join(str(r) for r in self.runs)
