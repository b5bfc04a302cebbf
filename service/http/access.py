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
from collections.abc import Iterable
from typing import Any, Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ModelNotFound, RouteNotFound, Unauthorized
from service.http import problems
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
        path = problems.route_path(scope)
        zone = classify(path)
        if zone == "admin":
            if not self.admin:
                await problems.send(scope, send, RouteNotFound("Not Found"))
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
            await problems.send(scope, send, ModelNotFound("invalid model name"))
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _unauthorized(scope: Scope, send: Send, which: str) -> None:
        token = bearer_token(scope, allow_x_api_key=which == "api")
        challenge = 'Bearer realm="latentserve"'
        if token is not None:
            challenge += ', error="invalid_token"'
        client = scope.get("client") or ("?", 0)
        log.info("401 for %s from %s: %s %s key", problems.route_path(scope), client[0],
                 "wrong" if token else "missing", which)
        detail = f"a valid {which} key is required (Authorization: Bearer <key>)"
        if which == "api":
            detail = "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"
        await problems.send(scope, send, Unauthorized(detail, challenge))
