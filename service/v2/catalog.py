"""V2 models: every graph of a stored model is one V2 model named `<model>.<graph>`.

Resolves V2 names to (ModelVersion, graph), reads tensor metadata from the loaded graph (onnxruntime's
`get_inputs()` / `get_outputs()`, so it describes the file that actually serves; the manifest is the fallback
for the TorchScript backend), and keeps the repository's load state. Load and unload act on the in-memory
repository only: unloading takes a V2 model out of service, loading puts a model the store already serves
back.
Nothing is ever loaded from a path or URL named in a request.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from typing import Any

from service.errors import ModelNotFound
from service.runtime import Runtime
from service.store.manifest import TensorSpec
from service.store.repository import ModelStore, ModelVersion, UnknownModel
from service.v2.codec import ORT_TO_V2

PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str  # V2 name, e.g. "FP32"
    shape: tuple[int, ...]  # -1 for dynamic dimensions
    parameters: tuple[tuple[str, str], ...] = ()  # a conditional graph's label input: ("labels", JSON list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
        if self.parameters:
            out["parameters"] = dict(self.parameters)
        return out


@dataclass(frozen=True)
class GraphMeta:
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]


def split_name(v2_name: str) -> tuple[str, str]:
    """`vae-digits.decoder` -> ("vae-digits", "decoder"); a name without a graph part is unknown."""
    model, dot, graph = v2_name.rpartition(".")
    if not dot or not model or not graph:
        raise ModelNotFound(f"unknown model {v2_name!r}: V2 models are named <model>.<graph>, "
                            "e.g. vae-digits.decoder (see POST /v2/repository/index)")
    return model, graph


def _dims(shape: Any) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _from_ort(args: Any) -> tuple[TensorMeta, ...]:
    return tuple(TensorMeta(a.name, ORT_TO_V2.get(a.type, "FP32"), _dims(a.shape)) for a in args)


def _from_spec(specs: list[TensorSpec]) -> tuple[TensorMeta, ...]:
    return tuple(TensorMeta(t.name, "FP32", _dims(t.shape)) for t in specs)


def label_parameters(mv: ModelVersion, graph: str) -> dict[str, str]:
    """A conditional graph's label set, as V2 parameters (strings): `labels`, the class names by index as a
    JSON list, and `label_input`, the one-hot float32 (N, K) input that takes them. Empty for other graphs."""
    ls = mv.manifest.labels
    name = None if ls is None else ls.inputs.get(graph)
    if ls is None or name is None:
        return {}
    return {"labels": json.dumps(ls.names, ensure_ascii=False), "label_input": name}


class Catalog:
    """The V2 view of the store and runtime: name resolution, tensor metadata, load state."""

    def __init__(self) -> None:
        self._meta: dict[tuple[str, int, str], tuple[object, GraphMeta]] = {}
        self._unloaded: set[str] = set()
        self._lock = threading.Lock()

    def resolve(
        self, store: ModelStore, v2_name: str, version: str | None = None,
    ) -> tuple[ModelVersion, str]:
        """The served version and graph for a V2 name; ModelNotFound (404) when there is none."""
        model, graph = split_name(v2_name)
        try:
            mv = store.get(model, version or None)
        except UnknownModel as exc:  # the store speaks /v1; say it in V2 terms
            at = f" version {version[:40]!r}" if version else ""
            raise ModelNotFound(f"unknown model {v2_name!r}{at}: {exc.detail}") from exc
        if graph not in mv.manifest.graphs:
            raise ModelNotFound(f"unknown model {v2_name!r}: {model} v{mv.version} has graphs "
                                f"{sorted(mv.manifest.graphs)}")
        return mv, graph

    def metadata(self, runtime: Runtime, mv: ModelVersion, graph: str) -> GraphMeta:
        """Tensor metadata of the session serving this graph now (cached until the session changes)."""
        served = runtime.session(mv, graph)
        key = (mv.name, mv.version, graph)
        cached = self._meta.get(key)
        if cached is not None and cached[0] is served:
            return cached[1]
        ort_sess = getattr(served, "session", None)
        if ort_sess is not None and hasattr(ort_sess, "get_inputs"):
            meta = GraphMeta(_from_ort(ort_sess.get_inputs()), _from_ort(ort_sess.get_outputs()))
        else:
            spec = mv.manifest.graphs[graph]
            meta = GraphMeta(_from_spec(spec.inputs), _from_spec(spec.outputs))
        params = label_parameters(mv, graph)
        if params:  # the label input's metadata names the label set
            named = (("labels", params["labels"]),)
            meta = GraphMeta(tuple(replace(t, parameters=named) if t.name == params["label_input"] else t
                                   for t in meta.inputs), meta.outputs)
        self._meta[key] = (served, meta)
        return meta

    def names(self, store: ModelStore) -> list[tuple[str, ModelVersion]]:
        """(V2 name, version) for every graph of every served version."""
        return [(f"{mv.name}.{g}", mv) for mv in store.all_versions() for g in mv.manifest.graphs]

    # --- repository state (in memory only) --------------------------------------------------------
    def is_loaded(self, v2_name: str) -> bool:
        return v2_name not in self._unloaded

    def unload(self, v2_name: str) -> None:
        with self._lock:
            self._unloaded.add(v2_name)

    def load(self, v2_name: str) -> None:
        with self._lock:
            self._unloaded.discard(v2_name)
