"""Anomaly scores, in numpy: the single source of truth for both halves.

`anomaly(kind, params, x, run)` is the recipe (score kind -> graphs -> score): which graphs run on what, and
which score function turns their outputs into scores. Training calls it to calibrate thresholds (its runner is
the torch model, in eval mode); the service calls it to score requests (its runner is onnxruntime, behind the
batcher). Every score function returns (score per image (B,), per-pixel map (B, C, H, W)); a larger score
means more anomalous.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import numpy as np

#: Runs one graph of a model on one input array: `await run("encoder", x)` gives the outputs by name, in the
#: graph's output order.
GraphRunner = Callable[[str, np.ndarray], Awaitable[dict[str, np.ndarray]]]


async def anomaly(
    kind: str, params: Mapping[str, float | str], x: np.ndarray, run: GraphRunner
) -> tuple[np.ndarray, np.ndarray]:
    """(raw score per image, per-pixel map) of score `kind` for images x (B, C, H, W).

    encoder -> its first output (the code, or a VAE's mean) -> decoder -> x_hat; then by kind:
    reconstruction (x, x_hat), vae_elbo (x, x_hat and the encoder's mean and log-variance), fanogan (x, x_hat
    and the critic's features of each: its output named "features", else its last), segmentation (the
    segmenter's map of [x, x_hat], concatenated on channels: a DRAEM-style discriminative network)."""
    enc = list((await run("encoder", x)).values())
    x_hat = next(iter((await run("decoder", enc[0])).values()))
    if kind == "segmentation":
        pair = np.concatenate([x, np.asarray(x_hat, dtype=x.dtype)], axis=1)  # (B, 2C, H, W)
        prob = next(iter((await run("segmenter", pair)).values()))
        return segmentation(prob, blur_sigma=params_float(params, "blur_sigma", 0.0))
    if kind == "reconstruction":
        return reconstruction(x, x_hat, blur_sigma=params_float(params, "blur_sigma", 0.0))
    if kind == "vae_elbo":
        if len(enc) < 2:
            raise ValueError("the vae_elbo score needs an encoder with a mean and a log-variance output")
        return vae_elbo(x, x_hat, enc[0], enc[1], likelihood=str(params.get("likelihood", "bernoulli")),
                        sigma=params_float(params, "sigma", 0.1))
    if kind == "fanogan":
        f_x, f_x_hat = _features(await run("critic", x)), _features(await run("critic", x_hat))
        return fanogan(x, x_hat, f_x, f_x_hat, kappa=params_float(params, "kappa", 1.0))
    raise ValueError(f"unknown anomaly score kind {kind!r}")


def _features(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The critic's feature output: the one named "features", else the last one."""
    return outputs["features"] if "features" in outputs else list(outputs.values())[-1]

_EPS = 1e-6


def reconstruction(
    x: np.ndarray, x_hat: np.ndarray, blur_sigma: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Mean squared reconstruction error per image; the map is the squared residual.

    With `blur_sigma` > 0 (pixels) the residual is gaussian-blurred before squaring: strokes a little off
    leave +/- residual pairs that cancel, while ink that is missing or extra over an area does not, so the
    score tracks shape more than alignment (on 28x28 MNIST, one-class AUROC rises by about a point).
    """
    res = np.asarray(x - x_hat, dtype=np.float32)  # (B, C, H, W)
    if blur_sigma > 0:
        res = gaussian_blur(res, blur_sigma)
    err = np.square(res)
    return err.reshape(len(x), -1).mean(axis=1), err


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable gaussian blur over the last two axes (H, W); zero padding, kernel radius ceil(3 sigma)."""
    r = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    h, w = a.shape[-2:]
    pad = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(r, r), (r, r)])
    rows = sum(k[i] * pad[..., i:i + h, :] for i in range(2 * r + 1))  # (..., H, W + 2r)
    return np.asarray(sum(k[j] * rows[..., :, j:j + w] for j in range(2 * r + 1)), dtype=np.float32)


def vae_elbo(
    x: np.ndarray, x_hat: np.ndarray, mu: np.ndarray, logvar: np.ndarray, likelihood: str = "bernoulli",
    sigma: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Negative ELBO per image (nats), with the decoder evaluated at the posterior mean.

    The map is the per-pixel negative log-likelihood; the KL term is added to the score only.
    """
    if likelihood == "bernoulli":
        p = np.clip(x_hat, _EPS, 1 - _EPS)
        nll = -(x * np.log(p) + (1 - x) * np.log1p(-p))
    elif likelihood == "gaussian":
        nll = 0.5 * np.square(x - x_hat) / sigma**2 + 0.5 * np.log(2 * np.pi * sigma**2)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}")
    nll = nll.astype(np.float32)
    kl = -0.5 * np.sum(1 + logvar - np.square(mu) - np.exp(logvar), axis=1)
    return nll.reshape(len(x), -1).sum(axis=1) + kl, nll


def fanogan(
    x: np.ndarray, x_hat: np.ndarray, f_x: np.ndarray, f_x_hat: np.ndarray, kappa: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """f-AnoGAN izi_f score: pixel MSE of x against G(E(x)) plus kappa times the critic-feature MSE."""
    err = np.square(x - x_hat, dtype=np.float32)
    feat = np.square(f_x - f_x_hat, dtype=np.float32).reshape(len(x), -1).mean(axis=1)
    return err.reshape(len(x), -1).mean(axis=1) + kappa * feat, err


def segmentation(prob: np.ndarray, blur_sigma: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A segmenter's map, p(anomalous) per pixel (B, 1, H, W), is the map, gaussian-blurred (`blur_sigma`
    pixels, as the reconstruction score's residual) when asked: a defect's pixels then score together, and
    isolated false alarms fade. The score is the map's maximum (a map model's manifest reduces the map
    instead: `anomaly.map`)."""
    p = np.asarray(prob, dtype=np.float32)
    if blur_sigma > 0:
        p = gaussian_blur(p, blur_sigma)
    return p.reshape(len(p), -1).max(axis=1), p


def normalise(raw: np.ndarray, threshold: float, scale: float) -> np.ndarray:
    """Logistic map with the threshold at 0.5."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(raw, dtype=np.float64) - threshold) / scale))


def params_float(params: Mapping[str, float | str], key: str, default: float) -> float:
    v = params.get(key, default)
    return float(v)


# --- maps: image score, thresholds by false-positive rate ---------------------------------------------------
def pixel_map(score_map: np.ndarray) -> np.ndarray:
    """The anomaly map of a score's map: (B, C, H, W) -> (B, H, W), the mean over channels."""
    return np.asarray(score_map, dtype=np.float32).mean(axis=1)


def reduce_map(amap: np.ndarray, reduction: str, top_fraction: float = 0.01) -> np.ndarray:
    """Image scores (B,) from anomaly maps (B, H, W): the mean, the max, or the mean of the top fraction of
    pixels (at least one), the reduction a manifest's `anomaly.map` names."""
    flat = np.asarray(amap, dtype=np.float64).reshape(len(amap), -1)
    if reduction == "mean":
        return flat.mean(axis=1)
    if reduction == "max":
        return flat.max(axis=1)
    if reduction == "top_mean":
        k = max(1, int(round(flat.shape[1] * top_fraction)))
        return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1)
    raise ValueError(f"unknown map reduction {reduction!r}")


def threshold_at_fpr(probs: list[float], quantiles: list[float], fpr: float) -> float:
    """The threshold that flags a share `fpr` of normal scores: their (1 - fpr) quantile, interpolated
    between the calibration's quantiles (clamped to the ones recorded)."""
    return float(np.interp(1.0 - fpr, probs, quantiles))
