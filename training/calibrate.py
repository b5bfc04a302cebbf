"""Calibration and evaluation at training time: anomaly threshold, latent prior, test metrics.

Scores come from `service.store.scores` applied to the outputs of the very graphs that get exported
(the family's `export_graphs()` modules, run by torch in eval mode), so the threshold the service compares
against is measured on the same numbers it will compute with onnxruntime.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import torch

from service.store import scores
from service.store.manifest import (
    AnomalySpec,
    Calibration,
    GaussianPrior,
    GMMPrior,
    MapSpec,
    NormalPrior,
    Prior,
)
from training.models.base import GenerativeModel

log = logging.getLogger(__name__)


class Runner(Protocol):
    """graph name, its input array (and the labels, for a graph that takes them) -> the graph's outputs by
    name, in output order. Labels are int class indices (N,) or one-hot (N, K); a graph without a label
    input ignores them."""

    def __call__(self, name: str, x: np.ndarray, y: np.ndarray | None = None) -> dict[str, np.ndarray]: ...

BATCH = 512
#: ... and at most this many input elements per batch: crops and photos are larger than digits.
BATCH_ELEMENTS = 2**20
#: The median validation score maps to this normalised score (the threshold maps to 0.5).
MEDIAN_NORMALISED = 0.1
#: Map models publish their normal scores' quantiles at these probabilities (anomaly.calibration): the
#: service turns a false-positive rate r into the (1 - r) quantile, so they cover r from 50% to 0.1%.
CALIBRATION_PROBS = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
#: Code vectors (one per latent position) a spatial model's prior is fitted on, at most.
PRIOR_POSITIONS = 4096


def one_hot(y: np.ndarray, k: int) -> np.ndarray:
    """int class indices (N,) -> one-hot float32 (N, K); a (N, K) float label passes as float32."""
    y = np.asarray(y)
    if y.ndim == 2:
        return y.astype(np.float32)
    return np.eye(k, dtype=np.float32)[y.astype(np.int64)]


def torch_runner(model: GenerativeModel) -> Runner:
    """Run the model's export graphs with torch (eval mode, no grad, on the model's device), batched; the
    outputs carry the names the exported graphs give them."""
    graphs = model.export_graphs()
    model.eval()
    device = next(model.parameters()).device

    @torch.no_grad()
    def run(name: str, x: np.ndarray, y: np.ndarray | None = None) -> dict[str, np.ndarray]:
        graph = graphs[name]
        if graph.num_classes and y is None:
            raise ValueError(f"graph {name!r} takes the label: pass y")
        labels = one_hot(y, graph.num_classes) if graph.num_classes and y is not None else None
        chunks: list[list[np.ndarray]] = []
        bs = max(1, min(BATCH, BATCH_ELEMENTS // max(1, int(np.prod(x.shape[1:])))))
        for i in range(0, len(x), bs):
            xs = [x[i:i + bs]] + ([labels[i:i + bs]] if labels is not None else [])
            out = graph.module(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in xs))
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


def image_scores(spec: AnomalySpec, run: Runner, x: np.ndarray) -> np.ndarray:
    """Image scores as a manifest defines them: the score's raw value, or for a map score (`spec.map`) the
    reduction of its anomaly map, `scores.reduce_map(scores.pixel_map(map), ...)`, as the service computes."""
    raw, score_map = compute_scores(spec.score, spec.params, run, x)
    if spec.map is None:
        return raw
    return scores.reduce_map(scores.pixel_map(score_map), spec.map.reduction, spec.map.top_fraction)


def _quantiles(values: np.ndarray, probs: tuple[float, ...]) -> list[float]:
    q = np.quantile(np.asarray(values, dtype=np.float64), probs)
    return np.maximum.accumulate(q).tolist()  # ascending even where float rounding would say otherwise


def calibrate_map(kind: str, params: Mapping[str, float | str], run: Runner, val_x: np.ndarray, *,
                  quantile: float, pixel_quantile: float, reduction: str, top_fraction: float,
                  min_region_pixels: int, population: str) -> AnomalySpec:
    """The anomaly section of a map model, from held-out normal images `val_x`: image score = the map's
    `reduction`; image threshold and logistic scale by `calibrate_threshold`'s rule on those scores; pixel
    threshold = the `pixel_quantile` of all their map values; and the quantiles of both at
    CALIBRATION_PROBS, for thresholds by false-positive rate."""
    _, score_map = compute_scores(kind, params, run, val_x)
    amap = scores.pixel_map(score_map)  # (N, H, W)
    img = scores.reduce_map(amap, reduction, top_fraction)
    base = calibrate_threshold(kind, params, img, quantile, population)
    h, w = amap.shape[1:]
    how = f"{reduction} of the anomaly map" + (f" over its top {top_fraction:g} of pixels"
                                               if reduction == "top_mean" else "")
    pixel_rule = (f"{pixel_quantile * 100:g}th percentile of the anomaly-map values of held-out validation "
                  f"images ({population}, {len(amap)} windows of {h}x{w}, {amap.size} pixels)")
    spec = base.model_dump()
    spec["rule"] = f"image score = {how}; threshold = {base.rule}"
    return AnomalySpec(**{**spec, "map": MapSpec(
        reduction=reduction, top_fraction=top_fraction,  # type: ignore[arg-type]
        pixel_threshold=float(np.quantile(amap.astype(np.float64), pixel_quantile)), pixel_rule=pixel_rule,
        min_region_pixels=min_region_pixels,
    ), "calibration": Calibration(probs=list(CALIBRATION_PROBS), image=_quantiles(img, CALIBRATION_PROBS),
                                  pixel=_quantiles(amap, CALIBRATION_PROBS))})


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
                 seed: int, train_y: np.ndarray | None = None) -> NormalPrior | GaussianPrior | GMMPrior:
    """The prior to publish: N(0, I), or a density fitted on the training codes (the encoder graph's first
    output: the code, or a VAE's posterior mean). `kind` is the trainer's choice for deterministic AEs; a
    family may override it from its own config (`GenerativeModel.latent_prior_kind`: a VAE's `prior`).
    `train_y`: the labels, for an encoder that takes them (a CVAE's)."""
    chosen = model.latent_prior_kind(kind)
    if chosen == "normal":
        return NormalPrior()
    codes = first(torch_runner(model)("encoder", train_x, train_y))
    if codes.ndim == 4:  # a spatial code (N, C_z, h, w): the density of one position's code vector
        codes = codes.transpose(0, 2, 3, 1).reshape(-1, codes.shape[1])
        if len(codes) > PRIOR_POSITIONS:
            codes = codes[np.random.default_rng(seed).choice(len(codes), PRIOR_POSITIONS, replace=False)]
    return fit_prior(codes, chosen, components, seed)


def class_priors(model: GenerativeModel, train_x: np.ndarray, train_y: np.ndarray, components: int,
                 seed: int) -> list[Prior] | None:
    """One prior per class for a conditional family configured with one (`class_prior_kind`): a
    Gaussian/GMM fitted on the codes of that class's training images (`fit_prior`, with `components` at
    most). None: the family has none, and the latent prior serves every class. A class with fewer than two
    training images gets N(0, I)."""
    kind = model.class_prior_kind()
    if kind is None:
        return None
    codes = first(torch_runner(model)("encoder", train_x, train_y))
    priors: list[Prior] = []
    for c in range(model.num_classes):
        mine = codes[train_y == c]
        if len(mine) < 2:
            log.warning("class %d has %d training image(s): its prior is N(0, I)", c, len(mine))
            priors.append(NormalPrior())
        else:
            priors.append(fit_prior(mine, kind, components, seed))
    return priors


def importance_sampled_nll(model: GenerativeModel, x: np.ndarray, k: int, batch: int = 128,
                           y: np.ndarray | None = None) -> float | None:
    """Mean importance-sampled NLL (nats per image) for families that define it (VAEs); None otherwise. With
    labels `y` (a conditional family), -log p(x | y)."""
    fn = getattr(model, "importance_sampled_nll", None)
    if fn is None:
        return None
    device = next(model.parameters()).device
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(device)
            given = {} if y is None else {"y": torch.from_numpy(np.asarray(y[i:i + batch])).to(device)}
            nll = fn(xb, k, **given)  # (B,) per image, or a batch mean
            total += float(nll.sum()) if nll.ndim else float(nll) * len(xb)
    return total / max(len(x), 1)
