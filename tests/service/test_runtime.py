"""Runtime's onnxruntime sessions, and infer's checks and cached lookups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from storebuilder import build_model, run

from service.errors import InferenceFailed, InvalidInput
from service.runtime import Runtime, _OnnxSession
from service.settings import Settings
from service.store.repository import ModelStore


def _decoder(store: ModelStore) -> Path:
    mv = store.get("m")
    return mv.file(mv.manifest.graphs["decoder"].file)


@pytest.fixture
def opened(tmp_path: Path) -> tuple[Runtime, ModelStore]:
    build_model(tmp_path, "m", 1, seed=3)
    rt = Runtime(Settings(store=tmp_path))
    return rt, ModelStore.open(tmp_path, check=rt.prepare)


def test_session_run_equals_onnxruntime(opened: tuple[Runtime, ModelStore]) -> None:
    rt, store = opened
    path = str(_decoder(store))
    ours = _OnnxSession(path, Settings())
    public = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    z = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    want = public.run(None, {"z": z})
    assert [o.name for o in public.get_outputs()] == ours.output_names
    for a, b in zip(ours.run({"z": z}), want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_session_run_reports_bad_feeds(opened: tuple[Runtime, ModelStore]) -> None:
    _, store = opened
    ours = _OnnxSession(str(_decoder(store)), Settings())
    with pytest.raises(Exception, match="(?i)invalid|unexpected|type"):
        ours.run({"z": np.zeros((1, 4), np.float64)})  # wrong dtype: onnxruntime's own error


def test_infer_checks_inputs_and_names_missing_graphs(opened: tuple[Runtime, ModelStore]) -> None:
    """(A version folder replaced in place: tests/service/test_runtime_republish.py.)"""
    rt, store = opened
    mv = store.get("m")
    with pytest.raises(InvalidInput, match="needs inputs"):
        run(rt.infer(mv, "decoder", {"nope": np.zeros((1, 4), np.float32)}))
    with pytest.raises(InferenceFailed, match="no session"):
        run(rt.infer(mv, "critic", {"z": np.zeros((1, 4), np.float32)}))
    z = {"z": np.zeros((2, 4), np.float32)}
    first = run(rt.infer(mv, "decoder", z))["x_hat"]
    assert first.shape[0] == 2
    assert run(rt.infer(mv, "decoder", z))["x_hat"].tobytes() == first.tobytes()


def test_each_graph_runs_once_before_it_serves(tmp_path: Path) -> None:
    """The warm-up (Triton's model_warmup): prepare runs every graph on a batch of its signature, and a graph
    that cannot run its own signature refuses the version."""
    from storebuilder import build_spatial_model

    build_model(tmp_path, "m", 1, kind="gan", seed=3)
    build_spatial_model(tmp_path, "s", 1)
    calls: list[tuple[str, tuple[int, ...]]] = []
    real = _OnnxSession.run

    def counting(self: _OnnxSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append((self.input_names[0], next(iter(feeds.values())).shape))
        return real(self, feeds)

    _OnnxSession.run = counting  # type: ignore[method-assign]
    try:
        rt = Runtime(Settings(store=tmp_path))
        store = ModelStore.open(tmp_path, check=rt.prepare)
    finally:
        _OnnxSession.run = real  # type: ignore[method-assign]
    assert store.names() == ["m", "s"]
    shapes = sorted(s for _, s in calls)
    assert (1, 1, 8, 8) in shapes and (1, 4) in shapes  # the GAN's image graphs and its decoder
    assert (1, 1, 16, 16) in shapes and (1, 1, 8, 8) in shapes  # the spatial model: its crop, then its code
    rt.prepare(store.get("m"))  # idempotent: nothing new, no second warm-up
    assert len(calls) == len(shapes)


def test_a_graph_that_fails_its_own_signature_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    vdir = build_model(tmp_path, "m", 1, seed=3)
    model = onnx.load(str(vdir / "decoder.onnx"))
    model.graph.node[-1].input[1] = "bad_shape"  # a reshape to a shape that cannot hold the output
    model.graph.initializer.append(helper.make_tensor("bad_shape", TensorProto.INT64, [2], [3, 5]))
    onnx.save(model, str(vdir / "decoder.onnx"))
    from service.store.layout import sha256_file

    manifest = (vdir / "manifest.json").read_text()
    import json

    doc = json.loads(manifest)
    doc["files"]["decoder.onnx"] = sha256_file(vdir / "decoder.onnx")
    (vdir / "manifest.json").write_text(json.dumps(doc))
    rt = Runtime(Settings(store=tmp_path))
    store = ModelStore.open(tmp_path, check=rt.prepare)
    assert store.names() == [] and "own signature" in store.problems[0]["reason"]
