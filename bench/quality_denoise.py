"""Denoising: PSNR (dB, peak 1.0, mean over test images) of clean estimates from corrupted test images.

Ours: the denoising AE, one per corruption, trained on the training split with that corruption (the
family's own `corrupt`). Baselines, each with its one knob tuned on a held-out tenth of the TRAINING split:
projection on the top-k PCA subspace of clean training images (k), a gaussian blur (sigma), and a median
filter (size; the textbook answer to salt-and-pepper). The noisy input itself is the floor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from quality_common import BenchData, Budget, batched, fit, pool_map
from scipy import ndimage

from training.models.ae_denoising import Corruption, corrupt

log = logging.getLogger("bench.quality")

#: condition name -> (corruption, level); salt-and-pepper level = fraction of pixels flipped to 0 or 1
CONDITIONS: dict[str, tuple[Corruption, float]] = {
    "gaussian σ=0.2": ("gaussian", 0.2),
    "gaussian σ=0.4": ("gaussian", 0.4),
    "salt-and-pepper 20%": ("salt-and-pepper", 0.2),
}


def psnr(clean: np.ndarray, estimate: np.ndarray) -> float:
    """Mean over images of 10 log10(1 / MSE), the estimate clipped to [0, 1] as served."""
    mse = np.mean((clean - np.clip(estimate, 0, 1)) ** 2, axis=tuple(range(1, clean.ndim)))
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))


def noisy(x: np.ndarray, kind: Corruption, level: float, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return corrupt(torch.from_numpy(x), kind, level, g).numpy()


def _tune(fn: Callable[[np.ndarray, Any], np.ndarray], knobs: list[Any], clean: np.ndarray,
          dirty: np.ndarray) -> Any:
    return max(knobs, key=lambda k: psnr(clean, fn(dirty, k)))


def pca_denoiser(train: np.ndarray, seed: int) -> Callable[[np.ndarray, int], np.ndarray]:
    from sklearn.decomposition import PCA

    flat = train.reshape(len(train), -1)
    n = min(128, flat.shape[1] - 1, len(flat) - 1)
    pca = PCA(n_components=n, svd_solver="full", random_state=seed).fit(flat)

    def project(x: np.ndarray, k: int) -> np.ndarray:
        f = x.reshape(len(x), -1) - pca.mean_
        comps = pca.components_[:k]  # (k, D)
        return ((f @ comps.T) @ comps + pca.mean_).reshape(x.shape)

    return project


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma))


def median(x: np.ndarray, size: int) -> np.ndarray:
    return ndimage.median_filter(x, size=(1, 1, size, size))


def condition(data: BenchData, budget: Budget, seed: int, i: int, cond: str) -> dict[str, Any]:
    """One corruption: tune the baselines on held-out training images, train the denoising AE, score."""
    kind, level = CONDITIONS[cond]
    perm = np.random.default_rng(seed).permutation(len(data.train))
    n_val = max(10, len(perm) // 10)
    tune_x, fit_x = data.train.x[perm[:n_val]], data.train.x[perm[n_val:]]
    project = pca_denoiser(fit_x, seed)
    max_k = min(128, fit_x[0].size - 1, len(fit_x) - 1)
    ks = [k for k in (4, 8, 12, 16, 24, 32, 48, 64, 96, 128) if k <= max_k]
    xte = data.test.x
    dirty_tune = noisy(tune_x, kind, level, seed + 100 + i)
    dirty = noisy(xte, kind, level, seed + 200 + i)
    k = _tune(project, ks, tune_x, dirty_tune)
    s = _tune(blur, [0.3, 0.5, 0.75, 1.0, 1.5, 2.0], tune_x, dirty_tune)
    m = _tune(median, [2, 3, 5], tune_x, dirty_tune)
    t0 = time.perf_counter()
    # a wider code than the generators': here the code must carry the whole clean image, not a summary
    # (MNIST, gaussian 0.2: 21.7 dB with a 32-d code and 12 epochs, 23.8 dB with 64-d and 20 epochs)
    latent = 64 if data.backbone == "conv" else 24
    dae = fit("ae-denoising", fit_x, data, budget, seed + i, "denoise", corruption=kind, noise_level=level,
              latent_dim=latent)
    seconds = time.perf_counter() - t0
    est = {"noisy input": dirty, "gaussian blur": blur(dirty, s), "median filter": median(dirty, m),
           "PCA projection": project(dirty, k),
           "denoising AE": np.asarray(batched(lambda t: dae.decode(dae.encode(t)), dirty))}
    table = {name: psnr(xte, e) for name, e in est.items()}
    log.info("[%s] denoise %s: %s", data.name, cond, {n: round(v, 2) for n, v in table.items()})
    return {"psnr": table, "knobs": {"pca_k": k, "blur_sigma": s, "median_size": m}, "seconds": seconds,
            "examples": {"clean": xte[:8], **{name: np.clip(e[:8], 0, 1) for name, e in est.items()}}}


def run(data: BenchData, budget: Budget, seed: int) -> dict[str, Any]:
    """PSNR per condition and method, the tuned knobs, and a few examples for the figure."""
    conds = list(CONDITIONS)
    jobs = [(data, budget, seed, i, c) for i, c in enumerate(conds)]
    done = dict(pool_map(condition, jobs, budget.workers))
    res = [done[i] for i in range(len(conds))]
    return {"psnr": {c: r["psnr"] for c, r in zip(conds, res, strict=True)},
            "knobs": {c: r["knobs"] for c, r in zip(conds, res, strict=True)},
            "times_s": {c: r["seconds"] for c, r in zip(conds, res, strict=True)},
            "examples": {c: r["examples"] for c, r in zip(conds, res, strict=True)}}
