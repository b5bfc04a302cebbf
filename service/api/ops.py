"""The operations under /v1/models/{name}[/versions/{v}]/{op}: parse, call `service.ops`, shape the answer.

Every operation is mounted twice: on the latest version, and on `/versions/{version}` (a number or `latest`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Query, Request, Response

from service import ops
from service.api.deps import RuntimeDep, SettingsDep, StoreDep
from service.api.routing import MULTIPART_DOC, JSONOrFormRoute
from service.errors import InvalidInput, PayloadTooLarge
from service.images import ImageLimits, ParsedImages, grid_png, parse_images, to_base64_pngs
from service.limits import header
from service.schemas import (
    AnomalyScoreRequest,
    AnomalyScoreResponse,
    DecodeRequest,
    DecodeResponse,
    DenoiseRequest,
    DenoiseResponse,
    EncodeRequest,
    EncodeResponse,
    InterpolateRequest,
    InterpolateResponse,
    Problem,
    ReconstructRequest,
    ReconstructResponse,
    SampleRequest,
    SampleResponse,
)
from service.settings import Settings
from service.store.repository import ModelVersion

router = APIRouter(
    prefix="/v1/models",
    tags=["operations"],
    route_class=JSONOrFormRoute,
)

PROBLEMS: dict[int | str, dict[str, Any]] = {
    s: {"model": Problem, "description": d}
    for s, d in (
        (400, "malformed request"),
        (404, "unknown model or version"),
        (409, "the model lacks this capability"),
        (413, "too large: body, items or image pixels"),
        (422, "invalid input"),
    )
}
PNG_OK: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "JSON, or one PNG grid with `Accept: image/png`"}
}


@dataclass(frozen=True)
class Grid:
    columns: int | None
    scale: int


async def grid_opts(
    columns: Annotated[
        int | None, Query(ge=1, le=256, description="grid width in tiles (Accept: image/png)")
    ] = None,
    scale: Annotated[
        int, Query(ge=1, le=16, description="upscale factor of each tile (Accept: image/png)")
    ] = 1,
) -> Grid:
    return Grid(columns, scale)


GridDep = Annotated[Grid, Depends(grid_opts)]


def op_route(
    op: str, response_model: type, images_in: bool, png: bool
) -> Callable[[Callable[..., Any]], Any]:
    """Mount a handler on /{name}/{op} and /{name}/versions/{version}/{op}."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        responses = PROBLEMS | (PNG_OK if png else {})
        extra = {"requestBody": {"content": MULTIPART_DOC}} if images_in else None
        for path, suffix in ((f"/{{name}}/{op}", ""), (f"/{{name}}/versions/{{version}}/{op}", "_version")):
            router.add_api_route(
                path,
                fn,
                methods=["POST"],
                response_model=response_model,
                responses=responses,
                operation_id=f"{fn.__name__}{suffix}",
                openapi_extra=extra,
            )
        return fn

    return register


# --- helpers ------------------------------------------------------------------------------------
def wants_png(request: Request) -> bool:
    """True when the first of image/png or application/json named in Accept is image/png."""
    accept = (header(request.scope, b"accept") or b"").decode("latin-1")
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media == "image/png":
            return True
        if media in ("application/json", "application/*"):
            return False
    return False


def parse(
    value: Any, mv: ModelVersion, settings: Settings, strict: bool, what: str = "images"
) -> ParsedImages:
    limits = ImageLimits(settings.max_items, settings.max_image_pixels, strict)
    return parse_images(value, mv.manifest.data, limits, what)


def encode_images(images: np.ndarray, fmt: str, mv: ModelVersion) -> Any:
    if fmt == "png":
        return to_base64_pngs(images, mv.manifest.data.value_range)
    return np.ascontiguousarray(images)


def json_answer(mv: ModelVersion, **payload: Any) -> Response:
    body = {"model": mv.name, "version": mv.version} | payload
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def images_answer(
    request: Request,
    mv: ModelVersion,
    images: np.ndarray,
    fmt: str,
    grid: Grid,
    grid_images: np.ndarray | None = None,
    columns: int | None = None,
    **extra: Any,
) -> Response:
    """JSON with images (arrays or base64 PNGs), or one PNG grid when the client asks for image/png."""
    if wants_png(request):
        tiles = images if grid_images is None else grid_images
        png = grid_png(tiles, columns or grid.columns, grid.scale, value_range=mv.manifest.data.value_range)
        return Response(png, media_type="image/png")
    return json_answer(
        mv, format=fmt, shape=list(images.shape), images=encode_images(images, fmt, mv), **extra
    )


