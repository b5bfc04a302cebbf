"""Datasets: every loader returns an `ImageSet` of float32 images (N, C, H, W) in [0, 1] and int labels.

Sources (`load(source, ...)`):
    "digits"            scikit-learn's 8x8 digits, embedded (the default)
    "synthetic"         a seeded synthetic set for fast tests
    (more loaders: IDX files, .npz, image folders -- see the submodules)
Then `split(...)` makes seeded train/val/test splits, optionally one-class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """A dataset could not be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ImageSet:
    name: str
    x: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    y: np.ndarray  # (N,) int64 labels (-1 when unlabelled)

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.x.dtype != np.float32:
            raise DataError(f"{self.name}: images must be float32 (N, C, H, W), got {self.x.dtype} {self.x.shape}")
        if len(self.x) != len(self.y):
            raise DataError(f"{self.name}: {len(self.x)} images but {len(self.y)} labels")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: np.ndarray) -> ImageSet:
        return ImageSet(self.name, self.x[idx], self.y[idx])


@dataclass(frozen=True)
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    seed: int
    fractions: tuple[float, float, float]
    normal_classes: tuple[int, ...] | None = None

    def describe(self) -> dict[str, object]:
        """Recorded in the manifest's `training.split`."""
        return {
            "seed": self.seed, "fractions": list(self.fractions), "normal_classes": self.normal_classes,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
        }


def digits() -> ImageSet:
    """scikit-learn's 1,797 8x8 digits (pixel values 0..16), scaled to [0, 1]. Embedded: nothing downloads."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    return ImageSet("digits", x, d.target.astype(np.int64))


def synthetic(n: int = 512, shape: tuple[int, int, int] = (1, 8, 8), classes: int = 4, seed: int = 0) -> ImageSet:
    """Seeded blobs: each class is a fixed random template plus small noise. For fast tests."""
    rng = np.random.default_rng(seed)
    templates = rng.random((classes, *shape)).astype(np.float32)
    y = rng.integers(0, classes, n)
    x = np.clip(templates[y] + 0.05 * rng.standard_normal((n, *shape)).astype(np.float32), 0, 1)
    return ImageSet("synthetic", x.astype(np.float32), y.astype(np.int64))


def load(source: str = "digits", **kwargs: object) -> ImageSet:
    """Load a dataset by name or path."""
    if source == "digits":
        return digits()
    if source == "synthetic":
        return synthetic(**kwargs)  # type: ignore[arg-type]
    raise DataError(f"unknown dataset source {source!r}")


def split(
    data: ImageSet, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    normal_classes: tuple[int, ...] | None = None,
) -> Splits:
    """Seeded train/val/test split. With `normal_classes`, train and val keep only those classes
    (the one-class protocol), while test keeps everything so anomalies can be scored."""
    if abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise DataError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(len(data))
    n_tr = int(round(fractions[0] * len(data)))
    n_va = int(round(fractions[1] * len(data)))
    tr, va, te = perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]
    if normal_classes is not None:
        keep = np.isin(data.y, np.asarray(normal_classes))
        tr, va = tr[keep[tr]], va[keep[va]]
        if len(tr) == 0:
            raise DataError(f"{data.name}: no training images of classes {normal_classes}")
    return Splits(data.subset(tr), data.subset(va), data.subset(te), seed, fractions,
                  tuple(normal_classes) if normal_classes is not None else None)
