"""Conditional generation (issue 18): are a conditional model's samples of the class asked for, and how close
is each class's sample set to that class's test images, beside the unconditional model of the same family?

Per dataset and training seed (budget.cond_seeds of them; the unconditional ones, a reference, the first
budget.uncond_seeds): the conditional families (cvae, cgan, saae) and their unconditional counterparts (vae,
gan, aae), with the same settings but the label, each trained on the whole training split by the project's
Trainer (a seeded 10% held out for early stopping). Then, per model:

- **class accuracy**: n_per_class samples of every class, codes drawn as the service's sample op draws them
  (`service.ops.draw_prior`) from the sampling prior chosen below, scored by the judge;
- **per-class Fréchet distance**, in the judge's 128-d penultimate features: class c's samples against
  class c's test images. An unconditional model's samples (n_per_class * K of them) are assigned to classes
  by the judge's argmax. The floor: class c's training images against class c's test images, as many as
  there are samples;
- **restyle accuracy**: every test image encoded and decoded as the next class, (y + 1) mod K, judged.

The judge is the benchmark's independent classifier (quality_generation.FeatureNet, trained on the training
split), trained for the number of epochs, among budget.judge_epochs, whose accuracy on a seeded tenth of the
training split held out from it is highest; its own per-class test accuracy is reported as the ceiling.

Knobs come from training-split proxies only: the sampling prior of each family (N(0, I), one density fitted
on all training codes, or one per class: `class_prior`) is the one whose class-balanced samples have the
lowest Fréchet distance to the training images held out for early stopping (mean over seeds); the class
accuracy of those samples is reported beside it. No test image is used to choose anything.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np
import torch
from quality_common import BenchData, Budget, batched, fit, holdout, pool_map
from quality_generation import FeatureNet, fit_classifier, frechet

from service.ops import draw_prior
from service.store.manifest import LatentSpec, NormalPrior, Prior
from training.calibrate import fit_prior
from training.models.base import GenerativeModel
from training.models.conditional import decode, encode

log = logging.getLogger("bench.quality")

#: conditional family -> its unconditional counterpart
PAIRS = {"cvae": "vae", "cgan": "gan", "saae": "aae"}
#: The sampling priors a family can publish: "normal" N(0, I); "fitted": one GMM on all training codes
#: (the VAE config `prior`, the AE families' ex-post density); "class-gaussian" / "class-gmm": one per class
#: (the conditional config `class_prior`). A GAN has no encoder to fit anything on.
PRIOR_OPTIONS = {"cvae": ("normal", "fitted", "class-gaussian", "class-gmm"), "cgan": ("normal",),
                 "saae": ("normal", "fitted", "class-gaussian", "class-gmm"), "vae": ("normal", "fitted"),
                 "gan": ("normal",), "aae": ("normal", "fitted")}
FITTED_COMPONENTS = 10  # components of the fitted GMMs (fit_prior caps them by the codes available)
ORDER = ("cgan", "gan", "saae", "aae", "cvae", "vae")  # slowest first, for the worker pool


# --- the judge -----------------------------------------------------------------------------------------


def train_judge(data: BenchData, budget: Budget, seed: int) -> tuple[FeatureNet, dict[str, Any]]:
    """The judge, its epochs picked on a held-out tenth of the training split, then refitted on all of it;
    with its per-class test accuracy (the ceiling of any generator's class accuracy)."""
    tr, va = holdout(len(data.train), seed)
    x, y = data.train.x, data.train.y
    _, accs = fit_classifier(x[tr], y[tr], data.shape, max(budget.judge_epochs), seed, budget.judge_epochs,
                             (x[va], y[va]))
    epochs = max(accs, key=lambda e: (accs[e], -e))  # the fewest epochs among the best
    net, _ = fit_classifier(x, y, data.shape, epochs, seed)
    pred = np.asarray(batched(net, data.test.x)).argmax(1)
    per = {str(c): float(np.mean(pred[data.test.y == c] == c)) for c in range(10)}
    log.info("[%s] judge: %d epochs (held-out accuracy %s), test accuracy %.4f", data.name, epochs,
             {e: round(a, 4) for e, a in accs.items()}, float(np.mean(pred == data.test.y)))
    return net, {"epochs": epochs, "heldout_acc": {str(e): a for e, a in accs.items()},
                 "test_acc": float(np.mean(pred == data.test.y)), "test_acc_per_class": per}


# --- the models ----------------------------------------------------------------------------------------


def train_one(family: str, data: BenchData, budget: Budget, seed: int) -> tuple[GenerativeModel, float]:
    """One model of the section on the whole training split, and its training time."""
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if family in ("gan", "cgan"):
        extra["encoder_epochs"] = budget.cond_gan_encoder_epochs  # only restyle uses the cGAN's encoder
    labels = data.train.y if family in PAIRS else None
    model = fit(family, data.train.x, data, budget, seed, "full", y=labels, **extra)
    return model, time.perf_counter() - t0


@torch.no_grad()
def paired(fn: Any, a: np.ndarray, y: np.ndarray | None, batch: int = 500) -> np.ndarray:
    """fn(a batch, its labels or None) over `a` in batches, concatenated."""
    out = []
    for i in range(0, len(a), batch):
        t = torch.from_numpy(np.ascontiguousarray(a[i:i + batch]))
        out.append(fn(t, None if y is None else torch.from_numpy(y[i:i + batch])).float().numpy())
    return np.concatenate(out)


def priors(model: GenerativeModel, x: np.ndarray, y: np.ndarray, option: str, seed: int) -> list[Prior]:
    """The sampling prior of `option` for each of the 10 classes (one for all of them unless the option is
    per class), fitted on the codes of the training images `x` (labels `y`) as publishing fits them."""
    if option == "normal":
        return [NormalPrior()] * 10
    codes = paired(lambda t, yt: encode(model, t, yt), x, y)
    if option == "fitted":
        return [fit_prior(codes, "gmm", FITTED_COMPONENTS, seed)] * 10
    kind = option.removeprefix("class-")
    return [fit_prior(codes[y == c], kind, FITTED_COMPONENTS, seed) for c in range(10)]


def sample(model: GenerativeModel, by_class: list[Prior], labels: np.ndarray, seed: int) -> np.ndarray:
    """One image per entry of `labels`: its code drawn from its class's prior by the service's draw_prior,
    decoded with the label (an unconditional model: the labels only pick the prior; its decoder has none)."""
    z = np.zeros((len(labels), model.cfg.latent_dim), np.float32)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        z[idx] = draw_prior(LatentSpec(dim=model.cfg.latent_dim, prior=by_class[c]), len(idx), rng)
    return paired(lambda t, yt: decode(model, t, yt), z, labels if model.conditional else None)


# --- the section ----------------------------------------------------------------------------------------


def choose(proxy: dict[str, dict[str, float]], conditional: bool, target: float) -> str:
    """The option with the lowest mean proxy Fréchet distance; for a conditional family, among those whose
    proxy class accuracy meets `target` (else the most accurate): a sampler of the wrong class is no
    conditional sampler, however close its mixture of digits is to the data's."""
    options = [o for o in proxy if o in PRIOR_OPTIONS["cvae"]]  # not the "restyle" entry
    if conditional:
        good = [o for o in options if proxy[o]["acc"] >= target]
        if not good:
            return max(options, key=lambda o: proxy[o]["acc"])
        options = good
    return min(options, key=lambda o: proxy[o]["fd"])


class Scorer:
    """The judge's features and classes, and the test images by class."""

    def __init__(self, judge: FeatureNet, data: BenchData) -> None:
        self.judge, self.data = judge, data
        self.test_feats = self.features(data.test.x)

    def features(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(batched(self.judge.features, x)).astype(np.float64)

    def classes(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(batched(self.judge, x)).argmax(1)

    def per_class_fd(self, feats: np.ndarray, assigned: np.ndarray) -> dict[str, float]:
        """Class c's Fréchet distance: the features assigned to c against class c's test images (NaN when
        fewer than 2 are assigned to it)."""
        out = {}
        with warnings.catch_warnings():  # few images of a class in 128-d: sqrtm warns of a singular product
            warnings.simplefilter("ignore")
            for c in range(10):
                mine = feats[assigned == c]
                real = self.test_feats[self.data.test.y == c]
                out[str(c)] = frechet(real, mine) if len(mine) >= 2 else float("nan")
        return out


def proxy_scores(model: GenerativeModel, fam: str, data: BenchData, scorer: Scorer, seed: int
                 ) -> dict[str, dict[str, float]]:
    """Per prior option: the Fréchet distance of samples (the held-out images' labels) to the training
    images held out for early stopping, and (conditional) the samples' class accuracy."""
    tr, va = holdout(len(data.train), seed)
    x, y = data.train.x, data.train.y
    ref = scorer.features(x[va])
    out = {}
    with warnings.catch_warnings():  # a few hundred images in 128-d: sqrtm may warn of a singular product
        warnings.simplefilter("ignore")
        for option in PRIOR_OPTIONS[fam]:
            s = sample(model, priors(model, x[tr], y[tr], option, seed), y[va], seed + 7)
            acc = float(np.mean(scorer.classes(s) == y[va])) if model.conditional else float("nan")
            out[option] = {"fd": frechet(ref, scorer.features(s)), "acc": acc}
    if model.conditional:  # the held-out images decoded as the next class (no prior involved)
        out["restyle"] = {"acc": restyle_accuracy(model, x[va], y[va], scorer)[0]}
    return out


def restyle_accuracy(model: GenerativeModel, x: np.ndarray, y: np.ndarray, scorer: Scorer
                     ) -> tuple[float, np.ndarray, np.ndarray]:
    """The share of images `x` (labels `y`) that, encoded and decoded as the next class (y + 1) mod 10, the
    judge calls that class; with the hits and the targets."""
    target = (y + 1) % 10
    z = paired(lambda a, yt: encode(model, a, yt), x, y)
    hit = scorer.classes(paired(lambda a, yt: decode(model, a, yt), z, target)) == target
    return float(np.mean(hit)), hit, target


def test_scores(model: GenerativeModel, fam: str, option: str, data: BenchData, scorer: Scorer,
                budget: Budget, seed: int) -> dict[str, Any]:
    """Class accuracy, per-class Fréchet distance (and restyle accuracy) on the test split, sampling from
    `option`."""
    tr, _ = holdout(len(data.train), seed)
    labels = np.repeat(np.arange(10), budget.n_per_class)
    s = sample(model, priors(model, data.train.x[tr], data.train.y[tr], option, seed), labels, seed + 11)
    pred = scorer.classes(s)
    feats = scorer.features(s)
    out: dict[str, Any] = {"prior": option}
    if model.conditional:
        out["acc"] = float(np.mean(pred == labels))
        out["acc_per_class"] = {str(c): float(np.mean(pred[labels == c] == c)) for c in range(10)}
        out["fd_per_class"] = scorer.per_class_fd(feats, labels)
        out["restyle_acc"], hit, target = restyle_accuracy(model, data.test.x, data.test.y, scorer)
        out["restyle_acc_per_class"] = {str(c): float(np.mean(hit[target == c])) for c in range(10)}
    else:  # the judge assigns each sample its class
        out["fd_per_class"] = scorer.per_class_fd(feats, pred)
        out["assigned"] = {str(c): int(np.sum(pred == c)) for c in range(10)}
    out["fd_mean"] = float(np.nanmean(list(out["fd_per_class"].values())))
    return out


def floor(data: BenchData, scorer: Scorer, budget: Budget) -> dict[str, float]:
    """Class c's training images (n_per_class of them) against its test images: the per-class floor."""
    feats, labels = [], []
    for c in range(10):
        x = data.train.x[data.train.y == c][:budget.n_per_class]
        feats.append(scorer.features(x))
        labels.append(np.full(len(x), c))
    return scorer.per_class_fd(np.concatenate(feats), np.concatenate(labels))


def _mean(values: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([v[k] for v in values])) for k in values[0]}


def _min(values: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.min([v[k] for v in values])) for k in values[0]}


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the seeds (and the worst seed of each accuracy)."""
    first = per_seed[0]
    out: dict[str, Any] = {"prior": first["prior"], "seeds": len(per_seed),
                           "fd_per_class": _mean([r["fd_per_class"] for r in per_seed]),
                           "fd_mean": float(np.mean([r["fd_mean"] for r in per_seed]))}
    for key in ("acc", "restyle_acc"):
        if key in first:
            out[key] = float(np.mean([r[key] for r in per_seed]))
            out[f"{key}_min_seed"] = float(np.min([r[key] for r in per_seed]))
            out[f"{key}_per_class"] = _mean([r[f"{key}_per_class"] for r in per_seed])
            out[f"{key}_per_class_min_seed"] = _min([r[f"{key}_per_class"] for r in per_seed])
    if "assigned" in first:
        out["assigned"] = _mean([r["assigned"] for r in per_seed])
    return out


def grids(model: GenerativeModel, data: BenchData, seed: int, cols: int = 10) -> dict[str, np.ndarray]:
    """The figure's pictures: "classes", one row per class with the same z ~ N(0, I) down each column; and
    "restyle", one test image per class (first column) decoded as each class."""
    z = np.random.default_rng(seed).standard_normal((cols, model.cfg.latent_dim)).astype(np.float32)
    rows = [paired(lambda t, yt: decode(model, t, yt), z, np.full(cols, c)) for c in range(10)]
    t = data.test
    firsts = np.array([np.flatnonzero(t.y == c)[0] for c in range(10)])
    codes = paired(lambda a, yt: encode(model, a, yt), t.x[firsts], t.y[firsts])

    def as_every_class(code: np.ndarray) -> np.ndarray:  # (1, d) -> (10, C, H, W)
        return paired(lambda a, yt: decode(model, a, yt), np.repeat(code, 10, axis=0), np.arange(10))

    restyle = [np.concatenate([t.x[i:i + 1], as_every_class(codes[r:r + 1])]) for r, i in enumerate(firsts)]
    return {"classes": np.concatenate(rows), "restyle": np.concatenate(restyle)}


def run(data: BenchData, budget: Budget, seed: int) -> dict[str, Any]:
    """The section on one dataset: returns JSON-able results, and the figures' pictures under "grids"."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    judge, judge_info = train_judge(data, budget, seed)
    times["judge"] = time.perf_counter() - t0
    scorer = Scorer(judge, data)
    seeds = [seed + i for i in range(budget.cond_seeds)]
    trained = {fam: seeds if fam in PAIRS else seeds[:budget.uncond_seeds] for fam in ORDER}
    jobs = [(fam, data, budget, s) for s in seeds for fam in ORDER if s in trained[fam]]
    models: dict[tuple[str, int], GenerativeModel] = {}
    for i, (model, seconds) in pool_map(train_one, jobs, budget.workers):
        fam, s = jobs[i][0], jobs[i][3]
        models[(fam, s)] = model
        times[f"{fam} train"] = times.get(f"{fam} train", 0.0) + seconds
        log.info("[%s] %s seed %d trained in %.1f s", data.name, fam, s, seconds)
    t0 = time.perf_counter()
    proxy: dict[str, dict[str, dict[str, float]]] = {}
    for fam in ORDER:
        runs = [proxy_scores(models[(fam, s)], fam, data, scorer, s) for s in trained[fam]]
        proxy[fam] = {o: {k: float(np.mean([r[o][k] for r in runs])) for k in runs[0][o]} for o in runs[0]}
    chosen = {fam: choose(proxy[fam], fam in PAIRS, budget.target_class_acc) for fam in ORDER}
    log.info("[%s] priors chosen on the proxy: %s", data.name, chosen)
    results = {fam: summarise([test_scores(models[(fam, s)], fam, chosen[fam], data, scorer, budget, s)
                               for s in trained[fam]]) for fam in ORDER}
    times["scoring"] = time.perf_counter() - t0
    for fam in PAIRS:
        r = results[fam]
        log.info("[%s] %s (%s): class accuracy %.4f (worst class %.4f), restyle %.4f, FD %.2f vs %s %.2f",
                 data.name, fam, r["prior"], r["acc"], min(r["acc_per_class"].values()), r["restyle_acc"],
                 r["fd_mean"], PAIRS[fam], results[PAIRS[fam]]["fd_mean"])
    pictures = {fam: grids(models[(fam, seeds[0])], data, seed) for fam in PAIRS}
    return {"judge": judge_info, "seeds": seeds, "n_per_class": budget.n_per_class, "proxy": proxy,
            "chosen": chosen, "models": results, "floor": floor(data, scorer, budget),
            "target": budget.target_class_acc, "times_s": times, "grids": pictures}
