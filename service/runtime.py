"""Inference sessions over the store's graphs, and `Runtime.infer`: the single choke point for inference.

One onnxruntime `InferenceSession` (CPU execution provider) per graph of every served version, and one per
twin of a graph (its int8 or fp16 file, `GraphSpec.twins`), created when the store is opened (the store calls
`Runtime.prepare` for each version it accepts, so a graph or twin that onnxruntime cannot load rejects that
version only). Sessions are keyed by (model, version, graph, precision), and so are the batchers: a batch
never mixes precisions. Which precision a request gets is service.precision's rule. `infer` hands the feeds
to the graph's batcher (service.batching), which runs the session on the event loop or in a worker thread
(onnxruntime releases the GIL). Batching and metrics plug in behind `infer`; every /v1 and /v2 inference
goes through it.

The optional TorchScript backend (`LATENTSERVE_BACKEND=torchscript`) imports torch lazily, in
`_TorchScriptSession`, and only then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from service import precision as precisions
from service.batching import BatcherPool, QueueFull, batch_config_from
from service.errors import InferenceFailed, InvalidInput, Overloaded
from service.metrics import InferenceStats
from service.settings import Settings
from service.store.manifest import GraphSpec, Precision, TensorSpec

if TYPE_CHECKING:
    from service.store.repository import ModelStore, ModelVersion

log = logging.getLogger(__name__)

SessionKey = tuple[str, int, str, str]  # (model, version, graph, precision)
FP32: Precision = "fp32"


def metrics_name(key: SessionKey) -> str:
    """The metrics' model label of a session: its V2 name `<model>.<graph>`, and `@<precision>` for a twin."""
    name = f"{key[0]}.{key[2]}"
    return name if key[3] == FP32 else f"{name}@{key[3]}"


class GraphSession(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class _OnnxSession:
    def __init__(self, path: str, settings: Settings) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = settings.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)  # type: ignore[no-any-return]


class _TorchScriptSession:
    """TorchScript twin of a graph; inputs are fed positionally in the manifest's order."""

    def __init__(
        self, path: str, input_names: list[str], output_names: list[str], settings: Settings
    ) -> None:
        import torch  # lazy: only this backend needs torch

        if settings.intra_op_threads > 0:
            torch.set_num_threads(settings.intra_op_threads)
        self._torch = torch
        self.module = torch.jit.load(path, map_location="cpu").eval()
        self.input_names, self.output_names = input_names, output_names

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(feeds[n]) for n in self.input_names))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach().cpu().numpy() for o in outs]


def _feed(spec: TensorSpec, size: dict[int, int]) -> np.ndarray:
    """Zeros of a tensor's signature: batch 1, other dynamic dims from `size` (by position), else 1."""
    return np.zeros([1] + [d if d > 0 else size.get(i, 1) for i, d in enumerate(spec.shape[1:], 1)],
                    dtype=np.float32)


def warm_up(mv: ModelVersion, sessions: dict[str, GraphSession]) -> dict[str, float]:
    """Run each new graph on a batch of its signature, so no client pays for the first run (onnxruntime
    allocates and plans on it: Triton's model_warmup); a second, warm run's seconds per input element are
    returned, the batcher's first estimate of the graph's cost. The encoder gets an image of the model's size
    and the decoder the encoder's code (a fully convolutional model's sizes follow from the image); a graph
    that cannot run its own signature refuses the version."""
    graphs = mv.manifest.graphs
    image = np.zeros((1, *mv.manifest.data.shape), dtype=np.float32)
    ls = mv.manifest.labels

    def feeds_of(gname: str, main: np.ndarray) -> dict[str, np.ndarray]:
        """`main` as the graph's data input; a conditional graph's label input one-hot class 0."""
        label = None if ls is None else ls.inputs.get(gname)
        data = [t for t in graphs[gname].inputs if t.name != label]
        feeds = {data[0].name: main} | {t.name: _feed(t, {}) for t in data[1:]}
        if ls is not None and label is not None:
            feeds[label] = np.eye(1, len(ls.names), dtype=np.float32)
        return feeds

    code = None
    took: dict[str, float] = {}
    for gname, sess in sessions.items():
        spec = graphs[gname]
        if gname in ("encoder", "critic"):
            feeds = feeds_of(gname, image)
        elif gname == "decoder" and code is not None:
            feeds = feeds_of(gname, code)
        else:
            feeds = {t.name: _feed(t, {}) for t in spec.inputs}
        if gname == "decoder" and code is None and "encoder" in graphs and "encoder" in sessions:
            code = sessions["encoder"].run(feeds_of("encoder", image))[0]
            feeds = feeds_of(gname, code)
        try:
            out = sess.run(feeds)
            start = time.perf_counter()
            sess.run(feeds)
            took[gname] = (time.perf_counter() - start) / max(sum(a.size for a in feeds.values()), 1)
        except Exception as exc:
            raise ValueError(f"graph {gname!r} fails on a batch of its own signature: {exc}") from exc
        if gname == "encoder":
            code = out[0]
    return took


