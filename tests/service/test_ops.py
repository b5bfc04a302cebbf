"""The operations on numpy arrays and a runtime, without HTTP."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from storebuilder import run

from service import ops
from service.errors import CapabilityMissing, InvalidInput
from service.runtime import Runtime
from service.store import scores
from service.store.repository import ModelStore, ModelVersion

Env = tuple[Runtime, ModelStore]


def _images(n: int, seed: int = 0, shape: tuple[int, ...] = (1, 8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def _np_decode(mv: ModelVersion, z: np.ndarray, rt: Runtime) -> np.ndarray:
    return rt.session(mv, "decoder").run({"z": z.astype(np.float32)})[0]


def test_sample_same_seed_same_bytes(runtime_store: Env) -> None:
    rt, store = runtime_store
    for name in ("tiny-ae", "tiny-vae", "tiny-gen"):
        mv = store.get(name)
        a = run(ops.sample(rt, mv, 5, seed=42))
        b = run(ops.sample(rt, mv, 5, seed=42))
        c = run(ops.sample(rt, mv, 5, seed=43))
        assert a.images.shape == (5, 1, 8, 8) and a.latents.shape == (5, 4)
        assert a.images.tobytes() == b.images.tobytes()
        assert a.images.tobytes() != c.images.tobytes()
        assert a.seed == 42


def test_what_a_seed_draws_is_numpys_frozen_legacy_stream() -> None:
    """The seed contract: seed s draws NumPy's RandomState(s) stream (frozen across NumPy versions), so
    sampled images survive upgrades; seeds past 32 bits go through init_by_array and stay distinct."""
    np.testing.assert_allclose(ops.seeded(0).standard_normal(3), [1.76405235, 0.40015721, 0.97873798])
    big = 2**40 + 5
    a = ops.seeded(big).standard_normal(4)
    b = ops.seeded(5).standard_normal(4)
    np.testing.assert_array_equal(a, ops.seeded(big).standard_normal(4))
    assert not np.allclose(a, b)
    with pytest.raises(ValueError):
        ops.seeded(-1)


def test_sample_without_seed_returns_a_seed_that_reproduces(runtime_store: Env) -> None:
    rt, store = runtime_store
    mv = store.get("tiny-ae")
    a = run(ops.sample(rt, mv, 3))
    assert a.images.tobytes() == run(ops.sample(rt, mv, 3, seed=a.seed)).images.tobytes()


def test_temperature_scales_deviation_from_the_prior_mean(runtime_store: Env) -> None:
    rt, store = runtime_store
    mv = store.get("tiny-ae", 1)  # gaussian prior
    mean = np.asarray(mv.manifest.latent.prior.mean, dtype=np.float32)  # type: ignore[union-attr]
    z1 = run(ops.sample(rt, mv, 8, seed=1, temperature=1.0)).latents
    z_half = run(ops.sample(rt, mv, 8, seed=1, temperature=0.5)).latents
    z0 = run(ops.sample(rt, mv, 8, seed=1, temperature=0.0)).latents
    np.testing.assert_allclose(z_half - mean, 0.5 * (z1 - mean), atol=1e-5)
    np.testing.assert_allclose(z0, np.broadcast_to(mean, z0.shape), atol=1e-6)


def test_gaussian_and_gmm_priors_match_their_parameters(runtime_store: Env) -> None:
    _, store = runtime_store
    rng = np.random.default_rng(0)
    gauss = store.get("tiny-ae", 1).manifest
    z = ops.draw_prior(gauss.latent, 20000, rng)
    np.testing.assert_allclose(z.mean(0), gauss.latent.prior.mean, atol=0.05)  # type: ignore[union-attr]
    np.testing.assert_allclose(np.cov(z.T), gauss.latent.prior.cov, atol=0.08)  # type: ignore[union-attr]
    gmm = store.get("tiny-ae", 2).manifest  # components at -2 and +2 with weights 0.3 / 0.7
    z = ops.draw_prior(gmm.latent, 20000, rng)
    assert abs((z[:, 0] > 0).mean() - 0.7) < 0.02
    assert abs(z[z[:, 0] > 0].std() - np.sqrt(0.2)) < 0.03


@pytest.mark.parametrize("method", ["linear", "slerp"])
@pytest.mark.parametrize("steps", [2, 3, 10, 256])
def test_path_endpoints_and_step_counts(method: str, steps: int) -> None:
    rng = np.random.default_rng(steps)
    a, b = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    z, t = ops.path(a, b, steps, method)  # type: ignore[arg-type]
    assert z.shape == (steps, 4) and t.shape == (steps,)
    assert z[0].tobytes() == a.tobytes() and z[-1].tobytes() == b.tobytes()
    assert t[0] == 0.0 and t[-1] == 1.0


def test_slerp_keeps_norm_on_the_sphere_and_linear_is_straight() -> None:
    a = np.array([3.0, 0, 0, 0], dtype=np.float32)
    b = np.array([0, 3.0, 0, 0], dtype=np.float32)
    z, _ = ops.path(a, b, 9, "slerp")
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 3.0, rtol=1e-5)
    zl, _ = ops.path(a, b, 9, "linear")
    np.testing.assert_allclose(zl[4], (a + b) / 2, atol=1e-6)
    assert np.linalg.norm(zl[4]) < 3.0 - 0.5  # the chord dips inside the sphere


@pytest.mark.parametrize("steps", [0, 1, 257])
def test_path_refuses_bad_step_counts(steps: int) -> None:
    with pytest.raises(InvalidInput, match="steps"):
        ops.path(np.zeros(2, np.float32), np.ones(2, np.float32), steps, "linear")


def test_interpolate_between_latents_and_between_images(runtime_store: Env) -> None:
    rt, store = runtime_store
    mv = store.get("tiny-ae")
    a, b = np.zeros(4, np.float32), np.ones(4, np.float32)
    res = run(ops.interpolate(rt, mv, a, b, 5, "linear"))
    assert res.images.shape == (5, 1, 8, 8)
    np.testing.assert_allclose(res.images[0], _np_decode(mv, a[None], rt)[0], atol=1e-6)
    x = _images(2)
    res = run(ops.interpolate(rt, mv, x[0], x[1], 4, "slerp"))
    enc = run(ops.encode(rt, mv, x)).mean
    np.testing.assert_allclose(res.latents[[0, -1]], enc, atol=1e-6)


def test_interpolate_from_images_needs_an_encoder(runtime_store: Env) -> None:
    rt, store = runtime_store
    mv = store.get("tiny-gen")
    run(ops.interpolate(rt, mv, np.zeros(4, np.float32), np.ones(4, np.float32), 3))  # latents are fine
    with pytest.raises(CapabilityMissing, match="cannot encode") as exc:
        run(ops.interpolate(rt, mv, _images(1)[0], np.ones(4, np.float32), 3))
    assert exc.value.extra["capability"] == "encode"


@pytest.mark.parametrize("op", ["encode", "reconstruct", "denoise", "anomaly_score"])
def test_capability_missing_names_the_capability(runtime_store: Env, op: str) -> None:
    rt, store = runtime_store
    with pytest.raises(CapabilityMissing) as exc:
        run(getattr(ops, op)(rt, store.get("tiny-gen"), _images(1)))
    assert exc.value.status == 409
    assert exc.value.extra["capability"] == op.replace("_", "-")
    assert op.replace("_", "-") in exc.value.detail


def test_encode_returns_logvar_for_vaes_only(runtime_store: Env) -> None:
    rt, store = runtime_store
    x = _images(3)
    vae = run(ops.encode(rt, store.get("tiny-vae"), x))
    ae = run(ops.encode(rt, store.get("tiny-ae"), x))
    assert vae.mean.shape == vae.logvar.shape == (3, 4)  # type: ignore[union-attr]
    assert ae.logvar is None and ae.mean.shape == (3, 4)


def test_decode_checks_latent_dims_and_values(runtime_store: Env) -> None:
    rt, store = runtime_store
    mv = store.get("tiny-ae")
    assert run(ops.decode(rt, mv, np.zeros((2, 4)))).shape == (2, 1, 8, 8)
    assert run(ops.decode(rt, mv, np.zeros(4))).shape == (1, 1, 8, 8)
    with pytest.raises(InvalidInput, match=r"\(N, 4\)"):
        run(ops.decode(rt, mv, np.zeros((2, 5))))
    with pytest.raises(InvalidInput, match="NaN"):
        run(ops.decode(rt, mv, np.array([[0, np.nan, 0, 0]])))


def test_reconstruct_mse_matches_numpy(runtime_store: Env) -> None:
    rt, store = runtime_store
    mv = store.get("tiny-ae")
    x = _images(4)
    res = run(ops.reconstruct(rt, mv, x))
    z = run(ops.encode(rt, mv, x)).mean
    x_hat = _np_decode(mv, z, rt)
    np.testing.assert_allclose(res.images, x_hat, atol=1e-6)
    np.testing.assert_allclose(res.mse, ((x - x_hat) ** 2).reshape(4, -1).mean(1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["gaussian", "salt-and-pepper", "masking"])
def test_denoise_corrupts_with_a_seed_and_returns_noisy(runtime_store: Env, kind: str) -> None:
    rt, store = runtime_store
    mv = store.get("tiny-ae")
    x = np.full((3, 1, 8, 8), 0.5, dtype=np.float32)
    noise = ops.NoiseSpec(kind, 0.3, seed=7)  # type: ignore[arg-type]
    a = run(ops.denoise(rt, mv, x, noise))
    b = run(ops.denoise(rt, mv, x, noise))
    assert a.noisy is not None and a.noisy.shape == x.shape
    assert a.noisy.tobytes() == b.noisy.tobytes()  # type: ignore[union-attr]
    assert not np.array_equal(a.noisy, x)
    assert a.noisy.min() >= 0 and a.noisy.max() <= 1
    changed = (a.noisy != x).mean()
    if kind != "gaussian":
        assert 0.2 < changed < 0.4  # about `level` of the pixels
    if kind == "masking":
        assert set(np.unique(a.noisy)) <= {0.0, 0.5}
    np.testing.assert_allclose(a.images, run(ops.reconstruct(rt, mv, a.noisy)).images, atol=1e-6)
    plain = run(ops.denoise(rt, mv, x))
    assert plain.noisy is None


def test_anomaly_reconstruction_score_and_threshold_maps_to_half(runtime_store: Env) -> None:
    rt, store = runtime_store
    mv = store.get("tiny-ae")
    x = _images(4)
    first = run(ops.anomaly_score(rt, mv, x, heatmap=True))
    x_hat = run(ops.reconstruct(rt, mv, x)).images
    raw, hmap = scores.reconstruction(x, x_hat)
    np.testing.assert_allclose(first.raw, raw, rtol=1e-5)
    np.testing.assert_allclose(first.heatmaps, hmap, rtol=1e-5)  # type: ignore[arg-type]
    # a model whose calibrated threshold is exactly image 1's score: that image sits at 0.5
    anomaly = mv.manifest.anomaly.model_copy(update={"threshold": float(first.raw[1])})  # type: ignore[union-attr]
    mv2 = ModelVersion(mv.manifest.model_copy(update={"anomaly": anomaly}), mv.path)
    res = run(ops.anomaly_score(rt, mv2, x))
    assert res.normalised[1] == pytest.approx(0.5)
    order = np.argsort(res.raw)
    assert np.all(np.diff(res.normalised[order]) >= 0)  # monotone in the raw score
    np.testing.assert_array_equal(res.is_anomaly, res.raw > res.threshold)
    np.testing.assert_array_equal(res.is_anomaly, res.normalised > 0.5)
    assert res.heatmaps is None


def test_anomaly_vae_elbo_and_fanogan_use_the_score_definitions(runtime_store: Env) -> None:
    rt, store = runtime_store
    x = _images(3)
    vae = store.get("tiny-vae")
    enc = run(ops.encode(rt, vae, x))
    expected, _ = scores.vae_elbo(x, _np_decode(vae, enc.mean, rt), enc.mean, enc.logvar, "bernoulli")  # type: ignore[arg-type]
    res = run(ops.anomaly_score(rt, vae, x))
    assert res.score == "vae_elbo"
    np.testing.assert_allclose(res.raw, expected, rtol=1e-5)
    np.testing.assert_allclose(res.normalised, scores.normalise(expected, 40.0, 2.0), rtol=1e-5)

    gan = store.get("tiny-gan")
    x_hat = _np_decode(gan, run(ops.encode(rt, gan, x)).mean, rt)
    critic = rt.session(gan, "critic")
    f_x, f_xh = critic.run({"x": x})[0], critic.run({"x": x_hat})[0]
    expected, _ = scores.fanogan(x, x_hat, f_x, f_xh, kappa=0.5)
    res = run(ops.anomaly_score(rt, gan, x))
    assert res.score == "fanogan"
    np.testing.assert_allclose(res.raw, expected, rtol=1e-5)


class _NaNRunner:
    """A runner whose every graph answers NaN: what a network gives for inputs it overflows on."""

    async def infer(
        self, mv: ModelVersion, graph: str, feeds: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        n = next(iter(feeds.values())).shape[0]
        return {t.name: np.full((n, *(d if d > 0 else 1 for d in t.shape[1:])), np.nan, np.float32)
                for t in mv.manifest.graphs[graph].outputs}


def test_non_finite_outputs_for_client_latents_are_refused_not_returned(runtime_store: Env) -> None:
    """Latents come from the client unbounded; images are clipped to the value range and prior draws are
    bounded, so only the latent paths (decode, interpolate) pay for the check."""
    _, store = runtime_store
    mv = store.get("tiny-ae", "latest")
    z = np.full((1, mv.manifest.latent.dim), 3e38, np.float32)
    with pytest.raises(InvalidInput, match="non-finite.*3e\\+38"):
        run(ops.decode(_NaNRunner(), mv, z))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="non-finite"):
        run(ops.interpolate(_NaNRunner(), mv, z[0], -z[0], steps=3))  # type: ignore[arg-type]


ZOO_VAE = Path(__file__).resolve().parents[2] / "models_store" / "vae-digits"


@pytest.mark.skipif(not ZOO_VAE.is_dir(), reason="the shipped zoo is not there")
@pytest.mark.parametrize("accept", ["application/json", "image/png"])
def test_the_shipped_vae_refuses_latents_it_overflows_on(accept: str) -> None:
    """3e38 is a finite float32, but the digits VAE's decoder gives NaN for it: a 422, not JSON nulls or
    undefined pixels (and no RuntimeWarning from casting NaN to a pixel)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    with TestClient(create_app(Settings(store=ZOO_VAE.parent))) as client, warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        r = client.post("/v1/models/vae-digits/decode", json={"latents": [[3e38] * 8], "format": "png"},
                        headers={"Accept": accept})
        assert r.status_code == 422 and "non-finite" in r.json()["detail"], r.text[:300]
        assert client.post("/v1/models/vae-digits/decode", json={"latents": [[3.0] * 8]}).status_code == 200
