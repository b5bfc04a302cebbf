"""Domain errors of the service, translated to HTTP once, as RFC 9457 problem details.

    ServiceError                      500  internal-error      (base; never raised bare for a request)
    ├── ModelNotFound                 404  model-not-found     unknown model or version, or an invalid name
    ├── InvalidInput                  422  invalid-input       wrong shapes, NaN/inf, out of range, bad image
    │   └── MalformedRequest          400  malformed-request   body is not JSON / not a form at all
    ├── CapabilityMissing             409  capability-missing  the model exists but cannot do this operation
    ├── PayloadTooLarge               413  payload-too-large   body bytes, items per request, image pixels
    ├── Unauthorized                  401  unauthorized        missing or wrong API key
    ├── InferenceFailed               500  inference-failed    the runtime failed on valid input
    ├── Overloaded                    503  overloaded          queue full (sets Retry-After)
    │   └── NotReady                  503  not-ready           the store is not open yet
    └── Timeout                       504  timeout             the request ran past request_timeout_s

CapabilityMissing is 409 (Conflict), not 422: the request itself is well-formed, it is the target model's
state (its published graphs) that cannot serve it, and clients can tell "fix your input" (422) apart from
"pick another model" (409).

The domain layer raises these; only `install_handlers` knows about HTTP. FastAPI's validation errors,
malformed JSON, unknown routes and unexpected exceptions become problem+json too (the last one a generic 500
with no traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:latentserve:problem:"


class ServiceError(Exception):
    """Base of the tree. `extra` becomes RFC 9457 extension members of the problem body."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self, detail: str, *, status: int | None = None, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status  # type: ignore[misc]  # per-instance override (e.g. 400 vs 422)
        self.headers = headers or {}
        self.extra = extra

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.slug


class ModelNotFound(ServiceError):
    status, slug, title = 404, "model-not-found", "Model not found"


class InvalidInput(ServiceError):
    status, slug, title = 422, "invalid-input", "Invalid input"


class MalformedRequest(InvalidInput):
    status, slug, title = 400, "malformed-request", "Malformed request"


class CapabilityMissing(ServiceError):
    status, slug, title = 409, "capability-missing", "Capability missing"

    def __init__(self, model: str, capability: str, available: Sequence[str], why: str = "") -> None:
        detail = f"model {model!r} cannot {capability}{why}; it supports: {', '.join(available) or 'nothing'}"
        super().__init__(detail, capability=capability, capabilities=list(available))


class PayloadTooLarge(ServiceError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class Unauthorized(ServiceError):
    status, slug, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="latentserve"'})


class InferenceFailed(ServiceError):
    status, slug, title = 500, "inference-failed", "Inference failed"


class Overloaded(ServiceError):
    status, slug, title = 503, "overloaded", "Service overloaded"

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, int(retry_after_s)))})


class NotReady(Overloaded):
    slug, title = "not-ready", "Service not ready"


class Timeout(ServiceError):
    status, slug, title = 504, "timeout", "Request timed out"


def problem_response(
    request: Request,
    status: int,
    type_: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The one place that shapes an RFC 9457 body."""
    body = {"type": type_, "title": title, "status": status, "detail": detail, "instance": request.url.path}
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic's error list without the echoed input (it can be megabytes of pixels)."""
    return [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ][:20]


async def _on_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        log.warning("%s on %s: %s", type(exc).__name__, request.url.path, exc.detail)
    return problem_response(request, exc.status, exc.type, exc.title, exc.detail, exc.headers, **exc.extra)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    if any(e["type"] == "json_invalid" for e in errors):
        bad = MalformedRequest("request body is not valid JSON")
        return problem_response(request, bad.status, bad.type, bad.title, bad.detail, errors=errors)
    loc, msg = (errors[0]["loc"], str(errors[0]["msg"])) if errors else ([], "invalid request")
    err = InvalidInput(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return problem_response(request, err.status, err.type, err.title, err.detail, errors=errors)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path
    if path == "/v2" or path.startswith("/v2/"):  # V2 error shape (issue 8 fuzzing)
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, dict(exc.headers or {}))
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
    return problem_response(
        request, exc.status_code, "about:blank", title, str(exc.detail), dict(exc.headers or {})
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return problem_response(
        request,
        500,
        TYPE_PREFIX + "internal-error",
        "Internal error",
        "an unexpected error occurred; it has been logged",
    )


def install_handlers(app: FastAPI) -> None:
    """Register the translations from exceptions to problem+json."""
    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
