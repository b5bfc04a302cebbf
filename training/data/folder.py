"""Folders of image files, read with Pillow.

Two layouts, as torchvision's ImageFolder and anomalib users expect:
    root/<class>/*.png|jpg   one subfolder per class; labels are the class indices in sorted name order
    root/*.png|jpg           a flat folder; labels are -1
Hidden files and folders (".*") are skipped, and so are files without an image extension (README, .DS_Store);
a file with an image extension that Pillow cannot decode is an error, not a silent gap in the data.

Pillow's decompression-bomb guard (Image.MAX_IMAGE_PIXELS) stays on: its warning is raised as an error here
too, so a hostile or mistaken huge image cannot eat the machine's memory.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from training.data import DataError, ImageSet

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MODES: dict[int, Literal["L", "RGB"]] = {1: "L", 3: "RGB"}


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if _visible(p) and p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_images(root: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...] | None]:
    """Files, their labels and the class names (None for a flat folder), in a deterministic order."""
    classes = sorted(p.name for p in root.iterdir() if _visible(p) and p.is_dir())
    flat = _images_in(root)
    if classes and flat:
        raise DataError(f"{root}: mixes class subfolders {classes} with loose images (e.g. {flat[0].name}); "
                        "use one layout")
    if not classes:
        if not flat:
            raise DataError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return flat, np.full(len(flat), -1, np.int64), None
    files: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        found = _images_in(root / name)
        if not found:
            raise DataError(f"{root / name}: class folder has no image files")
        files += found
        labels += [k] * len(found)
    return files, np.asarray(labels, np.int64), tuple(classes)


def read_image(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image -> float32 (C, H, W) in [0, 1], converted to `mode` and resized to `size` (H, W) if given."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as f:
                im: Image.Image = ImageOps.exif_transpose(f)  # camera rotation before sizing
                a = _pixels(im, mode, size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused as a possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not an image file Pillow can read") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data surfaces as these
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, H, W)


def _pixels(im: Image.Image, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """(H, W) or (H, W, 3) float32 in [0, 1]. 16-bit grayscale goes through float ("F") mode, because
    Pillow's I;16 -> L conversion clips at 255 instead of scaling, which would turn most pixels white."""
    if im.mode.startswith("I;16"):
        g = Image.fromarray(np.asarray(im, dtype=np.float32) / 65535.0)  # mode F
        if size is not None and g.size != (size[1], size[0]):
            g = g.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        a = np.clip(np.asarray(g, dtype=np.float32), 0.0, 1.0)
        return a if mode == "L" else np.repeat(a[..., None], 3, axis=2)
    im = im.convert(mode)
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8).astype(np.float32) / 255.0


def load_folder(
    root: str | Path, channels: int = 1, size: tuple[int, int] | None = None,
) -> ImageSet:
    """Load an image folder (class subfolders or flat) as grayscale (`channels=1`) or RGB (`channels=3`).

    Every image must have the same size unless `size=(H, W)` is given, in which case each is resized
    (bilinear). The first image sets the size; an odd one out is an error naming it.
    """
    root = Path(root)
    if channels not in MODES:
        raise DataError(f"{root}: channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise DataError(f"{root}: size must be (H, W) with positive sides, got {size}")
    files, y, classes = list_images(root)
    first = read_image(files[0], MODES[channels], size)
    x = np.empty((len(files), *first.shape), np.float32)  # (N, C, H, W), filled in place to halve peak memory
    x[0] = first
    for i, f in enumerate(files[1:], start=1):
        img = read_image(f, MODES[channels], size)
        if img.shape != first.shape:
            raise DataError(f"{f}: image is {img.shape[2]}x{img.shape[1]} (WxH) but {files[0]} is "
                            f"{first.shape[2]}x{first.shape[1]}; pass size=(H, W) to resize them all")
        x[i] = img
    log.info("loaded %d images %s from %s (%s)", len(x), x.shape[1:], root,
             f"{len(classes)} classes" if classes else "unlabelled")
    return ImageSet(root.resolve().name or "images", x, y, classes)
