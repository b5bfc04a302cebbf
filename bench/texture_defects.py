"""Seeded synthetic defects with pixel-exact masks, for the texture benchmark (bench/anomaly_textures.py).

Test defects (TEST_KINDS), pasted into crops of the LOWER halves of the textures:

    paste     a rectangle or ellipse cut from another photograph (PASTE_SOURCES), at a random scale
    scratch   a curved stroke 2 to 4 px wide, darker or lighter than the crop by 0.25 to 0.5
    blob      an ellipse whose intensity is shifted by 0.15 to 0.3 (either way), half that on its rim
    blur      an ellipse blurred (gaussian, sigma 1.5 to 3.5 px) or smeared along a direction
    hole      one or two overlapping ellipses where the texture is missing: a flat grey level plus faint noise

Proxy defects (PROXY_KINDS), pasted into held-out windows of the UPPER halves, to choose knobs on (never the
test kinds or sources, never the training family's Perlin-shaped photo patches):

    cutpaste  a rectangle of the same window, flipped, moved elsewhere, its brightness nudged (CutPaste)
    noise     an ellipse of i.i.d. gaussian noise of the window's mean and spread (its structure gone)
    grating   a sinusoidal grating (period 4 to 10 px) added inside an ellipse

Every mask is exact: the generator changes no pixel outside it. Sizes are set for 128x128 crops. `rng` is a
numpy Generator: one seed, one defect.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from scipy import ndimage

TEST_KINDS = ("paste", "scratch", "blob", "blur", "hole")
PROXY_KINDS = ("cutpaste", "noise", "grating")
#: scikit-image photographs the test's pastes come from; the trained family's source must use none of them.
PASTE_SOURCES = ("camera", "astronaut", "coffee", "chelsea")

Defect = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:h, 0:w].astype(np.float64)


def ellipse(h: int, w: int, rng: np.random.Generator, radius: tuple[float, float]) -> np.ndarray:
    """A filled ellipse (bool (h, w)) with semi-axes in `radius`, at any angle, wholly inside the crop."""
    a, b = rng.uniform(*radius, size=2)
    r = max(a, b)
    cy, cx = rng.uniform(r + 1, h - r - 1), rng.uniform(r + 1, w - r - 1)
    t = rng.uniform(0, np.pi)
    yy, xx = _grid(h, w)
    u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
    v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
    return bool_(np.asarray((u / a) ** 2 + (v / b) ** 2 <= 1.0))


def bool_(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=bool)


@cache
def _photo(name: str) -> np.ndarray:
    from skimage import data

    a = np.asarray(getattr(data, name)(), dtype=np.float32) / 255.0
    return a if a.ndim == 2 else a[..., :3] @ np.asarray([0.299, 0.587, 0.114], np.float32)


def paste(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape
    src = _photo(PASTE_SOURCES[int(rng.integers(len(PASTE_SOURCES)))])
    ph, pw = (int(v) for v in rng.integers(14, 36, size=2))
    scale = rng.uniform(0.3, 1.0)  # the source shrunk by this, so a patch holds more than a flat area
    sh, sw = min(src.shape[0], round(ph / scale)), min(src.shape[1], round(pw / scale))
    t, s = int(rng.integers(0, src.shape[0] - sh + 1)), int(rng.integers(0, src.shape[1] - sw + 1))
    patch = ndimage.zoom(src[t:t + sh, s:s + sw], (ph / sh, pw / sw), order=1)[:ph, :pw]
    ph, pw = patch.shape
    y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    mask = np.zeros((h, w), bool)
    if rng.random() < 0.5:
        mask[y:y + ph, x:x + pw] = True
    else:
        yy, xx = _grid(ph, pw)
        u, v = (yy - (ph - 1) / 2) / (ph / 2), (xx - (pw - 1) / 2) / (pw / 2)
        mask[y:y + ph, x:x + pw] = u**2 + v**2 <= 1
    out = img.copy()
    full = np.zeros_like(img)
    full[y:y + ph, x:x + pw] = patch
    out[mask] = full[mask]
    return out, mask


def scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A quadratic Bezier stroke 30 to 80 px long."""
    h, w = img.shape
    length = rng.uniform(30, 80)
    p0 = rng.uniform([8, 8], [h - 8, w - 8])
    ang = rng.uniform(0, 2 * np.pi)
    p2 = np.clip(p0 + length * np.array([np.sin(ang), np.cos(ang)]), 4, [h - 4, w - 4])
    p1 = (p0 + p2) / 2 + rng.normal(0, length / 4, size=2)
    t = np.linspace(0, 1, 400)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # (400, 2)
    yy, xx = _grid(h, w)
    d = np.full((h, w), np.inf)
    for py, px in pts[::2]:
        d = np.minimum(d, (yy - py) ** 2 + (xx - px) ** 2)
    width = rng.uniform(2, 4)
    mask = np.sqrt(d) <= width / 2
    sign = 1 if rng.random() < 0.5 else -1
    value = np.clip(img.mean() + sign * rng.uniform(0.25, 0.5), 0, 1)
    out = img.copy()
    out[mask] = value + rng.normal(0, 0.02, size=int(mask.sum()))
    return np.clip(out, 0, 1), mask


