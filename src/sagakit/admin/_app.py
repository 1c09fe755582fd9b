"""The HTTP API and the dashboard: a Starlette app, thin over ``Operations``.

Every handler parses its input, calls one method of ``Operations`` and returns
its result as JSON. Errors are JSON too (``{"error": {"code", "message", …}}``)
and never carry a stack trace: 400 a bad parameter (named, with its value),
401 no credentials, 403 wrong credentials or read-only, 404 unknown saga,
409 an action the saga's state does not allow (with the machine's reason),
413/415 a body too large or not JSON, 503 the store cannot be used.

Access control: reads are open unless ``private``; every action needs
``Authorization: Bearer <token>`` (or passes an ``auth`` hook). Without a token
or hook, actions are refused. Actions accept JSON bodies only and no cookie is
ever read, so a cross-site form or image cannot act; responses carry a strict
Content-Security-Policy (no inline script) and ``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from .._errors import SagaBusy, SagaError, SagaNotFound, SagaStateError, StoreError
from ._filters import FILTER_PARAMETERS, InvalidParameter, parse_filter, parse_int, parse_seconds
from ._openapi import MAX_BULK_IDS, openapi_document
from ._operations import ACTIONS, MAX_BULK, ActionOutcome, BulkResult, DefinitionMissing, Operations

__all__ = ["AccessDenied", "AuthHook", "AuthInput", "create_app"]

log = logging.getLogger("sagakit.admin")

MAX_BODY = 1 << 20
_MAX_ID = 200
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


@dataclass(frozen=True, slots=True)
class AuthInput:
    """What an auth hook gets for one request.

    ``token`` is the bearer token of the ``Authorization`` header, if any;
    ``mutating`` is True for actions.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    token: str | None
    mutating: bool


class AccessDenied(SagaError):
    """Raised by an auth hook to refuse a request with 403 (returning None refuses with 401)."""


AuthHook = Callable[[AuthInput], "str | Awaitable[str | None] | None"]


class _Problem(Exception):
    """An HTTP error answer, raised inside a handler."""

    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def _json(content: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = orjson.dumps(content, default=str)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: str) -> Response:
    return _json({"error": {"code": code, "message": message, **extra}}, status, headers)


