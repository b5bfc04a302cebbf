"""`inference.GRPCInferenceService`: a thin adapter over service.v2.dataplane, as the HTTP router is.

Every method runs inside one wrapper (`Servicer._rpc`) that does what HTTP's middleware does for a request:

    keys       the same LATENTSERVE_API_KEYS, from `authorization: Bearer <key>` (or `x-api-key`) metadata,
               compared in constant time (service.http.access.KeyRing). ServerLive and ServerReady are open,
               like /v2/health/*; the repository's load and unload take the admin key (as a bearer token) and
               exist only when one is set (else UNIMPLEMENTED, as a method the server does not have).
    names      a model name outside the store's grammar is NOT_FOUND before anything looks it up
    time       LATENTSERVE_REQUEST_TIMEOUT_S, then DEADLINE_EXCEEDED
    in flight  counted with HTTP's (the batcher asks whether a request is alone in the server)
    errors     the service's errors as gRPC status codes, Triton's mapping (`CODES`); the retry hint of a full
               queue or an unloaded model travels as `retry-after` (seconds) and `grpc-retry-pushback-ms`
               trailing metadata (the latter is what gRPC's own retry policy reads). An unexpected error is
               INTERNAL with no detail; the log has the traceback.
    metrics    the nv_inference_* families count gRPC inferences (they are recorded in Runtime.infer), and
               `latentserve_grpc_request_duration_seconds{method, code}` times every call
    replica    `x-served-by: <hostname>-<pid>` trailing metadata, as HTTP's X-Served-By header

The message size limit (LATENTSERVE_MAX_BODY_BYTES) is gRPC's own, set on the server (service.grpc.server).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import grpc
from google.protobuf import json_format
from prometheus_client import Histogram

from service.errors import InvalidInput, ModelNotFound, ServiceError, Unauthorized
from service.grpc import codec, messages
from service.http.access import KeyRing, is_valid_v2_name, parse_keys
from service.http.replica import replica_id
from service.http.table import OFFLOAD_BYTES
from service.metrics import HTTP_BUCKETS, Metrics
from service.v2.catalog import GraphMeta
from service.v2.codec import CodecError, InferRequest
from service.v2.dataplane import DataPlane, dataplane

log = logging.getLogger(__name__)

Zone = Literal["open", "inference", "admin"]
Handler = Callable[[Any, Any], Awaitable[Any]]

#: The service's error statuses (service.errors) as gRPC status codes, Triton's way: bad input of any kind is
#: INVALID_ARGUMENT, an unknown model or version NOT_FOUND, not ready / unloaded / queue full UNAVAILABLE.
CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    431: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(exc: ServiceError) -> grpc.StatusCode:
    """The gRPC status code of a service error."""
    return CODES.get(exc.status, grpc.StatusCode.INTERNAL)


def retry_trailers(exc: ServiceError) -> tuple[tuple[str, str], ...]:
    """The retry hint of an error that has one (HTTP's Retry-After) as trailing metadata."""
    after = exc.headers.get("Retry-After")
    if after is None:
        return ()
    return ("retry-after", after), ("grpc-retry-pushback-ms", str(int(after) * 1000))


def token(metadata: Any, allow_x_api_key: bool) -> str | None:
    """The key a call presents: `authorization: Bearer <key>`, or `x-api-key: <key>` when allowed."""
    found: dict[str, str] = {}
    for key, value in metadata or ():
        if key in ("authorization", "x-api-key") and key not in found and isinstance(value, str):
            found[key] = value.strip()
    if "authorization" in found:
        scheme, _, tok = found["authorization"].partition(" ")
        return tok.strip() if scheme.lower() == "bearer" and tok.strip() else None
    return (found.get("x-api-key") or None) if allow_x_api_key else None


def check_name(name: str) -> str:
    """A V2 model name in the store's grammar (as service.http.access checks paths), else NOT_FOUND."""
    if not is_valid_v2_name(name):
        raise ModelNotFound("invalid model name")
    return name


class Servicer:
    """The methods of `inference.GRPCInferenceService` over one app's data plane."""

    def __init__(self, app: Any) -> None:
        settings = app.state.settings
        self.dp: DataPlane = dataplane(app)
        self.metrics: Metrics = app.state.metrics
        self.timeout_s = float(settings.request_timeout_s)
        self.api_keys = KeyRing(parse_keys(settings.api_keys))
        self.admin_key = KeyRing(parse_keys(settings.admin_key))
        self.latency = _histogram(app)
        self.served_by = (("x-served-by", replica_id()),)

    # --- the wrapper every method runs in -------------------------------------------------------------
    def _rpc(self, method: str, zone: Zone, fn: Handler) -> Handler:
        series: dict[grpc.StatusCode, Any] = {}  # the histogram's children of this method, by code, as met

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            self.metrics.in_flight += 1
            try:
                self._authorize(method, zone, context)
                async with asyncio.timeout(self.timeout_s):
                    response = await fn(request, context)
                context.set_trailing_metadata(self.served_by)
                return response
            except ServiceError as exc:
                code = status_of(exc)
                await context.abort(code, exc.detail, trailing_metadata=retry_trailers(exc) + self.served_by)
            except TimeoutError:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                await context.abort(code, f"the request ran past {self.timeout_s:g} s",
                                    trailing_metadata=self.served_by)
            except asyncio.CancelledError:  # the client went away, or the server stopped past its grace
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("gRPC %s failed", method)
                await context.abort(code, "internal error")
            finally:
                self.metrics.in_flight -= 1
                child = series.get(code)
                if child is None:
                    child = series[code] = self.latency.labels(method, code.name)
                child.observe(time.perf_counter() - start)

        call.__name__ = method
        return call

    def _authorize(self, method: str, zone: Zone, context: grpc.aio.ServicerContext) -> None:
        if zone == "open":
            return
        ring = self.admin_key if zone == "admin" else self.api_keys
        if zone == "inference" and not ring:
            return
        presented = token(context.invocation_metadata(), allow_x_api_key=zone == "inference")
        if not ring.accepts(presented):
            log.info("UNAUTHENTICATED for gRPC %s from %s: %s %s key", method, context.peer(),
                     "wrong" if presented else "missing", "admin" if zone == "admin" else "api")
            which = "admin key (authorization: Bearer <key>)" if zone == "admin" else \
                "API key (authorization: Bearer <key>, or x-api-key)"
            raise Unauthorized(f"a valid {which} is required in the call's metadata")

    def handler(self) -> grpc.GenericRpcHandler:
        """Every method this server has, as one generic handler for `grpc.aio.Server`."""
        table: dict[str, tuple[Zone, Handler]] = {
            "ServerLive": ("open", self.server_live),
            "ServerReady": ("open", self.server_ready),
            "ModelReady": ("inference", self.model_ready),
            "ServerMetadata": ("inference", self.server_metadata),
            "ModelMetadata": ("inference", self.model_metadata),
            "ModelInfer": ("inference", self.model_infer),
            "ModelConfig": ("inference", self.model_config),
            "RepositoryIndex": ("inference", self.repository_index),
        }
        if self.admin_key:  # as over HTTP: without an admin key these methods do not exist
            table["RepositoryModelLoad"] = ("admin", self.repository_load)
            table["RepositoryModelUnload"] = ("admin", self.repository_unload)
        kinds = messages.methods()
        return grpc.method_handlers_generic_handler(messages.SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(
                self._rpc(name, zone, fn), request_deserializer=kinds[name][0].FromString,
                response_serializer=kinds[name][1].SerializeToString)
            for name, (zone, fn) in table.items()
        })

    # --- health and metadata --------------------------------------------------------------------------
    async def server_live(self, request: Any, context: Any) -> Any:
        return messages.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        return messages.ServerReadyResponse(ready=self.dp.ready())

    async def model_ready(self, request: Any, context: Any) -> Any:
        """ready=false when unloaded or the server is not ready; NOT_FOUND when unknown."""
        _, loaded = self.dp.model_loaded(check_name(request.name), request.version or None)
        return messages.ModelReadyResponse(ready=loaded and self.dp.ready())

    async def server_metadata(self, request: Any, context: Any) -> Any:
        return messages.ServerMetadataResponse(**self.dp.server_metadata())

    async def model_metadata(self, request: Any, context: Any) -> Any:
        doc = self.dp.model_metadata(check_name(request.name), request.version or None)
        for t in doc["inputs"]:  # gRPC's TensorMetadata has no parameters: ModelConfig's carry the label set
            t.pop("parameters", None)
        return messages.ModelMetadataResponse(**doc)

    async def model_config(self, request: Any, context: Any) -> Any:
        cfg = self.dp.model_config(check_name(request.name), request.version or None)
        return json_format.ParseDict({"config": cfg}, messages.ModelConfigResponse())

    # --- inference ------------------------------------------------------------------------------------
    async def model_infer(self, request: Any, context: Any) -> Any:
        name = check_name(request.model_name)
        decode = await _decoder(request)
        done = await self.dp.infer(name, request.model_version or None, decode)
        return codec.encode_response(name, done.target.version, done.outputs, done.request)

    # --- repository -----------------------------------------------------------------------------------
    async def repository_index(self, request: Any, context: Any) -> Any:
        _one_repository(request.repository_name)
        return messages.RepositoryIndexResponse(models=self.dp.index(request.ready))

    async def repository_load(self, request: Any, context: Any) -> Any:
        _one_repository(request.repository_name)
        self.dp.load(check_name(request.model_name), dict(request.parameters))
        return messages.RepositoryModelLoadResponse()

    async def repository_unload(self, request: Any, context: Any) -> Any:
        _one_repository(request.repository_name)
        self.dp.unload(check_name(request.model_name))
        return messages.RepositoryModelUnloadResponse()


