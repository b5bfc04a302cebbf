"""The playground's test crops (service/static/samples), rebuilt from scikit-image's texture photographs.

    .venv/bin/python docs/samples.py [--check]

`brick.png`, `grass.png`, `gravel.png`: rows 256 to 511, columns 128 to 383 of each 512x512 photograph, the
lower halves no model trains on. `gravel-defects.png`: the gravel crop with two pasted defects, a bright
scratch and a disc of brick pasted in (the README's anomaly-score example, and a choice in the playground's
Photo view).
`--check` exits 1 when a committed file differs from what this writes (tests/e2e/test_samples.py).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "service" / "static" / "samples"
ROWS, COLS = slice(256, 512), slice(128, 384)
#: Where gravel-defects.png's defects are: (top, left, bottom, right), end exclusive.
SCRATCH = (60, 40, 64, 130)
BLOB_CENTRE, BLOB_RADIUS = (170, 180), 14


def crop(name: str) -> np.ndarray:
    from skimage import data  # the train extra: the photographs ship in its wheel

    return np.asarray(getattr(data, name)())[ROWS, COLS]


def with_defects(img: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """A bright scratch (4 x 90 px, slightly slanted) and a disc (radius 14) of `patch` (another photo of the
    same size) on a uint8 crop."""
    out = img.astype(np.float32)
    top, left, bottom, right = SCRATCH
    for x in range(left, right):
        dy = (x - left) // 30  # 3 steps down over its length: a slanted stroke, not a ruled line
        out[top + dy:bottom + dy, x] = 245.0
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    cy, cx = BLOB_CENTRE
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    out = np.where(d2 <= BLOB_RADIUS**2, patch.astype(np.float32), out)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def pictures() -> dict[str, bytes]:
    out = {}
    crops = {name: crop(name) for name in ("brick", "grass", "gravel")}
    crops["gravel-defects"] = with_defects(crops["gravel"], crops["brick"])
    for name, img in crops.items():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", optimize=True)
        out[f"{name}.png"] = buf.getvalue()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = ap.parse_args()
    stale = []
    for name, png in pictures().items():
        path = OUT / name
        if args.check:
            same = path.is_file() and np.array_equal(np.asarray(Image.open(path)),
                                                     np.asarray(Image.open(io.BytesIO(png))))
            if not same:
                stale.append(name)
        else:
            path.write_bytes(png)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale: {', '.join(stale)} (run .venv/bin/python docs/samples.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
