"""The OpenAPI 3.1 document of the HTTP API, written out by hand beside the routes of ``_app``.

``tests/admin`` checks that it names every route and runs schemathesis against it.
"""

from __future__ import annotations

from typing import Any

from .._status import SagaStatus
from ._filters import MAX_LIMIT
from ._graph import STATES
from ._operations import ACTIONS, MAX_BULK

MAX_BULK_IDS = 1000  # sagas named in one bulk request (the rows selected in the dashboard)

__all__ = ["openapi_document"]

_STATUSES = [s.value for s in SagaStatus]
_STATUS_LIST = f"^({'|'.join(_STATUSES)})(,({'|'.join(_STATUSES)}))*$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    t = schema["type"]
    return {**schema, "type": [t, "null"] if isinstance(t, str) else [*t, "null"]}


_STR = {"type": "string"}
_NUM = {"type": "number"}
_INT = {"type": "integer"}
_ANY: dict[str, Any] = {}


def _obj(props: dict[str, Any], required: list[str] | None = None, extra: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": extra}
    out["required"] = list(props) if required is None else required
    return out


def _link_props() -> dict[str, Any]:
    """A parent or child saga as a saga's page shows it: its id, the step, and (when read) name and status."""
    return {"id": _STR, "step": _nullable(_STR), "name": _nullable(_STR), "status": _STR}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json_response(description, _ref("Error"))


_ERRORS = {
    "400": _error("A parameter or the body cannot be used; the error names the parameter and its value."),
    "401": _error("Credentials are needed: send Authorization: Bearer <token>."),
    "403": _error("The credentials are not accepted, actions are disabled, or the server is read-only."),
    "404": _error("No saga with this id."),
    "409": _error("The action is not allowed in the saga's state (the reason is the state machine's)."),
    "413": _error("The body is larger than 1 MiB."),
    "415": _error("The body is not application/json."),
    "503": _error("The store cannot be used now."),
}


def _errors(*codes: str) -> dict[str, Any]:
    return {c: _ERRORS[c] for c in codes}


def _param(name: str, schema: dict[str, Any], description: str, *, where: str = "query", **kw: Any) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": schema, "description": description, **kw}


_TIME = {"type": "string", "maxLength": 64}
_LOCK_SAGA: dict[str, Any] = {
    "saga_id": {"type": "string"},
    "name": {"type": ["string", "null"]},
    "since": {"type": "number"},
    "for": {"type": "number", "description": "Seconds since it took (or queued for) the key."},
}
_FILTERS = [
    _param(
        "status",
        {"type": "array", "items": {"type": "string", "pattern": _STATUS_LIST}},
        "Saga status; repeat it or separate several with commas: any of them matches.",
        style="form",
        explode=True,
    ),
    _param("name", {"type": "string", "maxLength": 500}, "Definition name."),
    _param("version", {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}, "Definition version."),
    _param("correlation_id", {"type": "string", "maxLength": 500}, "Correlation id."),
    _param(
        "key",
        {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}=", "maxLength": 565}},
        "Business key: NAME=VALUE of a top-level field of the saga's data, compared as text "
        "(order_id=o-1). Repeat it for several.",
        style="form",
        explode=True,
    ),
    _param("created_after", _TIME, "Created at or after: Unix seconds or ISO 8601."),
    _param("created_before", _TIME, "Created before: Unix seconds or ISO 8601."),
    _param("updated_after", _TIME, "Last changed at or after: Unix seconds or ISO 8601."),
    _param("updated_before", _TIME, "Last changed before: Unix seconds or ISO 8601."),
    _param(
        "stuck",
        {"type": "number", "minimum": 0, "maximum": 315360000},
        "Only stuck sagas: FAILED ones, and unfinished ones whose wake time passed more than this many "
        "seconds ago (no worker runs them).",
    ),
]
_KEY_TEXT = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}=", "maxLength": 565}
_BULK_FILTER: dict[str, Any] = {
    "status": {"oneOf": [{"type": "string", "pattern": _STATUS_LIST},
                         {"type": "array", "items": {"type": "string", "pattern": _STATUS_LIST}}]},
    "name": {"type": "string", "maxLength": 500},
    "version": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
    "correlation_id": {"type": "string", "maxLength": 500},
    "key": {"oneOf": [_KEY_TEXT, {"type": "array", "items": _KEY_TEXT}]},
    "created_after": {"oneOf": [_TIME, _NUM]},
    "created_before": {"oneOf": [_TIME, _NUM]},
    "updated_after": {"oneOf": [_TIME, _NUM]},
    "updated_before": {"oneOf": [_TIME, _NUM]},
    "stuck": {"type": "number", "minimum": 0, "maximum": 315360000},
}  # fmt: skip
_PAGE = [
    _param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}, "Page size."),
    _param("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000, "default": 0}, "Sagas to skip."),
]
_SAGA_ID = _param("saga_id", {"type": "string", "minLength": 1, "maxLength": 200}, "The saga's id.", where="path")

