"""Open Inference Protocol (KServe V2) endpoints, spoken well enough that `tritonclient.http` works unchanged.

The GET routes (health, metadata, readiness, configuration, the index) are a FastAPI router; infer, the
index's POST, and the repository's load and unload are operations of the operations table
(service.api.table). Errors are `{"error": "..."}` with Triton's statuses, rendered for every /v2 path by
service.http.problems: 400 bad request, 404 unknown model or version, 503 not ready / unloaded / overloaded
(with Retry-After when the queue is full), 500 inference failure.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.health import readiness
from service.errors import InvalidInput, NotReady
from service.http.table import Call
from service.runtime import Runtime
from service.store.repository import ModelStore, ModelVersion
from service.v2 import codec
from service.v2.catalog import PLATFORM, Catalog, GraphMeta
from service.v2.schemas import (
    ERRORS,
    ModelMetadataResponse,
    RepositoryIndexEntry,
    RepositoryIndexRequest,
    RepositoryLoadRequest,
    ServerMetadataResponse,
)

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration"]
JSON = "application/json"


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON, headers=headers)


router = APIRouter(prefix="/v2", tags=["v2"], responses=ERRORS)  # type: ignore[arg-type]


# --- app state ----------------------------------------------------------------------------------
def _ready(request: Request) -> bool:
    return readiness(request.app)[0]


def _store(request: Request) -> ModelStore:
    store = getattr(request.app.state, "store", None)
    if store is None:
        raise NotReady("the models store is not open yet")
    return store  # type: ignore[no-any-return]


def _runtime(request: Request) -> Runtime:
    rt = getattr(request.app.state, "runtime", None)
    if rt is None:
        raise NotReady("the runtime is not started yet")
    return rt  # type: ignore[no-any-return]


def _catalog(request: Request) -> Catalog:
    state = request.app.state
    cat = getattr(state, "v2_catalog", None)
    if cat is None:
        cat = state.v2_catalog = Catalog()
    return cat  # type: ignore[no-any-return]


def _served(request: Request, name: str, version: str | None) -> tuple[ModelVersion, str]:
    """Resolve a V2 name that must be in service (not unloaded)."""
    mv, graph = _catalog(request).resolve(_store(request), name, version)
    if not _catalog(request).is_loaded(name):
        raise NotReady(f"model {name!r} is unloaded; POST /v2/repository/models/{name}/load")
    return mv, graph


# --- health and server metadata -----------------------------------------------------------------
@router.get("", response_model=ServerMetadataResponse)
async def server_metadata(request: Request) -> Response:
    """Server name, version and the protocol extensions it supports."""
    return _json({"name": "latentserve", "version": request.app.version, "extensions": EXTENSIONS})


@router.get("/health/live")
async def health_live() -> Response:
    """The process is up."""
    return _json({"live": True})


@router.get("/health/ready")
async def health_ready(request: Request) -> Response:
    """Ready for inference: the store is open and the server is not shutting down (else 503)."""
    ok = _ready(request)
    return _json({"ready": ok}, 200 if ok else 503)


# --- model metadata, readiness, configuration ---------------------------------------------------
def _model_metadata(request: Request, name: str, version: str | None) -> dict[str, Any]:
    mv, graph = _catalog(request).resolve(_store(request), name, version)
    meta = _catalog(request).metadata(_runtime(request), mv, graph)
    versions = [str(v) for v in _store(request).versions(mv.name)] if version is None else [str(mv.version)]
    return {"name": name, "versions": versions, "platform": PLATFORM,
            "inputs": [t.as_dict() for t in meta.inputs], "outputs": [t.as_dict() for t in meta.outputs]}


@router.get("/models/{model_name}", response_model=ModelMetadataResponse)
async def model_metadata(model_name: str, request: Request) -> Response:
    """Inputs and outputs of a V2 model (`<model>.<graph>`), read from its ONNX graph; -1 = dynamic."""
    return _json(_model_metadata(request, model_name, None))


@router.get("/models/{model_name}/versions/{model_version}", response_model=ModelMetadataResponse)
async def model_version_metadata(model_name: str, model_version: str, request: Request) -> Response:
    """Inputs and outputs of one version of a V2 model."""
    return _json(_model_metadata(request, model_name, model_version))


def _model_ready(request: Request, name: str, version: str | None) -> Response:
    mv, graph = _served(request, name, version)
    _runtime(request).session(mv, graph)  # raises when the graph has no session
    ok = _ready(request)
    return _json({"name": name, "version": str(mv.version), "ready": ok}, 200 if ok else 503)


@router.get("/models/{model_name}/ready")
async def model_ready(model_name: str, request: Request) -> Response:
    """200 when the model can serve inference now; 503 when unloaded or not ready; 404 when unknown."""
    return _model_ready(request, model_name, None)


@router.get("/models/{model_name}/versions/{model_version}/ready")
async def model_version_ready(model_name: str, model_version: str, request: Request) -> Response:
    """Readiness of one version of a V2 model."""
    return _model_ready(request, model_name, model_version)


def _config(request: Request, name: str, version: str | None) -> dict[str, Any]:
    """A Triton-style model configuration (for perf_analyzer and tritonclient.get_model_config)."""
    mv, graph = _catalog(request).resolve(_store(request), name, version)
    meta = _catalog(request).metadata(_runtime(request), mv, graph)
    settings = request.app.state.settings
    batch = settings.max_batch_size

    def tensors(ts: Any) -> list[dict[str, Any]]:  # dims without the batch dimension, as Triton writes them
        return [{"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": list(t.shape[1:])} for t in ts]

    cfg: dict[str, Any] = {"name": name, "platform": PLATFORM, "backend": "onnxruntime",
                           "max_batch_size": batch, "input": tensors(meta.inputs),
                           "output": tensors(meta.outputs)}
    if settings.batching:
        cfg["dynamic_batching"] = {"max_queue_delay_microseconds": settings.max_queue_delay_us,
                                   "default_queue_policy": {"max_queue_size": settings.queue_size}}
    return cfg


@router.get("/models/{model_name}/config")
async def model_config(model_name: str, request: Request) -> Response:
    """Triton-style model configuration (model_configuration extension)."""
    return _json(_config(request, model_name, None))


@router.get("/models/{model_name}/versions/{model_version}/config")
async def model_version_config(model_name: str, model_version: str, request: Request) -> Response:
    """Triton-style model configuration of one version."""
    return _json(_config(request, model_name, model_version))


# --- inference ----------------------------------------------------------------------------------
def _check_inputs(name: str, meta: GraphMeta, inputs: dict[str, np.ndarray]) -> None:
    """Triton's input checks: exact names, the model's datatype, its rank and fixed dimensions (400)."""
    want = {t.name: t for t in meta.inputs}
    if set(inputs) != set(want):
        raise InvalidInput(f"model {name!r} expects inputs {sorted(want)}, got {sorted(inputs)}")
    for n, arr in inputs.items():
        t = want[n]
        got = codec.v2_datatype(arr.dtype)
        if got != t.datatype:
            raise InvalidInput(f"input {n!r}: unexpected datatype {got}, model {name!r} expects {t.datatype}")
        fits = arr.ndim == len(t.shape) and all(d in (-1, s) for d, s in zip(t.shape, arr.shape, strict=True))
        if not fits:
            raise InvalidInput(f"input {n!r}: unexpected shape {list(arr.shape)}, model {name!r} expects "
                               f"{list(t.shape)} (-1 = any)")


async def infer(call: Call, body: bytes) -> Response:
    """Inference: JSON tensors or the binary tensor extension (Inference-Header-Content-Length), gzip or
    deflate bodies; `outputs` selects outputs and `binary_data` returns them as raw bytes."""
    request = call.request
    name, version = call.path_params["model_name"], call.path_params.get("model_version")
    mv, graph = _served(request, name, version)
    runtime = call.runtime
    meta = _catalog(request).metadata(runtime, mv, graph)
    start = time.perf_counter()
    try:
        body = codec.decompress(body, _header(call, b"content-encoding"), call.settings.max_body_bytes)
        head = codec.header_length(_header(call, b"inference-header-content-length"))
        req = codec.decode_request(body, head)
        _check_inputs(name, meta, req.inputs)
        if req.outputs is not None:
            known = {t.name for t in meta.outputs}
            unknown = [o.name for o in req.outputs if o.name not in known]
            if unknown:
                raise InvalidInput(f"model {name!r} has no outputs {unknown}; it has {sorted(known)}")
    except InvalidInput:
        runtime.stats.request(name, str(mv.version), time.perf_counter() - start, reason="OTHER")
        raise
    outputs = await runtime.infer(mv, graph, req.inputs)
    out_body, header_len = codec.encode_response(name, str(mv.version), outputs, req)
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
async def _index(request: Request, ready_only: bool) -> Response:
    cat = _catalog(request)
    entries: list[dict[str, str]] = []
    problems = _store(request).problems
    # Served versions whose files went bad after they loaded: READY (the loaded copy), with the reason.
    stale = {(p["model"], p["version"]): f"serving the copy loaded before; on disk now: {p['reason']}"
             for p in problems if p.get("serving") == "previous"}
    for name, mv in cat.names(_store(request)):
        loaded = cat.is_loaded(name)
        if ready_only and not loaded:
            continue
        entry = {"name": name, "version": str(mv.version), "state": "READY" if loaded else "UNAVAILABLE"}
        if not loaded:
            entry["reason"] = "unloaded"
        elif (mv.name, mv.version) in stale:
            entry["reason"] = stale[(mv.name, mv.version)]
        entries.append(entry)
    if not ready_only:  # versions the store refused (checksum, truncated graph, bad manifest), and why
        for p in problems:
            if p.get("serving") != "previous":
                entries.append({"name": str(p["model"]), "version": str(p["version"] or ""),
                                "state": "UNAVAILABLE", "reason": str(p["reason"])})
    return _json(entries)


@router.get("/repository/index", response_model=list[RepositoryIndexEntry])
async def repository_index_get(request: Request) -> Response:
    """Every V2 model (one per graph and version) and its state."""
    return await _index(request, False)


async def repository_index(call: Call, body: RepositoryIndexRequest) -> Response:
    """Every V2 model and its state; `{"ready": true}` lists only the ready ones."""
    return await _index(call.request, body.ready)


async def load(call: Call, body: RepositoryLoadRequest) -> Response:
    """Put a V2 model the store serves back in service. Loading from a path, URL or files is refused."""
    name = call.path_params["model_name"]
    if body.parameters:
        raise InvalidInput("load takes no parameters: models come from the server's store only, "
                           "never from a config, path, URL or uploaded files")
    _catalog(call.request).resolve(call.store, name)
    _catalog(call.request).load(name)
    log.info("v2: loaded %s", name)
    return _json({})


async def unload(call: Call, body: RepositoryLoadRequest) -> Response:
    """Take a V2 model out of service (in memory; the store is untouched). `load` puts it back."""
    name = call.path_params["model_name"]
    _catalog(call.request).resolve(call.store, name)
    _catalog(call.request).unload(name)
    log.info("v2: unloaded %s", name)
    return _json({})
