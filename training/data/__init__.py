"""Datasets: every loader returns an `ImageSet` of float32 images (N, C, H, W) in [0, 1] and int labels.

Sources (`load(source, ...)`):
    "digits"            scikit-learn's 8x8 digits, embedded (the default)
    "synthetic"         a seeded synthetic set for fast tests
    a folder of IDX files, or one `*-images-idx3-ubyte[.gz]` file    MNIST / Fashion-MNIST / KMNIST (`idx`)
    a `.npz` file with `x` and optional `y`                             (`npz`)
    a folder of images, flat or one subfolder per class                 (`folder`)
    "skimage:brick:upper", "skimage:brick+grass+gravel:upper"          the textures' upper halves, in
                                                                        128x128 tiles (`textures`)
Then `split(...)` makes seeded train/val/test splits, optionally one-class.
Nothing is ever downloaded: a path that is not there is a DataError naming it.

Training on random crops of images of any size (fully convolutional models) goes through `crops` instead:
the same sources, with image folders streamed from disk rather than loaded.

Errors: every loader raises DataError (a ValueError) whose message names the file and what is wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.config import ConfigError


class DataError(ConfigError):
    """A dataset could not be read; the message names the file and what is wrong. A ConfigError, as the
    data, split and normal_classes fields name it: the command line reports it as a usage error."""


@dataclass(frozen=True)
class ImageSet:
    name: str
    x: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    y: np.ndarray  # (N,) int64 labels (-1 when unlabelled)
    classes: tuple[str, ...] | None = None  # class names by label index, when the source names them

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.x.dtype != np.float32:
            raise DataError(f"{self.name}: images must be float32 (N, C, H, W), "
                            f"got {self.x.dtype} {self.x.shape}")
        if len(self.x) != len(self.y):
            raise DataError(f"{self.name}: {len(self.x)} images but {len(self.y)} labels")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: np.ndarray) -> ImageSet:
        return ImageSet(self.name, self.x[idx], self.y[idx], self.classes)


@dataclass(frozen=True)
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    seed: int
    fractions: tuple[float, float, float]
    normal_classes: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images, which a model is built for."""
        return self.train.shape

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


def synthetic(
    n: int = 512, shape: tuple[int, int, int] = (1, 8, 8), classes: int = 4, seed: int = 0,
) -> ImageSet:
    """Seeded blobs: each class is a fixed random template plus small noise. For fast tests."""
    rng = np.random.default_rng(seed)
    templates = rng.random((classes, *shape)).astype(np.float32)
    y = rng.integers(0, classes, n)
    x = np.clip(templates[y] + 0.05 * rng.standard_normal((n, *shape)).astype(np.float32), 0, 1)
    return ImageSet("synthetic", x.astype(np.float32), y.astype(np.int64))


def load(source: str | Path = "digits", **kwargs: object) -> ImageSet:
    """Load a dataset by name ("digits", "synthetic") or path; `kwargs` go to the loader that handles it.

    A path is dispatched on what it is: a folder holding `*-images-idx3-ubyte[.gz]` -> `idx.load_idx`
    (`split_name=`; the train split when several), any other folder -> `folder.load_folder` (`channels=`,
    `size=`), a `.npz` file -> `npz.load_npz` (`layout=`), any other file -> `idx.load_idx` (the IDX header
    is checked, so a wrong file fails with its magic number).
    """
    if isinstance(source, str) and source == "digits":
        if kwargs:
            raise DataError(f"the digits dataset takes no options, got {sorted(kwargs)}")
        return digits()
    if isinstance(source, str) and source == "synthetic":
        return synthetic(**kwargs)  # type: ignore[arg-type]
    if isinstance(source, str) and source.startswith("skimage:"):
        from training.data import textures

        if kwargs:
            raise DataError(f"{source}: takes no options, got {sorted(kwargs)}")
        return textures.load_textures(source)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (sources are 'digits', 'synthetic' or a path; "
                        "nothing is downloaded)")
    # lazy: "digits" and "synthetic" need neither Pillow nor the readers
    from training.data import folder, idx, npz

    if path.is_dir():
        if any(idx.IMAGES_RE.match(p.name) for p in path.iterdir()):
            return idx.load_idx(path, **kwargs)  # type: ignore[arg-type]
        return folder.load_folder(path, **kwargs)  # type: ignore[arg-type]
    if path.suffix.lower() == ".npz":
        return npz.load_npz(path, **kwargs)  # type: ignore[arg-type]
    if path.suffix.lower() in folder.IMAGE_SUFFIXES:
        raise DataError(f"{path}: a single image is not a dataset; pass the folder that holds the images")
    if idx.LABELS_RE.match(path.name):
        raise DataError(f"{path}: is a labels file; pass the images file or the folder instead")
    return idx.load_idx(path, **kwargs)  # type: ignore[arg-type]


