"""Random crops from images of any size, for fully convolutional models; image folders stream from disk.

    images = open_images("photos/", channels=3)        # FileImages: paths only, nothing decoded yet
    splits = split_crops(images, crop=64, seed=0)       # train images; val/test windows in memory (capped)
    stream = CropStream(splits, batch_size=64, seed=0, workers=2)
    for x in stream.epoch(key):                         # (B, C, 64, 64) float32 tensors in [0, 1]

The train split is never held decoded: a DataLoader worker reads one image when the sampler names it, takes
`crops_per_image` random crops of it and drops it, so memory does not grow with the folder (a folder larger
than memory trains). In-memory sources (.npz, digits, the skimage textures) take the same path, from arrays.
Which image and which crops come next is decided in the main process by a seeded sampler (an image index
and a crop seed per item), so a run is the same with any number of workers, and DDP ranks take disjoint
shards as they do of the fixed-size data.

Validation and test are `ImageSet`s of crop-sized windows of their images (a grid with stride crop / 4,
at most MAX_WINDOWS, chosen by seed): fixed data for early stopping, calibration and metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from training.data import DataError, ImageSet, Splits, load_channels, split_indices
from training.data.folder import MODES, list_images, read_image

log = logging.getLogger(__name__)

#: Validation and test windows kept in memory, at most; and training windows sampled for the prior.
MAX_WINDOWS = 512
PRIOR_WINDOWS = 128


# --- images of any size ---------------------------------------------------------------------------------


class Images:
    """A sequence of images of any size, read one at a time as float32 (C, H, W) in [0, 1]."""

    name: str
    labels: np.ndarray  # (N,) int64, -1 when unlabelled
    classes: tuple[str, ...] | None
    channels: int

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> np.ndarray:  # (C, H, W)
        raise NotImplementedError

    def size(self, i: int) -> tuple[int, int]:
        """(H, W) of image i, without decoding it where the format allows."""
        raise NotImplementedError

    def subset(self, idx: np.ndarray) -> Images:
        raise NotImplementedError


@dataclass(frozen=True)
class ArrayImages(Images):
    """Images held in memory (a source that is loaded whole: .npz, IDX, digits, the skimage textures)."""

    name: str
    arrays: tuple[np.ndarray, ...]  # each (C, H, W) float32
    labels: np.ndarray
    classes: tuple[str, ...] | None = None

    @classmethod
    def of(cls, data: ImageSet) -> ArrayImages:
        return cls(data.name, tuple(data.x), data.y, data.classes)  # views of data.x, not copies

    @property
    def channels(self) -> int:  # type: ignore[override]
        return int(self.arrays[0].shape[0]) if self.arrays else 1

    def read(self, i: int) -> np.ndarray:
        return self.arrays[i]

    def size(self, i: int) -> tuple[int, int]:
        _, h, w = self.arrays[i].shape
        return h, w

    def subset(self, idx: np.ndarray) -> ArrayImages:
        arrays = tuple(self.arrays[int(i)] for i in idx)
        return dataclasses.replace(self, arrays=arrays, labels=self.labels[idx])


@dataclass(frozen=True)
class FileImages(Images):
    """Image files, decoded on `read` (in a DataLoader worker when there are workers): only paths are held."""

    name: str
    files: tuple[Path, ...]
    labels: np.ndarray
    classes: tuple[str, ...] | None = None
    channels: int = 1

    def read(self, i: int) -> np.ndarray:
        return read_image(self.files[i], MODES[self.channels], None)

    def size(self, i: int) -> tuple[int, int]:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:  # the header only
                w, h = im.size
                # EXIF orientations 5 to 8 turn the image a quarter: read_image applies them
                turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        except OSError as exc:
            raise DataError(f"{self.files[i]}: cannot read the image header ({exc})") from exc
        return (w, h) if turned else (h, w)

    def subset(self, idx: np.ndarray) -> FileImages:
        files = tuple(self.files[int(i)] for i in idx)
        return dataclasses.replace(self, files=files, labels=self.labels[idx])  # a subclass stays one


def open_images(source: str | Path, channels: int | None = None) -> Images:
    """A source as Images: an image folder (not IDX) as FileImages, streamed; anything else through
    `training.data.load_channels`, in memory."""
    path = Path(source).expanduser() if not str(source).startswith("skimage:") else None
    if path is not None and path.is_dir():
        from training.data import idx

        if not any(idx.IMAGES_RE.match(p.name) for p in path.iterdir()):
            c = channels or 1
            if c not in MODES:
                raise DataError(f"{path}: channels must be 1 (grayscale) or 3 (RGB), got {c}")
            files, labels, classes = list_images(path)
            log.info("streaming %d images from %s (%s)", len(files), path,
                     f"{len(classes)} classes" if classes else "unlabelled")
            return FileImages(path.resolve().name or "images", tuple(files), labels, classes, c)
    return ArrayImages.of(load_channels(source, channels))


# --- splits ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropSplits:
    """Train images (read on demand) and fixed validation/test windows, for training on random crops."""

    train: Images
    val: ImageSet  # (N, C, crop, crop) windows of the validation images
    test: ImageSet
    crop: int
    seed: int
    fractions: tuple[float, float, float]
    normal_classes: tuple[int, ...] | None = None
    images: tuple[int, int, int] = (0, 0, 0)  # images in train / val / test

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.train.channels, self.crop, self.crop)

    def describe(self) -> dict[str, object]:
        """Recorded in the manifest's `training.split`."""
        return {
            "seed": self.seed, "fractions": list(self.fractions), "normal_classes": self.normal_classes,
            "crop": self.crop,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "units": "train: images (random crops each epoch); val, test: crop-sized windows",
            "images": dict(zip(("train", "val", "test"), self.images, strict=True)),
        }

    def fixed(self) -> Splits:
        """The same splits with a fixed sample of training windows, for what needs arrays (the latent prior,
        metrics)."""
        train = windows(self.train, self.crop, self.crop, PRIOR_WINDOWS, self.seed)
        return Splits(train, self.val, self.test, self.seed, self.fractions, self.normal_classes)