def endpoint(
    value: Any, mv: ModelVersion, settings: Settings, strict: bool, what: str
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """An interpolation end: a latent (flat list of numbers) or exactly one image (with its conversions)."""
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return np.asarray(value, dtype=np.float64), []  # (D,) latent; ops.check_latents makes it float32
    parsed = parse(value, mv, settings, strict, what)
    if len(parsed.array) != 1:
        raise InvalidInput(f"{what} must be one latent or one image, got {len(parsed.array)} images")
    return parsed.array[0], [c | {"index": what} for c in parsed.converted]


# --- handlers -----------------------------------------------------------------------------------
@op_route("encode", EncodeResponse, images_in=True, png=False)
async def encode(
    name: str,
    body: EncodeRequest,
    store: StoreDep,
    rt: RuntimeDep,
    settings: SettingsDep,
    version: str = "latest",
) -> Response:
    """Encode images to latent means (and log-variances for VAEs)."""
    mv = store.get(name, version)
    x = parse(body.images, mv, settings, body.strict)
    res = await ops.encode(rt, mv, x.array)
    return json_answer(mv, mean=res.mean, logvar=res.logvar, converted=x.converted)


@op_route("decode", DecodeResponse, images_in=False, png=True)
async def decode(
    name: str,
    body: DecodeRequest,
    request: Request,
    grid: GridDep,
    store: StoreDep,
    rt: RuntimeDep,
    settings: SettingsDep,
    version: str = "latest",
) -> Response:
    """Decode latent codes to images."""
    mv = store.get(name, version)
    try:
        z = np.asarray(body.latents, dtype=np.float64)  # ops.check_latents makes it float32
    except ValueError as exc:
        raise InvalidInput("latents must be a rectangular (N, latent_dim) array of numbers") from exc
    if z.ndim == 2 and len(z) > settings.max_items:
        raise PayloadTooLarge(f"{len(z)} latents in one request; the limit is {settings.max_items}")
    images = await ops.decode(rt, mv, z)
    return images_answer(request, mv, images, body.format, grid)


@op_route("sample", SampleResponse, images_in=False, png=True)
async def sample(
    name: str,
    body: SampleRequest,
    request: Request,
    grid: GridDep,
    store: StoreDep,
    rt: RuntimeDep,
    settings: SettingsDep,
    version: str = "latest",
) -> Response:
    """Draw n images from the model's prior; the same seed gives the same bytes."""
    mv = store.get(name, version)
    if body.n > settings.max_items:
        raise PayloadTooLarge(f"n={body.n} is above the limit of {settings.max_items} items per request")
    res = await ops.sample(rt, mv, body.n, body.seed, body.temperature)
    return images_answer(request, mv, res.images, body.format, grid, seed=res.seed, latents=res.latents)


@op_route("interpolate", InterpolateResponse, images_in=True, png=True)
async def interpolate(
    name: str,
    body: InterpolateRequest,
    request: Request,
    grid: GridDep,
    store: StoreDep,
    rt: RuntimeDep,
    settings: SettingsDep,
    version: str = "latest",
) -> Response:
    """Images along a linear or spherical path between two latents or two images."""
    mv = store.get(name, version)
    a, conv_a = endpoint(body.start, mv, settings, body.strict, "start")
    b, conv_b = endpoint(body.end, mv, settings, body.strict, "end")
    res = await ops.interpolate(rt, mv, a, b, body.steps, body.method)
    return images_answer(
        request,
        mv,
        res.images,
        body.format,
        grid,
        columns=grid.columns or body.steps,
        method=body.method,
        t=res.t,
        latents=res.latents,
        converted=conv_a + conv_b,
    )


@op_route("reconstruct", ReconstructResponse, images_in=True, png=True)
async def reconstruct(
    name: str,
    body: ReconstructRequest,
    request: Request,
    grid: GridDep,
    store: StoreDep,
    rt: RuntimeDep,
    settings: SettingsDep,
    version: str = "latest",
) -> Response:
    """Reconstruct images through the autoencoder, with the per-image error. PNG grid: inputs over outputs."""
    mv = store.get(name, version)
    x = parse(body.images, mv, settings, body.strict)
    res = await ops.reconstruct(rt, mv, x.array)
    return images_answer(
        request,
        mv,
        res.images,
        body.format,
        grid,
        np.concatenate([x.array, res.images]),
        columns=len(x.array),
        mse=res.mse,
        converted=x.converted,
    )


@op_route("denoise", DenoiseResponse, images_in=True, png=True)
async def denoise(
    name: str,
    body: DenoiseRequest,
    request: Request,
    grid: GridDep,
    store: StoreDep,
    rt: RuntimeDep,
    settings: SettingsDep,
    version: str = "latest",
) -> Response:
    """Clean estimates of images, optionally corrupted here first. PNG grid: inputs over outputs."""
    mv = store.get(name, version)
    x = parse(body.images, mv, settings, body.strict)
    noise = None if body.noise is None else ops.NoiseSpec(body.noise.kind, body.noise.level, body.noise.seed)
    res = await ops.denoise(rt, mv, x.array, noise)
    shown = x.array if res.noisy is None else res.noisy
    noisy = None if res.noisy is None else encode_images(res.noisy, body.format, mv)
    return images_answer(
        request,
        mv,
        res.images,
        body.format,
        grid,
        np.concatenate([shown, res.images]),
        columns=len(x.array),
        noisy=noisy,
        converted=x.converted,
    )


@op_route("anomaly-score", AnomalyScoreResponse, images_in=True, png=False)
async def anomaly_score(
    name: str,
    body: AnomalyScoreRequest,
    store: StoreDep,
    rt: RuntimeDep,
    settings: SettingsDep,
    version: str = "latest",
) -> Response:
    """Anomaly scores: raw, normalised (threshold = 0.5), threshold, is_anomaly, optional heatmaps."""
    mv = store.get(name, version)
    x = parse(body.images, mv, settings, body.strict)
    res = await ops.anomaly_score(rt, mv, x.array, body.heatmap)
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
    return json_answer(
        mv,
        score=res.score,
        raw=res.raw,
        normalised=res.normalised,
        threshold=res.threshold,
        is_anomaly=res.is_anomaly,
        heatmaps=heat,
        converted=x.converted,
    )
