"""Errors of the service, as one tree. Each carries its HTTP status and an RFC 9457 `type` slug, and nothing
else of HTTP: `service.http.problems` renders every one of them, once, as problem+json on /v1 or
`{"error": ...}` on /v2.

    ServiceError                      500  internal-error      (base; never raised bare for a request)
    ├── ModelNotFound                 404  model-not-found     unknown model or version, or an invalid name
    ├── RouteNotFound                 404  about:blank         no route has this path
    ├── MethodNotAllowed              405  about:blank         the route exists, the method does not
    ├── InvalidInput                  422  invalid-input       wrong shapes, NaN/inf, out of range, bad image
    │   └── MalformedRequest          400  malformed-request   not JSON / not a form / not a V2 request at all
    ├── CapabilityMissing             409  capability-missing  the model exists but cannot do this operation
    ├── PayloadTooLarge               413  payload-too-large   body bytes, items, image pixels, pixel budget
    ├── HeadersTooLarge               431  headers-too-large   request headers over their size or count limit
    ├── Unauthorized                  401  unauthorized        missing or wrong API key
    ├── RequestTimeout                408  request-timeout     the client did not send its request in time
    ├── InferenceFailed               500  inference-failed    the runtime failed on valid input
    ├── Overloaded                    503  overloaded          queue full (sets Retry-After)
    │   └── NotReady                  503  not-ready           the store is not open yet, or a model unloaded
    └── Timeout                       504  timeout             the request ran past request_timeout_s

CapabilityMissing is 409 (Conflict), not 422: the request itself is well-formed, it is the target model's
state (its published graphs) that cannot serve it, and clients can tell "fix your input" (422) apart from
"pick another model" (409).

The domain raises these; library errors (pydantic, Pillow, onnxruntime) are translated where they are caught,
with `raise X(...) from exc`. An error that is none of these is a generic 500 with no traceback in the body.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

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
            self.status = status  # type: ignore[misc]  # per-instance override
        self.headers = headers or {}
        self.extra = extra

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.slug


class ModelNotFound(ServiceError):
    status, slug, title = 404, "model-not-found", "Model not found"


class _Plain(ServiceError):
    """An error about the HTTP request itself rather than a resource: RFC 9457's `about:blank` type."""

    @property
    def type(self) -> str:
        return "about:blank"


class RouteNotFound(_Plain):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(_Plain):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


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


class HeadersTooLarge(ServiceError):
    status, slug, title = 431, "headers-too-large", "Request header fields too large"


class Unauthorized(ServiceError):
    status, slug, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str, challenge: str = 'Bearer realm="latentserve"') -> None:
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class RequestTimeout(ServiceError):
    status, slug, title = 408, "request-timeout", "Request timeout"


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
