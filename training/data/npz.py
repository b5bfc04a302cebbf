"""`.npz` image arrays: key `x` holds the images, optional key `y` the integer labels.

Accepted `x` layouts: (N, H, W), (N, C, H, W) and (N, H, W, C) with C in {1, 3}; dtype uint8 (0..255,
scaled by 1/255) or floating point already in [0, 1]. Anything else is refused rather than guessed at -- a
float array in 0..255 passed through unscaled would train a model on saturated inputs. Pickles are never
loaded.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from training.data import DataError, ImageSet

log = logging.getLogger(__name__)

Layout = Literal["auto", "nchw", "nhwc"]
CHANNELS = (1, 3)


def _to_nchw(x: np.ndarray, path: Path, layout: Layout) -> np.ndarray:
    """Bring `x` to (N, C, H, W). 4-D arrays are NCHW or NHWC by where the 1- or 3-channel axis is."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise DataError(f"{path}: wrong shape {x.shape} for 'x': "
                        "expected (N, H, W), (N, C, H, W) or (N, H, W, C)")
    if layout == "auto":
        first, last = x.shape[1] in CHANNELS, x.shape[3] in CHANNELS
        if first == last:
            why = "ambiguous" if first else f"no axis of size {CHANNELS}"
            raise DataError(f"{path}: cannot tell the channel axis of 'x' with shape {x.shape} ({why}); "
                            "pass layout='nchw' or layout='nhwc'")
        layout = "nchw" if first else "nhwc"
    x = x if layout == "nchw" else x.transpose(0, 3, 1, 2)
    if x.shape[1] not in CHANNELS:
        raise DataError(f"{path}: 'x' has {x.shape[1]} channels in layout {layout}, "
                        f"expected one of {CHANNELS}")
    return x


def _scale(x: np.ndarray, path: Path) -> np.ndarray:
    """uint8 -> /255; floats must already be finite and in [0, 1]."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: 'x' has dtype {x.dtype}; expected uint8 (0..255) or float in [0, 1]")
    if x.size and not np.isfinite(x).all():
        raise DataError(f"{path}: 'x' contains NaN or infinite values")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise DataError(f"{path}: float 'x' has values in [{x.min():g}, {x.max():g}], expected [0, 1] "
                        "(store 0..255 pixels as uint8)")
    return x.astype(np.float32)


def _labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{path}: wrong shape {y.shape} for 'y', expected (N,)")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(f"{path}: 'y' has dtype {y.dtype}, expected integer labels")
    if len(y) != n:
        raise DataError(f"{path}: {len(y)} labels in 'y' but {n} images in 'x'")
    return y.astype(np.int64)


def _read_arrays(z: object, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not an .npz archive (a plain .npy array?); "
                        "save with np.savez(path, x=..., y=...)")
    with z:
        if "x" not in z.files:
            raise DataError(f"{path}: no 'x' array; keys are {sorted(z.files)}")
        return z["x"], (z["y"] if "y" in z.files else None)


def load_npz(path: str | Path, layout: Layout = "auto") -> ImageSet:
    """Load `x` (and `y` if present; else labels -1) from an .npz file as an ImageSet."""
    path = Path(path)
    try:
        with path.open("rb") as fh:  # our handle, so a half-opened archive never leaks it
            x_raw, y_raw = _read_arrays(np.load(fh, allow_pickle=False), path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # ValueError: garbage that is neither .npz nor .npy is refused as a would-be pickle; object arrays too
        raise DataError(f"{path}: cannot read .npz ({type(exc).__name__}: {exc})") from exc
    x = _scale(_to_nchw(x_raw, path, layout), path)
    if 0 in x.shape[1:]:
        raise DataError(f"{path}: wrong shape {x_raw.shape} for 'x': empty image dimension")
    y = np.full(len(x), -1, np.int64) if y_raw is None else _labels(y_raw, len(x), path)
    log.info("loaded %d images %s from %s", len(x), x.shape[1:], path)
    return ImageSet(path.stem, np.ascontiguousarray(x), y)
