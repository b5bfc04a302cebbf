"""MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST all ship in it), raw or gzip-compressed.

An IDX file is a big-endian header -- two zero bytes, a type code, the number of dimensions, then one uint32
per dimension -- followed by exactly prod(dims) items. Images are idx3 of uint8 (magic 2051 = 0x00000803) and
labels idx1 of uint8 (magic 2049 = 0x00000801). We check every part of that, because a truncated download or a
swapped file otherwise shows up much later as a shape error or, worse, as a model trained on garbage.

Compression is detected from the gzip magic bytes, not the extension (people gunzip and keep the name, or
not). The payload is read in chunks up to the size the header promises, so a lying header or a gzip bomb
cannot make us allocate more than the file really holds plus one chunk.
"""

from __future__ import annotations

import gzip
import logging
import re
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from training.data import DataError, ImageSet

log = logging.getLogger(__name__)

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dims (N, H, W)
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dim (N,)
GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20

#: IDX type code -> big-endian numpy dtype. MNIST-family files only use 0x08, the rest is the format's spec.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}

#: `<prefix>-images-idx3-ubyte[.gz]`, e.g. train-images-idx3-ubyte.gz, t10k-images-idx3-ubyte,
#: emnist-balanced-train-images-idx3-ubyte.gz.
IMAGES_RE = re.compile(r"^(?P<prefix>.+)-images-idx3-ubyte(?P<gz>\.gz)?$")
LABELS_RE = re.compile(r"^(?P<prefix>.+)-labels-idx1-ubyte(?P<gz>\.gz)?$")


def _open(path: Path) -> BinaryIO:
    """Open raw or gzip by sniffing the first two bytes."""
    with path.open("rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == GZIP_MAGIC else path.open("rb")  # type: ignore[return-value]


def _read_exact(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    """Read exactly n bytes in chunks (never trusting n for one big allocation); short read -> DataError."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            raise DataError(f"{path}: truncated {what}: expected {n} bytes, file ends after {len(buf)}")
        buf += chunk
    return bytes(buf)


def read_idx(path: str | Path, expect_magic: int | None = None) -> np.ndarray:
    """Read one IDX file into a native-endian array of the shape its header declares.

    `expect_magic` (e.g. IMAGES_MAGIC) rejects a file of the wrong kind. Any defect -- unknown magic, wrong
    dims, truncated or trailing bytes, corrupt gzip -- raises DataError naming the file.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            return _parse(f, path, expect_magic)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read IDX file ({type(exc).__name__}: {exc})") from exc


def _parse(f: BinaryIO, path: Path, expect_magic: int | None) -> np.ndarray:
    header = _read_exact(f, 4, path, "header")
    magic = struct.unpack(">I", header)[0]
    zero, code, ndim = struct.unpack(">HBB", header)
    if zero != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: wrong magic number {magic} (0x{magic:08x}); not an IDX file")
    if expect_magic is not None and magic != expect_magic:
        raise DataError(f"{path}: wrong magic number {magic} (0x{magic:08x}: {_describe(magic)}), "
                        f"expected {expect_magic} (0x{expect_magic:08x}: {_describe(expect_magic)})")
    dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path, "dimensions"))
    dtype = IDX_DTYPES[code]
    n_bytes = int(np.prod(dims, dtype=object)) * dtype.itemsize
    payload = _read_exact(f, n_bytes, path, f"payload of shape {dims}")
    if f.read(1):
        raise DataError(f"{path}: trailing data after the {n_bytes}-byte payload of shape {dims}")
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _describe(magic: int) -> str:
    """'uint8, 3 dims (images)' -- what a magic number means, so a swapped or odd file explains itself."""
    dtype, ndim = IDX_DTYPES[(magic >> 8) & 0xFF], magic & 0xFF
    kind = {IMAGES_MAGIC: " (images)", LABELS_MAGIC: " (labels)"}.get(magic, "")
    return f"{dtype.name}, {ndim} dim{'s' if ndim != 1 else ''}{kind}"


def read_images(path: str | Path) -> np.ndarray:
    """idx3 uint8 images -> float32 (N, 1, H, W) in [0, 1]."""
    raw = read_idx(path, IMAGES_MAGIC)
    if raw.ndim != 3 or 0 in raw.shape[1:]:
        raise DataError(f"{path}: wrong shape {raw.shape} for images, expected (N, H, W) with H, W > 0")
    return (raw.astype(np.float32) / 255.0)[:, None]


def read_labels(path: str | Path) -> np.ndarray:
    """idx1 uint8 labels -> int64 (N,)."""
    return read_idx(path, LABELS_MAGIC).astype(np.int64)


def labels_for(images: Path) -> Path | None:
    """The labels file beside an images file (`X-images-idx3-ubyte[.gz]` -> `X-labels-idx1-ubyte[.gz]`),
    raw or gz, or None when there is none."""
    m = IMAGES_RE.match(images.name)
    if m is None:
        return None
    stem = f"{m['prefix']}-labels-idx1-ubyte"
    for name in (stem + (m["gz"] or ""), stem, stem + ".gz"):
        if (images.parent / name).is_file():
            return images.parent / name
    return None


def find_images(folder: Path, split_name: str | None = None) -> Path:
    """Pick the images file in `folder`: the one whose prefix is (or ends with `-`) `split_name`; without
    `split_name`, the only one there, else the train split. A raw file wins over its .gz twin."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        m = IMAGES_RE.match(p.name)
        if m and p.is_file() and (m["prefix"] not in found or not m["gz"]):
            found[m["prefix"]] = p
    if not found:
        raise DataError(f"{folder}: no *-images-idx3-ubyte[.gz] file in this folder")

    def matching(name: str) -> list[str]:
        return [k for k in found if k == name or k.endswith(f"-{name}")]

    if split_name is not None:
        picks = matching(split_name)
    elif len(found) == 1:
        picks = list(found)
    else:
        picks = matching("train")
    if len(picks) != 1:
        want = f"split {split_name!r}" if split_name else "one split (several found, none is 'train')"
        raise DataError(f"{folder}: cannot choose {want} among {sorted(found)}; pass split_name=...")
    return found[picks[0]]


def load_idx(path: str | Path, split_name: str | None = None) -> ImageSet:
    """Load MNIST-format images and their labels from a folder or an images file.

    A folder is searched for `<prefix>-images-idx3-ubyte[.gz]` and the matching
    `<prefix>-labels-idx1-ubyte[.gz]` (the MNIST / Fashion-MNIST / KMNIST names). When it holds several splits
    (`train-*` and `t10k-*`), `split_name` picks one ("t10k", "train", ...); without it, the train split.
    When no labels file is present the labels are -1 (logged). A labels file whose count differs from the
    images is an error.
    """
    path = Path(path)
    images = find_images(path, split_name) if path.is_dir() else path
    x = read_images(images)
    labels = labels_for(images)
    if labels is None:
        log.warning("%s: no matching labels file; labels set to -1", images)
        y = np.full(len(x), -1, dtype=np.int64)
    else:
        y = read_labels(labels)
        if len(y) != len(x):
            raise DataError(f"{labels}: {len(y)} labels but {images} holds {len(x)} images")
    m = IMAGES_RE.match(images.name)
    # "mnist-t10k" for mnist-t10k/t10k-images-..., "fashion-train" for fashion/train-images-...
    prefix = m["prefix"] if m else images.name
    folder = images.resolve().parent.name or "idx"
    name = folder if prefix in folder else f"{folder}-{prefix}"
    log.info("loaded %d IDX images %s from %s", len(x), x.shape[1:], images)
    return ImageSet(name, np.ascontiguousarray(x), y)
