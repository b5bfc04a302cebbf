"""Anomaly-score definitions, in numpy: the single source of truth for both halves.

Training calibrates thresholds with these functions (on the torch model's outputs turned into numpy);
the service scores requests with them (on onnxruntime outputs). Each returns (score per image (B,),
per-pixel map (B, C, H, W)) where a larger score means more anomalous.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_EPS = 1e-6


def reconstruction(x: np.ndarray, x_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean squared reconstruction error per image; the map is the squared residual."""
    err = np.square(x - x_hat, dtype=np.float32)  # (B, C, H, W)
    return err.reshape(len(x), -1).mean(axis=1), err


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


def normalise(raw: np.ndarray, threshold: float, scale: float) -> np.ndarray:
    """Logistic map with the threshold at 0.5."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(raw, dtype=np.float64) - threshold) / scale))


def params_float(params: Mapping[str, float | str], key: str, default: float) -> float:
    v = params.get(key, default)
    return float(v)
