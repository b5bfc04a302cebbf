"""The one error renderer: every error the service answers is shaped here, whoever raised it.

    /v1 and everything outside /v2   RFC 9457 problem+json: {"type", "title", "status", "detail", "instance",
                                     ...extension members}
    /v2                              the Open Inference Protocol's {"error": "..."}, with Triton's statuses:
                                     bad input of any kind is 400, an unknown model or version 404

Three doors lead here, one renderer behind them:
- `response(exc, path)` for handlers and the app's exception handlers (`install`);
- `send(scope, send, exc)` for the ASGI middleware in front of the app (401, 408, 413, 431, 504, ...);
- `raw(exc, path)` for the HTTP protocol itself, before there is an ASGI scope (431 and 408 in the header
  phase, service.http.headers).

`as_service_error` translates what is not yet a `ServiceError` (Starlette's routing errors, pydantic's
validation errors, the store's lookups) once, here; anything else is a generic 500 whose body says nothing of
the cause, which goes to the log.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope, Send

from service.errors import (
    CapabilityMissing,
    InvalidInput,
    MalformedRequest,
    MethodNotAllowed,
    ModelNotFound,
    RouteNotFound,
    ServiceError,
)
from service.store.repository import UnknownModel

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_MAX_ERRORS = 20  # validation errors listed in a body: enough to fix a request, not a megabyte of them


def is_v2(path: str) -> bool:
    """True for Open Inference Protocol paths, whose errors are `{"error": ...}` instead of problem+json."""
    return path == "/v2" or path.startswith("/v2/")


def route_path(scope: Scope) -> str:
    """The path the router matches on (the request path minus any root_path), already percent-decoded."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path or "/"


def v2_status(exc: ServiceError) -> int:
    """Triton's status for an error: every input problem is 400, every unknown model or version 404."""
    if isinstance(exc, ModelNotFound):
        return 404
    if isinstance(exc, InvalidInput | CapabilityMissing):
        return 400
    return exc.status


def raw(exc: ServiceError, path: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """(status, body, headers) of the answer to `exc` on `path`; the headers carry content type and length."""
    if is_v2(path):
        status, body, ctype = v2_status(exc), orjson.dumps({"error": exc.detail}), b"application/json"
    else:
        status = exc.status
        problem = {"type": exc.type, "title": exc.title, "status": status, "detail": exc.detail,
                   "instance": path}
        body = orjson.dumps(problem | exc.extra, option=orjson.OPT_SERIALIZE_NUMPY)
        ctype = PROBLEM_JSON.encode()
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    return status, body, headers


def response(exc: ServiceError, path: str) -> Response:
    status, body, headers = raw(exc, path)
    r = Response(body, status_code=status)
    r.raw_headers = headers  # content-type and content-length included: Response's own are replaced
    return r


async def send(scope: Scope, send_: Send, exc: ServiceError, close: bool = False) -> None:
    """Answer the request with `exc` from ASGI middleware (with `close`, the connection closes after it)."""
    status, body, headers = raw(exc, route_path(scope))
    if close:
        headers.append((b"connection", b"close"))
    await send_({"type": "http.response.start", "status": status, "headers": headers})
    await send_({"type": "http.response.body", "body": body, "more_body": False})


# --- translation --------------------------------------------------------------------------------------------
#: Tags pydantic puts in a location for the member of a union it tried: not the client's field names.
_UNION_TAGS = frozenset({"float", "int", "str", "bool", "bytes", "none"})


def _field(part: Any) -> bool:
    return not (isinstance(part, str) and ("[" in part or part in _UNION_TAGS))


def validation_errors(exc: ValidationError, where: str) -> list[dict[str, Any]]:
    """Pydantic's errors, located under `where` ("body", "query", ...), without the echoed input (it can be
    megabytes of pixels) or union members' tags in the location; the most telling first (a constraint the
    value broke before the types it was not)."""
    errors = [{"loc": [where, *(str(p) for p in e.get("loc", ()) if _field(p))], "msg": str(e.get("msg", "")),
               "type": str(e.get("type", ""))} for e in exc.errors(include_url=False, include_input=False,
                                                                      include_context=False)]
    errors.sort(key=lambda e: str(e["type"]).endswith("_type"))  # stable: pydantic's order otherwise
    return errors[:_MAX_ERRORS]


def _encoding_hint(body: bytes) -> str:
    """Why bytes that are not JSON are not: the encodings clients get wrong, named."""
    if body.startswith(b"\xef\xbb\xbf"):
        return "; it starts with a UTF-8 byte order mark: send UTF-8 without one"
    if body[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(body) > 1 and 0 in body[:2]):
        return "; it looks like UTF-16: send UTF-8"
    return ""


def invalid_body(exc: ValidationError, body: bytes, where: str = "body") -> InvalidInput:
    """The 400 (not JSON at all) or 422 (JSON of the wrong shape) for a body pydantic refused."""
    errors = validation_errors(exc, where)
    if any(e["type"] == "json_invalid" for e in errors):
        why = errors[0]["msg"].removeprefix("Invalid JSON: ")
        return MalformedRequest(f"request {where} is not valid JSON: {why}{_encoding_hint(body)}",
                                errors=errors)
    first = errors[0] if errors else {"loc": [where], "msg": "invalid request"}
    return InvalidInput(f"{'.'.join(first['loc'])}: {first['msg']}", errors=errors)


def as_service_error(exc: BaseException) -> ServiceError:
    """`exc` in the error tree: a ServiceError as it is, the libraries' errors translated, anything else a
    generic 500 (logged with its traceback, never shown)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, UnknownModel):
        err = ModelNotFound(exc.detail, model=exc.model)
        if exc.versions is not None:
            err.extra["versions"] = exc.versions
        return err
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return RouteNotFound(str(exc.detail), headers=dict(exc.headers or {}))
        if exc.status_code == 405:
            return MethodNotAllowed(str(exc.detail), headers=dict(exc.headers or {}))
        return ServiceError(str(exc.detail), status=exc.status_code, headers=dict(exc.headers or {}))
    if isinstance(exc, ValidationError):  # a model built from request data that failed
        return invalid_body(exc, b"")
    log.error("unexpected error", exc_info=exc)
    return ServiceError("an unexpected error occurred; it has been logged")


# --- the app's exception handlers ---------------------------------------------------------------------------
async def _handle(request: Request, exc: Exception) -> Response:
    err = as_service_error(exc)
    path = request.url.path
    if err.status >= 500 and err is exc:
        log.warning("%s on %s: %s", type(err).__name__, path, err.detail)
    return response(err, route_path(request.scope))


def install(app: Any) -> None:
    """Route every exception the app's handlers raise through the renderer (Starlette's and FastAPI's
    validation and HTTP errors included)."""
    from fastapi.exceptions import RequestValidationError  # FastAPI's GET routes validate their own params

    async def fastapi_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()][:_MAX_ERRORS]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        err = InvalidInput(f"{'.'.join(first['loc'])}: {first['msg']}", errors=errors)
        return response(err, route_path(request.scope))

    for kind in (ServiceError, UnknownModel, HTTPException, ValidationError, Exception):
        app.add_exception_handler(kind, _handle)
    app.add_exception_handler(RequestValidationError, fastapi_validation)
