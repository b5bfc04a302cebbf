"""Synthetic anomalies for training (DRAEM's recipe, Zavrtanik et al., ICCV 2021), in torch on the batch's
device: a Perlin-noise mask filled with an augmented patch of an anomaly-source image, blended into the normal
image with a random opacity.

    source = AnomalySource.open("skimage:rocket+coins", channels=1)   # or a folder, or "" (procedural)
    x_aug, mask = synthesise(x, source, settings, generator)          # (B, C, H, W), (B, 1, H, W)

Anomaly sources:
    ""                        procedural: every patch is Perlin noise at a random scale (no files)
    "skimage:<name>+<name>"   photographs in scikit-image's wheel other than the textures (SKIMAGE_PHOTOS)
    a folder                  every image file under it (training.data.folder), any size, grey or RGB

Which kinds and sources a benchmark's test defects use must differ from these (bench/anomaly_textures.py says
which): a model trained on an anomaly source is never tested on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: scikit-image photographs an `skimage:` anomaly source may name (not the textures: those are the normals).
SKIMAGE_PHOTOS = ("astronaut", "camera", "cell", "chelsea", "coffee", "coins", "hubble_deep_field", "horse",
                  "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "motorcycle")
SOURCE_SIDE = 256  # source images are resized so their shorter side is this (they are kept in memory)


@dataclass(frozen=True)
class Synthesis:
    """How anomalies are drawn (the family's config carries these)."""

    probability: float = 0.5  # share of images given an anomaly; the rest stay normal (mask all zero)
    opacity: tuple[float, float] = (0.2, 1.0)  # the source's weight inside the mask, uniform in this range
    perlin_scales: tuple[int, int] = (0, 4)  # the noise grid has 2**k cells a side, k uniform in this range
    threshold: float = 0.5  # mask = Perlin noise above this
    patch_scale: tuple[float, float] = (0.5, 2.0)  # source window side / image side, log-uniform


class AnomalySource:
    """Images to cut anomaly patches from, held in memory as (C, H, W) float32 tensors; none: procedural."""

    def __init__(self, name: str, images: list[Tensor]) -> None:
        self.name, self.images = name, images

    @classmethod
    def open(cls, spec: str, channels: int) -> AnomalySource:
        """The source `spec` names (see the module docstring), as `channels`-channel images."""
        if not spec:
            return cls("procedural", [])
        if spec.startswith("skimage:"):
            arrays = [skimage_photo(n, channels) for n in spec[len("skimage:"):].split("+")]
        else:
            from training.data import DataError
            from training.data.folder import MODES, list_images, read_image

            folder = Path(spec).expanduser()
            if not folder.is_dir():
                raise DataError(f"anomaly source {spec!r}: not a folder (nor skimage:<names>, nor '')")
            files = list_images(folder)[0]
            if not files:
                raise DataError(f"anomaly source {spec!r}: no images in the folder")
            arrays = [read_image(f, MODES[channels], None) for f in files]
        return cls(spec, [_shorter_side(torch.from_numpy(a), SOURCE_SIDE) for a in arrays])

    def patch(self, c: int, h: int, w: int, scale: tuple[float, float], gen: torch.Generator) -> Tensor:
        """An augmented patch (c, h, w) in [0, 1]: a window of a source image whose side is `scale` (log-
        uniform in the range) times the patch's, resized to the patch; or procedural noise."""
        return augment(self._window(c, h, w, scale, gen), gen)

    def _window(self, c: int, h: int, w: int, scale: tuple[float, float], gen: torch.Generator) -> Tensor:
        if not self.images:
            k = int(torch.randint(1, 5, (1,), generator=gen))
            noise = perlin(h, w, 2**k, 2**k, gen)
            noise = (noise - noise.min()) / (noise.max() - noise.min() + 1e-6)
            return noise.expand(c, h, w).clone()
        img = self.images[int(torch.randint(len(self.images), (1,), generator=gen))]
        _, ih, iw = img.shape
        lo, hi = math.log(scale[0]), math.log(scale[1])
        side = math.exp(lo + (hi - lo) * float(torch.rand(1, generator=gen))) * max(h, w)
        sh, sw = min(ih, max(2, round(side * h / max(h, w)))), min(iw, max(2, round(side * w / max(h, w))))
        t = int(torch.randint(ih - sh + 1, (1,), generator=gen))
        s = int(torch.randint(iw - sw + 1, (1,), generator=gen))
        window = img[None, :, t:t + sh, s:s + sw]
        return F.interpolate(window, size=(h, w), mode="bilinear", align_corners=False,
                             antialias=sh > h or sw > w)[0].clamp(0, 1)


def skimage_photo(name: str, channels: int) -> np.ndarray:
    """One of SKIMAGE_PHOTOS as float32 (channels, H, W) in [0, 1] (RGB to grey by luminance)."""
    from training.data import DataError

    if name not in SKIMAGE_PHOTOS:
        raise DataError(f"skimage anomaly source {name!r}: one of {', '.join(SKIMAGE_PHOTOS)}")
    from skimage import data

    raw = np.asarray(data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)())
    a = raw.astype(np.float32) / (255.0 if raw.dtype == np.uint8 else 1.0)  # uint8, or horse's booleans
    if a.ndim == 3:
        a = a[..., :3]
        grey = a @ np.asarray([0.299, 0.587, 0.114], np.float32)
        return grey[None] if channels == 1 else a.transpose(2, 0, 1).copy()
    return a[None] if channels == 1 else np.repeat(a[None], 3, axis=0)


