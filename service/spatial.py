"""Fully convolutional models at an image's own size: padding to the model's multiple, and overlapping tiles.

A fully convolutional graph (`manifest.spatial`) runs on any H and W that are multiples of
`spatial.multiple`. `tiled` runs a function of image batches over one image of any size: mirror-padded up to
the multiple; whole when both sides fit in `spatial.tile`, else in tiles of `tile` pixels overlapping by at
least `overlap`, whose outputs are blended at the seams with linear ramps (weights rising across the overlap),
then cropped back. The anomaly maps (service.anomaly) and reconstruct / denoise (service.ops) both use it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import numpy as np

from service.store.manifest import SpatialSpec

#: A function of a batch of equal tiles (n, C, th, tw) to one output per tile (n, K, th, tw).
TileFn = Callable[[np.ndarray], Awaitable[np.ndarray]]
TILE_BATCH = 16  # tiles per call: bounds the memory of one runtime call on a large photo


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of `tile` pixels start along a side of `size` (a multiple of the model's), neighbours
    sharing at least `overlap` pixels; one tile when the side fits."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((size - tile) / stride) + 1
    return sorted({min(i * stride, size - tile) for i in range(n)})


def _ramp(length: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """Blend weights along one side of a tile: rising over `overlap` pixels where a neighbour overlaps."""
    w = np.ones(length, dtype=np.float32)
    if overlap > 0:
        up = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        if not first:
            w[:overlap] = up
        if not last:
            w[-overlap:] = up[::-1]
    return w


def pad_to_multiple(img: np.ndarray, multiple: int) -> np.ndarray:
    """(C, H, W) mirror-padded at the bottom and right so that H and W are multiples of `multiple`."""
    _, h, w = img.shape
    ph, pw = math.ceil(h / multiple) * multiple - h, math.ceil(w / multiple) * multiple - w
    return np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="symmetric") if ph or pw else img


async def tiled(img: np.ndarray, sp: SpatialSpec, fn: TileFn) -> np.ndarray:
    """`fn` over one (C, H, W) image of any size: (K, H, W) (see the module docstring)."""
    _, h, w = img.shape
    x = pad_to_multiple(img, sp.multiple)
    hh, ww = x.shape[1:]
    th, tw = min(sp.tile, hh), min(sp.tile, ww)
    ys, xs = tile_starts(hh, sp.tile, sp.overlap), tile_starts(ww, sp.tile, sp.overlap)
    boxes = [(y, x0) for y in ys for x0 in xs]
    acc: np.ndarray | None = None
    weight = np.zeros((hh, ww), dtype=np.float32)
    for start in range(0, len(boxes), TILE_BATCH):
        part = boxes[start:start + TILE_BATCH]
        outs = await fn(np.stack([x[:, y:y + th, x0:x0 + tw] for y, x0 in part]))
        if acc is None:
            acc = np.zeros((outs.shape[1], hh, ww), dtype=np.float32)
        for (y, x0), out in zip(part, outs, strict=True):
            wgt = (_ramp(th, sp.overlap, y == ys[0], y == ys[-1])[:, None]
                   * _ramp(tw, sp.overlap, x0 == xs[0], x0 == xs[-1])[None, :])
            acc[:, y:y + th, x0:x0 + tw] += out * wgt
            weight[y:y + th, x0:x0 + tw] += wgt
    assert acc is not None  # at least one tile
    return (acc / np.maximum(weight, 1e-12))[:, :h, :w]
