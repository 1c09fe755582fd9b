"""Masking of secrets in payloads and texts before they leave the operations API."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["DEFAULT_MASK_PATTERN", "MASK", "Masker"]

DEFAULT_MASK_PATTERN = r"password|secret|token|card|cvv|iban|api[_-]?key"
MASK = "***"


class Masker:
    """Replaces the values of keys that match a pattern (case-insensitive, anywhere in the key).

    Args:
        pattern: a regular expression, or None to mask nothing.

    In structured values (dicts, lists) the value of a matching key is
    replaced whole, whatever its type. In free text (errors, history lines)
    ``key: value``, ``key=value`` and their quoted JSON or Python spellings are
    masked up to the next separator.
    """

    def __init__(self, pattern: str | re.Pattern[str] | None = DEFAULT_MASK_PATTERN) -> None:
        if pattern is None:
            self.pattern: re.Pattern[str] | None = None
            self._text: re.Pattern[str] | None = None
            return
        source = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
        try:
            self.pattern = re.compile(source, re.IGNORECASE)
        except re.error as e:
            raise ValueError(f"bad mask pattern {source!r}: {e}") from None
        # A key that contains a match, optionally quoted, then ':' or '=', then the value:
        # a quoted string, or everything up to a separator.
        self._text = re.compile(
            rf"""(?P<key>["']?[\w.-]*(?:{source})[\w.-]*["']?\s*[:=]\s*)"""
            r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,;&}\])]+)""",
            re.IGNORECASE,
        )

    def key(self, name: str) -> bool:
        """Whether the value of a key called *name* is masked."""
        return self.pattern is not None and self.pattern.search(name) is not None

    def value(self, value: Any) -> Any:
        """A copy of *value* with the values of matching keys replaced by ``***``; strings masked as text."""
        if self.pattern is None:
            return value
        if isinstance(value, dict):
            return {k: (MASK if isinstance(k, str) and self.key(k) else self.value(v)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def text(self, text: str | None) -> Any:
        """*text* with ``key=value`` and ``"key": "value"`` pairs of matching keys masked."""
        if text is None or self._text is None:
            return text
        return self._text.sub(_replace, text)


def _replace(m: re.Match[str]) -> str:
    value = m.group("value")
    quote = value[0] if value[:1] in ('"', "'") else ""
    return f"{m.group('key')}{quote}{MASK}{quote}"
