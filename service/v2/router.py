"""Open Inference Protocol (KServe V2) over HTTP, spoken well enough that `tritonclient.http` works unchanged.

A thin adapter: the semantics (names, versions, input checks, readiness, the repository) are
service.v2.dataplane's, shared with the gRPC adapter (service.grpc); this module reads and writes HTTP.

The GET routes (health, metadata, readiness, configuration, the index) are a FastAPI router; infer, the
index's POST, and the repository's load and unload are operations of the operations table
(service.api.table). Errors are `{"error": "..."}` with Triton's statuses, rendered for every /v2 path by
service.http.problems: 400 bad request, 404 unknown model or version, 503 not ready / unloaded / overloaded
(with Retry-After when the queue is full), 500 inference failure.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from service.errors import NotReady
from service.http.table import Call
from service.v2 import codec
from service.v2.catalog import GraphMeta
from service.v2.dataplane import EXTENSIONS, DataPlane, dataplane
from service.v2.schemas import (
    ERRORS,
    ModelMetadataResponse,
    RepositoryIndexEntry,
    RepositoryIndexRequest,
    RepositoryLoadRequest,
    ServerMetadataResponse,
)

log = logging.getLogger(__name__)

__all__ = ["EXTENSIONS", "INFER_DOC", "infer", "load", "repository_index", "router", "unload"]

JSON = "application/json"


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON, headers=headers)


router = APIRouter(prefix="/v2", tags=["v2"], responses=ERRORS)  # type: ignore[arg-type]


def _dp(request: Request) -> DataPlane:
    return dataplane(request.app)


# --- health and server metadata -----------------------------------------------------------------
@router.get("", response_model=ServerMetadataResponse)
async def server_metadata(request: Request) -> Response:
    """Server name, version and the protocol extensions it supports."""
    return _json(_dp(request).server_metadata())


@router.get("/health/live")
async def health_live() -> Response:
    """The process is up."""
    return _json({"live": True})


@router.get("/health/ready")
async def health_ready(request: Request) -> Response:
    """Ready for inference: the store is open and the server is not shutting down (else 503)."""
    ok = _dp(request).ready()
    return _json({"ready": ok}, 200 if ok else 503)


# --- model metadata, readiness, configuration ---------------------------------------------------
@router.get("/models/{model_name}", response_model=ModelMetadataResponse)
async def model_metadata(model_name: str, request: Request) -> Response:
    """Inputs and outputs of a V2 model (`<model>.<graph>`), read from its ONNX graph; -1 = dynamic."""
    return _json(_dp(request).model_metadata(model_name, None))


@router.get("/models/{model_name}/versions/{model_version}", response_model=ModelMetadataResponse)
async def model_version_metadata(model_name: str, model_version: str, request: Request) -> Response:
    """Inputs and outputs of one version of a V2 model."""
    return _json(_dp(request).model_metadata(model_name, model_version))


def _model_ready(request: Request, name: str, version: str | None) -> Response:
    dp = _dp(request)
    target, loaded = dp.model_loaded(name, version)
    if not loaded:
        raise NotReady(f"model {name!r} is unloaded; POST /v2/repository/models/{name}/load")
    ok = dp.ready()
    return _json({"name": name, "version": target.version, "ready": ok}, 200 if ok else 503)


@router.get("/models/{model_name}/ready")
async def model_ready(model_name: str, request: Request) -> Response:
    """200 when the model can serve inference now; 503 when unloaded or not ready; 404 when unknown."""
    return _model_ready(request, model_name, None)


@router.get("/models/{model_name}/versions/{model_version}/ready")
async def model_version_ready(model_name: str, model_version: str, request: Request) -> Response:
    """Readiness of one version of a V2 model."""
    return _model_ready(request, model_name, model_version)


@router.get("/models/{model_name}/config")
async def model_config(model_name: str, request: Request) -> Response:
    """Triton-style model configuration (model_configuration extension)."""
    return _json(_dp(request).model_config(model_name, None))


@router.get("/models/{model_name}/versions/{model_version}/config")
async def model_version_config(model_name: str, model_version: str, request: Request) -> Response:
    """Triton-style model configuration of one version."""
    return _json(_dp(request).model_config(model_name, model_version))


# --- inference ----------------------------------------------------------------------------------
async def infer(call: Call, body: bytes) -> Response:
    """Inference: JSON tensors or the binary tensor extension (Inference-Header-Content-Length), gzip or
    deflate bodies; `outputs` selects outputs and `binary_data` returns them as raw bytes."""
    name, version = call.path_params["model_name"], call.path_params.get("model_version")

    def decode(meta: GraphMeta) -> codec.InferRequest:
        raw = codec.decompress(body, _header(call, b"content-encoding"), call.settings.max_body_bytes)
        head = codec.header_length(_header(call, b"inference-header-content-length"))
        return codec.decode_request(raw, head)

    done = await dataplane(call.request.app).infer(name, version, decode)
    out_body, header_len = codec.encode_response(name, done.target.version, done.outputs, done.request)
    out_body, encoding = codec.compress(out_body, _header(call, b"accept-encoding"))
    headers: dict[str, str] = {}
    if header_len is not None:
        headers[codec.HEADER_LENGTH] = str(header_len)
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    media = JSON if header_len is None else "application/octet-stream"
    return Response(out_body, media_type=media, headers=headers)


def _header(call: Call, name: bytes) -> str | None:
    value = call.header(name)
    return None if value is None else value.decode("latin-1")


INFER_DOC = {"content": {
    "application/json": {"schema": {"type": "object", "description": "V2 inference request"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                            "description": "JSON header + binary tensors"}},
}, "required": True}


# --- repository ---------------------------------------------------------------------------------
@router.get("/repository/index", response_model=list[RepositoryIndexEntry])
async def repository_index_get(request: Request) -> Response:
    """Every V2 model (one per graph and version) and its state."""
    return _json(_dp(request).index(False))


async def repository_index(call: Call, body: RepositoryIndexRequest) -> Response:
    """Every V2 model and its state; `{"ready": true}` lists only the ready ones."""
    return _json(dataplane(call.request.app).index(body.ready))


async def load(call: Call, body: RepositoryLoadRequest) -> Response:
    """Put a V2 model the store serves back in service. Loading from a path, URL or files is refused."""
    dataplane(call.request.app).load(call.path_params["model_name"], body.parameters)
    return _json({})


async def unload(call: Call, body: RepositoryLoadRequest) -> Response:
    """Take a V2 model out of service (in memory; the store is untouched). `load` puts it back."""
    dataplane(call.request.app).unload(call.path_params["model_name"])
    return _json({})