class Runtime:
    """Sessions keyed by (model, version, graph), and the async `infer` every operation awaits."""

    def __init__(self, settings: Settings, stats: InferenceStats | None = None,
                 alone: Callable[[], bool] | None = None) -> None:
        """`alone()` says whether the current request is the only one in the server (see batching)."""
        self.settings = settings
        self._sessions: dict[SessionKey, GraphSession] = {}
        # sha256 of the file each session was built from: a version folder replaced in place under the same
        # number (e.g. `zoo --fresh`) has new digests, so its sessions are rebuilt instead of served stale.
        self._digests: dict[SessionKey, str] = {}
        self._warm_s: dict[SessionKey, float] = {}  # the warm-up's seconds per input element, per graph
        self.stats = stats or InferenceStats()  # Triton-named metrics, labelled by V2 name <model>.<graph>
        # One queue per graph, labelled by V2 name and version; a replaced session gets a fresh one.
        self._batchers = BatcherPool(batch_config_from(settings), self.stats, alone,
                                     labels=lambda key: (metrics_name(key), str(key[1])))

    def files(self, spec: GraphSpec) -> dict[Precision, str]:
        """The file each precision of a graph runs from on this backend: TorchScript serves FP32 only."""
        if self.settings.backend == "torchscript":
            return {FP32: spec.torchscript or ""}
        return {FP32: spec.file} | {p: t.file for p, t in (spec.twins or {}).items()}

    def prepare(self, mv: ModelVersion) -> None:
        """Create the sessions of every graph of `mv`, and of its twins (idempotent). Raises when a graph or
        twin cannot be loaded, and then changes nothing: a version that served keeps its sessions
        (service.store.repository)."""
        made: dict[SessionKey, tuple[GraphSession, str]] = {}
        for gname, spec in mv.manifest.graphs.items():
            for prec, file in self.files(spec).items():
                key: SessionKey = (mv.name, mv.version, gname, prec)
                digest = mv.manifest.files.get(file, "")
                if key in self._sessions and self._digests.get(key) == digest:
                    continue
                got = self._make_session(mv, gname, prec, file)
                ins = [t.name for t in spec.inputs]
                outs = [t.name for t in spec.outputs]
                if got.input_names != ins or got.output_names != outs:
                    raise ValueError(
                        f"graph {gname!r}{'' if prec == FP32 else f' ({prec} twin)'}: file has inputs "
                        f"{got.input_names} outputs {got.output_names}, manifest says {ins} {outs}"
                    )
                made[key] = (got, digest)
        took: dict[SessionKey, float] = {}
        if made and self.settings.warmup:  # per precision: a twin decoder gets its twin encoder's code
            for at in dict.fromkeys(key[3] for key in made):
                runs = warm_up(mv, {key[2]: got for key, (got, _) in made.items() if key[3] == at})
                took |= {(mv.name, mv.version, g, at): s for g, s in runs.items()}
        for key, (got, digest) in made.items():
            self._sessions[key] = got
            self._digests[key] = digest
            if key in took:
                self._warm_s[key] = took[key]

    def _make_session(self, mv: ModelVersion, gname: str, prec: Precision, file: str) -> GraphSession:
        spec = mv.manifest.graphs[gname]
        if self.settings.backend == "torchscript":
            if spec.torchscript is None:
                raise ValueError(f"graph {gname!r} has no TorchScript twin")
            return _TorchScriptSession(
                str(mv.file(spec.torchscript)),
                [t.name for t in spec.inputs],
                [t.name for t in spec.outputs],
                self.settings,
            )
        try:
            return _OnnxSession(str(mv.file(file)), self.settings)
        except Exception as exc:  # onnxruntime raises its own exception types; say which graph failed
            what = "" if prec == FP32 else f" ({prec} twin)"
            raise ValueError(f"graph {gname!r}{what}: onnxruntime cannot load {file}: {exc}") from exc

    def retain(self, store: ModelStore) -> None:
        """Drop sessions of versions the store no longer serves (after a reload)."""
        keep = {(mv.name, mv.version) for mv in store.all_versions()}
        for key in [k for k in self._sessions if (k[0], k[1]) not in keep]:
            del self._sessions[key]
            self._digests.pop(key, None)
            self._warm_s.pop(key, None)

    def session(self, mv: ModelVersion, graph: str, precision: Precision = FP32) -> GraphSession:
        try:
            return self._sessions[(mv.name, mv.version, graph, precision)]
        except KeyError:
            at = "" if precision == FP32 else f" at {precision}"
            raise InferenceFailed(f"no session for graph {graph!r} of {mv.name} v{mv.version}{at}") from None

    def precision(self, mv: ModelVersion, asked: object = None, graphs: Iterable[str] | None = None
                  ) -> Precision:
        """The precision a request to `mv` (or to `graphs` of it) runs at: service.precision's rule, with this
        server's default and backend."""
        return precisions.choose(mv, asked, self.settings.precision, graphs, self.settings.backend)

    def precisions(self, mv: ModelVersion, graph: str | None = None) -> list[Precision]:
        """What this server serves of `mv` (or of one graph of it): "fp32", and twins on the onnx backend."""
        return precisions.available(mv, None if graph is None else (graph,), self.settings.backend)

    def at(self, precision: Precision | None) -> AtPrecision:
        """This runtime as a runner (service.ops.Runner) whose every inference runs at `precision`."""
        return AtPrecision(self, precision)

    def keys(self) -> Iterable[SessionKey]:
        return list(self._sessions)

    async def infer(
        self, mv: ModelVersion, graph: str, feeds: dict[str, np.ndarray], precision: Precision | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one graph on `feeds` (batched, inline or in a worker thread); outputs by name. The one door to
        inference. `precision` None: the model's default (the setting, where the model has that twin)."""
        if precision is None:  # the setting's, where the model has that twin (FP32: nothing to look up)
            precision = FP32 if self.settings.precision == FP32 else self.precision(mv)
        sess = self.session(mv, graph, precision)
        key = (mv.name, mv.version, graph, precision)
        batcher = self._batchers.get(key, sess, self._warm_s.get(key))
        label, version = batcher.model, batcher.version
        start = time.perf_counter()
        for name in sess.input_names:
            if name not in feeds:
                self.stats.request(label, version, 0.0, reason="OTHER")
                missing = sorted(set(sess.input_names) - set(feeds))
                raise InvalidInput(f"graph {graph!r} needs inputs {missing}")
        try:  # batching off is the same bounded queue with batches of one (service.batching)
            out = await batcher.infer(feeds)
        except QueueFull as exc:
            self.stats.request(label, version, time.perf_counter() - start, reason="REJECTED")
            raise Overloaded(str(exc), exc.retry_after_s) from exc
        except Exception as exc:
            self.stats.request(label, version, time.perf_counter() - start, reason="BACKEND")
            log.warning("inference failed on %s v%s %s: %s", mv.name, mv.version, graph, exc)
            raise InferenceFailed(f"{graph} of {mv.name} v{mv.version} failed: {type(exc).__name__}") from exc
        self.stats.request(label, version, time.perf_counter() - start)
        return out


class AtPrecision:
    """A runtime whose inferences all run at one precision (None: the model's default): what an operation
    gets as its runner, so that every graph of one request runs at the precision the request chose."""

    __slots__ = ("precision", "runtime")

    def __init__(self, runtime: Runtime, precision: Precision | None) -> None:
        self.runtime, self.precision = runtime, precision

    async def infer(self, mv: ModelVersion, graph: str, feeds: dict[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
        return await self.runtime.infer(mv, graph, feeds, self.precision)
