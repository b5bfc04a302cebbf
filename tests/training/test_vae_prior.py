"""A VAE's sampling prior is a config choice: N(0, I) by default, or a Gaussian/GMM fitted on the posterior
means of its training images, published in the manifest and drawn from by the service's sample op."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service import ops
from service.runtime import Runtime
from service.settings import Settings
from service.store.manifest import GMMPrior, NormalPrior
from service.store.repository import ModelStore
from training import calibrate, pipeline
from training.config import ConfigError, model_config
from training.models import build
from training.models.vae import VAEConfig

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _gmm_moments(p: GMMPrior) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a Gaussian mixture."""
    w, mu, cov = np.asarray(p.weights), np.asarray(p.means), np.asarray(p.covs)
    mean = w @ mu
    dev = mu - mean
    return mean, np.einsum("k,kij->ij", w, cov) + np.einsum("k,ki,kj->ij", w, dev, dev)


def test_vae_with_gmm_prior_publishes_it_and_the_service_samples_from_it(tmp_path: Path, tiny_spec) -> None:  # noqa: ANN001
    spec = tiny_spec("vae", tmp_path / "store", tmp_path / "run", name="vae-gmm", data="digits",
                     prior_components=3)
    spec = replace(spec, model={**spec.model, "prior": "gmm"})
    res = pipeline.run(spec)
    prior = res.manifest.latent.prior
    assert isinstance(prior, GMMPrior) and len(prior.weights) == 3
    assert res.manifest.training["model_config"]["prior"] == "gmm"

    rt = Runtime(Settings(store=tmp_path / "store"))
    mv = ModelStore.open(tmp_path / "store", check=rt.prepare).get("vae-gmm")
    assert isinstance(mv.manifest.latent.prior, GMMPrior)
    drawn = asyncio.run(ops.sample(rt, mv, 20000, seed=7))
    z = drawn.latents.astype(np.float64)
    mean, cov = _gmm_moments(prior)
    # a few training steps leave the posterior means bunched near the origin: far from N(0, I)
    assert np.abs(np.diag(cov) - 1.0).max() > 0.3
    np.testing.assert_allclose(z.mean(0), mean, atol=0.05 * np.sqrt(np.diag(cov)).max() + 1e-3)
    np.testing.assert_allclose(np.cov(z.T), cov, atol=0.05 * np.abs(cov).max())
    assert drawn.images.shape == (20000, 1, 8, 8)


def test_vae_default_prior_is_normal(tmp_path: Path, tiny_spec) -> None:  # noqa: ANN001
    res = pipeline.run(tiny_spec("beta-vae", tmp_path / "store", tmp_path / "run", publish=False))
    assert isinstance(res.manifest.latent.prior, NormalPrior)


def test_latent_prior_follows_the_vae_config_not_the_trainer_choice() -> None:
    x = np.random.default_rng(0).random((200, 1, 8, 8), dtype=np.float32)
    gauss = build("vae", hidden=(16,), latent_dim=2, prior="gaussian")
    # the trainer's `prior` ("gmm" by default) is the deterministic AEs' choice; the VAE's config wins
    assert calibrate.latent_prior(gauss, x, "gmm", 2, seed=0).kind == "gaussian"
    normal = build("beta-vae", hidden=(16,), latent_dim=2)
    assert calibrate.latent_prior(normal, x, "gmm", 2, seed=0).kind == "normal"
    assert build("ae", hidden=(16,), latent_dim=2).latent_prior_kind("gaussian") == "gaussian"


def test_unknown_prior_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"model\.prior: 'vampprior' is not one of 'normal', 'gaussian'"):
        model_config("vae", {"prior": "vampprior"})
    with pytest.raises(ValueError, match="unknown VAE prior 'uniform'"):
        VAEConfig(prior="uniform")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown model field 'prior'"):
        model_config("ae", {"prior": "gmm"})  # deterministic AEs choose theirs with [train] prior
