"""The /v1 operations: each takes a `Call` and its validated request, calls `service.ops`, and shapes the
answer. They are rows of the operations table (service.api.table), which mounts each twice: on the latest
version, `/v1/models/{name}/{op}`, and on `/v1/models/{name}/versions/{version}/{op}`.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from service import anomaly, labels, ops
from service.errors import InvalidInput, PayloadTooLarge
from service.http.table import Call
from service.images import (
    Fit,
    ImageLimits,
    ParsedImages,
    grid_png,
    map_png,
    mask_png,
    overlay_png,
    read_images,
    to_base64_pngs,
    unfit_map,
)
from service.schemas import (
    AnomalyScoreRequest,
    DecodeRequest,
    DenoiseRequest,
    EncodeRequest,
    InterpolateRequest,
    ReconstructRequest,
    RestyleRequest,
    SampleRequest,
)
from service.store import scores
from service.store.repository import ModelVersion


class PrecisionQuery(BaseModel):
    """The precision the request runs at (every /v1 operation takes it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    precision: str | None = Field(
        default=None, max_length=16, description="fp32, or a twin the model has (int8, fp16: GET "
        "/v1/models/{name} lists them); default: the server's setting where the model has it, else fp32")


class GridQuery(PrecisionQuery):
    """How one PNG grid is laid out (with `Accept: image/png`)."""

    columns: int | None = Field(default=None, ge=1, le=256,
                                description="grid width in tiles (Accept: image/png)")
    scale: int = Field(default=1, ge=1, le=16, description="upscale factor of each tile (Accept: image/png)")


# --- helpers ------------------------------------------------------------------------------------
def runner(call: Call, mv: ModelVersion) -> ops.Runner:
    """The runtime at the precision this request runs at: its `precision` query parameter (a 422 listing the
    model's precisions when it has not that one), else the server's default (service.precision)."""
    asked = call.query.precision if isinstance(call.query, PrecisionQuery) else None
    rt = call.runtime
    return rt.at(None if asked is None else rt.precision(mv, asked))


def model_at(call: Call) -> tuple[ModelVersion, ops.Runner]:
    """The model version the path names, and the runner its graphs run on for this request."""
    mv = call.model()
    return mv, runner(call, mv)


async def images_of(call: Call, value: Any, mv: ModelVersion, body: Any, what: str = "images"
                    ) -> ParsedImages:
    """The request's images in the model's format (`body` carries strict and fit)."""
    s = call.settings
    limits = ImageLimits(s.max_items, s.max_image_pixels, body.strict, s.max_request_pixels, body.fit,
                         native=mv.manifest.spatial is not None)
    return await read_images(value, mv.manifest.data, limits, what)


def label_of(mv: ModelVersion, value: Any, n: int | None = None, what: str = "label") -> np.ndarray | None:
    """Class indices of a request's label field (None when it has none); with n, one label or n of them."""
    return None if value is None else labels.indices(mv, value, n, what)


def encode_images(images: np.ndarray, fmt: str, mv: ModelVersion) -> Any:
    if fmt == "png":
        return to_base64_pngs(images, mv.manifest.data.value_range)
    return np.ascontiguousarray(images)


def json_answer(mv: ModelVersion, **payload: Any) -> Response:
    body = {"model": mv.name, "version": mv.version} | payload
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def images_answer(
    call: Call,
    mv: ModelVersion,
    images: np.ndarray,
    fmt: str,
    grid_images: np.ndarray | None = None,
    columns: int | None = None,
    **extra: Any,
) -> Response:
    """JSON with images (arrays or base64 PNGs), or one PNG grid when the client asks for image/png."""
    if call.wants_png():
        grid = call.query if isinstance(call.query, GridQuery) else GridQuery()
        tiles = images if grid_images is None else grid_images
        png = grid_png(tiles, columns or grid.columns, grid.scale, value_range=mv.manifest.data.value_range)
        return Response(png, media_type="image/png")
    return json_answer(mv, format=fmt, shape=list(images.shape), images=encode_images(images, fmt, mv),
                       **extra)


async def endpoint(call: Call, value: Any, mv: ModelVersion, body: InterpolateRequest, what: str
                   ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """An interpolation end: a latent (flat list of numbers) or exactly one image (with its conversions)."""
    if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
        try:
            return np.asarray(value, dtype=np.float64), []  # (D,); ops.check_latents makes it float32
        except OverflowError as exc:  # an integer of hundreds of digits
            raise InvalidInput(f"{what} holds a number beyond the float range") from exc
    parsed = await images_of(call, value, mv, body, what)
    if len(parsed.array) != 1:
        raise InvalidInput(f"{what} must be one latent or one image, got {len(parsed.array)} images")
    return parsed.array[0], [c | {"index": what} for c in parsed.converted]


# --- operations ---------------------------------------------------------------------------------
async def encode(call: Call, body: EncodeRequest) -> Response:
    """Encode images to latent means (and log-variances for VAEs)."""
    mv, rt = model_at(call)
    x = await images_of(call, body.images, mv, body)
    res = await ops.encode(rt, mv, x.array, label_of(mv, body.label, len(x.array)))
    return json_answer(mv, mean=res.mean, logvar=res.logvar, converted=x.converted)


async def decode(call: Call, body: DecodeRequest) -> Response:
    """Decode latent codes to images."""
    mv, rt = model_at(call)
    try:
        z = np.asarray(body.latents, dtype=np.float64)  # ops.check_latents makes it float32
    except OverflowError as exc:
        raise InvalidInput("latents hold a number beyond the float range") from exc
    except ValueError as exc:
        raise InvalidInput("latents must be a rectangular (N, latent_dim) array of numbers") from exc
    if z.ndim == 2 and len(z) > call.settings.max_items:
        raise PayloadTooLarge(f"{len(z)} latents in one request; the limit is {call.settings.max_items}")
    images = await ops.decode(rt, mv, z, label_of(mv, body.label))
    return images_answer(call, mv, images, body.format)


async def sample(call: Call, body: SampleRequest) -> Response:
    """Draw n images from the model's prior; the same seed gives the same bytes. A conditional model draws
    the classes asked for: `{"n": 16, "label": 7}` is sixteen 7s."""
    mv, rt = model_at(call)
    n = body.n
    if isinstance(body.label, list) and "n" not in body.model_fields_set:
        n = len(body.label)
    if n > call.settings.max_items:
        raise PayloadTooLarge(f"n={n} is above the limit of {call.settings.max_items} items per request")
    res = await ops.sample(rt, mv, n, body.seed, body.temperature, label_of(mv, body.label, n),
                           body.shared_style)
    extra: dict[str, Any] = {} if res.labels is None else {"labels": labels.names(mv, res.labels)}
    return images_answer(call, mv, res.images, body.format, seed=res.seed, latents=res.latents, **extra)


async def interpolate(call: Call, body: InterpolateRequest) -> Response:
    """Images along a linear or spherical path between two latents or two images; a conditional model's
    path holds one class, or moves between two (`label: [from, to]`), at a fixed style without ends."""
    mv, rt = model_at(call)
    between, seed = _between(mv, body.label), None
    if body.start is None or body.end is None:
        if body.start is not None or body.end is not None or between is None or between[0] == between[1]:
            raise InvalidInput("give both start and end (latents or images); only a path between two labels "
                               "(label: [from, to]) may omit both, for one style drawn with `seed`")
        seed, codes = ops.one_style(mv, between, body.seed)
        a, b = codes[0], codes[1]
        conv_a: list[dict[str, Any]] = []
        conv_b: list[dict[str, Any]] = []
    else:
        a, conv_a = await endpoint(call, body.start, mv, body, "start")
        b, conv_b = await endpoint(call, body.end, mv, body, "end")
    res = await ops.interpolate(rt, mv, a, b, body.steps, body.method, between)
    columns = call.query.columns if isinstance(call.query, GridQuery) else None
    extra: dict[str, Any] = {} if between is None else {"labels": labels.names(mv, np.array(between))}
    if seed is not None:
        extra["seed"] = seed
    return images_answer(call, mv, res.images, body.format, columns=columns or body.steps,
                         method=body.method, t=res.t, latents=res.latents, converted=conv_a + conv_b, **extra)


def _between(mv: ModelVersion, value: Any) -> tuple[int, int] | None:
    """A path's classes: one label holds it, a pair moves from the first to the second."""
    if value is None:
        return None
    if isinstance(value, list) and len(value) != 2:
        raise InvalidInput(f"label must be one label or a pair [from, to], got a list of {len(value)}")
    idx = labels.indices(mv, value)
    return int(idx[0]), int(idx[-1])


async def restyle(call: Call, body: RestyleRequest) -> Response:
    """Each image in its own style, drawn as another class (or as every class). PNG grid: one row per image,
    the image first."""
    mv, rt = model_at(call)
    ops.require(mv, "restyle")
    x = await images_of(call, body.images, mv, body)
    n = len(x.array)
    res = await ops.restyle(rt, mv, x.array, label_of(mv, body.label, n),
                            label_of(mv, body.source_label, n, "source_label"))
    per_row = len(res.images) // n
    grid = np.concatenate([np.concatenate([x.array[i:i + 1], res.images[i * per_row:(i + 1) * per_row]])
                           for i in range(n)])
    return images_answer(call, mv, res.images, body.format, grid, columns=per_row + 1,
                         labels=labels.names(mv, res.labels), source=res.source, style=res.style,
                         converted=x.converted)


async def reconstruct(call: Call, body: ReconstructRequest) -> Response:
    """Reconstruct images through the autoencoder, with the per-image error. PNG grid: inputs over outputs."""
    mv, rt = model_at(call)
    x = await images_of(call, body.images, mv, body)
    res = await ops.reconstruct(rt, mv, x.array, label_of(mv, body.label, len(x.array)))
    return images_answer(call, mv, res.images, body.format, np.concatenate([x.array, res.images]),
                         columns=len(x.array), mse=res.mse, converted=x.converted)


async def denoise(call: Call, body: DenoiseRequest) -> Response:
    """Clean estimates of images, optionally corrupted here first. PNG grid: inputs over outputs."""
    mv, rt = model_at(call)
    x = await images_of(call, body.images, mv, body)
    noise = None if body.noise is None else ops.NoiseSpec(body.noise.kind, body.noise.level, body.noise.seed)
    res = await ops.denoise(rt, mv, x.array, noise, label_of(mv, body.label, len(x.array)))
    shown = x.array if res.noisy is None else res.noisy
    noisy = None if res.noisy is None else encode_images(res.noisy, body.format, mv)
    return images_answer(call, mv, res.images, body.format, np.concatenate([shown, res.images]),
                         columns=len(x.array), noisy=noisy, converted=x.converted)


class AnomalyQuery(PrecisionQuery):
    """What one PNG shows (with `Accept: image/png`)."""

    view: Literal["overlay", "mask", "map"] = Field(
        default="overlay", description="Accept: image/png: the map over the image (with region boxes), the "
        "mask, or the map alone")


MAX_JSON_MAP_PIXELS = 1 << 20  # maps as JSON numbers beyond this, summed over a request: ask for PNGs


async def anomaly_score(call: Call, body: AnomalyScoreRequest) -> Response:
    """Anomaly scores with maps at each image's own resolution: raw and normalised scores (the threshold
    used maps to 0.5), is_anomaly; with a pixel threshold, masks and regions; thresholds a request may set."""
    mv, rt = model_at(call)
    ops.require(mv, "anomaly-score")
    spec = mv.manifest.anomaly
    assert spec is not None  # the manifest validator guarantees it for this capability
    x = await images_of(call, body.images, mv, body)
    th = anomaly.thresholds(spec, body.threshold, body.fpr, body.pixel_threshold, body.pixel_fpr)
    png_answer = call.wants_png()
    if png_answer and len(x.items) != 1:
        raise InvalidInput(f"a PNG answer shows one image; this request has {len(x.items)} (ask for JSON)")
    found = await anomaly.score_images(mv, x.items, x.fits, ops.graph_runner(rt, mv), th)
    if png_answer:
        view = call.query.view if isinstance(call.query, AnomalyQuery) else "overlay"
        return Response(_picture(x, found[0], th, view, mv), media_type="image/png")
    raw = np.array([f.raw for f in found], dtype=np.float64)
    normalised = scores.normalise(raw, th.image, spec.scale)
    is_anomaly = raw > th.image
    maps = masks = heat = None
    if body.heatmap:
        pixels = sum(f.map.size for f in found)
        if body.format == "json" and pixels > MAX_JSON_MAP_PIXELS:
            raise InvalidInput(f"maps of {pixels} pixels are too many for JSON numbers; ask format=png")
        vmax = 2 * th.pixel if th.pixel else None
        maps = [_map_out(f.map, body.format, vmax) for f in found]
        if th.pixel is not None:
            masks = [base64.b64encode(mask_png(f.mask)).decode("ascii") if body.format == "png"
                     else f.mask.astype(np.uint8) for f in found if f.mask is not None]
        heat = await _legacy_heatmaps(call, mv, x, found, body.format)
    with_regions = th.pixel is not None
    return json_answer(
        mv, score=spec.score, raw=raw, normalised=normalised, threshold=th.image, is_anomaly=is_anomaly,
        heatmaps=heat, converted=x.converted, pred_score=normalised, pred_label=is_anomaly,
        thresholds=th.as_dict(), sizes=[list(f.map.shape) for f in found], anomaly_map=maps, pred_mask=masks,
        regions=[[r.as_dict() for r in f.regions] for f in found] if with_regions else None,
        regions_total=[f.regions_total for f in found] if with_regions else None)


def _map_out(amap: np.ndarray, fmt: str, vmax: float | None) -> Any:
    if fmt != "png":
        return np.ascontiguousarray(amap)
    top = vmax if vmax is not None else float(amap.max())
    return base64.b64encode(map_png(amap, top)).decode("ascii")


async def _legacy_heatmaps(call: Call, mv: ModelVersion, x: ParsedImages, found: list[anomaly.ImageScore],
                           fmt: str) -> Any:
    """`heatmaps` as before the maps came at each image's size: the score's per-pixel maps in the model's
    frame, (N, C, H, W) (each scaled to [0, 1] on its own for PNGs); a fully convolutional model's maps."""
    if mv.manifest.spatial is not None:
        h = [f.map[None] for f in found]
    else:
        h = list((await ops.anomaly_score(runner(call, mv), mv, x.array, heatmap=True)).heatmaps)  # type: ignore[arg-type]
    if fmt != "png":
        return [np.ascontiguousarray(a) for a in h]
    out = []
    for a in h:
        span = max(float(a.max() - a.min()), 1e-12)
        out.append(to_base64_pngs(((a - a.min()) / span)[None])[0])
    return out


def _picture(x: ParsedImages, found: anomaly.ImageScore, th: anomaly.Thresholds, view: str,
             mv: ModelVersion) -> bytes:
    """The one-image PNG answer: the overlay, the mask, or the map."""
    vmax = 2 * th.pixel if th.pixel else float(found.map.max())
    if view == "mask":
        if found.mask is None:
            raise InvalidInput("this model has no pixel threshold, so no mask: give pixel_threshold")
        return mask_png(found.mask)
    if view == "map":
        return map_png(found.map, vmax)
    fit = x.fits[0]
    image = x.items[0] if fit is None else _source_image(x.items[0], fit, mv)
    return overlay_png(image, found.map, vmax, [r.box for r in found.regions], mv.manifest.data.value_range)


def _source_image(fitted: np.ndarray, fit: Fit, mv: ModelVersion) -> np.ndarray:
    """The image as the client sent it, for the overlay: the fitted one brought back to its own size."""
    return np.stack([unfit_map(ch, fit) for ch in fitted])
