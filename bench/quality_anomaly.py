"""Anomaly detection, one-class protocol: per class c, fit on the class-c training images only and score
every test image (normal = c, anomalous = the other nine classes). AUROC per class and the mean, and
AUPR with the normal class as the positive (rare, 10%) class, so the number is not inflated by the 90%
anomaly prevalence.

Ours: every registry family with every score it offers -- reconstruction error (service.store.scores),
plain and with the residual gaussian-blurred first (the `anomaly_blur` model config),
latent Mahalanobis distance (mean and Ledoit-Wolf covariance of the class's training codes), the VAE's
negative ELBO (service.store.scores.vae_elbo) and importance-sampled NLL, and f-AnoGAN for the GAN.
Baselines on the same split in the same run: PCA reconstruction (90% variance), IsolationForest,
OneClassSVM, KernelDensity (bandwidth by 3-fold likelihood CV), PyOD's AutoEncoder and VAE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from quality_common import BenchData, Budget, batched, fit, pool_map
from sklearn.covariance import LedoitWolf
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from service.store import scores
from training.models.base import GenerativeModel
from training.models.vae import VAE

log = logging.getLogger("bench.quality")

#: score name -> (test scores (N,), ) ; larger = more anomalous
Scores = dict[str, np.ndarray]


# --- baselines -----------------------------------------------------------------------------------------


def baseline_scores(xtr: np.ndarray, xte: np.ndarray, budget: Budget, seed: int) -> Scores:
    """Classic detectors on flattened pixels, fitted on the normal class only."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity
    from sklearn.svm import OneClassSVM

    a, b = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    out: Scores = {}
    pca = PCA(n_components=0.9, svd_solver="full", random_state=seed).fit(a)
    out["pca-recon"] = np.mean((b - pca.inverse_transform(pca.transform(b))) ** 2, axis=1)
    iso = IsolationForest(n_estimators=200, random_state=seed).fit(a)
    out["isolation-forest"] = -iso.score_samples(b)
    # gamma "scale" = 1 / (d * var(X)); nu = 0.1 as in the Deep SVDD comparison
    out["ocsvm"] = -OneClassSVM(kernel="rbf", gamma="scale", nu=0.1).fit(a).score_samples(b)
    grid = GridSearchCV(KernelDensity(kernel="gaussian"), {"bandwidth": [0.1, 0.2, 0.5, 1.0, 2.0, 5.0]}, cv=3)
    kde = grid.fit(a).best_estimator_
    out["kde"] = -kde.score_samples(b)
    out.update(pyod_scores(a, b, budget, seed))
    return out


def pyod_scores(a: np.ndarray, b: np.ndarray, budget: Budget, seed: int) -> Scores:
    """PyOD's AutoEncoder and VAE with their default architectures, for `budget.pyod_epochs` epochs."""
    from pyod.models.auto_encoder import AutoEncoder as PyodAE
    from pyod.models.vae import VAE as PyodVAE

    out: Scores = {}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for name, cls in (("pyod-ae", PyodAE), ("pyod-vae", PyodVAE)):
        epochs = {} if budget.pyod_epochs is None else {"epoch_num": budget.pyod_epochs}
        det = cls(random_state=seed, verbose=0, device=dev, **epochs)
        det.fit(a)
        out[name] = np.asarray(det.decision_function(b), dtype=np.float64)
    return out


# --- ours ----------------------------------------------------------------------------------------------


