"""A failed attempt's or hook's traceback, formatted for its history entry: bounded, from the user's code down.

Below the engine and the message layer, so both can record where a user's
function or hook raised.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import traceback

__all__ = ["MAX_TRACEBACK", "format_traceback"]

# A failed attempt's traceback is kept with its history entry, up to this many characters.
MAX_TRACEBACK = 8000
# Frames of the machinery that calls a step or a hook (this package's runtime and message
# layer, asyncio, the thread pool): left out of the top of a traceback, which then starts
# in the user's own code.
_MACHINERY = (
    os.path.dirname(str(asyncio.__file__)) + os.sep,
    os.path.dirname(str(concurrent.futures.__file__)) + os.sep,
    os.path.join(os.path.dirname(__file__), "_runtime") + os.sep,
    os.path.join(os.path.dirname(__file__), "_messages.py"),
)


def format_traceback(e: BaseException, limit: int = MAX_TRACEBACK) -> str:
    """The traceback of *e* (with its causes) from the step's code down, at most *limit* characters.

    A longer one keeps its start and its end, where the error is, and says how much was cut.
    The same failure repeated (same code path, same message) is formatted once.
    """
    try:
        key = _failure_key(e, limit)
    except Exception:  # an exception whose str() fails: formatted as usual, not remembered
        key = None
    if key is not None:
        text = _formatted.get(key)
        if text is not None:
            return text
    te = traceback.TracebackException.from_exception(e)
    seen: set[int] = set()
    t: traceback.TracebackException | None = te
    while t is not None and id(t) not in seen:
        seen.add(id(t))
        while t.stack and t.stack[0].filename.startswith(_MACHINERY):
            del t.stack[0]
        t = t.__cause__ or (None if t.__suppress_context__ else t.__context__)
    text = "".join(te.format())
    if len(text) > limit:
        head = limit // 4
        tail = limit - head - 60
        text = f"{text[:head]}\n... {len(text) - head - tail} characters cut ...\n{text[-tail:]}"
    if key is not None:
        if len(_formatted) >= _FORMATTED_MAX:
            del _formatted[next(iter(_formatted))]
        _formatted[key] = text
    return text


# Formatted tracebacks by what determines them: the same failure in many sagas costs one formatting.
_formatted: dict[tuple[object, ...], str] = {}
_FORMATTED_MAX = 256


def _failure_key(e: BaseException, limit: int) -> tuple[object, ...] | None:
    """What *e*'s formatted traceback depends on: each chained exception's type, text and code path."""
    parts: list[object] = [limit]
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        if isinstance(current, BaseExceptionGroup) or len(seen) > 20:
            return None  # formatted with its members: not worth a key
        seen.add(id(current))
        frames = []
        tb = current.__traceback__
        while tb is not None:
            frames.append((tb.tb_frame.f_code, tb.tb_lasti))
            tb = tb.tb_next
        notes = getattr(current, "__notes__", None)
        parts.append((type(current), str(current), tuple(frames), tuple(notes) if notes else None))
        cause = current.__cause__
        parts.append(cause is not None)
        current = cause or (None if current.__suppress_context__ else current.__context__)
    return tuple(parts)
