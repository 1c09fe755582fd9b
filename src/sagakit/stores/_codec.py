"""Encoding of saga rows shared by every store: SagaState <-> column values."""

from __future__ import annotations

from typing import Any

import orjson

from .._status import SagaStatus, StepStatus
from ..machine import HistoryEntry, ItemState, SagaState, StepState

__all__ = [
    "COLUMNS",
    "add_side_rows",
    "decode_history",
    "decode_row",
    "dumps",
    "encode_data",
    "encode_history",
    "encode_steps",
    "loads",
]

# Column order of a saga row as the stores read it.
COLUMNS = (
    "id", "name", "version", "status", "data", "steps", "created_at", "updated_at",
    "correlation_id", "idempotency_key", "wake_at", "deadline_at", "error", "seq",
    "revision", "meta",
)  # fmt: skip

_STATUS = {s.value: s for s in SagaStatus}
_STEP_STATUS = {s.value: s for s in StepStatus}
loads = orjson.loads


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def encode_data(w: Any) -> str:
    """The JSON text of a write's (a ``Write``'s) saga data: the runtime's own, or encoded here."""
    text: str | None = w.data_json
    return dumps(w.state.data) if text is None else text


def encode_steps(steps: dict[str, StepState]) -> str:
    out: dict[str, dict[str, Any]] = {}
    for name, s in steps.items():
        d: dict[str, Any] = {"status": s.status}  # a StrEnum: orjson writes its value
        if s.attempts:
            d["attempts"] = s.attempts
        if s.compensation_attempts:
            d["compensation_attempts"] = s.compensation_attempts
        if s.token:
            d["token"] = s.token
        if s.result is not None:
            d["result"] = s.result
        if s.error is not None:
            d["error"] = s.error
        if s.wake_at is not None:
            d["wake_at"] = s.wake_at
        if s.started_at is not None:
            d["started_at"] = s.started_at
        if s.finished_at is not None:
            d["finished_at"] = s.finished_at
        if s.uncertain:
            d["uncertain"] = True
        if s.items is not None:
            d["items"] = [_encode_item(it) for it in s.items]
        if s.waiting_for is not None:
            d["waiting_for"] = s.waiting_for
            if s.resumed:
                d["resumed"] = True
        out[name] = d
    return orjson.dumps(out).decode()


def _encode_item(it: ItemState) -> dict[str, Any]:
    d: dict[str, Any] = {"value": it.value, "key": it.key, "status": it.status.value}
    if it.attempts:
        d["attempts"] = it.attempts
    if it.compensation_attempts:
        d["compensation_attempts"] = it.compensation_attempts
    if it.token:
        d["token"] = it.token
    if it.result is not None:
        d["result"] = it.result
    if it.error is not None:
        d["error"] = it.error
    if it.wake_at is not None:
        d["wake_at"] = it.wake_at
    if it.uncertain:
        d["uncertain"] = True
    return d


def _decode_items(raw: list[dict[str, Any]]) -> list[ItemState]:
    return [
        ItemState(
            d.get("value"),
            d["key"],
            _STEP_STATUS[d["status"]],
            d.get("attempts", 0),
            d.get("compensation_attempts", 0),
            d.get("token", 0),
            d.get("result"),
            d.get("error"),
            d.get("wake_at"),
            d.get("uncertain", False),
        )
        for d in raw
    ]


def decode_steps(text: str | bytes) -> dict[str, StepState]:
    raw = orjson.loads(text)
    return {
        name: StepState(
            _STEP_STATUS[d["status"]],
            d.get("attempts", 0),
            d.get("compensation_attempts", 0),
            d.get("token", 0),
            d.get("result"),
            d.get("error"),
            d.get("wake_at"),
            d.get("started_at"),
            d.get("finished_at"),
            d.get("uncertain", False),
            None if (items := d.get("items")) is None else _decode_items(items),
            d.get("waiting_for"),
            d.get("resumed", False),
        )
        for name, d in raw.items()
    }


def encode_history(entries: Any) -> str:
    """History entries as one JSON array of ``[at, kind, message, step, attempt(, traceback)]`` (a history row).

    The traceback is written only where there is one, so that the common entry stays five values.
    """
    return orjson.dumps([h[:5] if h[5] is None else (*h,) for h in entries]).decode()


def decode_history(rows: Any) -> list[HistoryEntry]:
    """The entries of history rows (each a 1-tuple holding the ``entries`` column), in row order.

    Values past the fields this version knows (written by a newer one) are left out.
    """
    n = len(HistoryEntry._fields)
    return [HistoryEntry(*e[:n]) for r in rows for e in orjson.loads(r[0])]


def decode_row(row: Any) -> SagaState:
    """Build a SagaState from a row in COLUMNS order (JSON columns as text or parsed)."""
    data = row[4]
    meta = row[15]
    steps = row[5]
    return SagaState(
        id=row[0],
        name=row[1],
        version=row[2],
        status=_STATUS[row[3]],
        data=orjson.loads(data) if isinstance(data, (str, bytes)) else data,
        steps=decode_steps(steps) if isinstance(steps, (str, bytes)) else _steps_from(steps),
        created_at=row[6],
        updated_at=row[7],
        correlation_id=row[8],
        idempotency_key=row[9],
        wake_at=row[10],
        deadline_at=row[11],
        error=row[12],
        seq=row[13],
        revision=row[14],
        meta=(orjson.loads(meta) if isinstance(meta, (str, bytes)) else meta) or {},
    )


def _steps_from(raw: dict[str, Any]) -> dict[str, StepState]:
    return decode_steps(orjson.dumps(raw))


def add_side_rows(
    w: Any, history: list[tuple[Any, ...]], outbox: list[tuple[Any, ...]], inbox: list[tuple[Any, ...]]
) -> None:
    """Append the history, outbox and inbox rows of an applied write (a ``Write``) to the given lists.

    Rows are keyed by (saga id, revision, position), in the column order of the
    stores' ``insert_history``, ``insert_outbox`` and ``insert_inbox`` statements;
    the write's history entries make one history row.
    """
    st = w.state
    rev = st.revision
    if w.history:
        history.append((st.id, rev, 0, encode_history(w.history)))
    for i, m in enumerate(w.outbox):
        outbox.append((m.id, st.id, rev, i, m.destination, m.payload.decode(), dumps(m.headers), st.updated_at))
    for mid in w.inbox:
        inbox.append((mid, st.id, st.updated_at))