_ACTION_DOC = {
    "retry": "Re-run the failed step or failed compensation, or a step waiting for its retry, now.",
    "skip": "Mark a waiting or failed step SKIPPED with the given result (later steps see it) and move on.",
    "compensate": "Start compensating a pending or running saga now.",
    "abort": "Stop the saga where it stands, without compensation.",
    "fork": "Start a new saga that re-runs this one from a step on, with the results of the steps before it.",
}


def _schemas() -> dict[str, Any]:
    item = _obj(
        {
            "index": _INT,
            "key": _STR,
            "item": _ANY,
            "status": _STR,
            "attempts": _INT,
            "compensation_attempts": _INT,
            "result": _ANY,
            "error": _nullable(_STR),
            "next_attempt_at": _nullable(_NUM),
            "uncertain": {"type": "boolean"},
        }
    )
    step_props = {
        "status": _STR,
        "attempts": _INT,
        "compensation_attempts": _INT,
        "result": _ANY,
        "error": _nullable(_STR),
        "started_at": _nullable(_NUM),
        "finished_at": _nullable(_NUM),
        "next_attempt_at": _nullable(_NUM),
        "uncertain": {"type": "boolean"},
        "waiting_for": {
            **_nullable(_STR),
            "description": "The resource whose permit the step's attempt waits for (it has not started).",
        },
    }
    step = _obj(
        {
            **step_props,
            "items": {
                "type": "array",
                "items": item,
                "description": "The items of a for-each step, in the list's order (for-each steps only).",
            },
        },
        required=list(step_props),
    )
    history = _obj(
        {
            "at": _NUM,
            "kind": _STR,
            "step": _nullable(_STR),
            "attempt": _nullable(_INT),
            "message": _STR,
            "traceback": {**_nullable(_STR), "description": "The traceback of a failed attempt (bounded, masked)."},
        }
    )
    saga_base = {
        "id": _STR,
        "name": _STR,
        "version": _INT,
        "status": {"type": "string", "enum": _STATUSES},
        "correlation_id": _nullable(_STR),
        "error": _nullable(_STR),
        "created_at": _NUM,
        "updated_at": _NUM,
        "wake_at": _nullable(_NUM),
        "choreographed": {
            "type": "boolean",
            "description": "A choreographed saga: its stages are participants' events observed, not commands sent.",
        },
    }
    summary = _obj(
        {
            **saga_base,
            "overdue_seconds": _nullable(_NUM),
            "parked": _nullable(_STR),
            "steps_done": _INT,
            "steps_total": _INT,
        }
    )
    counts = _obj({s: {"type": "integer", "minimum": 0} for s in _STATUSES})
    outcome = _obj(
        {
            "saga_id": _STR,
            "action": {"type": "string", "enum": list(ACTIONS)},
            "outcome": {"type": "string", "enum": ["ok", "rejected", "matched"]},
            "status": _STR,
            "reason": _STR,
            "code": _STR,
            "new_id": _STR,
        },
        required=["saga_id", "action", "outcome"],
    )
    action_body_props = {
        "reason": {"type": "string", "maxLength": 1000, "description": "Why: recorded in the saga's history."},
        "actor": {
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
            "description": "Who (recorded in the history); an auth hook's identity takes precedence.",
        },
    }
    return {
        "Error": _obj(
            {
                "error": _obj(
                    {
                        "code": _STR,
                        "message": _STR,
                        "parameter": _STR,
                        "value": _STR,
                        "reason": _STR,
                    },
                    required=["code", "message"],
                )
            }
        ),
        "Info": _obj(
            {
                "version": _STR,
                "read_only": {"type": "boolean"},
                "actions_enabled": {"type": "boolean"},
                "auth": {"type": "string", "enum": ["none", "bearer", "hook"]},
                "private": {"type": "boolean"},
                "definitions": {"type": "array", "items": _ref("DefinitionKey")},
                "actions": {"type": "array", "items": _STR},
            }
        ),
        "DefinitionKey": _obj({"name": _STR, "version": _INT}),
        "Counts": counts,
        "CountsResult": _obj({"counts": _ref("Counts"), "total": _INT}),
        "SagaSummary": summary,
        "SagaPage": _obj(
            {"items": {"type": "array", "items": _ref("SagaSummary")}, "total": _INT, "limit": _INT, "offset": _INT}
        ),
        "Step": step,
        "HistoryEntry": history,
        "Saga": _obj(
            {
                **saga_base,
                "data": _ANY,
                "idempotency_key": _nullable(_STR),
                "steps": {"type": "object", "additionalProperties": _ref("Step")},
                "history": {"type": "array", "items": _ref("HistoryEntry")},
                "definition_registered": {"type": "boolean"},
                "parent": {
                    **_nullable({"type": "object"}),
                    "properties": _link_props(),
                    "required": ["id", "step"],
                    "additionalProperties": False,
                    "description": "For a child saga: the saga whose step started it (its name and status).",
                },
                "children": {
                    "type": "array",
                    "items": _ref("SagaLink"),
                    "description": "The child sagas this saga's child steps started, oldest first.",
                },
            }
        ),
        "SagaLink": _obj(_link_props(), required=["id", "step"]),
        "Attempt": _obj(
            {
                "step": _STR,
                "direction": {"type": "string", "enum": ["action", "compensation"]},
                "attempt": _INT,
                "started_at": _NUM,
                "ended_at": _nullable(_NUM),
                "duration": _nullable(_NUM),
                "outcome": {"type": "string", "enum": ["running", "completed", "failed", "interrupted", "unfinished"]},
                "error": _nullable(_STR),
                "traceback": {**_nullable(_STR), "description": "The failed attempt's traceback (bounded, masked)."},
            }
        ),
        "AdminAction": _obj(
            {
                "at": _NUM,
                "action": _STR,
                "actor": _nullable(_STR),
                "reason": _nullable(_STR),
                "message": _STR,
                "step": _nullable(_STR),
            }
        ),
        "Timeline": _obj(
            {
                "saga_id": _STR,
                "status": _STR,
                "created_at": _NUM,
                "updated_at": _NUM,
                "attempts": {"type": "array", "items": _ref("Attempt")},
                "admin_actions": {"type": "array", "items": _ref("AdminAction")},
                "events": {"type": "array", "items": _ref("HistoryEntry")},
                "choreographed": {"type": "boolean"},
                "observed": {"type": "array", "items": _ref("ObservedEvent")},
            }
        ),
        "ObservedEvent": _obj(
            {
                "at": _NUM,
                "kind": {"type": "string", "enum": ["observed", "observed_early", "observed_late", "observed_dropped"]},
                "what": _STR,
                "stage": _nullable(_STR),
                "message": _STR,
            }
        ),
        "GraphNode": _obj(
            {
                "name": _STR,
                "after": {"type": "array", "items": _STR},
                "kind": _STR,
                "compensation": _nullable(_STR),
                "pivot": {"type": "boolean"},
                "state": {"type": "string", "enum": list(STATES)},
                "status": _STR,
                "attempts": _INT,
                "compensation_attempts": _INT,
                "error": _nullable(_STR),
                "layer": _INT,
                "row": _INT,
            }
        ),
        "Graph": _obj(
            {
                "saga_id": _STR,
                "name": _STR,
                "version": _INT,
                "definition_known": {"type": "boolean"},
                "nodes": {"type": "array", "items": _ref("GraphNode")},
                "edges": {"type": "array", "items": _obj({"from": _STR, "to": _STR})},
                "layers": _INT,
                "rows": _INT,
                "states": {"type": "array", "items": _STR},
            }
        ),
        "AllowedAction": _obj(
            {"allowed": {"type": "boolean"}, "reason": _nullable(_STR), "steps": {"type": "array", "items": _STR}},
            required=["allowed", "reason"],
        ),
        "AllowedActions": _obj(
            {"saga_id": _STR, **{a: _ref("AllowedAction") for a in ACTIONS}},
        ),
        "Overview": _obj(
            {
                "now": _NUM,
                "counts": _ref("Counts"),
                "total": _INT,
                "throughput": {
                    "type": "array",
                    "items": _obj(
                        {
                            "start": _NUM,
                            "end": _NUM,
                            "started": _INT,
                            **{s.value: _INT for s in SagaStatus if s.terminal},
                        }
                    ),
                },
                "bucket_seconds": _NUM,
                "stuck": _ref("SagaPage"),
                "stuck_for": _NUM,
                "definitions": {"type": "array", "items": _ref("DefinitionKey")},
            }
        ),
        "ActionRequest": _obj(action_body_props, required=[]),
        "SkipRequest": _obj(
            {
                "step": {"type": "string", "minLength": 1, "description": "The step to skip."},
                "result": {"description": "The step's result, as later steps see it (any JSON)."},
                **action_body_props,
            },
            required=["step"],
        ),
        "ForkRequest": _obj(
            {
                "from_step": {"type": "string", "minLength": 1, "description": "The first step to run again."},
                "data": {"description": "The new saga's data (default: the old saga's)."},
                **action_body_props,
            },
            required=["from_step"],
        ),
        "ActionOutcome": outcome,
        "BulkRequest": _obj(
            {
                "filter": {
                    "type": "object",
                    "minProperties": 1,
                    "description": "Search filters, as the query parameters of GET /api/sagas.",
                    "properties": _BULK_FILTER,
                    "additionalProperties": False,
                },
                "step": {"type": "string", "description": "skip: the step to skip."},
                "result": {"description": "skip: the step's result."},
                "from_step": {"type": "string", "description": "fork: the first step to run again."},
                "data": {"description": "fork: the new sagas' data."},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_BULK, "default": 1000},
                "dry_run": {"type": "boolean", "default": False, "description": "List the matching sagas only."},
                **action_body_props,
            },
            required=["filter"],
        ),
        "BulkIdsRequest": _obj(
            {
                "ids": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BULK_IDS,
                    "items": {"type": "string", "minLength": 1, "maxLength": 200},
                    "description": "The sagas to act on (the rows selected in the dashboard).",
                },
                "step": {"type": "string", "description": "skip: the step to skip."},
                "result": {"description": "skip: the step's result."},
                "from_step": {"type": "string", "description": "fork: the first step to run again."},
                "data": {"description": "fork: the new sagas' data."},
                "dry_run": {"type": "boolean", "default": False, "description": "List the sagas only."},
                **action_body_props,
            },
            required=["ids"],
        ),
        "Lease": _obj(
            {
                "saga_id": _STR,
                "name": _STR,
                "version": _INT,
                "owner": _STR,
                "expires_at": _NUM,
                "expires_in": _NUM,
            }
        ),
        "Worker": _obj(
            {
                "worker_id": _STR,
                "definitions": {"type": "array", "items": _ref("DefinitionKey")},
                "last_heartbeat": _nullable(_NUM),
                "heartbeat_age": _nullable(_NUM),
                "alive_until": _NUM,
                "leases": {"type": "array", "items": _ref("Lease")},
            }
        ),
        "Workers": _obj(
            {
                "now": _NUM,
                "workers": {"type": "array", "items": _ref("Worker")},
                "orphan_leases": {
                    "type": "array",
                    "items": _ref("Lease"),
                    "description": "Live leases of workers that are no longer in the registry.",
                },
                "leases_truncated": {"type": "boolean"},
            }
        ),
        "Definition": _obj(
            {
                "name": _STR,
                "version": _INT,
                "registered": {"type": "boolean", "description": "Registered with this server (actions work)."},
                "workers": {"type": "array", "items": _STR, "description": "Alive workers that run it."},
                "counts": _ref("Counts"),
                "total": _INT,
                "steps": _nullable(_INT),
                "graph": {"oneOf": [_ref("Graph"), {"type": "null"}]},
                "choreographed": {
                    **_nullable({"type": "boolean"}),
                    "description": "A choreographed saga's definition; null when it is not registered here.",
                },
            }
        ),
        "Definitions": _obj({"definitions": {"type": "array", "items": _ref("Definition")}}),
        "Schedule": _obj(
            {
                "key": _STR,
                "name": _STR,
                "version": _nullable(_INT),
                "cron": _STR,
                "data": {"description": "The data each period's saga starts with (secrets masked)."},
                "next_at": _NUM,
                "next_in": _NUM,
                "last_at": _nullable(_NUM),
                "last_saga": _nullable(_STR),
                "created_at": _NUM,
            }
        ),
        "ScheduledSaga": _obj(
            {
                "id": _STR,
                "name": _STR,
                "version": _INT,
                "created_at": _NUM,
                "start_at": _NUM,
                "starts_in": {"type": "number", "description": "Negative once its start time has passed."},
            }
        ),
        "Schedules": _obj(
            {
                "now": _NUM,
                "schedules": {"type": "array", "items": _ref("Schedule")},
                "scheduled_sagas": {"type": "array", "items": _ref("ScheduledSaga")},
                "scheduled_truncated": {"type": "boolean"},
            }
        ),
        "Unscheduled": _obj({"key": _STR, "removed": {"type": "boolean"}}),
        "Resource": _obj(
            {
                "name": _STR,
                "concurrency": {**_nullable(_INT), "description": "Permits held at once, at most (null: no limit)."},
                "rate": {
                    **_nullable(_INT),
                    "description": "Permits started per `per` seconds, at most (null: none).",
                },
                "per": _NUM,
                "in_use": _INT,
                "waiting": {**_INT, "description": "Attempts waiting for a permit."},
                "recent": {**_INT, "description": "Permits granted in the current rate window."},
            }
        ),
        "Resources": _obj({"now": _NUM, "resources": {"type": "array", "items": _ref("Resource")}}),
        "LockHolder": _obj(_LOCK_SAGA),
        "LockWaiter": _obj({**_LOCK_SAGA, "position": _INT}),
        "KeyLocks": _obj(
            {
                "key": _STR,
                "holder": {"oneOf": [_ref("LockHolder"), {"type": "null"}]},
                "queue": {
                    "type": "array",
                    "description": "Sagas queued for the key, first in line first (position 1).",
                    "items": _ref("LockWaiter"),
                },
            }
        ),
        "Locks": _obj(
            {
                "locks": {"type": "array", "items": _ref("KeyLocks")},
                "truncated": {"type": "boolean", "description": "More than 1000 lock entries: only those are shown."},
            }
        ),
        "BulkResult": _obj(
            {
                "action": _STR,
                "filter": _STR,
                "matched": _INT,
                "acted_on": _INT,
                "ok": _INT,
                "rejected": _INT,
                "dry_run": {"type": "boolean"},
                "outcomes": {"type": "array", "items": _ref("ActionOutcome")},
            }
        ),
    }


