"""The optional TorchScript backend: same answers as onnxruntime, torch imported only when asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from storebuilder import build_model, make_weights

from service.app import create_app
from service.settings import Settings
from service.store.layout import sha256_file
from service.store.manifest import Manifest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # imports torch (several seconds on a shared CPU)


def _add_torchscript_twins(vdir: Path, seed: int) -> None:
    """Trace torch modules with the fixture's weights and register them as the graphs' TorchScript twins."""
    w = make_weights((1, 8, 8), 4, seed)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    enc[1].weight.data = torch.from_numpy(w.enc_w.T.copy())
    enc[1].bias.data = torch.from_numpy(w.enc_b)
    dec = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Sigmoid(), torch.nn.Unflatten(1, (1, 8, 8)))
    dec[0].weight.data = torch.from_numpy(w.dec_w.T.copy())
    dec[0].bias.data = torch.from_numpy(w.dec_b)
    torch.jit.trace(enc.eval(), torch.rand(2, 1, 8, 8)).save(str(vdir / "encoder.pt"))
    torch.jit.trace(dec.eval(), torch.rand(2, 4)).save(str(vdir / "decoder.pt"))
    m = Manifest.model_validate_json((vdir / "manifest.json").read_text())
    graphs = {g: s.model_copy(update={"torchscript": f"{g}.pt"}) for g, s in m.graphs.items()}
    files = dict(m.files) | {f"{g}.pt": sha256_file(vdir / f"{g}.pt") for g in graphs}
    m = Manifest.model_validate(m.model_dump() | {"graphs": graphs, "files": files})
    (vdir / "manifest.json").write_text(m.model_dump_json())


def test_torchscript_backend_matches_onnx(tmp_path: Path) -> None:
    _add_torchscript_twins(build_model(tmp_path, "twin", 1, seed=3), seed=3)
    build_model(
        tmp_path, "onnx-only", 1, seed=4
    )  # no twin: skipped by the torchscript backend, with a reason
    x = np.random.default_rng(0).random((3, 1, 8, 8)).tolist()
    answers = {}
    for backend in ("onnx", "torchscript"):
        with TestClient(create_app(Settings(store=tmp_path, backend=backend))) as c:
            body = c.get("/v1/models").json()
            if backend == "torchscript":
                assert [m["name"] for m in body["models"]] == ["twin"]
                assert "no TorchScript twin" in body["problems"][0]["reason"]
            answers[backend] = (
                c.post("/v1/models/twin/sample", json={"n": 4, "seed": 1}).json()["images"],
                c.post("/v1/models/twin/reconstruct", json={"images": x}).json()["mse"],
            )
    for a, b in zip(answers["onnx"], answers["torchscript"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
