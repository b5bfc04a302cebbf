"""Access control: who may call what, decided once at the ASGI boundary, before any body is read.

Zones (by the routed path, which the server has already percent-decoded once):

    open       /health/*, /v2/health/*, /metrics, /docs, /redoc, /openapi.json, and everything outside
               /v1 and /v2 (the playground page and its static files): probes, scrapers and humans need them
               without a key, and they expose no model input or output.
    inference  every other path under /v1 and /v2 (models, metadata, infer, repository index). Guarded by
               `settings.api_keys` when it is non-empty; open when it is empty (the default, for local use).
    admin      repository load / unload / reload. Off (404, as if the route did not exist) unless
               `settings.admin_key` is set; then that key, and only that key, is accepted.

Keys arrive as `Authorization: Bearer <key>` (or `X-API-Key: <key>`, for clients that cannot set a bearer
token; the admin key only as a bearer token). They are compared in constant time (`hmac.compare_digest` over
sha256 digests, so neither the value nor the length of a key leaks, and every configured key is compared).
A missing or wrong key answers 401 with `WWW-Authenticate: Bearer`, as problem+json on /v1 and as
`{"error": ...}` on /v2. The two key sets are separate: an API key never opens an admin route, and the
admin key is not an API key (give an operator both if they need both).

Model names in paths (`/v1/models/{name}`, `/v2/models/{model[.graph]}`, `/v2/repository/models/{name}`) are
checked against the store's strict pattern here as well as in the store, so no handler ever sees a name with
a dot-dot, a slash, a backslash, a percent sign, a NUL or a non-ASCII look-alike: such a request is a 404.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

from fastapi import FastAPI

from service.limits import ASGIApp, Receive, Scope, Send, is_v2, route_path, send_error
from service.store.manifest import GRAPH_NAME_PATTERN, MODEL_NAME_MAX, is_valid_model_name

log = logging.getLogger(__name__)

Zone = Literal["open", "inference", "admin"]

OPEN_PATHS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PREFIXES = ("/health/", "/v2/health/")

#: Routes that change what is served. Matched on the routed path; a trailing slash is tolerated.
ADMIN_PATTERNS = (
    re.compile(r"^/v2/repository/models/[^/]*/(load|unload)/?$"),
    re.compile(r"^/v2/repository/reload/?$"),
    re.compile(r"^/(v1/)?admin(/.*)?$"),
)

#: Where a path carries a model name, and which grammar it follows.
_NAME_IN_PATH = (
    (re.compile(r"^/v1/models/(?P<name>[^/]*)"), "model"),
    (re.compile(r"^/v2/models/(?P<name>[^/]*)"), "v2"),
    (re.compile(r"^/v2/repository/models/(?P<name>[^/]*)"), "v2"),
)
_GRAPH_RE = re.compile(GRAPH_NAME_PATTERN)


def classify(path: str) -> Zone:
    """The access zone of a routed path (see the module docstring)."""
    if any(p.match(path) for p in ADMIN_PATTERNS):
        return "admin"
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return "open"
    if path.startswith("/v1") or path.startswith("/v2"):
        return "inference"
    return "open"


def is_valid_v2_name(name: str) -> bool:
    """A V2 model name: `<model>` or `<model>.<graph>`, each part in its strict grammar."""
    model, dot, graph = name.partition(".")
    if not is_valid_model_name(model):
        return False
    return not dot or (len(graph) <= MODEL_NAME_MAX and _GRAPH_RE.fullmatch(graph) is not None)


def invalid_name_in(path: str) -> str | None:
    """The model name segment of `path` when it breaks the name grammar, else None."""
    for pattern, grammar in _NAME_IN_PATH:
        m = pattern.match(path)
        if m:
            name = m.group("name")
            ok = is_valid_model_name(name) if grammar == "model" else is_valid_v2_name(name)
            return None if ok else name
    return None


def parse_keys(value: Any) -> tuple[str, ...]:
    """Keys from a settings value: None, a comma-separated string, SecretStr(s) or an iterable of strings."""
    if value is None:
        return ()
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    items: Iterable[Any] = value.split(",") if isinstance(value, str) else value
    out = []
    for item in items:
        if hasattr(item, "get_secret_value"):
            item = item.get_secret_value()
        item = str(item).strip()
        if item:
            out.append(item)
    return tuple(out)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class KeyRing:
    """A set of accepted keys, checked in constant time with respect to the presented token."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(k) for k in keys)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accepts(self, token: str | None) -> bool:
        """True when `token` equals one of the keys. Every key is compared; no early exit."""
        presented = _digest(token if token is not None else "")
        hit = False
        for d in self._digests:
            hit |= hmac.compare_digest(presented, d)
        return hit and token is not None