async def _decoder(request: Any) -> Callable[[GraphMeta], InferRequest]:
    """The request's decoder for the data plane. Typed contents are read value by value (~50 ms per million),
    so a big typed request is decoded in a worker thread first, as HTTP validates big JSON bodies
    (OFFLOAD_BYTES), and the loop keeps serving; its error, if any, is raised where the data plane counts it.
    Raw contents are read without a copy, on the loop."""
    if request.raw_input_contents or request.ByteSize() <= OFFLOAD_BYTES:
        return lambda meta: codec.decode_request(request)
    try:
        decoded = await asyncio.to_thread(codec.decode_request, request)
    except CodecError as exc:
        error = exc

        def refuse(meta: GraphMeta) -> InferRequest:
            raise error

        return refuse
    return lambda meta: decoded


def _one_repository(name: str) -> None:
    if name:
        raise InvalidInput(f"repository_name {name[:40]!r}: this server has one repository; leave it empty")


def _histogram(app: Any) -> Histogram:
    """gRPC latency per method and status code, in the app's registry (once per app: a restarted lifespan
    reuses it)."""
    hist = getattr(app.state, "grpc_latency", None)
    if hist is None:
        hist = app.state.grpc_latency = Histogram(
            "latentserve_grpc_request_duration_seconds", "gRPC call latency by method and status code",
            ["method", "code"], registry=app.state.metrics.registry, buckets=HTTP_BUCKETS)
    return hist
