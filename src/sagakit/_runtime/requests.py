"""Operators' requests for sagas another worker holds.

An operator's engine that cannot claim a saga (a live worker holds it) leaves
the command in the store (``encode_admin``); the holder applies it (it alone
can cancel the attempts it runs) and writes back the outcome, or the refusal
with its reason. See ``SagaEngine._act`` for the requesting side.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from .._errors import SagaBusy
from ..machine import Abort, ChildOutcome, Compensate, Event, ParentRollback, Reply, Retry, Skip, decide
from ._base import Held, RuntimeBase, log

__all__ = ["Requests", "decode_admin", "encode_admin"]

_KINDS: dict[str, type[Retry] | type[Compensate] | type[Abort]] = {
    "retry": Retry,
    "compensate": Compensate,
    "abort": Abort,
}


def encode_admin(event: Event) -> str:
    """An operator's command, or an event handed to the saga (``notify``), as text (see ``decode_admin``).

    Raises:
        TypeError: *event* is not an operator's command.
    """
    match event:
        case Skip(step, result, reason, actor):
            body: dict[str, Any] = {"kind": "skip", "step": step, "result": result, "reason": reason, "actor": actor}
        case Retry(reason, actor) | Compensate(reason, actor) | Abort(reason, actor):
            body = {"kind": type(event).__name__.lower(), "reason": reason, "actor": actor}
        case Reply(type_name, payload, step, token):
            body = {"kind": "event", "type_name": type_name, "payload": dict(payload), "step": step, "token": token}
        case ChildOutcome(step, child_id, status, result, size, error):
            body = {
                "kind": "child_outcome",
                "step": step,
                "child_id": child_id,
                "status": status,
                "result": result,
                "size": size,
                "error": error,
            }
        case ParentRollback(parent_id, reason):
            body = {"kind": "parent_rollback", "parent_id": parent_id, "reason": reason}
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
        if kind == "event":
            return Reply(str(body["type_name"]), dict(body["payload"]), body.get("step"), body.get("token"))
        if kind == "child_outcome":
            return ChildOutcome(
                str(body["step"]),
                str(body["child_id"]),
                body.get("status"),
                body.get("result"),
                int(body.get("size") or 0),
                body.get("error"),
            )
        if kind == "parent_rollback":
            return ParentRollback(str(body["parent_id"]), reason)
        return _KINDS[kind](reason, actor)
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable operator request {text[:200]!r}: {e}") from None


class Requests(RuntimeBase):
    """Carries out operators' requests for the sagas this engine holds."""

    async def _requests_loop(self) -> None:
        """Carry out operators' requests for sagas this engine holds (it alone can cancel what runs)."""
        while True:
            await asyncio.sleep(self._request_poll)
            if not self._held:
                continue
            try:
                requests = await self.store.open_requests()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sagakit: reading operator requests failed")
                continue
            for rid, sid, text in requests:
                held = self._held.get(sid)
                if held is None:
                    continue
                try:
                    await self._answer(rid, held, text)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("sagakit: carrying out operator request %s for saga %s failed", rid, sid)

    async def _answer(self, rid: str, held: Held, text: str) -> None:
        try:
            event = decode_admin(text)
        except ValueError as e:
            await self.store.answer_request(rid, str(e))
            return
        decision = decide(held.definition, held.state, event, self.clock())
        if decision.rejected is not None:
            await self.store.append_history(held.state.id, held.state.revision, decision.history)
            await self.store.answer_request(rid, decision.rejected)
            return
        fut: asyncio.Future[str] = self._loop_().create_future()
        self._transition(held, decision, future=fut)
        try:
            await fut
        except SagaBusy:
            return  # fenced: the saga has a new holder, which the requester reaches by itself
        await self.store.answer_request(rid, "")
