"""The /v1 operations: each takes a `Call` and its validated request, calls `service.ops`, and shapes the
answer. They are rows of the operations table (service.api.table), which mounts each twice: on the latest
version, `/v1/models/{name}/{op}`, and on `/v1/models/{name}/versions/{version}/{op}`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from service import ops
from service.errors import InvalidInput, PayloadTooLarge
from service.http.table import Call
from service.images import ImageLimits, ParsedImages, grid_png, read_images, to_base64_pngs
from service.schemas import (
    AnomalyScoreRequest,
    DecodeRequest,
    DenoiseRequest,
    EncodeRequest,
    InterpolateRequest,
    ReconstructRequest,
    SampleRequest,
)
from service.store.repository import ModelVersion


class GridQuery(BaseModel):
    """How one PNG grid is laid out (with `Accept: image/png`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    columns: int | None = Field(default=None, ge=1, le=256,
                                description="grid width in tiles (Accept: image/png)")
    scale: int = Field(default=1, ge=1, le=16, description="upscale factor of each tile (Accept: image/png)")


# --- helpers ------------------------------------------------------------------------------------
async def images_of(call: Call, value: Any, mv: ModelVersion, strict: bool, what: str = "images"
                    ) -> ParsedImages:
    s = call.settings
    limits = ImageLimits(s.max_items, s.max_image_pixels, strict, s.max_request_pixels)
    return await read_images(value, mv.manifest.data, limits, what)


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


async def endpoint(call: Call, value: Any, mv: ModelVersion, strict: bool, what: str
                   ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """An interpolation end: a latent (flat list of numbers) or exactly one image (with its conversions)."""
    if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
        try:
            return np.asarray(value, dtype=np.float64), []  # (D,); ops.check_latents makes it float32
        except OverflowError as exc:  # an integer of hundreds of digits
            raise InvalidInput(f"{what} holds a number beyond the float range") from exc
    parsed = await images_of(call, value, mv, strict, what)
    if len(parsed.array) != 1:
        raise InvalidInput(f"{what} must be one latent or one image, got {len(parsed.array)} images")
    return parsed.array[0], [c | {"index": what} for c in parsed.converted]


# --- operations ---------------------------------------------------------------------------------
async def encode(call: Call, body: EncodeRequest) -> Response:
    """Encode images to latent means (and log-variances for VAEs)."""
    mv = call.model()
    x = await images_of(call, body.images, mv, body.strict)
    res = await ops.encode(call.runtime, mv, x.array)
    return json_answer(mv, mean=res.mean, logvar=res.logvar, converted=x.converted)


async def decode(call: Call, body: DecodeRequest) -> Response:
    """Decode latent codes to images."""
    mv = call.model()
    try:
        z = np.asarray(body.latents, dtype=np.float64)  # ops.check_latents makes it float32
    except ValueError as exc:
        raise InvalidInput("latents must be a rectangular (N, latent_dim) array of numbers") from exc
    if z.ndim == 2 and len(z) > call.settings.max_items:
        raise PayloadTooLarge(f"{len(z)} latents in one request; the limit is {call.settings.max_items}")
    images = await ops.decode(call.runtime, mv, z)
    return images_answer(call, mv, images, body.format)


async def sample(call: Call, body: SampleRequest) -> Response:
    """Draw n images from the model's prior; the same seed gives the same bytes."""
    mv = call.model()
    if body.n > call.settings.max_items:
        raise PayloadTooLarge(f"n={body.n} is above the limit of {call.settings.max_items} items per request")
    res = await ops.sample(call.runtime, mv, body.n, body.seed, body.temperature)
    return images_answer(call, mv, res.images, body.format, seed=res.seed, latents=res.latents)


async def interpolate(call: Call, body: InterpolateRequest) -> Response:
    """Images along a linear or spherical path between two latents or two images."""
    mv = call.model()
    a, conv_a = await endpoint(call, body.start, mv, body.strict, "start")
    b, conv_b = await endpoint(call, body.end, mv, body.strict, "end")
    res = await ops.interpolate(call.runtime, mv, a, b, body.steps, body.method)
    columns = call.query.columns if isinstance(call.query, GridQuery) else None
    return images_answer(call, mv, res.images, body.format, columns=columns or body.steps,
                         method=body.method, t=res.t, latents=res.latents, converted=conv_a + conv_b)


async def reconstruct(call: Call, body: ReconstructRequest) -> Response:
    """Reconstruct images through the autoencoder, with the per-image error. PNG grid: inputs over outputs."""
    mv = call.model()
    x = await images_of(call, body.images, mv, body.strict)
    res = await ops.reconstruct(call.runtime, mv, x.array)
    return images_answer(call, mv, res.images, body.format, np.concatenate([x.array, res.images]),
                         columns=len(x.array), mse=res.mse, converted=x.converted)


async def denoise(call: Call, body: DenoiseRequest) -> Response:
    """Clean estimates of images, optionally corrupted here first. PNG grid: inputs over outputs."""
    mv = call.model()
    x = await images_of(call, body.images, mv, body.strict)
    noise = None if body.noise is None else ops.NoiseSpec(body.noise.kind, body.noise.level, body.noise.seed)
    res = await ops.denoise(call.runtime, mv, x.array, noise)
    shown = x.array if res.noisy is None else res.noisy
    noisy = None if res.noisy is None else encode_images(res.noisy, body.format, mv)
    return images_answer(call, mv, res.images, body.format, np.concatenate([shown, res.images]),
                         columns=len(x.array), noisy=noisy, converted=x.converted)


async def anomaly_score(call: Call, body: AnomalyScoreRequest) -> Response:
    """Anomaly scores: raw, normalised (threshold = 0.5), threshold, is_anomaly, optional heatmaps."""
    mv = call.model()
    x = await images_of(call, body.images, mv, body.strict)
    res = await ops.anomaly_score(call.runtime, mv, x.array, body.heatmap)
    heat: Any = None
    if res.heatmaps is not None:
        h = res.heatmaps
        if body.format == "png":  # each map scaled to [0, 1] on its own, for viewing
            flat = h.reshape(len(h), -1)
            span = np.maximum(flat.max(axis=1) - flat.min(axis=1), 1e-12)
            h = ((flat - flat.min(axis=1, keepdims=True)) / span[:, None]).reshape(h.shape)
            heat = to_base64_pngs(h)
        else:
            heat = np.ascontiguousarray(h)
    return json_answer(mv, score=res.score, raw=res.raw, normalised=res.normalised, threshold=res.threshold,
                       is_anomaly=res.is_anomaly, heatmaps=heat, converted=x.converted)