def _shorter_side(img: Tensor, side: int) -> Tensor:
    _, h, w = img.shape
    f = side / min(h, w)
    size = (max(1, round(h * f)), max(1, round(w * f)))
    return F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False,
                         antialias=f < 1)[0].clamp(0, 1)


# --- Perlin noise ---------------------------------------------------------------------------------------
def _fade(t: Tensor) -> Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin(h: int, w: int, cells_y: int, cells_x: int, gen: torch.Generator) -> Tensor:
    """Gradient (Perlin) noise (h, w) over a grid of cells_y x cells_x cells, roughly in [-1, 1]."""
    angles = 2 * math.pi * torch.rand(cells_y + 1, cells_x + 1, generator=gen)
    grads = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)  # (cy + 1, cx + 1, 2)
    u = (torch.arange(h, dtype=torch.float32) + 0.5) * cells_y / h
    v = (torch.arange(w, dtype=torch.float32) + 0.5) * cells_x / w
    iu, iv = u.floor().long(), v.floor().long()
    fu, fv = (u - iu)[:, None], (v - iv)[None, :]  # (h, 1), (1, w): position inside the cell

    def corner(dy: int, dx: int) -> Tensor:  # dot(gradient at the corner, offset from it): (h, w)
        g = grads[(iu + dy)[:, None], (iv + dx)[None, :]]
        return g[..., 0] * (fu - dy) + g[..., 1] * (fv - dx)

    su, sv = _fade(fu), _fade(fv)
    top = torch.lerp(corner(0, 0), corner(0, 1), sv)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), sv)
    return math.sqrt(2) * torch.lerp(top, bottom, su)


def perlin_mask(h: int, w: int, s: Synthesis, gen: torch.Generator) -> Tensor:
    """A (1, h, w) 0/1 mask: Perlin noise at 2**ky x 2**kx cells (k uniform in s.perlin_scales) above
    s.threshold. It can be empty."""
    lo, hi = s.perlin_scales
    ky, kx = (int(k) for k in torch.randint(lo, hi + 1, (2,), generator=gen))
    return (perlin(h, w, 2**ky, 2**kx, gen) > s.threshold).float()[None]


# --- augmentations of a source patch (DRAEM draws three of imgaug's; these are their torch twins) -----------
def _gamma(x: Tensor, r: Tensor) -> Tensor:
    return x.clamp_min(1e-6) ** (0.5 * 4 ** float(r))  # gamma in [0.5, 2]


def _brightness(x: Tensor, r: Tensor) -> Tensor:
    return x * (0.8 + 0.4 * float(r)) + (float(r) - 0.5) * 0.24


def _solarize(x: Tensor, r: Tensor) -> Tensor:
    t = 0.125 + 0.375 * float(r)
    return torch.where(x > t, 1 - x, x)


def _posterize(x: Tensor, r: Tensor) -> Tensor:
    levels = 2 ** (2 + int(3 * float(r)))  # 4 to 16 levels
    return torch.floor(x * levels) / levels


def _invert(x: Tensor, r: Tensor) -> Tensor:
    return 1 - x


def _autocontrast(x: Tensor, r: Tensor) -> Tensor:
    return (x - x.min()) / (x.max() - x.min() + 1e-6)


def _rotate(x: Tensor, r: Tensor) -> Tensor:
    k = int(4 * float(r)) % 4
    return torch.rot90(x, k, (1, 2)) if x.shape[1] == x.shape[2] else torch.flip(x, (1 + k % 2,))


AUGMENTATIONS = (_gamma, _brightness, _solarize, _posterize, _invert, _autocontrast, _rotate)


def augment(patch: Tensor, gen: torch.Generator, k: int = 3) -> Tensor:
    """Three distinct augmentations of AUGMENTATIONS, in a random order, on a (C, H, W) patch."""
    order = torch.randperm(len(AUGMENTATIONS), generator=gen)[:k]
    for i in order.tolist():
        patch = AUGMENTATIONS[i](patch, torch.rand(1, generator=gen))
    return patch.clamp(0, 1)


def synthesise(x: Tensor, source: AnomalySource, s: Synthesis, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(x_aug, mask): x (B, C, H, W) in [0, 1] with an anomaly in a share s.probability of the images.

    Inside the mask, x_aug = a * patch + (1 - a) * x with opacity a uniform in s.opacity; outside, x. The mask
    (B, 1, H, W) is 0/1 and all zero for an image left normal (or whose noise stayed under the threshold)."""
    b, c, h, w = x.shape
    masks = torch.zeros(b, 1, h, w)
    patches = torch.zeros(b, c, h, w)
    chosen = (torch.rand(b, generator=gen) < s.probability).tolist()
    for i in range(b):
        if chosen[i]:
            masks[i] = perlin_mask(h, w, s, gen)
            patches[i] = source.patch(c, h, w, s.patch_scale, gen)
    lo, hi = s.opacity
    a = (lo + (hi - lo) * torch.rand(b, 1, 1, 1, generator=gen)) * masks
    masks, patches, a = masks.to(x.device), patches.to(x.device, x.dtype), a.to(x.device, x.dtype)
    return (x * (1 - a) + patches * a).clamp(0, 1), masks.to(x.dtype)