def mahalanobis(train_codes: np.ndarray, test_codes: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance to the training codes' mean under a Ledoit-Wolf (shrunk) covariance:
    codes of a sparse or small-class model are near-degenerate, and the plain estimate would blow up."""
    lw = LedoitWolf().fit(train_codes.astype(np.float64))
    return lw.mahalanobis(test_codes.astype(np.float64))


def _standardise(s: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (s - ref.mean()) / (ref.std() + 1e-12)


def model_scores(model: GenerativeModel, xtr: np.ndarray, xte: np.ndarray, budget: Budget) -> Scores:
    """Every score this family offers, on the test images."""
    out: Scores = {}
    code_tr = np.asarray(batched(model.encode, xtr))
    code_te = np.asarray(batched(model.encode, xte))
    x_hat = np.asarray(batched(model.decode, code_te))
    out["recon"] = scores.reconstruction(xte, x_hat)[0]
    # the model config `anomaly_blur`: the residual gaussian-blurred before squaring, as the service scores it
    blur = budget.anomaly_blur[model.cfg.backbone]
    out["recon-blur"] = scores.reconstruction(xte, x_hat, blur_sigma=blur)[0]
    out["mahalanobis"] = mahalanobis(code_tr, code_te)
    # both, each standardised by its mean and spread on the class's TRAINING images (never the test set)
    rec_tr = scores.reconstruction(xtr, np.asarray(batched(model.decode, code_tr)))[0]
    maha_tr = mahalanobis(code_tr, code_tr)
    out["recon+mahalanobis"] = _standardise(out["recon"], rec_tr) + _standardise(out["mahalanobis"], maha_tr)
    if model.family == "vae":
        mu, logvar = batched(model.posterior, xte)  # type: ignore[attr-defined,misc]
        kind, params = model.anomaly_score()
        out["neg-elbo"] = scores.vae_elbo(xte, x_hat, mu, logvar, likelihood=str(params["likelihood"]),
                                          sigma=float(params["sigma"]))[0]
        torch.manual_seed(0)
        vae: VAE = model  # type: ignore[assignment]
        out[f"is-nll-k{budget.anomaly_is_k}"] = np.asarray(batched(
            lambda t: vae.importance_sampled_nll(t, budget.anomaly_is_k), xte, 250))
    if model.family == "gan":
        f_x = np.asarray(batched(model.critic_features, xte))  # type: ignore[attr-defined]
        f_hat = np.asarray(batched(model.critic_features, x_hat))  # type: ignore[attr-defined]
        kappa = float(model.anomaly_score()[1]["kappa"])
        out["f-anogan"] = scores.fanogan(xte, x_hat, f_x, f_hat, kappa=kappa)[0]
    return out


# --- the protocol ----------------------------------------------------------------------------------------


def evaluate(score: np.ndarray, is_anomaly: np.ndarray) -> dict[str, float]:
    """AUROC (anomaly = positive) and AUPR with the normal class as the positive class."""
    s = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=1e300, posinf=1e300, neginf=-1e300)
    return {"auroc": float(roc_auc_score(is_anomaly, s)),
            "aupr_normal": float(average_precision_score(~is_anomaly, -s)),
            "aupr_anomaly": float(average_precision_score(is_anomaly, s))}


def one_class(data: BenchData, budget: Budget, seed: int, c: int) -> tuple[Scores, dict[str, float]]:
    """Every detector fitted on class c's training images; their scores on the whole test split."""
    xtr, xte = data.train.x[data.train.y == c], data.test.x
    log.info("[%s] one-class %d: %d training images", data.name, c, len(xtr))
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    found = baseline_scores(xtr, xte, budget, seed)
    times["baselines"] = time.perf_counter() - t0
    for fam in budget.families:
        t0 = time.perf_counter()
        model = fit(fam, xtr, data, budget, seed + c, "oneclass")
        for k, v in model_scores(model, xtr, xte, budget).items():
            found[f"{fam}/{k}"] = v
        times[fam] = time.perf_counter() - t0
    return found, times


def run(data: BenchData, budget: Budget, seed: int, result: dict[str, Any] | None = None,
        on_result: Callable[[], None] | None = None) -> dict[str, Any]:
    """The one-class protocol over `budget.classes`: per-method, per-class metrics, wall times, and the ROC
    curves of every method (for the figure), filled into `result` as each class finishes (then
    `on_result`). The classes run in `budget.workers` processes."""
    yte = data.test.y
    per: dict[str, dict[str, dict[str, float]]] = {}  # method -> class -> metrics
    roc: dict[str, dict[str, list[list[float]]]] = {}  # method -> class -> [fpr, tpr] (downsampled)
    times: dict[str, float] = {}
    result = result if result is not None else {}
    result.update({"per_class": per, "roc": roc, "times_s": times, "classes": list(budget.classes)})
    jobs = [(data, budget, seed, c) for c in budget.classes]
    for i, (found, t) in pool_map(one_class, jobs, budget.workers):
        c = budget.classes[i]
        is_anomaly = yte != c
        for k, v in t.items():
            times[k] = times.get(k, 0.0) + v
        for method, s in found.items():
            per.setdefault(method, {})[str(c)] = evaluate(s, is_anomaly)
            fpr, tpr, _ = roc_curve(is_anomaly, np.nan_to_num(s.astype(np.float64), nan=1e300, posinf=1e300))
            keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int))
            curve = [np.round(fpr[keep], 4).tolist(), np.round(tpr[keep], 4).tolist()]
            roc.setdefault(method, {})[str(c)] = curve
        best = max(per, key=lambda m: per[m][str(c)]["auroc"])
        log.info("[%s] class %d done: best %s %.4f; pca %.4f", data.name, c, best, per[best][str(c)]["auroc"],
                 per["pca-recon"][str(c)]["auroc"])
        result["summary"] = summarise(per)
        if on_result is not None:
            on_result()
    return result


def summarise(per: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean over the classes done so far, per method."""
    out = {}
    for method, by_class in per.items():
        vals = list(by_class.values())
        out[method] = {k: float(np.mean([v[k] for v in vals])) for k in vals[0]} | {"n_classes": len(vals)}
    return out
