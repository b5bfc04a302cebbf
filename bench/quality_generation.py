"""Generation and density.

Generation: the Fréchet distance between generated and real test images in the penultimate-layer feature
space of a small classifier trained on the training split -- a domain-specific stand-in for FID, and NOT
comparable with Inception FID numbers -- plus precision and recall with k=3 (Kynkäänniemi et al., 2019) in
the same space. Reference points: a GaussianMixture on PCA coefficients (sampled and projected back), and
held-out real images (training images never used as the reference): the floor at this sample size.

Density: VAE and beta-VAE trained on dynamically binarised images (a fresh Bernoulli draw of every pixel at
every step), test NLL in nats on a once-binarised test set by importance sampling with K samples.

Every generator is sampled as the service would sample its published version: the prior is built by
`training.calibrate.latent_prior` (the function publishing calls: N(0, I), or a Gaussian/GMM fitted on the
training codes) and drawn from by `service.ops.draw_prior`. The VAEs are trained with `prior = "gmm"` (a
GMM on the posterior means, fitted at publish time, `prior_components` = budget.vae_prior_components); the
same decoders with the default `prior = "normal"`
(N(0, I)) are listed beside them.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
from quality_common import BenchData, Budget, batched, fit, pool_map
from scipy import linalg
from torch import Tensor, nn

from service.ops import draw_prior
from service.store.manifest import LatentSpec, NormalPrior, Prior
from training.calibrate import latent_prior
from training.config import TrainConfig
from training.models.base import GenerativeModel
from training.models.vae import VAE, BetaVAE

log = logging.getLogger("bench.quality")


# --- the feature space -----------------------------------------------------------------------------------


class FeatureNet(nn.Module):
    """A small classifier; `features` is its 128-d penultimate layer, the space all distances live in."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = shape
        if h >= 16:
            self.body: nn.Module = nn.Sequential(
                nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU())
        else:
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 256), nn.ReLU(), nn.Linear(256, 128),
                                      nn.ReLU())
        self.head = nn.Linear(128, 10)

    def features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 128)
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def fit_classifier(x: np.ndarray, y: np.ndarray, shape: tuple[int, int, int], epochs: int, seed: int,
                   every: tuple[int, ...] = (), val: tuple[np.ndarray, np.ndarray] | None = None,
                   ) -> tuple[FeatureNet, dict[int, float]]:
    """FeatureNet fitted on (x, y) (Adam, batches of 64, seeded order); with `val`, its accuracy there after
    each epoch in `every`."""
    torch.manual_seed(seed)
    net = FeatureNet(shape)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    accs: dict[int, float] = {}
    for epoch in range(1, epochs + 1):
        net.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if val is not None and epoch in every:
            net.eval()
            accs[epoch] = float(np.mean(np.asarray(batched(net, val[0])).argmax(1) == val[1]))
    return net.eval(), accs


def train_classifier(data: BenchData, epochs: int, seed: int) -> tuple[FeatureNet, float]:
    """Fit on the training split (light shift augmentation-free, Adam); returns it and its test accuracy."""
    net, _ = fit_classifier(data.train.x, data.train.y, data.shape, epochs, seed)
    logits = np.asarray(batched(net, data.test.x))
    return net, float(np.mean(logits.argmax(1) == data.test.y))


