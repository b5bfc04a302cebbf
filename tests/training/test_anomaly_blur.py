"""The blurred-residual reconstruction score: a model config choice (`anomaly_blur`), calibrated at training
time and computed the same way by the service's anomaly-score op."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service import ops
from service.runtime import Runtime
from service.settings import Settings
from service.store import scores
from service.store.repository import ModelStore
from training import calibrate, pipeline
from training.config import ConfigError, model_config
from training.models import build

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_blur_keeps_area_errors_and_cancels_alternating_ones() -> None:
    x_hat = np.full((2, 1, 16, 16), 0.5, dtype=np.float32)
    x = x_hat.copy()
    x[0, 0, 4:10, 4:10] = 1.0  # a blob of missing ink
    x[1, 0] += 0.25 * (-1.0) ** np.indices((16, 16)).sum(0)  # +/- residuals, as from a one-pixel shift
    plain, _ = scores.reconstruction(x, x_hat)
    blurred, hmap = scores.reconstruction(x, x_hat, blur_sigma=1.0)
    np.testing.assert_allclose(scores.reconstruction(x, x_hat, 0.0)[0], plain)
    assert blurred[0] > 0.5 * plain[0]  # the blob survives the blur
    assert blurred[1] < 0.1 * plain[1] and hmap.shape == x.shape  # alternating residuals cancel


def test_gaussian_blur_preserves_mass_and_constant_interiors() -> None:
    a = np.random.default_rng(0).random((3, 1, 20, 20)).astype(np.float32)
    a[..., :4, :] = a[..., -4:, :] = a[..., :4] = a[..., -4:] = 0  # support away from the border
    np.testing.assert_allclose(scores.gaussian_blur(a, 1.0).sum(), a.sum(), rtol=1e-5)
    ones = np.ones((1, 1, 20, 20), dtype=np.float32)
    np.testing.assert_allclose(scores.gaussian_blur(ones, 1.0)[..., 5:15, 5:15], 1.0, atol=1e-5)


@pytest.mark.slow  # a publish: ~8 s on a shared CPU
def test_anomaly_blur_is_published_and_served(tmp_path: Path, tiny_spec) -> None:  # noqa: ANN001
    spec = tiny_spec("ae", tmp_path / "store", tmp_path / "run", name="ae-blur", data="digits")
    res = pipeline.run(replace(spec, model={**spec.model, "anomaly_blur": 0.7}))
    a = res.manifest.anomaly
    assert a is not None and a.score == "reconstruction" and a.params == {"blur_sigma": 0.7}

    rt = Runtime(Settings(store=tmp_path / "store"))
    mv = ModelStore.open(tmp_path / "store", check=rt.prepare).get("ae-blur")
    x = np.random.default_rng(1).random((16, 1, 8, 8), dtype=np.float32)
    served = asyncio.run(ops.anomaly_score(rt, mv, x))
    trained, _ = calibrate.compute_scores(a.score, a.params, calibrate.torch_runner(res.model), x)
    np.testing.assert_allclose(served.raw, trained, rtol=1e-4, atol=1e-7)
    plain, _ = calibrate.compute_scores("reconstruction", {}, calibrate.torch_runner(res.model), x)
    assert not np.allclose(trained, plain)  # the blur is really applied


def test_negative_blur_is_refused_and_zero_is_the_plain_score() -> None:
    with pytest.raises(ValueError, match="anomaly_blur must be a finite number >= 0"):
        build("ae", anomaly_blur=-1.0)
    with pytest.raises(ConfigError, match="model.anomaly_blur"):
        model_config("ae", {"anomaly_blur": "wide"})
    assert build("ae").anomaly_score() == ("reconstruction", {})
    assert build("ae-sparse-l1", anomaly_blur=1.0).anomaly_score() == ("reconstruction", {"blur_sigma": 1.0})