def blob(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape
    mask = ellipse(h, w, rng, (7, 18))
    # feathered inside its rim: the full shift 4 px in, half of it on the rim, none outside
    weight = np.where(mask, np.clip(0.5 + ndimage.distance_transform_edt(mask) / 8, 0.5, 1.0), 0.0)
    amp = rng.uniform(0.15, 0.3) * (1 if rng.random() < 0.5 else -1)
    return np.clip(img + amp * weight, 0, 1), mask


def blur(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape
    mask = ellipse(h, w, rng, (9, 22))
    if rng.random() < 0.5:
        smooth = ndimage.gaussian_filter(img, rng.uniform(1.5, 3.5), mode="reflect")
    else:  # a smear: a line kernel 7 to 15 px long at a random angle
        n = int(rng.integers(7, 16))
        k = np.zeros((n, n))
        k[n // 2] = 1
        k = ndimage.rotate(k, rng.uniform(0, 180), reshape=False, order=1)
        smooth = ndimage.convolve(img, k / k.sum(), mode="reflect")
    out = img.copy()
    out[mask] = smooth[mask]
    return out, mask


def hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape
    mask = ellipse(h, w, rng, (6, 16))
    if rng.random() < 0.5:
        mask |= ellipse(h, w, rng, (6, 16)) & ndimage.binary_dilation(mask, iterations=12)
    out = img.copy()
    out[mask] = np.clip(rng.uniform(0.0, 1.0) + rng.normal(0, 0.02, size=int(mask.sum())), 0, 1)
    return out, mask


def cutpaste(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape
    ph, pw = (int(v) for v in rng.integers(max(8, h // 8), max(9, h // 3), size=2))
    t, s = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch = img[t:t + ph, s:s + pw][::-1 if rng.random() < 0.5 else 1, ::-1] + rng.uniform(-0.1, 0.1)
    y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    out = img.copy()
    out[y:y + ph, x:x + pw] = np.clip(patch, 0, 1)
    mask = np.zeros((h, w), bool)
    mask[y:y + ph, x:x + pw] = True
    return out, mask


def noise(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape
    mask = ellipse(h, w, rng, (max(4, h / 16), max(5, h / 6)))
    out = img.copy()
    out[mask] = np.clip(rng.normal(img.mean(), img.std(), size=int(mask.sum())), 0, 1)
    return out, mask


def grating(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape
    mask = ellipse(h, w, rng, (max(4, h / 16), max(5, h / 6)))
    yy, xx = _grid(h, w)
    t = rng.uniform(0, np.pi)
    wave = np.sin(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / rng.uniform(4, 10))
    out = img.copy()
    out[mask] = np.clip(img + rng.uniform(0.2, 0.4) * wave, 0, 1)[mask]
    return out, mask


DEFECTS: dict[str, Defect] = {"paste": paste, "scratch": scratch, "blob": blob, "blur": blur, "hole": hole,
                              "cutpaste": cutpaste, "noise": noise, "grating": grating}


def apply(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(defective image, mask) of one `kind` on a (H, W) float image in [0, 1]."""
    out, mask = DEFECTS[kind](np.asarray(img, dtype=np.float32), rng)
    return out.astype(np.float32), mask