def frechet(fa: np.ndarray, fb: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(Sa + Sb - 2 (Sa Sb)^1/2) between Gaussians fitted to two feature sets."""
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    sa, sb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    covmean, _ = linalg.sqrtm(sa @ sb, disp=False)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(sa + sb - 2 * covmean))


def _kth_nn_radius(f: np.ndarray, k: int) -> np.ndarray:
    d = _sqdist(f, f)
    return np.sqrt(np.sort(d, axis=1)[:, k])  # column 0 is the point itself


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision/recall: the share of fakes inside some real k-NN ball, and vice versa."""
    real, fake = real.astype(np.float64), fake.astype(np.float64)
    r_real, r_fake = _kth_nn_radius(real, k), _kth_nn_radius(fake, k)
    d = np.sqrt(_sqdist(fake, real))  # (F, R)
    precision = float(np.mean((d <= r_real[None]).any(axis=1)))
    recall = float(np.mean((d.T <= r_fake[None]).any(axis=1)))
    return precision, recall


# --- samplers -------------------------------------------------------------------------------------------


def served_prior(model: GenerativeModel, x_train: np.ndarray, seed: int, kind: str | None = None,
                 components: int | None = None) -> Prior:
    """The prior publishing would put in the manifest (training.calibrate.latent_prior); `kind` and
    `components` are the trainer's `prior` (read by deterministic AEs only) and `prior_components`."""
    tc = TrainConfig()
    return latent_prior(model, x_train, kind or tc.prior, components or tc.prior_components, seed)


def sample_model(model: GenerativeModel, n: int, seed: int, prior: Prior | None = None) -> np.ndarray:
    """n images decoded from codes that the service's sample op would draw from `prior` (N(0, I) if None)."""
    latent = LatentSpec(dim=model.cfg.latent_dim, prior=prior or NormalPrior())
    z = draw_prior(latent, n, np.random.default_rng(seed))
    return np.asarray(batched(model.decode, z))


def gmm_pca_samples(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The reference generator: a 10-component full-covariance GMM on PCA coefficients (90% variance)."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    flat = x.reshape(len(x), -1)
    pca = PCA(n_components=0.9, svd_solver="full", random_state=seed).fit(flat)
    gmm = GaussianMixture(10, covariance_type="full", random_state=seed, reg_covar=1e-4)
    gmm.fit(pca.transform(flat))
    coeffs, _ = gmm.sample(n)
    coeffs = coeffs[np.random.default_rng(seed).permutation(n)]  # sample() returns them grouped by component
    return np.clip(pca.inverse_transform(coeffs), 0, 1).reshape(n, *x.shape[1:]).astype(np.float32)


# --- dynamic binarisation ------------------------------------------------------------------------------


class BinarisedVAE(VAE):
    """Every forward pass sees a fresh Bernoulli draw of the pixels (dynamic binarisation), so the project's
    Trainer trains it unchanged."""

    def forward(self, x: Tensor, phase: str = "main") -> Any:
        return super().forward(torch.bernoulli(x), phase)


class BinarisedBetaVAE(BetaVAE):
    def forward(self, x: Tensor, phase: str = "main") -> Any:
        return super().forward(torch.bernoulli(x), phase)


BINARISED: dict[str, type[VAE]] = {"vae": BinarisedVAE, "beta-vae": BinarisedBetaVAE}


def test_nll(model: VAE, x_bin: np.ndarray, k: int, seed: int, batch: int = 100) -> float:
    """Mean importance-sampled NLL (nats per image) over the once-binarised test set."""
    torch.manual_seed(seed)
    vals = batched(lambda t: model.importance_sampled_nll(t, k), x_bin, batch)
    return float(np.mean(vals))


# --- the section ----------------------------------------------------------------------------------------


def train_generator(fam: str, data: BenchData, budget: Budget, seed: int, x_bin_test: np.ndarray,
                    ) -> tuple[GenerativeModel, dict[str, float] | None, dict[str, float]]:
    """Fit one generator on the whole training split; for the VAEs also their test NLL."""
    t0 = time.perf_counter()
    # binary pixels: the Bernoulli likelihood (the family's default is a gaussian on grey levels); sampled
    # from a GMM on the posterior means (the default N(0, I) prior is scored too, see run())
    extra = {"likelihood": "bernoulli", "prior": "gmm"} if fam in BINARISED else {}
    model = fit(fam, data.train.x, data, budget, seed, "full", model_cls=BINARISED.get(fam), **extra)
    times = {f"{fam} train": time.perf_counter() - t0}
    density = None
    if fam in BINARISED:
        t0 = time.perf_counter()
        density = {"nll_nats": test_nll(model, x_bin_test, budget.density_k, seed),  # type: ignore[arg-type]
                   "k": budget.density_k, "n_test": len(x_bin_test), "beta": float(model.cfg.beta),  # type: ignore[attr-defined]
                   "latent_dim": model.cfg.latent_dim}
        times[f"{fam} nll"] = time.perf_counter() - t0
        log.info("[%s] %s test NLL %.2f nats (K=%d)", data.name, fam, density["nll_nats"], budget.density_k)
    return model, density, times


GENERATORS = ("gan", "vae", "beta-vae", "aae", "wae", "ae")  # slowest first, for the worker pool


def run(data: BenchData, budget: Budget, seed: int) -> dict[str, Any]:
    """Train the generators on the whole training split, sample, and score; also the VAE test NLLs.

    Returns metrics plus the trained models and their samples (for the figures), under "models"/"samples".
    """
    n = budget.n_gen or len(data.test)
    times: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    x_bin_test = (rng.random(data.test.x.shape) < data.test.x).astype(np.float32)
    models: dict[str, GenerativeModel] = {}
    density: dict[str, dict[str, float]] = {}
    jobs = [(fam, data, budget, seed, x_bin_test) for fam in GENERATORS]
    for i, (model, dens, t) in pool_map(train_generator, jobs, budget.workers):
        models[GENERATORS[i]] = model
        times.update(t)
        if dens is not None:
            density[GENERATORS[i]] = dens
    density = {k: density[k] for k in BINARISED if k in density}
    t0 = time.perf_counter()
    net, acc = train_classifier(data, budget.clf_epochs, seed)
    times["classifier"] = time.perf_counter() - t0
    feats = lambda x: np.asarray(batched(net.features, x)).astype(np.float64)  # noqa: E731
    real = feats(data.test.x)
    samples = {}
    for fam in ("vae", "beta-vae"):  # as served with prior = "gmm", and with the default N(0, I)
        prior = served_prior(models[fam], data.train.x, seed, components=budget.vae_prior_components)
        samples[f"{fam} (prior=gmm)"] = sample_model(models[fam], n, seed, prior)
        samples[f"{fam} (prior=normal)"] = sample_model(models[fam], n, seed)
    for fam in ("aae", "wae", "gan"):
        samples[fam] = sample_model(models[fam], n, seed, served_prior(models[fam], data.train.x, seed))
    for kind in ("gmm", "gaussian"):
        samples[f"ae+{kind}"] = sample_model(models["ae"], n, seed,
                                             served_prior(models["ae"], data.train.x, seed, kind))
    samples["gmm-on-pca (ref)"] = gmm_pca_samples(data.train.x, n, seed)
    pick = np.random.default_rng(seed + 1).permutation(len(data.train))[:min(n, len(data.train))]
    held = data.train.x[pick]
    samples["real held-out (floor)"] = held

    gen: dict[str, dict[str, float]] = {}
    for name, s in samples.items():
        f = feats(s)
        p, r = precision_recall(real, f, k=3)
        gen[name] = {"frechet": frechet(real, f), "precision": p, "recall": r, "n": len(s)}
        log.info("[%s] %s: FD %.2f P %.3f R %.3f", data.name, name, gen[name]["frechet"], p, r)
    ref = gen["gmm-on-pca (ref)"]["frechet"]
    for v in gen.values():
        v["fd_ratio_to_gmm"] = v["frechet"] / ref if ref > 0 else math.nan
    return {"classifier_test_acc": acc, "n_real": len(real), "generation": gen, "density": density,
            "times_s": times, "models": models, "samples": samples}
