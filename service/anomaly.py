"""Anomaly scoring at an image's own resolution: the map, the image score, the mask, its regions, and the
thresholds a request may set. Plain functions on numpy arrays and a runner, like service.ops.

    fixed-size model      the images were fitted into the model's frame (service.images: letterbox or crop,
                          never squashed), scored there in one batch, and each map is brought back to its
                          image's own size (`images.unfit_map`)
    fully convolutional   each image runs at its own size (`manifest.spatial`), in overlapping tiles when a
                          side exceeds `spatial.tile`, blended at the seams (service.spatial)

The score recipe (which graphs, which score) is service.store.scores.anomaly, the one training calibrates
with. A model whose manifest has `anomaly.map` scores an image by reducing its map (`scores.reduce_map`); the
others keep their own image score (an ELBO, an f-AnoGAN score), and their map is the score's per-pixel part.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from service import spatial
from service.errors import InvalidInput
from service.images import Fit, unfit_map
from service.store import scores
from service.store.manifest import AnomalySpec, SpatialSpec
from service.store.repository import ModelVersion

#: Runs one graph on one input: outputs by name (service.ops builds it over the runtime).
GraphRunner = Callable[[str, np.ndarray], Awaitable[dict[str, np.ndarray]]]
MAX_REGIONS = 100  # per image in an answer, the highest peaks first


@dataclass(frozen=True)
class Thresholds:
    """The thresholds a request is answered with, and where each came from."""

    image: float
    image_source: str  # "manifest", "request" or "fpr=<r>"
    pixel: float | None
    pixel_source: str | None

    def as_dict(self) -> dict[str, float | str | None]:
        return {"image": self.image, "image_source": self.image_source, "pixel": self.pixel,
                "pixel_source": self.pixel_source}


@dataclass(frozen=True)
class Region:
    """One connected part of a mask: its box (x0, y0, x1, y1, end exclusive), pixel count, and the map's
    highest and mean value inside it."""

    box: tuple[int, int, int, int]
    area: int
    peak: float
    mean: float

    def as_dict(self) -> dict[str, object]:
        return {"box": list(self.box), "area": self.area, "peak": self.peak, "mean": self.mean}


@dataclass(frozen=True)
class ImageScore:
    raw: float
    map: np.ndarray  # (H, W) at the image's own resolution
    mask: np.ndarray | None  # (H, W) bool, when there is a pixel threshold
    regions: list[Region]
    regions_total: int


# --- thresholds ---------------------------------------------------------------------------------------------
def thresholds(spec: AnomalySpec, image: float | None = None, fpr: float | None = None,
               pixel: float | None = None, pixel_fpr: float | None = None) -> Thresholds:
    """The manifest's thresholds, unless the request names its own (`image`, `pixel`) or a false-positive rate
    (`fpr`, `pixel_fpr`), read off the calibration quantiles the manifest keeps."""
    cal = spec.calibration
    if image is not None and fpr is not None:
        raise InvalidInput("give threshold or fpr, not both")
    if pixel is not None and pixel_fpr is not None:
        raise InvalidInput("give pixel_threshold or pixel_fpr, not both")
    if (fpr is not None or pixel_fpr is not None) and cal is None:
        raise InvalidInput("this model's manifest keeps no calibration quantiles; give a threshold instead")
    t_img, src_img = spec.threshold, "manifest"
    if image is not None:
        t_img, src_img = image, "request"
    elif fpr is not None and cal is not None:
        t_img, src_img = scores.threshold_at_fpr(cal.probs, cal.image, fpr), f"fpr={fpr:g}"
    t_pix: float | None = spec.map.pixel_threshold if spec.map is not None else None
    src_pix: str | None = "manifest" if t_pix is not None else None
    if pixel is not None:
        t_pix, src_pix = pixel, "request"
    elif pixel_fpr is not None and cal is not None:
        if cal.pixel is None:
            raise InvalidInput("this model's manifest keeps no pixel quantiles; give pixel_threshold instead")
        t_pix, src_pix = scores.threshold_at_fpr(cal.probs, cal.pixel, pixel_fpr), f"fpr={pixel_fpr:g}"
    return Thresholds(float(t_img), src_img, None if t_pix is None else float(t_pix), src_pix)


# --- masks and regions --------------------------------------------------------------------------------------
def regions(amap: np.ndarray, mask: np.ndarray, min_pixels: int = 1, limit: int = MAX_REGIONS
            ) -> tuple[list[Region], int]:
    """The connected parts (8-neighbourhood) of `mask` with at least `min_pixels` pixels: the `limit` with the
    highest peaks, and how many there were."""
    from scipy import ndimage  # on the first mask, not at start-up: scipy takes ~0.1 s and ~20 MB to import

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return [], 0
    index = np.arange(1, n + 1)
    areas = ndimage.sum_labels(mask, labels, index).astype(np.int64)
    peaks = ndimage.maximum(amap, labels, index)
    means = ndimage.mean(amap, labels, index)
    slices = ndimage.find_objects(labels)
    keep = [i for i in range(n) if areas[i] >= min_pixels]
    keep.sort(key=lambda i: -peaks[i])
    out = []
    for i in keep[:limit]:
        ys, xs = slices[i]
        out.append(Region((int(xs.start), int(ys.start), int(xs.stop), int(ys.stop)), int(areas[i]),
                          float(peaks[i]), float(means[i])))
    return out, len(keep)


def finish(raw: float, amap: np.ndarray, spec: AnomalySpec, pixel: float | None) -> ImageScore:
    """An image's score with its mask and regions under pixel threshold `pixel` (none without one)."""
    if pixel is None:
        return ImageScore(raw, amap, None, [], 0)
    mask = amap > pixel
    found, total = regions(amap, mask, spec.map.min_region_pixels if spec.map is not None else 1)
    return ImageScore(raw, amap, mask, found, total)


