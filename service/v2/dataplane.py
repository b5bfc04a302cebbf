"""The Open Inference Protocol's semantics, once, for both of its transports: HTTP (service.v2.router) and
gRPC (service.grpc). Each adapter only turns its wire format into these calls and their results back.

What lives here, so that the two cannot drift apart:

    resolve      a V2 name `<model>.<graph>` and a version (ASCII digits without a leading zero, "latest" or
                 empty for the latest) to a served graph: ModelNotFound (404 / NOT_FOUND) when there is none
    served       the same, and the model must not be unloaded: NotReady (503 / UNAVAILABLE)
    readiness    the server's (service.api.health.readiness) and a model's
    metadata     tensor names, datatypes and shapes read from the session that serves the graph
    config       a Triton-style model configuration
    infer        input checks as Triton does them (exact names, the model's datatype with no silent casts, its
                 rank and fixed dimensions), output selection, the request parameter `precision` (fp32 or a
                 twin the graph has: service.precision), then `Runtime.infer` (the batcher, the limits, the
                 nv_inference_* metrics); a request refused for its input counts as a failure (OTHER)
    repository   the index, load and unload (the in-memory catalog: an unload over gRPC is seen over HTTP)

The adapters decode tensors themselves (JSON, binary extension, protobuf contents) into a
`codec.InferRequest`, and encode the outputs returned here. Nothing here knows HTTP or gRPC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.api.health import readiness
from service.errors import InvalidInput, NotReady
from service.runtime import Runtime
from service.settings import Settings
from service.store.repository import ModelStore, ModelVersion
from service.v2 import codec
from service.v2.catalog import PLATFORM, Catalog, GraphMeta, label_parameters

log = logging.getLogger(__name__)

SERVER_NAME = "latentserve"
EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration"]


@dataclass(frozen=True)
class Target:
    """A resolved V2 model: its name as the client gave it, the stored version and the graph."""

    name: str
    mv: ModelVersion
    graph: str

    @property
    def version(self) -> str:
        return str(self.mv.version)


@dataclass(frozen=True)
class Inference:
    """What `DataPlane.infer` hands back to an adapter to encode."""

    target: Target
    request: codec.InferRequest
    outputs: dict[str, np.ndarray]  # every output of the graph, by name (`request.outputs` selects)


class DataPlane:
    """The V2 operations over one app's store, runtime and catalog (read from `app.state` on every call: the
    lifespan sets them, and a request that arrives before or after it is answered NotReady)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state

    # --- app state ------------------------------------------------------------------------------------
    @property
    def store(self) -> ModelStore:
        store = getattr(self.state, "store", None)
        if store is None:
            raise NotReady("the models store is not open yet")
        return store  # type: ignore[no-any-return]

    @property
    def runtime(self) -> Runtime:
        rt = getattr(self.state, "runtime", None)
        if rt is None:
            raise NotReady("the runtime is not started yet")
        return rt  # type: ignore[no-any-return]

    @property
    def settings(self) -> Settings:
        return self.state.settings  # type: ignore[no-any-return]

    @property
    def catalog(self) -> Catalog:
        cat = getattr(self.state, "v2_catalog", None)
        if cat is None:
            cat = self.state.v2_catalog = Catalog()
        return cat  # type: ignore[no-any-return]

    # --- health and server metadata -----------------------------------------------------------------
    def ready(self) -> bool:
        """Ready for inference: the one rule of every readiness probe (service.api.health.readiness)."""
        return readiness(self.app)[0]

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": str(self.app.version), "extensions": EXTENSIONS}

    # --- models -------------------------------------------------------------------------------------
    def resolve(self, name: str, version: str | None = None) -> Target:
        """The graph a V2 name and version stand for; ModelNotFound when there is none."""
        mv, graph = self.catalog.resolve(self.store, name, version)
        return Target(name, mv, graph)

    def served(self, name: str, version: str | None = None) -> Target:
        """`resolve`, for a model that must be in service: NotReady when it was unloaded."""
        target = self.resolve(name, version)
        if not self.catalog.is_loaded(name):
            raise NotReady(f"model {name!r} is unloaded; load it through the repository API "
                           f"(POST /v2/repository/models/{name}/load, or RepositoryModelLoad over gRPC)")
        return target

    def graph_meta(self, target: Target) -> GraphMeta:
        return self.catalog.metadata(self.runtime, target.mv, target.graph)

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Inputs and outputs (-1 = dynamic), the versions there are (all of them when none was asked)."""
        target = self.resolve(name, version)
        meta = self.graph_meta(target)
        versions = [str(v) for v in self.store.versions(target.mv.name)] if not version else [target.version]
        return {"name": name, "versions": versions, "platform": PLATFORM,
                "inputs": [t.as_dict() for t in meta.inputs], "outputs": [t.as_dict() for t in meta.outputs]}

    def model_loaded(self, name: str, version: str | None = None) -> tuple[Target, bool]:
        """(target, in service): ModelNotFound when unknown, InferenceFailed when its graph has no session."""
        target = self.resolve(name, version)
        if not self.catalog.is_loaded(name):
            return target, False
        self.runtime.session(target.mv, target.graph)  # raises when the graph has no session
        return target, True

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """A Triton-style model configuration (for perf_analyzer and tritonclient's get_model_config)."""
        target = self.resolve(name, version)
        meta = self.graph_meta(target)
        settings = self.settings

        def tensors(ts: Any) -> list[dict[str, Any]]:  # dims without the batch dimension, as Triton has them
            return [{"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": list(t.shape[1:])}
                    for t in ts]

        cfg: dict[str, Any] = {"name": name, "platform": PLATFORM, "backend": "onnxruntime",
                               "max_batch_size": settings.max_batch_size, "input": tensors(meta.inputs),
                               "output": tensors(meta.outputs)}
        params = label_parameters(target.mv, target.graph)
        precisions = self.runtime.precisions(target.mv, target.graph)
        if len(precisions) > 1:  # twins: what the request parameter `precision` may name
            params["precisions"] = ",".join(precisions)
        if params:
            cfg["parameters"] = {k: {"string_value": v} for k, v in params.items()}
        if settings.batching:
            cfg["dynamic_batching"] = {"max_queue_delay_microseconds": settings.max_queue_delay_us,
                                       "default_queue_policy": {"max_queue_size": settings.queue_size}}
        return cfg

    # --- inference ----------------------------------------------------------------------------------
    async def infer(
        self, name: str, version: str | None, decode: Callable[[GraphMeta], codec.InferRequest],
    ) -> Inference:
        """Resolve, decode (the adapter's `decode`, given the graph's metadata), check, run. An input refused
        by the decoder or the checks is counted as a failure of that model (reason OTHER)."""
        target = self.served(name, version)
        runtime = self.runtime
        meta = self.graph_meta(target)
        start = time.perf_counter()
        try:
            req = decode(meta)
            check_inputs(name, meta, req.inputs)
            if req.outputs is not None:
                known = {t.name for t in meta.outputs}
                unknown = [o.name for o in req.outputs if o.name not in known]
                if unknown:
                    raise InvalidInput(f"model {name!r} has no outputs {unknown}; it has {sorted(known)}")
            precision = runtime.precision(target.mv, req.parameters.get("precision"), (target.graph,))
        except InvalidInput:
            runtime.stats.request(name, target.version, time.perf_counter() - start, reason="OTHER")
            raise
        outputs = await runtime.infer(target.mv, target.graph, req.inputs, precision)
        return Inference(target, req, outputs)

    # --- repository ---------------------------------------------------------------------------------
    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every V2 model (one per graph and version) and its state: READY, or UNAVAILABLE with a reason
        (unloaded, or a version the store refused and why)."""
        cat, store = self.catalog, self.store
        problems = store.problems
        # Served versions whose files went bad after they loaded: READY (the loaded copy), with the reason.
        stale = {(p["model"], p["version"]): f"serving the copy loaded before; on disk now: {p['reason']}"
                 for p in problems if p.get("serving") == "previous"}
        entries: list[dict[str, str]] = []
        for name, mv in cat.names(store):
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
        return entries

    def load(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Put a V2 model the store serves back in service. Loading from a config, path, URL or files is
        refused: models come from the server's own store only."""
        if parameters:
            raise InvalidInput("load takes no parameters: models come from the server's store only, "
                               "never from a config, path, URL or uploaded files")
        self.resolve(name)
        self.catalog.load(name)
        log.info("v2: loaded %s", name)

    def unload(self, name: str) -> None:
        """Take a V2 model out of service (in memory; the store is untouched). `load` puts it back."""
        self.resolve(name)
        self.catalog.unload(name)
        log.info("v2: unloaded %s", name)


def check_inputs(name: str, meta: GraphMeta, inputs: dict[str, np.ndarray]) -> None:
    """Triton's input checks: exact names, the model's datatype, its rank and fixed dimensions."""
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


def dataplane(app: Any) -> DataPlane:
    """The app's data plane (made on first use; both adapters share it, and with it the catalog)."""
    dp = getattr(app.state, "v2_dataplane", None)
    if dp is None:
        dp = app.state.v2_dataplane = DataPlane(app)
    return dp  # type: ignore[no-any-return]
