"""training.quantize: the graph passes keep the function, twins are made, checked and published (by the
pipeline and by `quantize` on a published version), and the service serves them. No timing is asserted:
bench/quantized.py measures the speed."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.runtime import Runtime
from service.settings import Settings
from service.store.layout import version_numbers
from service.store.manifest import Manifest
from service.store.repository import ModelStore
from training import quantize
from training.config import ConfigError, TrainConfig, typed_fields

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def save(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x: list[object], y: list[object],
         path: Path) -> Path:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    return quantize.run(quantize.session(path), x)[0]


def test_a_conv_transpose_becomes_phase_convs_computing_the_same(tmp_path: Path) -> None:
    """k4 s2 p1 (and k3 s1 p1 is no upsampler: left alone), 16 outputs; a 4-output one is kept float."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((8, 16, 4, 4)).astype(np.float32),
             "b1": rng.standard_normal(16).astype(np.float32),
             "w2": rng.standard_normal((16, 4, 4, 4)).astype(np.float32)}
    nodes = [helper.make_node("ConvTranspose", ["x", "w1", "b1"], ["h"], name="up1", kernel_shape=[4, 4],
                              strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["h", "w2"], ["y"], name="up2", kernel_shape=[4, 4],
                              strides=[2, 2], pads=[1, 1, 1, 1])]
    src = save(nodes, inits, ["n", 8, 5, 7], ["n", 4, 20, 28], tmp_path / "ct.onnx")
    model = onnx.load(str(src))
    done, kept = quantize.phase_conv_transposes(model)
    assert (done, kept) == (1, ["up2"])  # up2 has 4 < MIN_PHASE_CHANNELS outputs
    assert [n.op_type for n in model.graph.node].count("Conv") == 4
    onnx.save(model, str(tmp_path / "phased.onnx"))
    x = rng.standard_normal((3, 8, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(outputs(tmp_path / "phased.onnx", x), outputs(src, x), atol=1e-4)


def qdq_model(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Pad(edge) -> Conv -> LeakyRelu -> nearest x2 Resize -> Pad(edge) -> Conv, quantized (QDQ)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(1)
    inits = {"w1": (0.3 * rng.standard_normal((8, 1, 3, 3))).astype(np.float32),
             "w2": (0.3 * rng.standard_normal((1, 8, 3, 3))).astype(np.float32),
             "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
             "scales": np.array([1, 1, 2, 2], np.float32)}
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p1"], mode="edge"),
             helper.make_node("Conv", ["p1", "w1"], ["c1"]),
             helper.make_node("LeakyRelu", ["c1"], ["a1"], alpha=0.2),
             helper.make_node("Resize", ["a1", "", "scales"], ["u1"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("Pad", ["u1", "pads"], ["p2"], mode="edge"),
             helper.make_node("Conv", ["p2", "w2"], ["y"])]
    src = save(nodes, inits, ["n", 1, "h", "w"], ["n", 1, "h2", "w2"], tmp_path / "f32.onnx")
    x = rng.random((16, 1, 12, 20), dtype=np.float32)
    quantize_static(str(src), str(tmp_path / "qdq.onnx"), quantize._Reader("x", x), per_channel=True,
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return tmp_path / "qdq.onnx", x


def test_the_qdq_passes_run_pad_and_upsample_on_uint8_with_the_same_outputs(tmp_path: Path) -> None:
    path, x = qdq_model(tmp_path)
    model = onnx.load(str(path))
    assert (quantize.fold_pads(model), quantize.fold_upsamples(model)) == (2, 1)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "folded.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "Resize" not in ops and {"Unsqueeze", "Expand"} <= set(ops)
    pads = [n for n in model.graph.node if n.op_type == "Pad"]
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert all(producers.get(p.input[0]) != "DequantizeLinear" for p in pads)  # they read uint8 now
    for shape in ((16, 1, 12, 20), (2, 1, 8, 6)):  # any H and W
        x = np.random.default_rng(2).random(shape, dtype=np.float32)
        np.testing.assert_array_equal(outputs(tmp_path / "folded.onnx", x), outputs(path, x))


def test_twins_config_is_typed() -> None:
    typed = typed_fields(TrainConfig, {"twins": ["int8", "fp16"]}, "train")
    assert TrainConfig(**typed).twins == ("int8", "fp16")
    with pytest.raises(ConfigError, match="twice"):
        TrainConfig(twins=("int8", "int8"))
    with pytest.raises(ConfigError, match="not one of"):
        typed_fields(TrainConfig, {"twins": ["int4"]}, "train")


@pytest.fixture(scope="module")
def conv_vae(tmp_path_factory: pytest.TempPathFactory, tiny_spec) -> Path:  # noqa: ANN001
    """A conv VAE on synthetic 28x28 images (a few steps), published with int8 twins by the pipeline."""
    from training.data import synthetic
    from training.pipeline import run

    tmp = tmp_path_factory.mktemp("twins")
    spec = tiny_spec("vae", tmp / "store", tmp / "run", name="conv-twins", twins=("int8",), steps_per_epoch=4,
                     split=(0.8, 0.2, 0.0))
    spec.model.clear()
    spec.model.update(backbone="conv", channels=(16, 32), latent_dim=8)
    res = run(spec, synthetic(n=200, shape=(1, 28, 28)))
    assert res.path is not None
    return res.path


def test_the_pipeline_publishes_int8_twins_with_their_checks(conv_vae: Path) -> None:
    m = Manifest.model_validate_json((conv_vae / "manifest.json").read_text())
    assert m.precisions() == ["fp32", "int8"]
    assert m.training["config"]["twins"] == ["int8"]
    for g in ("encoder", "decoder"):
        twin = m.graphs[g].twins["int8"]  # type: ignore[index]
        assert twin.file == f"{g}.int8.onnx" and twin.file in m.files and (conv_vae / twin.file).is_file()
        assert "training images of synthetic" in twin.method and "validation images" in twin.check.measured_on
        assert twin.check.snr_db >= quantize.MIN_SNR_DB and twin.check.n == 40
    assert "ConvTranspose as phase Convs: 1" in m.graphs["decoder"].twins["int8"].method  # type: ignore[index]
    assert "float ConvTranspose kept: 1" in m.graphs["decoder"].twins["int8"].method  # type: ignore[index]
    assert abs(float(m.metrics["int8_recon_psnr_loss_db"])) <= quantize.MAX_PSNR_LOSS_DB
    assert {"int8_score_rank_corr", "int8_flag_agreement"} <= set(m.metrics)


def test_the_service_serves_the_published_twin_within_its_check(conv_vae: Path) -> None:
    root = conv_vae.parent.parent
    rt = Runtime(Settings(store=root))
    store = ModelStore.open(root, check=rt.prepare)
    mv = store.get("conv-twins")
    from training.data import synthetic

    z = outputs(conv_vae / "encoder.onnx", synthetic(n=6, shape=(1, 28, 28), seed=5).x)  # codes of images
    got = {p: asyncio.run(rt.infer(mv, "decoder", {"z": z}, p))["x_hat"] for p in ("fp32", "int8")}
    np.testing.assert_allclose(got["int8"], outputs(conv_vae / "decoder.int8.onnx", z), atol=1e-6)
    check = mv.manifest.graphs["decoder"].twins["int8"].check  # type: ignore[index]
    assert 0 < np.abs(got["int8"] - got["fp32"]).max() <= 2 * check.max_abs_diff


def test_quantize_publishes_a_new_version_with_twins(tiny_store: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(tiny_store / "ae-tiny", root / "ae-tiny")
    path = quantize.publish_twins(root, "ae-tiny", ["int8"])
    assert path == root / "ae-tiny" / "2" and version_numbers(root / "ae-tiny") == [1, 2]
    old = Manifest.model_validate_json((root / "ae-tiny" / "1" / "manifest.json").read_text())
    new = Manifest.model_validate_json((path / "manifest.json").read_text())
    assert new.version == 2 and new.precisions() == ["fp32", "int8"] and old.precisions() == ["fp32"]
    assert {k: v for k, v in new.files.items() if ".int8." not in k} == old.files  # the same graphs
    assert new.training["twins_from_version"] == 1 and new.training["config"]["twins"] == ["int8"]
    assert new.anomaly == old.anomaly and new.latent == old.latent
    rt = Runtime(Settings(store=root))
    store = ModelStore.open(root, check=rt.prepare)
    assert store.versions("ae-tiny") == [1, 2] and not store.problems
    assert ("ae-tiny", 2, "decoder", "int8") in set(rt.keys())


def test_a_twin_that_misses_its_bound_is_not_published(tiny_store: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "store"
    shutil.copytree(tiny_store / "ae-tiny", root / "ae-tiny")
    monkeypatch.setattr(quantize, "MIN_SNR_DB", 500.0)
    with caplog.at_level(logging.WARNING, logger="training.quantize"):
        path = quantize.publish_twins(root, "ae-tiny", ["int8"])
    new = json.loads((path / "manifest.json").read_text())
    assert all(g.get("twins") is None for g in new["graphs"].values())
    assert not list(path.glob("*.int8.onnx")) and "int8 not published" in caplog.text