def _action_operation(name: str) -> dict[str, Any]:
    body = {"skip": "SkipRequest", "fork": "ForkRequest"}.get(name, "ActionRequest")
    return {
        "post": {
            "operationId": f"{name}Saga",
            "summary": _ACTION_DOC[name],
            "tags": ["actions"],
            "security": [{"bearer": []}],
            "parameters": [_SAGA_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body)}}},
            "responses": {
                "200": _json_response("Done: the transition is committed and recorded with actor and reason.",
                                      _ref("ActionOutcome")),
                **_errors("400", "401", "403", "404", "409", "413", "415", "503"),
            },
        }
    }  # fmt: skip


def _get(
    op_id: str,
    summary: str,
    schema: str,
    params: list[dict[str, Any]],
    errors: tuple[str, ...],
    links: dict[str, Any] | None = None,
) -> Any:
    ok = _json_response("OK", _ref(schema))
    if links:
        ok["links"] = links
    return {
        "get": {
            "operationId": op_id,
            "summary": summary,
            "tags": ["sagas"],
            "parameters": params,
            "responses": {"200": ok, **_errors("401", "403", *errors)},
        }
    }


# Where a saga's id in a response leads: the operations on that saga.
_SAGA_OPERATIONS = ["getSaga", "getTimeline", "getGraph", "allowedActions", *(f"{a}Saga" for a in ACTIONS)]