def load_channels(source: str | Path, channels: int | None = None) -> ImageSet:
    """`load(source)` as grey (`channels` 1) or RGB (3); None keeps the source's own. Image folders decode
    to it; other sources are converted: RGB to grey by ITU-R 601 luma (Pillow's "L"), grey to RGB by
    repeating the channel."""
    is_folder = not (isinstance(source, str) and ":" in source) and Path(source).expanduser().is_dir()
    if channels is not None and is_folder:
        from training.data import idx

        if not any(idx.IMAGES_RE.match(p.name) for p in Path(source).expanduser().iterdir()):
            return load(source, channels=channels)
    data = load(source)
    if channels is None or data.shape[0] == channels:
        return data
    if channels == 3 and data.shape[0] == 1:
        return ImageSet(data.name, np.repeat(data.x, 3, axis=1), data.y, data.classes)
    if channels == 1 and data.shape[0] == 3:
        luma = np.asarray([0.299, 0.587, 0.114], np.float32)[None, :, None, None]
        return ImageSet(data.name, (data.x * luma).sum(axis=1, keepdims=True, dtype=np.float32), data.y,
                        data.classes)
    raise DataError(f"{data.name}: channels must be 1 (grey) or 3 (RGB), got {channels}")


def split_indices(labels: np.ndarray, name: str, seed: int = 0,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  normal_classes: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (train, val, test) indices of `split`, for any sequence of labelled items."""
    if abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise DataError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    if len(labels) == 0:
        raise DataError(f"{name}: cannot split an empty dataset")
    if normal_classes is not None:
        missing = sorted(set(normal_classes) - set(labels.tolist()))
        if not normal_classes or missing:
            raise DataError(f"{name}: normal classes {tuple(normal_classes)} not all in the data "
                            f"(missing {missing}; labels present: {sorted(set(labels.tolist()))})")
    perm = np.random.default_rng(seed).permutation(len(labels))
    n_tr = int(round(fractions[0] * len(labels)))
    n_va = min(int(round(fractions[1] * len(labels))), len(labels) - n_tr)  # rounding must not overrun
    tr, va, te = perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]
    if normal_classes is not None:
        keep = np.isin(labels, np.asarray(normal_classes))
        tr, va = tr[keep[tr]], va[keep[va]]
        if len(tr) == 0:
            raise DataError(f"{name}: no training images of classes {normal_classes}")
    return tr, va, te


def split(
    data: ImageSet, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    normal_classes: tuple[int, ...] | None = None,
) -> Splits:
    """Seeded train/val/test split. With `normal_classes`, train and val keep only those classes
    (the one-class protocol), while test keeps everything so anomalies can be scored."""
    tr, va, te = split_indices(data.y, data.name, seed, fractions, normal_classes)
    return Splits(data.subset(tr), data.subset(va), data.subset(te), seed, fractions,
                  tuple(normal_classes) if normal_classes is not None else None)