async def spatial_map(kind: str, params: dict[str, float | str], img: np.ndarray, sp: SpatialSpec,
                      run: GraphRunner) -> np.ndarray:
    """The (H, W) map of one (C, H, W) image at its own size: the recipe over tiles (service.spatial)."""

    async def maps(batch: np.ndarray) -> np.ndarray:
        _, score_map = await scores.anomaly(kind, params, batch, run)
        return scores.pixel_map(score_map)[:, None]  # (n, 1, th, tw)

    return (await spatial.tiled(img, sp, maps))[0]


# --- the whole request --------------------------------------------------------------------------------------
async def score_images(mv: ModelVersion, items: list[np.ndarray], fits: list[Fit | None],
                       run: GraphRunner, th: Thresholds) -> list[ImageScore]:
    """Each image's raw score, map at its own resolution, mask and regions."""
    spec = mv.manifest.anomaly
    assert spec is not None  # the manifest validator guarantees it for anomaly-score
    kind, params = spec.score, dict(spec.params)
    if mv.manifest.spatial is not None:
        out = []
        for img in items:
            amap = await spatial_map(kind, params, img, mv.manifest.spatial, run)
            raw = _reduce(amap[None], spec)[0]
            out.append(finish(raw, amap, spec, th.pixel))
        return out
    raw_all, score_map = await scores.anomaly(kind, params, np.stack(items), run)
    maps = scores.pixel_map(score_map)  # (N, H, W) in the model's frame
    raws = _reduce(maps, spec) if spec.map is not None else np.asarray(raw_all, dtype=np.float64)
    return [finish(float(r), amap if fit is None else unfit_map(amap, fit), spec, th.pixel)
            for r, amap, fit in zip(raws, maps, fits, strict=True)]


def _reduce(maps: np.ndarray, spec: AnomalySpec) -> np.ndarray:
    ms = spec.map
    if ms is None:  # a fully convolutional model without a map spec: the mean, as the plain MSE would be
        return scores.reduce_map(maps, "mean")
    return scores.reduce_map(maps, ms.reduction, ms.top_fraction)
