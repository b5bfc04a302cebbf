"""Shared pieces of the quality benchmark: datasets and splits, the budget, and fitting a registry model.

Every section trains through the project's own `training.trainer.Trainer` (the loop users run), with
a seeded 10% of the training images held out for early stopping. Nothing here touches the test split
except to hand it to the sections for scoring.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import TrainConfig
from training.data import DataError, ImageSet, Splits, load
from training.models import REGISTRY, UNCONDITIONAL
from training.models.base import GenerativeModel, ModelConfig
from training.trainer import Trainer

log = logging.getLogger("bench.quality")

REPO = Path(__file__).resolve().parent.parent
#: Where "mnist-10k" is read from; LATENTSERVE_MNIST_DIR overrides it.
MNIST_DIR = Path(os.environ.get("LATENTSERVE_MNIST_DIR", REPO.parent / "shared" / "datasets" / "mnist-t10k"))
MNIST_TRAIN, MNIST_TEST = 8000, 2000
SPLIT_SEED = 20240611  # the seeded permutation of both datasets; recorded in the report


@dataclass(frozen=True)
class BenchData:
    """One dataset, split once for every section: train (model fitting), test (all scoring)."""

    name: str
    train: ImageSet
    test: ImageSet
    seed: int
    backbone: str  # "conv" for 28x28, "mlp" for 8x8
    source: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.train.shape

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "seed": self.seed, "train": len(self.train), "test": len(self.test),
                "shape": list(self.shape), "backbone": self.backbone}


def _split(data: ImageSet, name: str, n_train: int, seed: int, backbone: str, source: str) -> BenchData:
    perm = np.random.default_rng(seed).permutation(len(data))
    return BenchData(name, data.subset(perm[:n_train]), data.subset(perm[n_train:]), seed, backbone, source)


def load_datasets(names: tuple[str, ...], seed: int = SPLIT_SEED,
                  limit: int | None = None) -> list[BenchData]:
    """The benchmark datasets that are present; an absent MNIST folder is skipped with a logged reason.

    `limit` keeps only the first `limit` images after the permutation (quick runs), in the same 80/20 ratio.
    """
    out = []
    for name in names:
        if name == "digits":
            d = load("digits")
            n_train = int(round(0.8 * len(d)))
            bd = _split(d, "digits", n_train, seed, "mlp", "sklearn.datasets.load_digits (embedded), 80/20")
        elif name == "mnist-10k":
            try:
                d = load(MNIST_DIR, split_name="t10k")
            except DataError as exc:
                log.warning("SKIP mnist-10k: %s (set LATENTSERVE_MNIST_DIR to the folder holding "
                            "t10k-images-idx3-ubyte.gz)", exc)
                continue
            bd = _split(d, "mnist-10k", MNIST_TRAIN, seed, "conv", f"{MNIST_DIR} (MNIST t10k), 8000/2000")
        else:
            raise ValueError(f"unknown benchmark dataset {name!r}")
        if limit is not None:
            n_tr = min(len(bd.train), int(0.8 * limit))
            n_te = min(len(bd.test), limit - n_tr)
            bd = replace(bd, train=bd.train.subset(np.arange(n_tr)), test=bd.test.subset(np.arange(n_te)))
        out.append(bd)
    return out


@dataclass(frozen=True)
class Budget:
    """How much work each section does. `full()` is the reported run; `quick()` is the smoke run.

    Training length is set in optimiser steps per backbone (one-class sets are small: 130 digits or ~720
    MNIST images, so epochs would say little) and in epochs for the models fitted on a whole training split.
    Early stopping (patience epochs without validation improvement) may end any of them sooner.
    """

    batch_size: int = 64
    patience: int = 5
    oneclass_steps: dict[str, int] = field(default_factory=lambda: {"mlp": 1000, "conv": 250})
    full_epochs: dict[str, int] = field(default_factory=lambda: {"mlp": 150, "conv": 12})
    denoise_epochs: dict[str, int] = field(default_factory=lambda: {"mlp": 150, "conv": 20})
    #: the GAN generator for the generation section: MNIST FD 115 after 12 epochs, 76 after 25 (then 10
    #: epochs of its f-AnoGAN encoder, which only the interpolation strips use)
    gan_epochs: dict[str, int] = field(default_factory=lambda: {"mlp": 150, "conv": 25})
    #: per-family factor on the one-class steps: the contractive penalty costs d extra backward passes a
    #: step; the plain AE gets twice the steps (MNIST mean AUROC, recon-blur: 97.1 at 250, 97.5 at 500)
    family_factor: dict[str, float] = field(default_factory=lambda: {"ae": 2.0, "ae-contractive": 0.25})
    classes: tuple[int, ...] = tuple(range(10))  # one-class tasks
    families: tuple[str, ...] = UNCONDITIONAL  # of the anomaly section: conditional models score no anomaly
    anomaly_is_k: int = 16  # importance samples for the IS-NLL anomaly score
    #: σ (pixels) of the `recon-blur` score (model config anomaly_blur): chosen on MNIST from {0.7, 1, 1.5, 2}
    #: by one-class AUROC on the training split (held-out normals vs other classes' training images);
    #: the 8x8 digits get the same blur in units of the digit's size
    anomaly_blur: dict[str, float] = field(default_factory=lambda: {"mlp": 0.3, "conv": 1.0})
    density_k: int = 1000  # importance samples for the reported test NLL
    pyod_epochs: int | None = None  # None: PyOD's own defaults (AutoEncoder 10, VAE 30)
    clf_epochs: int = 4  # the feature classifier of the Fréchet distance
    #: GMM components of the VAEs' fitted prior (the trainer's `prior_components`; its default is 10), chosen
    #: from {10, 20, 40, 80} by the FD of samples against the training images the VAE held out (no test
    #: images): 79 / 65 / 56 / 52, mean over 3 sampling seeds; 40 is the knee
    vae_prior_components: int = 40
    n_gen: int | None = None  # samples per generator; None: as many as test images
    workers: int = 2  # processes, one torch thread each: small nets scale better this way than with threads
    # --- the conditional section (quality_conditional)
    cond_seeds: int = 3  # training seeds of every conditional model (seed, seed + 1, ...)
    #: ... and of their unconditional counterparts, a reference: the first one only (a 28x28 GAN trains for
    #: about 6 CPU-minutes, and the run shares 2 cores)
    uncond_seeds: int = 1
    n_per_class: int = 100  # samples of each class, per model and seed
    #: the judge's epochs are picked among these by its accuracy on a held-out tenth of the training split
    judge_epochs: tuple[int, ...] = (4, 10, 20, 40)
    cond_gan_encoder_epochs: int = 5  # the cGAN's and GAN's encoder stage: restyle uses it, nothing else here
    target_class_acc: float = 0.95  # issue 18: per class and overall

    @staticmethod
    def full() -> Budget:
        return Budget()

    @staticmethod
    def quick() -> Budget:
        return Budget(patience=3, oneclass_steps={"mlp": 100, "conv": 30}, full_epochs={"mlp": 10, "conv": 1},
                      denoise_epochs={"mlp": 10, "conv": 1}, gan_epochs={"mlp": 10, "conv": 1},
                      classes=(0, 7), anomaly_is_k=4, density_k=16, pyod_epochs=2, clf_epochs=2, n_gen=200,
                      cond_seeds=1, n_per_class=20, judge_epochs=(2, 4), cond_gan_encoder_epochs=1)


#: Model config per (backbone, family): tuned on digits / the MNIST training split only.
def model_overrides(data: BenchData, family: str, purpose: str) -> dict[str, Any]:
    """Config overrides for a family on a dataset. `purpose` is "oneclass" or "full" (all classes)."""
    if data.backbone == "conv":
        kw: dict[str, Any] = {"backbone": "conv", "channels": (32, 64), "latent_dim": 16}
        if family in ("gan", "cgan") and purpose == "full":
            kw["latent_dim"] = 32
        if family == "cvae":  # the decoder std grown with the square root of the pixel count (0.2 on 8x8):
            kw["sigma"] = 0.7  # restyled 28x28 images of their new class 19% at 0.3, 97% at 0.7 (proxy)
    else:
        kw = {"backbone": "mlp", "hidden": (128, 64), "latent_dim": 8}
    if family == "ae-linear":
        kw.pop("channels", None)
        kw["hidden"] = ()
    return kw


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def holdout(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices of `fit`'s early-stopping split of n images: a seeded 10% held out."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(2, n // 10)
    return perm[n_val:], perm[:n_val]


def fit(family: str, x: np.ndarray, data: BenchData, budget: Budget, seed: int, purpose: str,
        model_cls: type[GenerativeModel] | None = None, y: np.ndarray | None = None,
        **overrides: Any) -> GenerativeModel:
    """Train a registry family on images `x` with the project's Trainer; returns it in eval mode on CPU.

    `purpose` "oneclass" trains for budget.oneclass_steps, "full" / "denoise" for budget.full_epochs /
    budget.denoise_epochs (the GAN: budget.gan_epochs), with the "full" model config. 10% of `x` (seeded,
    `holdout`) is held out for early stopping; the test split is never seen. A conditional family trains
    with the labels `y` (its num_classes: the data's 10).
    """
    if purpose == "oneclass":
        steps = budget.oneclass_steps[data.backbone] * budget.family_factor.get(family, 1.0)
        n_train = len(x) - max(2, len(x) // 10)  # the early-stopping split below
        epochs = max(1, math.ceil(steps / math.ceil(n_train / budget.batch_size)))
    elif purpose == "denoise":
        epochs = budget.denoise_epochs[data.backbone]
    elif family in ("gan", "cgan"):
        epochs = budget.gan_epochs[data.backbone]
        overrides.setdefault("encoder_epochs", min(10, epochs))
    else:
        epochs = budget.full_epochs[data.backbone]
    entry = REGISTRY[family]
    kw = {**model_overrides(data, family, purpose), **overrides}
    if entry.model.conditional:
        if y is None:
            raise ValueError(f"{family} is conditional: pass the labels y")
        kw.setdefault("num_classes", 10)
    cfg: ModelConfig = entry.config(input_shape=data.shape, **kw)  # type: ignore[call-arg]
    torch.manual_seed(seed)
    model = (model_cls or entry.model)(cfg)  # type: ignore[arg-type]
    tr, va = holdout(len(x), seed)
    y = np.zeros(len(x), dtype=np.int64) if y is None else y
    train = ImageSet("bench", x[tr], y[tr])
    val = ImageSet("bench", x[va], y[va])
    splits = Splits(train, val, val.subset(np.arange(0)), seed, (0.9, 0.1, 0.0))
    tc = TrainConfig(model=family, seed=seed, epochs=epochs, batch_size=budget.batch_size,
                     patience=budget.patience, device="auto", progress=False, publish=False)
    Trainer(model, tc, run_dir=None, device=device()).fit(splits)
    return model.cpu().eval()


def _init_worker() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [worker] %(message)s",
                        datefmt="%H:%M:%S")


def _call(job: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    fn, args = job
    return fn(*args)


def pool_map(fn: Callable[..., Any], jobs: list[tuple[Any, ...]], workers: int) -> Iterator[tuple[int, Any]]:
    """(index, fn(*job)) as each job finishes, in `workers` spawned processes (1 torch thread each).

    Spawn, not fork: forking a process whose torch thread pools already started can deadlock.
    """
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            yield i, fn(*job)
        return
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                             initializer=_init_worker) as ex:
        futures = {ex.submit(_call, (fn, job)): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


@torch.no_grad()
def batched(fn: Any, x: np.ndarray, batch: int = 500) -> np.ndarray | tuple[np.ndarray, ...]:
    """Apply a torch function to a numpy array in batches; tuple outputs are concatenated per position."""
    outs: list[Any] = []
    for i in range(0, len(x), batch):
        o = fn(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])))
        outs.append(tuple(t.float().numpy() for t in o) if isinstance(o, tuple) else o.float().numpy())
    if isinstance(outs[0], tuple):
        return tuple(np.concatenate(p) for p in zip(*outs, strict=True))
    return np.concatenate(outs)


@contextmanager
def timed(record: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall time of the block, in seconds, to record[key]."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record[key] = record.get(key, 0.0) + time.perf_counter() - t0
