"""Operators' requests for sagas another worker holds, as the text of a request row.

An operator's engine that cannot claim a saga (a live worker holds it) leaves
the command in the store; the holder applies it (it alone can cancel the
attempts it runs) and writes back the outcome. See ``SagaEngine._act``.
"""

from __future__ import annotations

from typing import Any

import orjson

from .machine import Abort, Compensate, Event, Retry, Skip

__all__ = ["decode_admin", "encode_admin"]

_KINDS: dict[str, type[Retry] | type[Compensate] | type[Abort]] = {
    "retry": Retry,
    "compensate": Compensate,
    "abort": Abort,
}


def encode_admin(event: Event) -> str:
    """An operator's command as text (see ``decode_admin``).

    Raises:
        TypeError: *event* is not an operator's command.
    """
    match event:
        case Skip(step, result, reason, actor):
            body: dict[str, Any] = {"kind": "skip", "step": step, "result": result, "reason": reason, "actor": actor}
        case Retry(reason, actor) | Compensate(reason, actor) | Abort(reason, actor):
            body = {"kind": type(event).__name__.lower(), "reason": reason, "actor": actor}
        case _:
            raise TypeError(f"not an operator command: {event!r}")
    return orjson.dumps(body).decode()


def decode_admin(text: str) -> Event:
    """The command written by ``encode_admin``.

    Raises:
        ValueError: the text is not a command this version knows.
    """
    try:
        body = orjson.loads(text)
        kind = body["kind"]
        reason, actor = str(body.get("reason", "")), str(body.get("actor", "operator"))
        if kind == "skip":
            return Skip(str(body["step"]), body.get("result"), reason, actor)
        return _KINDS[kind](reason, actor)
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable operator request {text[:200]!r}: {e}") from None