def bearer_token(scope: Scope, allow_x_api_key: bool = False) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (or of `X-API-Key` when allowed), or None."""
    for k, v in scope.get("headers", []):
        if k == b"authorization":
            scheme, _, token = v.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    if allow_x_api_key:
        for k, v in scope.get("headers", []):
            if k == b"x-api-key" and v.strip():
                return v.decode("latin-1").strip()
    return None


class AccessGuard:
    """ASGI middleware enforcing the zones above. Sits outside the body and time limits: an unauthenticated
    client is answered before a single body byte is read."""

    def __init__(self, app: ASGIApp, api_keys: Any = None, admin_key: Any = None) -> None:
        self.app = app
        self.admin = KeyRing(parse_keys(admin_key))
        self.inference = KeyRing(parse_keys(api_keys))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        zone = classify(path)
        if zone == "admin":
            if not self.admin:
                await send_error(scope, send, 404, "Not Found", kind=("about:blank", "Not found"))
                return
            if not self.admin.accepts(bearer_token(scope)):
                await self._unauthorized(scope, send, "admin")
                return
        elif zone == "inference" and self.inference:
            if not self.inference.accepts(bearer_token(scope, allow_x_api_key=True)):
                await self._unauthorized(scope, send, "api")
                return
        bad = invalid_name_in(path)
        if bad is not None:
            log.info("refused a request with an invalid model name %r", bad[:100])
            await send_error(scope, send, 404, "invalid model name")
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _unauthorized(scope: Scope, send: Send, which: str) -> None:
        token = bearer_token(scope, allow_x_api_key=which == "api")
        challenge = 'Bearer realm="latentserve"'
        if token is not None:
            challenge += ', error="invalid_token"'
        client = scope.get("client") or ("?", 0)
        log.info("401 for %s from %s: %s %s key", route_path(scope), client[0],
                    "wrong" if token else "missing", which)
        detail = f"a valid {which} key is required (Authorization: Bearer <key>)"
        if which == "api":
            detail = "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"
        headers = [(b"www-authenticate", challenge.encode())]
        await send_error(scope, send, 401, detail, headers)


# ---- OpenAPI: state what the boundary answers, so /docs, schema clients and fuzzers agree with it ----

_V2_ERROR: dict[str, Any] = {
    "type": "object",
    "title": "V2Error",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_PROBLEM: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details; extension members (e.g. `errors`, `limit`) may follow",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}
_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}

#: What the middleware in front of every route can answer, whatever the handler declares.
_BOUNDARY_ERRORS = {
    "413": "Request body above max_body_bytes (or too many items, or too many image pixels)",
    "504": "Not answered within request_timeout_s",
}
_BODY_ERRORS = {"408": "Request body not received within request_timeout_s"}
_NAME_IN_PATH_DOC = re.compile(r"^/(v1/models|v2/models|v2/repository/models)/\{")


def error_response_doc(path: str, description: str) -> dict[str, Any]:
    """An OpenAPI response object for an error on `path`, in that API's error shape."""
    if is_v2(path):
        return {"description": description, "content": {"application/json": {"schema": _V2_ERROR}}}
    return {"description": description, "content": {"application/problem+json": {"schema": _PROBLEM}}}


def _document_operation(path: str, method: str, op: dict[str, Any], zone: Zone, has_api: bool) -> None:
    responses: dict[str, Any] = op.setdefault("responses", {})
    if path.startswith("/v1"):
        # Every /v1 error is rendered by one handler as problem+json, whatever model a route declared.
        for code, resp in responses.items():
            if code[:1] in "45":
                resp["content"] = error_response_doc(path, "")["content"]
    elif is_v2(path) and "422" in responses:
        responses["422"]["content"] = error_response_doc(path, "")["content"]  # V2Route answers 400 anyway
    if path.startswith(("/v1", "/v2")):
        for code, text in _BOUNDARY_ERRORS.items():
            responses.setdefault(code, error_response_doc(path, text))
        if "requestBody" in op:
            for code, text in _BODY_ERRORS.items():
                responses.setdefault(code, error_response_doc(path, text))
    if "{" in path and _NAME_IN_PATH_DOC.match(path):
        responses.setdefault("404", error_response_doc(path, "Unknown or invalid model name"))
    if zone == "admin" or (zone == "inference" and has_api):
        op["security"] = [{"adminKey" if zone == "admin" else "apiKey": []}]
        responses.setdefault("401", error_response_doc(path, "Missing or wrong key"))


def _bearer(env: str) -> dict[str, str]:
    return {"type": "http", "scheme": "bearer", "description": f"one of the keys in {env}"}


def document_boundary(app: FastAPI, api_keys: Any = None, admin_key: Any = None) -> None:
    """Wrap `app.openapi` so the document states the bearer schemes and every error the boundary can answer
    (401, 404 for invalid names, 408, 413, 504, problem+json on /v1), and drops the admin routes while off."""
    original: Callable[[], dict[str, Any]] = app.openapi
    has_api = bool(parse_keys(api_keys))
    has_admin = bool(parse_keys(admin_key))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        paths: dict[str, dict[str, Any]] = schema.get("paths", {})
        for path in list(paths):
            zone = classify(path)
            if zone == "admin" and not has_admin:
                del paths[path]
                continue
            for method, op in paths[path].items():
                if method in _METHODS:
                    _document_operation(path, method, op, zone, has_api)
        if has_api or has_admin:
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            if has_api:
                schemes["apiKey"] = _bearer("LATENTSERVE_API_KEYS")
            if has_admin:
                schemes["adminKey"] = _bearer("LATENTSERVE_ADMIN_KEY")
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI, settings: Any) -> None:
    """Add the access guard to `app` and document the boundary. Call after `limits.install`."""
    app.add_middleware(AccessGuard, api_keys=settings.api_keys, admin_key=settings.admin_key)
    document_boundary(app, settings.api_keys, settings.admin_key)
