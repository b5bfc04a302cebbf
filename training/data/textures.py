"""Real photographs in scikit-image's wheel: the textures `brick`, `grass` and `gravel` (512x512 grey).

Their lower halves (rows 256..511) are the test images of the project's texture models, so a data source can
only name an upper half:

    skimage:brick:upper              the upper half of brick (rows 0..255), cut into TILE x TILE tiles
    skimage:brick+grass+gravel:upper the same for several textures; labels are the texture's index

The tiles (8 per texture) are the images that `training.data.split` splits into train and validation, and
that random crops are taken from. `lower_half(name)` is for tests and benchmarks; no source reaches it.
Nothing is downloaded: the three photographs are files inside the scikit-image wheel.
"""

from __future__ import annotations

import numpy as np

from training.data import DataError, ImageSet

PREFIX = "skimage:"
TEXTURES = ("brick", "grass", "gravel")
SIZE = 512  # every texture is SIZE x SIZE
HALF = SIZE // 2  # rows [0, HALF) are the upper half
TILE = 128  # the upper half becomes (HALF / TILE) x (SIZE / TILE) = 2 x 4 tiles


def is_source(source: object) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def parse(source: str) -> tuple[str, ...]:
    """The texture names of an `skimage:<name>[+<name>...]:upper` source; DataError for anything else."""
    parts = source[len(PREFIX):].split(":")
    names = tuple(parts[0].split("+")) if parts[0] else ()
    unknown = sorted(set(names) - set(TEXTURES))
    if not names or unknown or len(set(names)) != len(names):
        raise DataError(f"{source}: name one or more of {', '.join(TEXTURES)} joined by '+' "
                        f"(e.g. skimage:brick:upper){f'; unknown: {unknown}' if unknown else ''}")
    half = parts[1] if len(parts) == 2 else None
    if half != "upper" or len(parts) > 2:
        raise DataError(f"{source}: training data is the upper half only ('skimage:{parts[0]}:upper'); the "
                        "lower halves of the textures are held out for tests and benchmarks")
    return names


def photo(name: str) -> np.ndarray:
    """The whole 512x512 texture as float32 (H, W) in [0, 1]."""
    if name not in TEXTURES:
        raise DataError(f"unknown texture {name!r}; one of {', '.join(TEXTURES)}")
    try:
        from skimage import data
    except ImportError as exc:
        raise DataError("skimage: sources need scikit-image (the train extra: pip install -e '.[train]')"
                        ) from exc
    a = np.asarray(getattr(data, name)())
    if a.shape != (SIZE, SIZE) or a.dtype != np.uint8:
        raise DataError(f"skimage texture {name}: expected {SIZE}x{SIZE} uint8, got {a.dtype} {a.shape}")
    return a.astype(np.float32) / 255.0


def upper_half(name: str) -> np.ndarray:
    """Rows 0..255 of the texture, (HALF, SIZE) float32: the only part a model may train on."""
    return photo(name)[:HALF]


def lower_half(name: str) -> np.ndarray:
    """Rows 256..511, (HALF, SIZE) float32: held out, for tests and benchmarks only."""
    return photo(name)[HALF:]


def tiles(half: np.ndarray, tile: int = TILE) -> np.ndarray:
    """(H, W) -> (N, 1, tile, tile): non-overlapping tiles in row-major order."""
    h, w = half.shape
    t = half[: h - h % tile, : w - w % tile].reshape(h // tile, tile, w // tile, tile)
    return np.ascontiguousarray(t.transpose(0, 2, 1, 3).reshape(-1, 1, tile, tile))


def load_textures(source: str) -> ImageSet:
    """The tiles of the upper halves a `skimage:...:upper` source names, labelled by texture."""
    names = parse(source)
    parts = [tiles(upper_half(n)) for n in names]
    x = np.concatenate(parts).astype(np.float32)
    y = np.concatenate([np.full(len(p), k, np.int64) for k, p in enumerate(parts)])
    return ImageSet("-".join(names) + "-upper", x, y, names if len(names) > 1 else None)
