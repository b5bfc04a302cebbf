"""The Triton export: every config.pbtxt is a valid Triton ModelConfig that matches its ONNX graph."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from deploykit import MODEL, PYTHON, REPO, publish

from service.store import sha256_file
from training.triton import ExportError, TritonOptions, config_pbtxt, export_repository

onnx = pytest.importorskip("onnx", reason="the export test inspects graphs with onnx (dev extra)")
model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="Triton's ModelConfig message ships with tritonclient[grpc]"
)
from google.protobuf import text_format  # noqa: E402  (protobuf comes with tritonclient[grpc])

FP32 = model_config_pb2.DataType.Value("TYPE_FP32")


def _parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _onnx_dims(vi) -> list[int | str]:
    dims = vi.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def _assert_matches(cfg, model_onnx: Path) -> None:
    """Names, datatypes and dims (batch excluded) of the config agree with the ONNX graph: a fixed ONNX
    dim equals the config's, a symbolic one matches any (Triton's own rule); a config dim may be -1
    (variable) only where the graph's is symbolic (a fully convolutional model's H and W). Running the graph
    on a batch (variable dims at 32, a multiple of every shipped model's) gives the config's dims, -1 any."""
    ort = pytest.importorskip("onnxruntime")
    g = onnx.load(str(model_onnx)).graph
    inits = {i.name for i in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in inits]
    for cfg_tensors, onnx_tensors in ((cfg.input, graph_inputs), (cfg.output, g.output)):
        assert [t.name for t in cfg_tensors] == [t.name for t in onnx_tensors]
        for ct, ot in zip(cfg_tensors, onnx_tensors, strict=True):
            assert ct.data_type == FP32
            assert ot.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            dims = _onnx_dims(ot)
            assert isinstance(dims[0], str), f"{ot.name}: batch dim must be dynamic in the ONNX graph"
            assert len(ct.dims) == len(dims) - 1
            for c, d in zip(ct.dims, dims[1:], strict=True):
                ok = (c == -1 or c > 0) if isinstance(d, str) else (c == d > 0)
                assert ok, (ot.name, list(ct.dims), dims)
    sess = ort.InferenceSession(str(model_onnx))
    feeds = {t.name: np.zeros((3, *(d if d > 0 else 32 for d in t.dims)), np.float32) for t in cfg.input}
    outs = sess.run([t.name for t in cfg.output], feeds)
    for o, t in zip(outs, cfg.output, strict=True):
        assert o.shape[0] == 3 and len(o.shape) == len(t.dims) + 1, (o.shape, list(t.dims))
        assert all(c in (-1, n) for c, n in zip(t.dims, o.shape[1:], strict=True)), (o.shape, list(t.dims))


def test_export_writes_a_valid_triton_repository(onnx_store: Path, tmp_path: Path) -> None:
    publish(onnx_store, MODEL, 2)
    out = tmp_path / "triton"
    done = export_repository(onnx_store, out, TritonOptions(max_batch_size=32, max_queue_delay_us=500))

    assert sorted(e.name for e in done) == [f"{MODEL}.decoder", f"{MODEL}.encoder"]
    # no staging or old folder left behind
    assert sorted(p.name for p in out.iterdir()) == [f"{MODEL}.decoder", f"{MODEL}.encoder"]
    for graph in ("encoder", "decoder"):
        model_dir = out / f"{MODEL}.{graph}"
        cfg = _parse(model_dir / "config.pbtxt")
        assert cfg.name == model_dir.name
        assert cfg.platform == "onnxruntime_onnx"
        assert cfg.max_batch_size == 32
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
        assert cfg.version_policy.HasField("all")
        assert sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir()) == [1, 2]
        for v in (1, 2):
            exported = model_dir / str(v) / "model.onnx"
            assert sha256_file(exported) == sha256_file(onnx_store / MODEL / str(v) / f"{graph}.onnx")
            _assert_matches(cfg, exported)


def test_exported_graph_runs_with_the_configured_batch(onnx_store: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "triton"
    export_repository(onnx_store, out, TritonOptions(max_batch_size=16))
    cfg = _parse(out / f"{MODEL}.decoder" / "config.pbtxt")
    sess = ort.InferenceSession(str(out / f"{MODEL}.decoder" / "1" / "model.onnx"))
    z = np.zeros((cfg.max_batch_size, *cfg.input[0].dims), np.float32)
    (y,) = sess.run([cfg.output[0].name], {cfg.input[0].name: z})
    assert y.shape == (cfg.max_batch_size, *cfg.output[0].dims)


def test_older_version_with_another_signature_is_left_out(onnx_store: Path, tmp_path: Path) -> None:
    publish(onnx_store, MODEL, 2, latent=3)  # a retrain with another latent dim: Triton allows one signature
    out = tmp_path / "triton"
    export_repository(onnx_store, out)
    cfg = _parse(out / f"{MODEL}.decoder" / "config.pbtxt")
    assert list(cfg.input[0].dims) == [3]
    assert sorted(p.name for p in (out / f"{MODEL}.decoder").iterdir() if p.is_dir()) == ["2"]


def test_latest_only_and_re_export_replaces(onnx_store: Path, tmp_path: Path) -> None:
    publish(onnx_store, MODEL, 2)
    out = tmp_path / "triton"
    export_repository(onnx_store, out)
    export_repository(onnx_store, out, TritonOptions(all_versions=False))
    model_dir = out / f"{MODEL}.encoder"
    assert sorted(p.name for p in model_dir.iterdir()) == ["2", "config.pbtxt"]
    assert _parse(model_dir / "config.pbtxt").version_policy.latest.num_versions == 1


def test_corrupt_file_is_refused_and_nothing_half_written(onnx_store: Path, tmp_path: Path) -> None:
    (onnx_store / MODEL / "1" / "decoder.onnx").write_bytes(b"not the published graph")
    out = tmp_path / "triton"
    with pytest.raises(ExportError, match="sha256"):
        export_repository(onnx_store, out)
    assert not any(p.name.startswith(".staging") for p in out.iterdir())
    assert not (out / f"{MODEL}.decoder").exists()


def test_empty_store_and_unknown_model_are_errors(tmp_path: Path, onnx_store: Path) -> None:
    with pytest.raises(ExportError, match="nothing to export"):
        export_repository(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ExportError, match="no-such-model"):
        export_repository(onnx_store, tmp_path / "out", models=["no-such-model"])


def test_config_text_is_stable() -> None:
    """The text the operator reads: dims exclude the batch, names are the graph's."""
    from service.store import GraphSpec, TensorSpec

    g = GraphSpec(file="decoder.onnx", inputs=[TensorSpec(name="z", shape=[-1, 16])],
                  outputs=[TensorSpec(name="x_hat", shape=[-1, 1, 28, 28])])
    text = config_pbtxt("vae-mnist.decoder", g, TritonOptions(max_batch_size=8, max_queue_delay_us=100))
    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert (cfg.name, cfg.max_batch_size, list(cfg.input[0].dims), list(cfg.output[0].dims)) == (
        "vae-mnist.decoder", 8, [16], [1, 28, 28])


def test_max_batch_size_0_means_no_batching_and_full_dims() -> None:
    """Triton's rule: with max_batch_size 0 the dims are the whole shape and dynamic batching is absent."""
    from service.store import GraphSpec, TensorSpec

    g = GraphSpec(file="decoder.onnx", inputs=[TensorSpec(name="z", shape=[-1, 16])],
                  outputs=[TensorSpec(name="x_hat", shape=[-1, 1, 28, 28])])
    cfg = text_format.Parse(config_pbtxt("m.decoder", g, TritonOptions(max_batch_size=0)),
                            model_config_pb2.ModelConfig())
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert (list(cfg.input[0].dims), list(cfg.output[0].dims)) == ([-1, 16], [-1, 1, 28, 28])
    for bad in ({"max_batch_size": -1}, {"max_queue_delay_us": -5}):
        with pytest.raises(ExportError, match="must be >= 0"):
            TritonOptions(**bad)


def test_cli_export_triton(onnx_store: Path, tmp_path: Path) -> None:
    """`python -m training export-triton` is the documented entry point (the trainer CLI dispatches to it)."""
    out = tmp_path / "triton"
    cmd = [PYTHON, "-m", "training", "export-triton", "--store", str(onnx_store), "--out", str(out)]
    r = subprocess.run([*cmd, "--max-batch-size", "4"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _parse(out / f"{MODEL}.encoder" / "config.pbtxt").max_batch_size == 4
    shutil.rmtree(out)
    r = subprocess.run([PYTHON, "-m", "training", "export-triton", "--store", str(tmp_path / "nope"),
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for flags, message in ((["--out", str(a_file)], "cannot write the repository"),
                           (["--out", str(out), "--max-batch-size", "-1"], "must be >= 0")):
        r = subprocess.run([*cmd[:-2], *flags], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def _docs_snippet() -> str:
    text = (REPO / "README.md").read_text()
    marker = text.index("test_triton_export.py runs this block")
    start = text.index("```python\n", marker) + len("```python\n")
    return text[start:text.index("```", start)]


@pytest.mark.e2e
@pytest.mark.slow
def test_docs_tritonclient_snippet_runs_against_us_and_matches_the_export(
    onnx_store: Path, tmp_path: Path, start_replica: Callable
) -> None:
    """The documented tritonclient snippet runs unchanged (but for host and model) against a live replica,
    and the tensor names and dims it reads from our V2 metadata are those of the Triton export."""
    pytest.importorskip("tritonclient.http")
    _, url = start_replica(onnx_store, "v2")
    code = _docs_snippet()
    assert 'url="localhost:8000"' in code and 'model = "vae-digits.decoder"' in code
    code = code.replace('url="localhost:8000"', f'url="{url.removeprefix("http://")}"')
    code = code.replace('model = "vae-digits.decoder"', f'model = "{MODEL}.decoder"')
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    assert scope["images"].shape == (4, 1, 8, 8)
    assert float(scope["images"].min()) >= 0.0 and float(scope["images"].max()) <= 1.0

    export_repository(onnx_store, tmp_path / "triton")
    cfg = _parse(tmp_path / "triton" / f"{MODEL}.decoder" / "config.pbtxt")
    z_spec, x_spec = scope["z_spec"], scope["x_spec"]
    assert (z_spec["name"], x_spec["name"]) == (cfg.input[0].name, cfg.output[0].name)
    assert z_spec["datatype"] == "FP32" and x_spec["datatype"] == "FP32"
    assert z_spec["shape"][1:] == list(cfg.input[0].dims) and x_spec["shape"][1:] == list(cfg.output[0].dims)
    assert z_spec["shape"][0] == -1  # the batch dim, as Triton reports it for max_batch_size > 0


def test_shipped_zoo_exports_to_a_valid_repository(tmp_path: Path) -> None:
    """The real store (torch-exported graphs, some with symbolic non-batch dims) exports and checks out."""
    store = REPO / "models_store"
    if not any(p.is_dir() and not p.name.startswith(".") for p in store.iterdir()):
        pytest.skip("no shipped models in models_store (make models builds them)")
    done = export_repository(store, tmp_path / "triton")
    assert done
    for e in done:
        cfg = _parse(e.path / "config.pbtxt")
        assert cfg.name == e.name
        for v in e.versions:
            _assert_matches(cfg, e.path / str(v) / "model.onnx")


def test_a_manifest_that_lies_about_the_graph_is_refused(onnx_store: Path, tmp_path: Path) -> None:
    from service.store import GraphSpec, TensorSpec
    from training.triton import check_onnx_signature

    graph = onnx_store / MODEL / "1" / "decoder.onnx"
    good = GraphSpec(file="decoder.onnx", inputs=[TensorSpec(name="z", shape=[-1, 2])],
                     outputs=[TensorSpec(name="x_hat", shape=[-1, 1, 8, 8])])
    check_onnx_signature("ok", graph, good)
    for bad in (good.model_copy(update={"inputs": [TensorSpec(name="latent", shape=[-1, 2])]}),
                good.model_copy(update={"inputs": [TensorSpec(name="z", shape=[-1, 3])]}),
                good.model_copy(update={"outputs": [TensorSpec(name="x_hat", shape=[-1, 64])]})):
        with pytest.raises(ExportError, match="in the manifest"):
            check_onnx_signature("bad", graph, bad)
