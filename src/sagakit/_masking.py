"""The masking policy: what of a saga's data, results, errors and history never leaves sagakit's interfaces.

One policy for every surface that shows saga data (``sagakit show``,
``list`` and the action commands, the operations API, the HTTP API and the
dashboard, the logging and OpenTelemetry observers), so that a secret hidden
in one place is hidden in all of them. Two kinds of rules:

- **keys**: the value of a key matching a pattern (``DEFAULT_MASK_PATTERN``,
  case-insensitive, anywhere in the key: ``password``, ``pwd``,
  ``Authorization``, ``api_key``, ``card``, ``iban`` …) is replaced whole. In
  free text, ``key=value``, ``key: value`` and quoted JSON or Python spellings
  are masked up to the next separator (a ``Bearer``/``Basic`` scheme is taken
  with its credential).
- **values**, wherever they appear, under any key or inside free text: card
  numbers (13-19 digits starting 2-6, spaces or dashes allowed between
  groups, passing the Luhn check), IBANs (a country code, check digits passing
  the ISO 7064 mod-97 check), bearer tokens, JSON Web Tokens, well-known API
  key formats (Stripe, GitHub, Slack, AWS access key ids, Google API keys) and
  the password of ``scheme://user:password@host`` URLs.

The pure functions here do no I/O; callers apply ``Masker.snapshot`` to what
they print or send.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from ._snapshot import SagaSnapshot

__all__ = ["DEFAULT_MASK_PATTERN", "MASK", "Masker", "hide_password", "iban_valid", "luhn_valid"]

DEFAULT_MASK_PATTERN = (
    r"pass(?:word|wd|phrase|code)|pwd|secret|token|authori[sz]ation|credential|cookie|session[_-]?(?:id|key)"
    r"|card|cvv|cvc|iban|api[_-]?key|private[_-]?key|access[_-]?key"
)
MASK = "***"

# Countries that issue IBANs (ISO 13616 registry).
_IBAN_COUNTRY_CODES = """
AD AE AL AT AZ BA BE BG BH BI BR BY CH CR CY CZ DE DJ DK DO EE EG ES FI FK FO FR GB GE GI GL GR GT HN HR HU
IE IL IQ IS IT JO KW KZ LB LC LI LT LU LV LY MC MD ME MK MN MR MT MU NI NL NO OM PK PL PS PT QA RO RS RU SA SC
SD SE SI SK SM SO ST SV TL TN TR UA VA VG XK YE
"""
_IBAN_COUNTRIES = frozenset(_IBAN_COUNTRY_CODES.split())

# Groups of digits separated by single spaces or dashes, not inside a word or a decimal number.
_CARD = re.compile(r"(?<![\w.])[2-6]\d{0,18}(?:[ -]\d{1,19})*")
# A country code, two check digits, then groups of letters and digits (optionally in fours).
_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,}")
_BEARER = re.compile(r"(?i:\bbearer)(\s+)[A-Za-z0-9._~+/=-]{8,}")
# From the start of a scheme only (not \b): "a.b.c.d…" is scanned once, not from every dot.
_URL_PASSWORD = re.compile(r"(?P<head>(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*:)[^\s/@]+(?=@)")
_TOKENS = re.compile(
    r"\beyJ[\w-]{6,}\.eyJ[\w-]{6,}\.[\w-]*"  # JSON Web Token
    r"|\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}"  # Stripe
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,})"  # GitHub
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bAIza[\w-]{35}"  # Google API key
)
_SEPARATOR = re.compile(r"[ -]")
# A key, optionally quoted, then ':' or '='. Keys start at a word's start only,
# so that a long word is scanned once, not once per character.
_KEY = re.compile(r"""(?<![\w.-])(?P<quote>["']?)(?P<name>[\w.-]+)(?P=quote)\s*[:=]\s*""")
# The value after a masked key: a quoted string, or everything up to a
# separator; an HTTP auth scheme goes with its credential. Matched only after a
# masked key, so that text is not scanned to its next separator at every key.
_VALUE = re.compile(
    r"""(?:(?:bearer|basic|digest|token)\s+(?=\S))?(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,;&}\])]+)""",
    re.IGNORECASE,
)


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn check (the check digit of card numbers)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_number(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def _card_text(text: str) -> bool:
    """A card number as written: one run of digits, or groups of 3-6 (4-4-4-4, 4-6-5 …), the last 1-6."""
    groups = _SEPARATOR.split(text)
    shaped = len(groups) == 1 or (all(3 <= len(g) <= 6 for g in groups[:-1]) and len(groups[-1]) <= 6)
    return shaped and _card_number("".join(groups))


def _iban_text(text: str) -> bool:
    return iban_valid(text.replace(" ", ""))


def iban_valid(iban: str) -> bool:
    """Whether *iban* (uppercase, no spaces) is an IBAN: a known country, 15-34 characters, mod-97 check."""
    if not 15 <= len(iban) <= 34 or iban[:2] not in _IBAN_COUNTRIES or not iban[2:4].isdigit():
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _runs(valid: Callable[[str], bool], separators: re.Pattern[str], longest: int) -> Callable[[re.Match[str]], str]:
    """A replacement that masks, in a run of groups, each longest span of whole groups that is *valid* (as written).

    One run may hold a card number after a quantity, two card numbers, or an
    IBAN followed by a word: each span (of at most *longest* characters) is
    tried from each group on, so the secret is found wherever it sits in the
    run, and the rest is kept.
    """

    def replace_match(m: re.Match[str]) -> str:
        text = m.group(0)
        seps = list(separators.finditer(text))
        starts = [0, *(s.end() for s in seps)]
        ends = [s.start() for s in seps]
        after = m.string[m.end() : m.end() + 1]
        if not (after.isalnum() or after == "_"):  # the run does not go on into a word
            ends.append(len(text))
        out = []
        pos = 0
        for start in starts:
            if start < pos:
                continue
            for end in reversed(ends[bisect_right(ends, start) : bisect_right(ends, start + longest)]):
                if valid(text[start:end]):
                    out += [text[pos:start], MASK]
                    pos = end
                    break
        out.append(text[pos:])
        return "".join(out)

    return replace_match


# 19 digits and a separator between each two; 34 characters and a space after every 4.
_mask_card = _runs(_card_text, _SEPARATOR, 37)
_mask_iban = _runs(_iban_text, re.compile(" "), 42)


def hide_password(url: str) -> str:
    """*url* (or a text holding URLs) with the password of ``scheme://user:password@host`` masked."""
    return _URL_PASSWORD.sub(rf"\g<head>{MASK}", url)


def _mask_bearer(m: re.Match[str]) -> str:
    return f"{m.group(0)[: m.start(1) - m.start()]}{m.group(1)}{MASK}"


class Masker:
    """The masking policy: replaces secrets in saga payloads and texts by ``***``.

    Args:
        pattern: regular expression of the keys whose values are masked
            (case-insensitive, anywhere in the key); None masks no key.
        extra: more key patterns, added to *pattern* (for keys of your own,
            like ``^ssn$`` or ``routing_number``).
        values: also mask the values that look like secrets wherever they are:
            card numbers, IBANs, bearer tokens, JSON Web Tokens, known API
            key formats, passwords in URLs. Default: on, unless *pattern* is
            None and there is no *extra* (``Masker(None)`` masks nothing).

    Raises:
        ValueError: a pattern is not a valid regular expression.
    """

    def __init__(
        self,
        pattern: str | re.Pattern[str] | None = DEFAULT_MASK_PATTERN,
        *,
        extra: str | Iterable[str] = (),
        values: bool | None = None,
    ) -> None:
        sources = [] if pattern is None else [pattern.pattern if isinstance(pattern, re.Pattern) else pattern]
        extras = [extra] if isinstance(extra, str) else list(extra)
        for source in [*sources, *extras]:
            try:
                re.compile(source)
            except re.error as e:
                raise ValueError(f"bad mask pattern {source!r}: {e}; give a Python regular expression") from None
        sources += [e for e in extras if e]
        self.values = bool(sources) if values is None else values
        self.pattern: re.Pattern[str] | None = None
        if not sources:
            return
        source = "|".join(f"(?:{s})" for s in sources)
        try:
            self.pattern = re.compile(source, re.IGNORECASE)
        except re.error as e:
            raise ValueError(f"bad mask patterns {source!r} together: {e}; give Python regular expressions") from None

    @property
    def active(self) -> bool:
        """Whether this policy masks anything at all."""
        return self.pattern is not None or self.values

    def key(self, name: str) -> bool:
        """Whether the value of a key called *name* is masked."""
        return self.pattern is not None and self.pattern.search(name) is not None

    def value(self, value: Any) -> Any:
        """A copy of *value* with the values of matching keys replaced by ``***``, strings masked as text,
        and integers that are card numbers masked."""
        if not self.active:
            return value
        if isinstance(value, dict):
            return {k: (MASK if isinstance(k, str) and self.key(k) else self.value(v)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            if len(value) == 2 and isinstance(value[0], str) and self.key(value[0]):
                return [value[0], MASK]  # a (name, value) pair, like an HTTP header in a list of them
            return [self.value(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        if self.values and isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return MASK if _card_number(str(value)) else value
        return value

    def text(self, text: str | None) -> Any:
        """*text* with ``key=value`` and ``"key": "value"`` pairs of matching keys, and secret values, masked."""
        if not text or not self.active:
            return text
        if self.values:
            text = hide_password(text)
        if self.pattern is not None:
            text = self._pairs(text)
        if self.values:
            text = _BEARER.sub(_mask_bearer, text)
            text = _TOKENS.sub(MASK, text)
            text = _IBAN.sub(_mask_iban, text)
            text = _CARD.sub(_mask_card, text)
        return text

    def _pairs(self, text: str) -> str:
        """*text* with the values of ``key=value`` pairs whose key is masked replaced."""
        out = []
        pos = 0
        while (m := _KEY.search(text, pos)) is not None:
            out.append(text[pos : m.end()])
            pos = m.end()
            # A key that is not masked is passed over, not its value: "note: password=x" is found.
            if self.key(m.group("name")) and (v := _VALUE.match(text, pos)) is not None:
                value = v.group(0)
                quote = value[0] if value[:1] in ('"', "'") else ""
                out.append(f"{quote}{MASK}{quote}")
                pos = v.end()
        out.append(text[pos:])
        return "".join(out)

    def snapshot(self, snap: SagaSnapshot) -> SagaSnapshot:
        """*snap* with its data, step results, errors, history lines and tracebacks masked."""
        if not self.active:
            return snap
        steps = {
            n: replace(
                s,
                result=self.value(s.result),
                error=self.text(s.error),
                items=None
                if s.items is None
                else tuple(
                    replace(it, item=self.value(it.item), result=self.value(it.result), error=self.text(it.error))
                    for it in s.items
                ),
            )
            for n, s in snap.steps.items()
        }
        history = tuple(
            h._replace(message=self.text(h.message), traceback=self.text(h.traceback)) for h in snap.history
        )
        return replace(snap, data=self.value(snap.data), error=self.text(snap.error), steps=steps, history=history)