def split_crops(images: Images, crop: int, seed: int = 0,
                fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                normal_classes: tuple[int, ...] | None = None) -> CropSplits:
    """Seeded split of the images (as `training.data.split`), then validation and test windows. Every
    image must be at least crop x crop: a smaller one is an error that names it."""
    if crop < 1:
        raise DataError(f"crop must be >= 1, got {crop}")
    for i in range(len(images)):
        h, w = images.size(i)
        if min(h, w) < crop:
            where = images.files[i] if isinstance(images, FileImages) else f"{images.name} image {i}"
            raise DataError(f"{where}: image is {w}x{h} (WxH), smaller than the {crop}x{crop} crop")
    tr, va, te = split_indices(images.labels, images.name, seed, fractions, normal_classes)
    if len(tr) == 0:
        raise DataError(f"{images.name}: no training images after the split {fractions}")
    val = windows(images.subset(va), crop, max(1, crop // 4), MAX_WINDOWS, seed + 1)
    test = windows(images.subset(te), crop, max(1, crop // 4), MAX_WINDOWS, seed + 2)
    return CropSplits(images.subset(tr), val, test, crop, seed, fractions, normal_classes,
                      (len(tr), len(va), len(te)))


def windows(images: Images, crop: int, stride: int, limit: int, seed: int) -> ImageSet:
    """Crop-sized windows on a grid of `stride` over every image, at most `limit` (a seeded choice); each
    image is read once."""
    spots = [(i, y, x) for i in range(len(images)) for h, w in [images.size(i)]
             for y in range(0, h - crop + 1, stride) for x in range(0, w - crop + 1, stride)]
    if len(spots) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(spots), limit, replace=False))
        spots = [spots[k] for k in keep]
    x = np.empty((len(spots), images.channels, crop, crop), np.float32)
    y = np.empty(len(spots), np.int64)
    current, img = -1, np.empty(0)
    for k, (i, top, left) in enumerate(spots):  # spots are in image order: one read per image
        if i != current:
            current, img = i, images.read(i)
        x[k] = img[:, top:top + crop, left:left + crop]
        y[k] = images.labels[i]
    return ImageSet(images.name, x, y, images.classes)


# --- the training stream ----------------------------------------------------------------------------------


class CropDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Item (image index, seed) -> `per_image` random crops of that image, (per_image, C, crop, crop).

    With `scale_jitter` j > 0 each crop is a window of crop * s pixels, s log-uniform in [1 / (1 + j), 1 + j]
    (and no larger than the image), resized to crop x crop (bilinear, antialiased): the same surface seen
    nearer or farther, as the parts of one photo taken at an angle are."""

    def __init__(self, images: Images, crop: int, per_image: int, scale_jitter: float = 0.0) -> None:
        self.images, self.crop, self.per_image, self.jitter = images, crop, per_image, scale_jitter

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> Tensor:
        i, seed = key
        img = self.images.read(i)  # (C, H, W): decoded here, in the worker
        _, h, w = img.shape
        rng = np.random.default_rng(seed)
        if self.jitter <= 0:
            tops = rng.integers(0, h - self.crop + 1, self.per_image)
            lefts = rng.integers(0, w - self.crop + 1, self.per_image)
            c = self.crop
            crops = [img[:, t:t + c, s:s + c] for t, s in zip(tops, lefts, strict=True)]
            return torch.from_numpy(np.stack(crops))  # (per_image, C, crop, crop)
        return torch.cat([self._zoomed(img, rng) for _ in range(self.per_image)])

    def _zoomed(self, img: np.ndarray, rng: np.random.Generator) -> Tensor:  # (1, C, crop, crop)
        _, h, w = img.shape
        r = math.log1p(self.jitter)
        side = min(h, w, max(1, round(self.crop * math.exp(rng.uniform(-r, r)))))
        t, s = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        window = torch.from_numpy(np.ascontiguousarray(img[None, :, t:t + side, s:s + side]))
        if side == self.crop:
            return window
        return torch.nn.functional.interpolate(window, size=(self.crop, self.crop), mode="bilinear",
                                               align_corners=False, antialias=side > self.crop).clamp(0, 1)


class CropSampler(torch.utils.data.Sampler):  # type: ignore[type-arg]
    """`items` (image index, crop seed) pairs per epoch: shuffled passes over the images, seeded by
    (seed, epoch key); under DDP each rank takes every world-th item of the padded sequence."""

    def __init__(self, n_images: int, items: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.items, self.seed, self.rank, self.world = n_images, items, seed, rank, world
        self.key = 0

    def set_epoch(self, key: int) -> None:
        self.key = key

    def __len__(self) -> int:
        return math.ceil(self.items / self.world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.key])
        order = np.concatenate([rng.permutation(self.n) for _ in range(math.ceil(self.items / self.n))])
        order = order[: self.items]
        seeds = rng.integers(0, 2**62, len(order))
        per_rank = len(self)
        pad = per_rank * self.world - len(order)
        order, seeds = np.concatenate([order, order[:pad]]), np.concatenate([seeds, seeds[:pad]])
        for k in range(self.rank, len(order), self.world):
            yield int(order[k]), int(seeds[k])


def _cat(items: Sequence[Tensor]) -> Tensor:
    return torch.cat(list(items))


class CropStream:
    """Batches of random training crops, epoch by epoch, from a DataLoader whose workers decode images.

    A batch holds max(1, batch_size // crops_per_image) images' crops; an epoch holds `epoch_crops` crops
    (None: crops_per_image from every training image)."""

    def __init__(self, splits: CropSplits, batch_size: int, seed: int, crops_per_image: int = 8,
                 epoch_crops: int | None = None, workers: int = 0, rank: int = 0, world: int = 1,
                 scale_jitter: float = 0.0) -> None:
        n = len(splits.train)
        items = max(1, math.ceil((epoch_crops or crops_per_image * n) / crops_per_image))
        self.sampler = CropSampler(n, items, seed, rank, world)
        extra: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": 2} if workers else {}
        self.loader = torch.utils.data.DataLoader(
            CropDataset(splits.train, splits.crop, crops_per_image, scale_jitter),
            batch_size=max(1, batch_size // crops_per_image), sampler=self.sampler, num_workers=workers,
            collate_fn=_cat, **extra)

    def epoch(self, key: int, limit: int | None = None) -> Iterator[Tensor]:
        """One epoch's batches (B, C, crop, crop), at most `limit` of them; `key` seeds the epoch."""
        self.sampler.set_epoch(key)
        for i, x in enumerate(self.loader):
            if limit is not None and i >= limit:
                break
            yield x
