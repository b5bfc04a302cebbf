"""Export of every registered family to ONNX + TorchScript, and the parity gate that guards publishing."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training import export
from training.data import synthetic
from training.export import ParityError, export_model
from training.models import REGISTRY, build
from training.models.base import GenerativeModel

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def tiny(name: str) -> GenerativeModel:
    torch.manual_seed(0)
    return build(name, hidden=(32, 16), latent_dim=4).eval()


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    return synthetic(n=40, seed=2).x


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_family_exports_with_parity(name: str, tmp_path: Path, real: np.ndarray) -> None:
    model = tiny(name)
    out = export_model(model, tmp_path, real, real_labels=synthetic(n=40, seed=2).y)
    assert "decoder" in out.graphs
    assert set(out.graphs) == set(model.export_graphs())
    assert float(out.metrics["parity_onnx_max_abs_diff"]) <= 1e-4
    for gname, spec in out.graphs.items():
        proto = onnx.load(tmp_path / spec.file)
        onnx.checker.check_model(proto)
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
        batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param and not batch_dim.dim_value, f"{gname}: batch dimension is not dynamic"
        assert all(t.shape[0] == -1 for t in [*spec.inputs, *spec.outputs])
        assert [i.name for i in proto.graph.input] == [t.name for t in spec.inputs]
        assert [o.name for o in proto.graph.output] == [t.name for t in spec.outputs]
        # onnxruntime at a batch size never seen at export time, against torch (with a soft label for a
        # labelled graph: the second input, (N, K))
        sess = ort.InferenceSession(str(tmp_path / spec.file), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {t.name: rng.random((5, *t.shape[1:]), dtype=np.float32) for t in spec.inputs}
        got = sess.run(None, feeds)
        args = [torch.from_numpy(a) for a in feeds.values()]
        with torch.no_grad():
            ref = model.export_graphs()[gname].module(*args)
        ref = ref if isinstance(ref, (tuple, list)) else [ref]
        for r, g in zip(ref, got, strict=True):
            assert g.shape == tuple(r.shape) and g.shape[0] == 5
            np.testing.assert_allclose(g, r.numpy(), atol=1e-4)
        # the TorchScript twin loads without the model's Python code and agrees too
        assert spec.torchscript is not None
        ts = torch.jit.load(str(tmp_path / spec.torchscript))
        ts_out = ts(*args)
        ts_out = ts_out if isinstance(ts_out, (tuple, list)) else [ts_out]
        np.testing.assert_allclose(ts_out[0].detach().numpy(), ref[0].numpy(), atol=1e-5)


def test_sabotaged_export_fails_the_gate(tmp_path: Path, real: np.ndarray,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An ONNX file whose weights drifted from the torch module is refused with a clear message."""
    real_export = export._onnx_export

    def drifted(module: torch.nn.Module, example: torch.Tensor, path: Path, g: object) -> str:
        bad = copy.deepcopy(module)
        with torch.no_grad():
            for p in bad.parameters():
                p.add_(1e-2)
        return real_export(bad, example, path, g)  # type: ignore[arg-type]

    monkeypatch.setattr(export, "_onnx_export", drifted)
    with pytest.raises(ParityError, match=r"onnxruntime differs from torch by .* > 0.0001"):
        export_model(tiny("ae"), tmp_path, real)


def test_parity_checks_real_and_random_inputs_at_two_batch_sizes(real: np.ndarray) -> None:
    model = tiny("ae")
    graphs = model.export_graphs()
    labels = [label for label, _ in export.parity_inputs("decoder", graphs["decoder"], model, real)]
    assert labels == ["random[1]", "random[7]", "real[1]", "real[32]"]
    enc_cases = export.parity_inputs("encoder", graphs["encoder"], model, real)
    assert [tuple(x.shape) for _, (x,) in enc_cases] == [(1, 1, 8, 8), (7, 1, 8, 8), (1, 1, 8, 8),
                                                          (32, 1, 8, 8)]
    np.testing.assert_array_equal(enc_cases[3][1][0].numpy(), real[:32])


@pytest.mark.slow
def test_falls_back_to_the_dynamo_exporter(tmp_path: Path, real: np.ndarray,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """If the TorchScript-based ONNX exporter goes away, the torch.export one takes over and passes parity."""
    original = torch.onnx.export

    def no_legacy(*args: object, **kwargs: object) -> object:
        if kwargs.get("dynamo") is False:
            raise RuntimeError("legacy exporter removed")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.onnx, "export", no_legacy)
    out = export_model(tiny("ae"), tmp_path, real)
    assert out.metrics["onnx_exporter"] == "dynamo"
    assert float(out.metrics["parity_onnx_max_abs_diff"]) <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": real[:3]})[0].shape == (3, 4)
