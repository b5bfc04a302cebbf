"""Calibration and evaluation at training time: anomaly threshold, latent prior, test metrics.

Scores come from `service.store.scores` applied to the outputs of the very graphs that get exported
(the family's `export_graphs()` modules, run by torch in eval mode), so the threshold the service compares
against is measured on the same numbers it will compute with onnxruntime.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping

import numpy as np
import torch

from service.store import scores
from service.store.manifest import AnomalySpec, GaussianPrior, GMMPrior, NormalPrior
from training.models.base import GenerativeModel

log = logging.getLogger(__name__)

#: graph name -> function from one input array to the graph's outputs by name, in output order.
Runner = Callable[[str, np.ndarray], dict[str, np.ndarray]]
BATCH = 512
#: The median validation score maps to this normalised score (the threshold maps to 0.5).
MEDIAN_NORMALISED = 0.1


def torch_runner(model: GenerativeModel) -> Runner:
    """Run the model's export graphs with torch (eval mode, no grad, on the model's device), batched; the
    outputs carry the names the exported graphs give them."""
    graphs = model.export_graphs()
    model.eval()
    device = next(model.parameters()).device

    @torch.no_grad()
    def run(name: str, x: np.ndarray) -> dict[str, np.ndarray]:
        graph = graphs[name]
        chunks: list[list[np.ndarray]] = []
        for i in range(0, len(x), BATCH):
            out = graph.module(torch.from_numpy(np.ascontiguousarray(x[i:i + BATCH])).to(device))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            chunks.append([o.float().cpu().numpy() for o in outs])
        arrays = [np.concatenate(parts) for parts in zip(*chunks, strict=True)]
        return dict(zip(graph.output_names, arrays, strict=True))

    return run


def first(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """A graph's first output (the code of an encoder, the image of a decoder)."""
    return next(iter(outputs.values()))


def compute_scores(kind: str, params: Mapping[str, float | str], run: Runner, x: np.ndarray,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(score per image, per-pixel map): the service's recipe (`service.store.scores.anomaly`) on torch."""

    async def run_async(graph: str, a: np.ndarray) -> dict[str, np.ndarray]:
        return run(graph, a)

    return asyncio.run(scores.anomaly(kind, params, x, run_async))


def calibrate_threshold(kind: str, params: Mapping[str, float | str], val_scores: np.ndarray,
                        quantile: float, population: str) -> AnomalySpec:
    """Threshold = `quantile` of held-out normal validation scores; the logistic scale puts the median
    validation score at MEDIAN_NORMALISED, so normalised scores spread over (0, 1) instead of saturating."""
    if len(val_scores) == 0:
        raise ValueError("cannot calibrate a threshold without validation data")
    v = np.asarray(val_scores, dtype=np.float64)
    threshold = float(np.quantile(v, quantile))
    median = float(np.median(v))
    spread = threshold - median
    if spread <= 0:  # degenerate (constant scores): fall back to the standard deviation
        spread = float(v.std())
    scale = max(spread / math.log(1 / MEDIAN_NORMALISED - 1), 1e-6 * max(abs(threshold), 1.0), 1e-12)
    pct = f"{quantile * 100:g}"
    rule = (f"{pct}th percentile of anomaly scores on held-out validation data ({population}, n={len(v)}); "
            f"logistic scale puts the median validation score at {MEDIAN_NORMALISED}")
    return AnomalySpec(score=kind, params=dict(params), threshold=threshold, rule=rule, scale=scale)  # type: ignore[arg-type]


def fit_prior(codes: np.ndarray, kind: str, components: int, seed: int) -> GaussianPrior | GMMPrior:
    """Ex-post density estimation on training codes: a full-covariance Gaussian or GMM, with a small
    ridge so the covariance stays positive definite (codes of a sparse or linear AE can be degenerate)."""
    codes = np.asarray(codes, dtype=np.float64)
    n, d = codes.shape
    ridge = 1e-6 + 1e-4 * float(codes.var(axis=0).mean())
    if kind == "gaussian" or n < 2 * (d + 1):
        mean = codes.mean(axis=0)
        cov = np.cov(codes, rowvar=False).reshape(d, d) + ridge * np.eye(d)
        return GaussianPrior(mean=mean.tolist(), cov=cov.tolist())
    if kind != "gmm":
        raise ValueError(f"unknown prior kind {kind!r}")
    from sklearn.mixture import GaussianMixture

    k = max(1, min(components, n // (2 * (d + 1))))  # enough points per component for a full covariance
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # tiny matrices: BLAS threads only contend for the shared CPU
        gmm = GaussianMixture(n_components=k, covariance_type="full", reg_covar=ridge, random_state=seed,
                              max_iter=200).fit(codes)
    weights = gmm.weights_ / gmm.weights_.sum()
    return GMMPrior(weights=weights.tolist(), means=gmm.means_.tolist(), covs=gmm.covariances_.tolist())


def latent_prior(model: GenerativeModel, train_x: np.ndarray, kind: str, components: int,
                 seed: int) -> NormalPrior | GaussianPrior | GMMPrior:
    """The prior to publish: N(0, I), or a density fitted on the training codes (the encoder graph's first
    output: the code, or a VAE's posterior mean). `kind` is the trainer's choice for deterministic AEs; a
    family may override it from its own config (`GenerativeModel.latent_prior_kind`: a VAE's `prior`)."""
    chosen = model.latent_prior_kind(kind)
    if chosen == "normal":
        return NormalPrior()
    codes = first(torch_runner(model)("encoder", train_x))
    return fit_prior(codes, chosen, components, seed)


def importance_sampled_nll(model: GenerativeModel, x: np.ndarray, k: int, batch: int = 128) -> float | None:
    """Mean importance-sampled NLL (nats per image) for families that define it (VAEs); None otherwise."""
    fn = getattr(model, "importance_sampled_nll", None)
    if fn is None:
        return None
    device = next(model.parameters()).device
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(device)
            nll = fn(xb, k)  # (B,) per image, or a batch mean
            total += float(nll.sum()) if nll.ndim else float(nll) * len(xb)
    return total / max(len(x), 1)