class _SecurityHeaders:
    """Adds the security headers to every response, and ``Cache-Control: no-store`` to the API's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root):
            path = path[len(root) :]  # mounted under a prefix (Mount("/sagas", app=...))
        api = path.startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    headers[k] = v
                if api:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _Api:
    """The handlers; each one is parse, call ``Operations``, answer."""

    def __init__(
        self,
        ops: Operations,
        *,
        token: str | None,
        auth: AuthHook | None,
        read_only: bool,
        private: bool,
    ) -> None:
        self.ops = ops
        self.token = token
        self.auth = auth
        self.read_only = read_only
        self.private = private

    # ------------------------------------------------------------ plumbing

    def endpoint(
        self, handler: Callable[[Request], Awaitable[Any]], *, mutating: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            mask = self.ops.masker.text
            try:
                principal = await self._authorize(request, mutating)
                if principal is not None:
                    request.state.principal = principal
                return _json(await handler(request))
            except _Problem as p:
                headers = {"www-authenticate": 'Bearer realm="sagakit"'} if p.status == 401 else None
                return _error(p.status, p.code, p.message, headers, **p.extra)
            # Error texts go through the masking policy too: a value echoed back
            # or a state machine's reason may quote a secret.
            except InvalidParameter as e:
                return _error(400, "bad_parameter", mask(str(e)), parameter=e.parameter, value=mask(e.value))
            except SagaNotFound as e:
                return _error(404, "not_found", mask(str(e)))
            except DefinitionMissing as e:
                return _error(409, "definition_missing", mask(str(e)), reason=mask(e.reason))
            except SagaStateError as e:
                return _error(409, "not_allowed", mask(str(e)), reason=mask(e.reason))
            except SagaBusy as e:
                return _error(409, "busy", mask(str(e)), reason=mask(str(e)))
            except StoreError:
                log.exception("sagakit admin: the store failed on %s %s", request.method, request.url.path)
                return _error(503, "store_unavailable", "the store cannot be used now; see the server log")
            except Exception:
                log.exception("sagakit admin: %s %s failed", request.method, request.url.path)
                return _error(500, "internal", "internal error; see the server log")

        run.__name__ = handler.__name__
        return run

    async def _authorize(self, request: Request, mutating: bool) -> str | None:
        if mutating and self.read_only:
            raise _Problem(403, "read_only", "this server is read-only (started with --read-only)")
        if not mutating and not self.private and self.auth is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        token = given.strip() if scheme.lower() == "bearer" and given.strip() else None
        if self.auth is not None:
            info = AuthInput(request.method, request.url.path, dict(request.headers), token, mutating)
            try:
                result = self.auth(info)
                principal = await result if inspect.isawaitable(result) else result
            except AccessDenied as e:
                raise _Problem(403, "forbidden", str(e) or "access denied") from None
            if principal is None:
                raise _Problem(401, "unauthorized", "credentials are missing or not accepted")
            return str(principal)
        if self.token is None:
            raise _Problem(
                403, "actions_disabled", "actions need a token: start sagakit serve with --token or SAGAKIT_TOKEN"
            )
        if token is None:
            raise _Problem(401, "unauthorized", "send Authorization: Bearer <token>")
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            raise _Problem(403, "forbidden", "the token is not accepted")
        return "token"

    @staticmethod
    def _saga_id(request: Request) -> str:
        saga_id = str(request.path_params["saga_id"])
        if not saga_id or len(saga_id) > _MAX_ID or "\x00" in saga_id:
            raise SagaNotFound(saga_id[:_MAX_ID])
        return saga_id

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise _Problem(415, "unsupported_media_type", "send the body as application/json")
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise _Problem(413, "too_large", f"the body is over {MAX_BODY} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise InvalidParameter("body", raw[:80].decode(errors="replace"), "not JSON") from None
        if not isinstance(body, dict):
            raise InvalidParameter("body", type(body).__name__, "send a JSON object")
        return body

    @staticmethod
    def _str(body: Mapping[str, Any], key: str, default: str = "") -> str:
        value = body.get(key, default)
        if value is None:
            return default
        if not isinstance(value, str):
            raise InvalidParameter(key, repr(value)[:80], "must be a string")
        return value

    def _actor(self, request: Request, body: Mapping[str, Any]) -> str:
        principal = getattr(request.state, "principal", None)
        named = self._str(body, "actor").strip()
        if self.auth is not None and principal:
            return str(principal)  # a hook's identity cannot be overridden by the body
        return named or "http"

    def _query_int(self, request: Request, key: str, default: int, low: int, high: int) -> int:
        values = request.query_params.getlist(key)
        if len(values) > 1:
            raise InvalidParameter(key, values[-1], "give it once")
        return parse_int(key, values[0], low, high) if values else default

    def _query_seconds(self, request: Request, key: str, default: float) -> float:
        values = request.query_params.getlist(key)
        if len(values) > 1:
            raise InvalidParameter(key, values[-1], "give it once")
        return parse_seconds(key, values[0]) if values else default

    @staticmethod
    def _filter_params(request: Request) -> dict[str, list[str]]:
        q = request.query_params
        return {k: q.getlist(k) for k in q}

    # ------------------------------------------------------------ reads

    async def info(self, request: Request) -> Any:
        actions_enabled = not self.read_only and (self.token is not None or self.auth is not None)
        return {
            "version": __version__,
            "read_only": self.read_only,
            "actions_enabled": actions_enabled,
            "auth": "hook" if self.auth is not None else ("bearer" if self.token is not None else "none"),
            "private": self.private,
            "definitions": [{"name": n, "version": v} for n, v in sorted(self.ops.definitions)],
            "actions": list(ACTIONS),
        }

    async def overview(self, request: Request) -> Any:
        window = self._query_seconds(request, "window", 900.0)
        bucket = self._query_seconds(request, "bucket", 60.0)
        stuck = self._query_seconds(request, "stuck", 60.0)
        result = await self.ops.overview(window=window, bucket=bucket, stuck_for=stuck)
        return result.to_dict()

    async def counts(self, request: Request) -> Any:
        counts = await self.ops.counts(parse_filter(self._filter_params(request)))
        return {"counts": {s.value: n for s, n in counts.items()}, "total": sum(counts.values())}

    async def search(self, request: Request) -> Any:
        f = parse_filter(self._filter_params(request))
        limit = self._query_int(request, "limit", 50, 1, 1000)
        offset = self._query_int(request, "offset", 0, 0, 1_000_000)
        return (await self.ops.search(f, limit=limit, offset=offset)).to_dict()

    async def saga(self, request: Request) -> Any:
        snap = await self.ops.get(self._saga_id(request))
        out = snap.to_dict()
        out["definition_registered"] = (snap.name, snap.version) in self.ops.definitions
        if snap.parent_id is not None or snap.children:
            out.update(await self.ops.family(snap))
        return out

    async def timeline(self, request: Request) -> Any:
        return (await self.ops.timeline(self._saga_id(request))).to_dict()

    async def graph(self, request: Request) -> Any:
        return (await self.ops.graph(self._saga_id(request))).to_dict()

    async def workers(self, request: Request) -> Any:
        return (await self.ops.workers()).to_dict()

    async def resources(self, request: Request) -> Any:
        return await self.ops.resources()

    async def definitions(self, request: Request) -> Any:
        return {"definitions": [d.to_dict() for d in await self.ops.describe_definitions()]}

    async def schedules(self, request: Request) -> Any:
        return (await self.ops.schedules()).to_dict()

    async def unschedule(self, request: Request) -> Any:
        key = str(request.path_params["key"])
        removed = await self.ops.unschedule(key)
        if not removed:
            raise _Problem(404, "not_found", f"no recurring schedule with key {key!r}")
        return {"key": key, "removed": True}

    async def locks(self, request: Request) -> Any:
        saga_id = request.query_params.get("saga_id") or None
        return (await self.ops.locks(saga_id)).to_dict()

    async def allowed(self, request: Request) -> Any:
        return {"saga_id": request.path_params["saga_id"], **await self.ops.allowed_actions(self._saga_id(request))}

    def metrics_endpoint(self, metrics: Any) -> Callable[[Request], Awaitable[Response]]:
        """``/metrics``: the Prometheus text format, under the access rules of reads; store gauges read now."""

        async def metrics_page(request: Request) -> Response:
            try:
                await self._authorize(request, False)
            except _Problem as p:
                headers = {"www-authenticate": 'Bearer realm="sagakit"'} if p.status == 401 else None
                return _error(p.status, p.code, p.message, headers)
            try:
                await self.ops._store()
                await metrics.refresh(self.ops.engine)
            except Exception:
                # The engine's own metrics are still worth serving; the store gauges keep their last values.
                log.exception("sagakit admin: reading the store gauges for /metrics failed")
            body, content_type = metrics.exposition()
            return Response(body, headers={"content-type": content_type, "cache-control": "no-store"})

        return metrics_page

    # ------------------------------------------------------------ actions

    def action(self, name: str) -> Callable[[Request], Awaitable[Any]]:
        async def act(request: Request) -> Any:
            saga_id = self._saga_id(request)
            body = await self._body(request)
            step = self._str(body, "from_step" if name == "fork" else "step") or None
            outcome = await self.ops.act(
                name,
                saga_id,
                reason=self._str(body, "reason"),
                actor=self._actor(request, body),
                step=step,
                result=body.get("result"),
                data=body.get("data"),
            )
            return outcome.to_dict()

        act.__name__ = f"action_{name}"
        return act

    async def bulk(self, request: Request) -> Any:
        name = str(request.path_params["action"])
        if name not in ACTIONS:
            raise _Problem(404, "not_found", f"no bulk action {name!r}; use one of: {', '.join(ACTIONS)}")
        body = await self._body(request)
        if "ids" in body:
            return await self._bulk_ids(name, request, body)
        raw = body.get("filter")
        if not isinstance(raw, dict) or not raw:
            raise InvalidParameter("filter", repr(raw)[:80], "give a non-empty object of search filters")
        params: dict[str, list[str]] = {}
        for key, value in raw.items():
            if key not in FILTER_PARAMETERS:
                raise InvalidParameter(
                    f"filter.{key}", repr(value)[:80], f"unknown filter; use: {', '.join(FILTER_PARAMETERS)}"
                )
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
                raise InvalidParameter(f"filter.{key}", repr(value)[:80], "use a string, a number or a list of them")
            params[str(key)] = [str(v) for v in values]
        f = parse_filter(params)
        limit = body.get("limit", 1000)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_BULK:
            raise InvalidParameter("limit", repr(limit)[:80], f"must be an integer between 1 and {MAX_BULK}")
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise InvalidParameter("dry_run", repr(dry_run)[:80], "must be true or false")
        step = self._str(body, "from_step" if name == "fork" else "step") or None
        result = await self.ops.bulk(
            name,
            f,
            reason=self._str(body, "reason"),
            actor=self._actor(request, body),
            step=step,
            result=body.get("result"),
            data=body.get("data"),
            limit=limit,
            dry_run=dry_run,
        )
        return result.to_dict()

    async def _bulk_ids(self, name: str, request: Request, body: dict[str, Any]) -> Any:
        """A bulk action on the sagas named in ``ids`` (the rows selected in the dashboard)."""
        ids = body["ids"]
        if "filter" in body:
            raise InvalidParameter("ids", "…", "give ids or a filter, not both")
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_BULK_IDS:
            raise InvalidParameter("ids", repr(ids)[:80], f"give a list of 1 to {MAX_BULK_IDS} saga ids")
        for i in ids:
            if not isinstance(i, str) or not i or len(i) > _MAX_ID or "\x00" in i:
                raise InvalidParameter("ids", repr(i)[:80], "each id must be a non-empty string")
        unique = list(dict.fromkeys(ids))
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise InvalidParameter("dry_run", repr(dry_run)[:80], "must be true or false")
        described = f"{len(unique)} selected saga(s)"
        if dry_run:
            matched = tuple(ActionOutcome(i, name, "matched") for i in unique)
            return BulkResult(name, described, len(unique), matched, dry_run=True).to_dict()
        step = self._str(body, "from_step" if name == "fork" else "step") or None
        outcomes = await self.ops.act_many(
            name,
            unique,
            reason=self._str(body, "reason"),
            actor=self._actor(request, body),
            step=step,
            result=body.get("result"),
            data=body.get("data"),
        )
        return BulkResult(name, described, len(unique), outcomes).to_dict()


def create_app(
    ops: Operations,
    *,
    token: str | None = None,
    auth: AuthHook | None = None,
    read_only: bool = False,
    private: bool = False,
    run_engine: bool = False,
    allowed_hosts: list[str] | None = None,
    metrics: Any = None,
) -> Starlette:
    """The ASGI app: JSON API under ``/api``, its OpenAPI document at ``/openapi.json``, dashboard at ``/``.

    It can be mounted under any prefix (``Mount("/sagas", app=create_app(ops))``
    in Starlette, ``app.mount("/sagas", ...)`` in FastAPI): the dashboard's URLs
    are relative. A mounted app's lifespan is not run by its parent; the
    engine then opens its store on first use, and the parent's lifespan runs
    and closes the engine.

    Args:
        ops: the operations API to serve.
        token: the bearer token that actions need (compared in constant time).
        auth: a hook deciding each request instead of the token: it gets an
            ``AuthInput`` and returns the caller's name (recorded as the actor
            of actions), None (401), or raises ``AccessDenied`` (403).
        read_only: refuse every action with 403.
        private: reads need the token (or pass the hook) too.
        run_engine: run the engine's workers in this process (from startup to shutdown).
        allowed_hosts: accepted ``Host`` headers (guards a loopback server against DNS rebinding).
        metrics: a ``sagakit.prometheus.PrometheusObserver`` to serve at ``/metrics`` (the
            access rules of reads apply); its store gauges are read at each scrape.
    """
    api = _Api(ops, token=token, auth=auth, read_only=read_only, private=private)
    e = api.endpoint
    routes = [
        Route("/", _index, methods=["GET"]),
        Route("/openapi.json", _openapi, methods=["GET"]),
        Route("/api/info", e(api.info), methods=["GET"]),
        Route("/api/overview", e(api.overview), methods=["GET"]),
        Route("/api/counts", e(api.counts), methods=["GET"]),
        Route("/api/sagas", e(api.search), methods=["GET"]),
        Route("/api/sagas/{saga_id}", e(api.saga), methods=["GET"]),
        Route("/api/sagas/{saga_id}/timeline", e(api.timeline), methods=["GET"]),
        Route("/api/sagas/{saga_id}/graph", e(api.graph), methods=["GET"]),
        Route("/api/sagas/{saga_id}/actions", e(api.allowed), methods=["GET"]),
        Route("/api/workers", e(api.workers), methods=["GET"]),
        Route("/api/resources", e(api.resources), methods=["GET"]),
        Route("/api/definitions", e(api.definitions), methods=["GET"]),
        Route("/api/schedules", e(api.schedules), methods=["GET"]),
        Route("/api/schedules/{key}", e(api.unschedule, mutating=True), methods=["DELETE"]),
        Route("/api/locks", e(api.locks), methods=["GET"]),
        *(
            Route(f"/api/sagas/{{saga_id}}/{name}", e(api.action(name), mutating=True), methods=["POST"])
            for name in ACTIONS
        ),
        Route("/api/bulk/{action}", e(api.bulk, mutating=True), methods=["POST"]),
        Route("/static/{asset}", _assets(), methods=["GET"]),
    ]
    if metrics is not None:
        routes.append(Route("/metrics", api.metrics_endpoint(metrics), methods=["GET"]))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await ops.__aenter__()
        if run_engine:
            await ops.engine.run()
        try:
            yield
        finally:
            if run_engine:
                await ops.engine.close()
            await ops.close()

    middleware = [Middleware(_SecurityHeaders)]
    if allowed_hosts:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    handlers = {404: _http_error, 405: _http_error}
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers=handlers)
    app.state.ops = ops
    return app


_MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}


def _asset(name: str) -> bytes:
    return (resources.files("sagakit.admin") / "static" / name).read_bytes()


def _assets() -> Callable[[Request], Awaitable[Response]]:
    """The dashboard's files, read from the package once; only these names are served."""
    folder = resources.files("sagakit.admin") / "static"
    files = {}
    for f in folder.iterdir():
        ext = "." + f.name.rsplit(".", 1)[-1]
        if f.is_file() and ext in _MEDIA_TYPES and f.name != "index.html":
            files[f.name] = (f.read_bytes(), _MEDIA_TYPES[ext])

    async def asset(request: Request) -> Response:
        found = files.get(str(request.path_params["asset"]))
        if found is None:
            return _error(404, "not_found", "no such file")
        body, media_type = found
        return Response(body, media_type=media_type, headers={"cache-control": "no-cache"})

    return asset


async def _index(request: Request) -> Response:
    return Response(_asset("index.html"), media_type="text/html", headers={"cache-control": "no-cache"})


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    if status == 405:
        allow = getattr(exc, "headers", None) or {}
        return _error(405, "method_not_allowed", f"{request.method} is not allowed here", dict(allow))
    return _error(404, "not_found", f"no such path: {request.url.path[:200]}")


async def _openapi(request: Request) -> Response:
    return _json(openapi_document(__version__))