def _links(pointer: str) -> dict[str, Any]:
    return {
        op[0].upper() + op[1:]: {"operationId": op, "parameters": {"saga_id": f"$response.body#{pointer}"}}
        for op in _SAGA_OPERATIONS
    }


def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI document of the API served by ``create_app``."""
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "operationId": "dashboard",
                "summary": "The dashboard (HTML; its scripts and styles are under /static).",
                "tags": ["dashboard"],
                "responses": {"200": {"description": "The dashboard page.", "content": {"text/html": {}}}},
            }
        },
        "/static/{asset}": {
            "get": {
                "operationId": "asset",
                "summary": "A file of the dashboard (script, style sheet, icon).",
                "tags": ["dashboard"],
                "parameters": [_param("asset", {"type": "string", "maxLength": 100}, "File name.", where="path")],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {"text/javascript": {}, "text/css": {}, "image/svg+xml": {}},
                    },
                    "404": _error("No such file."),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "tags": ["meta"],
                "responses": {"200": _json_response("The OpenAPI document.", {"type": "object"})},
            }
        },
        "/api/info": _get("info", "Server version, access mode and registered definitions.", "Info", [], ()),
        "/api/overview": _get(
            "overview",
            "Counts per status, sagas started and finished per bucket over the window, and the stuck sagas.",
            "Overview",
            [
                _param(
                    "window",
                    {"type": "number", "minimum": 1, "maximum": 86400, "default": 900},
                    "Seconds of throughput to show (at most 200 buckets).",
                ),
                _param(
                    "bucket",
                    {"type": "number", "minimum": 1, "maximum": 3600, "default": 60},
                    "Seconds per throughput bucket.",
                ),
                _param(
                    "stuck",
                    {"type": "number", "minimum": 0, "maximum": 315360000, "default": 60},
                    "Overdue by more than this many seconds counts as stuck.",
                ),
            ],
            ("400", "503"),
        ),
        "/api/counts": _get(
            "counts", "How many sagas match the filters, per status.", "CountsResult", _FILTERS, ("400", "503")
        ),
        "/api/sagas": _get(
            "searchSagas",
            "Sagas matching every filter given, newest first, one page.",
            "SagaPage",
            [*_FILTERS, *_PAGE],
            ("400", "503"),
            _links("/items/0/id"),
        ),
        "/api/sagas/{saga_id}": _get(
            "getSaga",
            "One saga: data, steps and history (secrets masked).",
            "Saga",
            [_SAGA_ID],
            ("404", "503"),
        ),
        "/api/sagas/{saga_id}/timeline": _get(
            "getTimeline",
            "Every attempt (start, end, duration, error), compensation and admin action (who, why).",
            "Timeline",
            [_SAGA_ID],
            ("404", "503"),
        ),
        "/api/sagas/{saga_id}/graph": _get(
            "getGraph",
            "The definition's steps and dependencies, each with its state in this saga.",
            "Graph",
            [_SAGA_ID],
            ("404", "503"),
        ),
        "/api/sagas/{saga_id}/actions": _get(
            "allowedActions",
            "Which actions the state machine accepts now, and why not (a dry run).",
            "AllowedActions",
            [_SAGA_ID],
            ("404", "503"),
        ),
        **{f"/api/sagas/{{saga_id}}/{name}": _action_operation(name) for name in ACTIONS},
        "/api/workers": _get(
            "workers",
            "The workers alive now: definitions they run, last heartbeat, the sagas they hold leases on.",
            "Workers",
            [],
            ("503",),
        ),
        "/api/resources": _get(
            "resources",
            "Resource limits: each resource's limits, permits in use and attempts waiting for one.",
            "Resources",
            [],
            ("503",),
        ),
        "/api/definitions": _get(
            "definitions",
            "The definitions registered here or run by an alive worker: graph, workers, sagas per status.",
            "Definitions",
            [],
            ("503",),
        ),
        "/api/schedules": _get(
            "schedules",
            "Recurring schedules (next and last period, last saga) and the sagas waiting for their start time.",
            "Schedules",
            [],
            ("503",),
        ),
        "/api/schedules/{key}": {
            "delete": {
                "operationId": "unschedule",
                "summary": "Stop a recurring schedule; the sagas it started are not touched.",
                "tags": ["actions"],
                "security": [{"bearer": []}],
                "parameters": [_param("key", {"type": "string", "minLength": 1}, "The schedule's key.", where="path")],
                "responses": {
                    "200": _json_response("Stopped.", _ref("Unscheduled")),
                    **_errors("400", "401", "403", "404", "503"),
                },
            }
        },
        "/api/locks": _get(
            "locks",
            "Semantic locks by business key: the saga holding each and the sagas queued for it, in order.",
            "Locks",
            [
                _param(
                    "saga_id",
                    {"type": "string", "maxLength": 200},
                    "Only the keys this saga holds or is queued for.",
                )
            ],
            ("503",),
        ),
        "/api/bulk/{action}": {
            "post": {
                "operationId": "bulkAction",
                "summary": "Apply an action to every saga the filter matches, or to the sagas named in ids; "
                "per-saga outcomes (ok or rejected).",
                "tags": ["actions"],
                "security": [{"bearer": []}],
                "parameters": [
                    _param("action", {"type": "string", "enum": list(ACTIONS)}, "The action.", where="path")
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"oneOf": [_ref("BulkRequest"), _ref("BulkIdsRequest")]}}
                    },
                },
                "responses": {
                    "200": _json_response("Outcomes per saga.", _ref("BulkResult")),
                    **_errors("400", "401", "403", "404", "413", "415", "503"),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sagakit operations API",
            "version": version,
            "description": (
                "Find, inspect and fix sagas. Reads are open unless the server is private (the default of "
                "sagakit serve on a non-loopback address); actions need Authorization: Bearer <token> and a "
                "JSON body. Times are Unix seconds. Secrets in payloads, errors and history are masked."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
