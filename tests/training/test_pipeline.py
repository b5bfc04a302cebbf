"""fit -> evaluate -> calibrate -> export -> parity -> publish, for every registered family."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.store import scores
from service.store.layout import STAGING_PREFIX, sha256_file, version_numbers
from service.store.manifest import ALL_CAPABILITIES, Manifest
from training import calibrate, export, pipeline
from training.config import RunSpec
from training.data import split, synthetic
from training.export import ParityError
from training.models import REGISTRY

TinySpec = Callable[..., RunSpec]

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def load_manifest(path: Path) -> Manifest:
    return Manifest.model_validate_json((path / "manifest.json").read_text())


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_family_publishes_a_valid_manifest(name: str, tmp_path: Path, tiny_spec: TinySpec) -> None:
    res = pipeline.run(tiny_spec(name, tmp_path / "store", tmp_path / "run"))
    assert res.path is not None and res.path.name == "1"
    m = load_manifest(res.path)
    assert m == res.manifest
    model = REGISTRY[name].model
    assert (m.name, m.family, m.variant) == (f"{name}-synthetic", model.family, model.variant)
    assert m.data.shape == (1, 8, 8) and m.latent.dim == 4
    assert m.latent.prior.kind == ("normal" if model.prior_kind == "normal" else "gmm")
    for f, digest in m.files.items():
        assert sha256_file(res.path / f) == digest
    assert set(p.name for p in res.path.iterdir()) == {*m.files, "manifest.json"}
    if model.conditional:  # the label set of the data (synthetic: 4 classes); no anomaly score, no denoise
        assert m.labels is not None and m.labels.names == ["0", "1", "2", "3"] and m.anomaly is None
        assert set(m.capabilities) == set(ALL_CAPABILITIES) - {"denoise", "anomaly-score"} | {"restyle"}
        return
    assert set(m.capabilities) == set(ALL_CAPABILITIES)  # every family has encoder + decoder
    assert m.labels is None
    assert m.anomaly is not None and m.anomaly.scale > 0 and "percentile" in m.anomaly.rule
    assert m.metrics["test_recon_mse"] > 0 and m.metrics["parity_onnx_max_abs_diff"] <= 1e-4
    if hasattr(model, "importance_sampled_nll"):
        assert m.metrics["nll_k"] == 4 and np.isfinite(m.metrics["nll_is"])
    assert m.training["config"]["model"] == name and m.training["split"]["sizes"]["train"] > 0
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_failed_parity_refuses_to_publish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          tiny_spec: TinySpec) -> None:
    real_export = export._onnx_export

    def drifted(module: torch.nn.Module, example: torch.Tensor, path: Path, g: object) -> str:
        bad = copy.deepcopy(module)
        with torch.no_grad():
            for p in bad.parameters():
                p.mul_(1.1)
        return real_export(bad, example, path, g)  # type: ignore[arg-type]

    monkeypatch.setattr(export, "_onnx_export", drifted)
    store = tmp_path / "store"
    with pytest.raises(ParityError):
        pipeline.run(tiny_spec("ae", store, tmp_path / "run", name="refused"))
    assert version_numbers(store / "refused") == []
    assert not any(p.name.startswith(STAGING_PREFIX) for p in (store / "refused").iterdir())


def test_threshold_is_the_quantile_of_validation_scores_under_onnxruntime(tmp_path: Path,
                                                                         tiny_spec: TinySpec) -> None:
    """Scoring the validation split the way the service will (onnxruntime + service.store.scores) puts
    about (1 - q) of it above the threshold, and the threshold normalises to 0.5."""
    res = pipeline.run(tiny_spec("ae", tmp_path / "store", tmp_path / "run", threshold_quantile=0.9))
    assert res.path is not None and res.manifest is not None and res.manifest.anomaly is not None
    spec = res.manifest.anomaly
    val = split(synthetic(), seed=0).val.x
    enc = ort.InferenceSession(str(res.path / "encoder.onnx"))
    dec = ort.InferenceSession(str(res.path / "decoder.onnx"))
    x_hat = dec.run(None, {"z": enc.run(None, {"x": val})[0]})[0]
    raw, heat = scores.reconstruction(val, x_hat)
    assert heat.shape == val.shape
    above = float(np.mean(raw > spec.threshold))
    assert 0.0 < above <= 0.12
    assert scores.normalise(np.array([spec.threshold]), spec.threshold, spec.scale)[0] == pytest.approx(0.5)
    assert scores.normalise(np.median(raw), spec.threshold, spec.scale) == pytest.approx(0.1, abs=0.02)
    assert f"n={len(val)}" in spec.rule and "90th percentile" in spec.rule


def test_one_class_mode_records_classes_and_auroc(tmp_path: Path, tiny_spec: TinySpec) -> None:
    res = pipeline.run(tiny_spec("ae", tmp_path / "store", tmp_path / "run", normal_classes=(0, 1)))
    m = res.manifest
    assert m is not None and m.data.classes == [0, 1]
    assert 0.0 <= float(m.metrics["test_anomaly_auroc"]) <= 1.0
    assert "normal classes [0, 1]" in (m.anomaly.rule if m.anomaly else "")


def test_fitted_priors_match_the_codes() -> None:
    rng = np.random.default_rng(0)
    codes = rng.normal([2.0, -1.0], [0.5, 2.0], size=(2000, 2))
    g = calibrate.fit_prior(codes, "gaussian", 1, seed=0)
    np.testing.assert_allclose(g.mean, [2.0, -1.0], atol=0.15)
    np.testing.assert_allclose(np.diag(g.cov), [0.25, 4.0], rtol=0.15)
    two = np.concatenate([rng.normal(-5, 0.3, (500, 2)), rng.normal(5, 0.3, (500, 2))])
    gmm = calibrate.fit_prior(two, "gmm", 2, seed=0)
    assert sorted(round(m[0]) for m in gmm.means) == [-5, 5]
    np.testing.assert_allclose(sorted(gmm.weights), [0.5, 0.5], atol=0.05)


def test_publish_false_writes_nothing(tmp_path: Path, tiny_spec: TinySpec) -> None:
    res = pipeline.run(tiny_spec("ae", tmp_path / "store", tmp_path / "run", publish=False))
    assert res.path is None and res.manifest is not None
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("manifest.json"))


def test_tiny_store_fixture(tiny_store: Path) -> None:
    for model, name in {"ae": "ae-tiny", "vae": "vae-tiny", "gan": "gan-tiny"}.items():
        if model in REGISTRY:
            assert version_numbers(tiny_store / name) == [1]
            m = load_manifest(tiny_store / name / "1")
            assert m.name == name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", [n for n in ("ae", "vae", "gan") if n in REGISTRY])
def test_cuda_bf16_training_still_publishes_with_parity(name: str, tmp_path: Path,
                                                        tiny_spec: TinySpec) -> None:
    """On CUDA the trainer uses bf16 autocast with the data on the GPU; export runs in float32 on CPU and
    the parity gate still holds."""
    res = pipeline.run(tiny_spec(name, tmp_path / "store", tmp_path / "run", device="cuda", amp=True))
    assert res.manifest is not None and str(res.manifest.metrics["device"]).startswith("cuda")
    assert float(res.manifest.metrics["parity_onnx_max_abs_diff"]) <= 1e-4
    assert np.isfinite(float(res.manifest.metrics["test_recon_mse"]))


def test_model_names_are_made_safe_and_checked_before_training(tmp_path: Path, tiny_spec: TinySpec,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from training.config import ConfigError, TrainConfig
    from training.data import ImageSet

    data = ImageSet("MNIST_t10k.v2", synthetic(n=4).x, synthetic(n=4).y)
    assert pipeline.model_name(TrainConfig(model="vae"), data) == "vae-mnist-t10k-v2"
    monkeypatch.setattr(pipeline.Trainer, "fit", lambda *a: pytest.fail("trained before checking the name"))
    with pytest.raises(ConfigError, match="must match"):
        pipeline.run(tiny_spec("ae", tmp_path / "store", tmp_path / "run", name="Not.A/Name"))
