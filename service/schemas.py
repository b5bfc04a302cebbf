"""Request and response bodies of the /v1 API, named per direction. Their descriptions become /docs.

Handlers build responses as plain dicts serialised with orjson (numpy arrays go straight through); the
response models here document them and tests validate real answers against them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictFloat, StrictInt
from typing_extensions import TypeAliasType

MAX_STEPS = 256

ImagesValue = list[Any] | str
#: Numbers, nested to any depth: a flat code, (N, D) codes, or spatial (N, C, h, w) ones. No booleans.
Numbers = TypeAliasType(  # type: ignore[misc]  # mypy does not follow a recursive TypeAliasType
    "Numbers", Union[list[StrictFloat | StrictInt], list["Numbers"]],  # type: ignore[misc]  # noqa: UP007
)
IMAGES_DESC = (
    "Images: nested arrays (N, C, H, W), (N, H, W) or one (H, W) image with values in the model's range "
    "(usually [0, 1]); or base64 PNG/JPEG strings (a `data:image/png;base64,` prefix is allowed), one per "
    "image. Multipart uploads send the files as repeated `images` form fields."
)
OutFormat = Literal["json", "png"]
FORMAT_DESC = (
    "`json`: nested arrays; `png`: one base64 PNG string per image. `Accept: image/png` gives one grid."
)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


FitMode = Literal["letterbox", "crop"]
FIT_DESC = (
    "how an image of another size or aspect ratio enters a fixed-size model: `letterbox` scales it whole "
    "and pads the rest, `crop` scales it to cover and keeps the centre; never squashed. Fully convolutional "
    "models take each image at its own size."
)


#: A class of a conditional model: its name or its index; or a list of them, one per image.
Label = StrictInt | str
LabelsValue = Label | list[Label]
LABEL_DESC = (
    "a conditional model's class: its name (`\"7\"`) or index (`7`), or a list of them, one per image; an "
    "unknown label is a 422 that lists the labels (GET /v1/models/{name} has them too)"
)


class _ImagesIn(_Request):
    images: ImagesValue = Field(description=IMAGES_DESC)
    strict: bool = Field(
        default=False, description="refuse images whose size or channels differ instead of converting them"
    )
    fit: FitMode = Field(default="letterbox", description=FIT_DESC)


class _Out(_Request):
    format: OutFormat = Field(default="json", description=FORMAT_DESC)


# --- requests -----------------------------------------------------------------------------------
class _LabelIn(_Request):
    label: LabelsValue | None = Field(
        default=None, description=LABEL_DESC + "; needed where the model's graphs take the label")


class EncodeRequest(_ImagesIn, _LabelIn):
    """Images to encode. A conditional model's code is the style: what is left once the label is known."""


class DecodeRequest(_Out, _LabelIn):
    latents: Numbers = Field(
        description="latent codes (N, latent_dim), or one code (latent_dim,); a fully convolutional model's "
        "codes are spatial, (N, C_z, h, w)"
    )


class SampleRequest(_Out):
    n: int = Field(default=16, ge=1, description="number of images (at most the server's max_items)")
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**63 - 1,
        description="same seed, same images, byte for byte; omitted: the server picks one and returns it",
    )
    temperature: float = Field(
        default=1.0, ge=0.0, le=10.0, description="scales the deviation from the prior mean"
    )
    label: LabelsValue | None = Field(
        default=None, description=LABEL_DESC + ". One label: n images of it; a list: one image per label (n "
        "defaults to its length). Omitted: the classes are drawn too, uniformly")
    shared_style: bool = Field(
        default=False, description="one style for all n images: with a list of labels, the same style drawn "
        "as each class")


class InterpolateRequest(_Out):
    start: ImagesValue | None = Field(
        default=None,
        description="a latent (latent_dim,), or one image: (H, W) or (1, C, H, W) array, or a base64 "
        "PNG/JPEG; may be omitted with a `label` pair (one style, drawn with `seed`, at both ends)")
    end: ImagesValue | None = Field(default=None, description="same kinds as `start`")
    steps: int = Field(default=8, ge=2, le=MAX_STEPS, description="points on the path, endpoints included")
    method: Literal["linear", "slerp"] = Field(default="linear", description="straight line or great circle")
    strict: bool = Field(default=False, description="refuse images that would need converting")
    fit: FitMode = Field(default="letterbox", description=FIT_DESC)
    label: Label | list[Label] | None = Field(
        default=None, description="a conditional model's class along the path: one label holds it, a pair "
        "[from, to] moves from one class to the other (the label a mix of the two)")
    seed: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="with a label pair and no start or end: the seed of "
        "the style drawn for both ends (omitted: the server picks one and returns it)")


class ReconstructRequest(_ImagesIn, _Out, _LabelIn):
    """Images to pass through encoder and decoder."""


class RestyleRequest(_ImagesIn, _Out):
    """Images to draw as other classes, each in its own style (a conditional model's `restyle`)."""

    label: LabelsValue | None = Field(
        default=None, description="the class to draw each image as: " + LABEL_DESC + ". Omitted: every "
        "class, image by image (PNG grid: one row per image, the image first)")
    source_label: LabelsValue | None = Field(
        default=None, description="each image's own class, for a model whose encoder takes the label (a "
        "conditional VAE); one for all or one per image")


class NoiseIn(_Request):
    kind: Literal["gaussian", "salt-and-pepper", "masking"] = Field(description="corruption applied first")
    level: float = Field(
        ge=0.0, le=1.0, description="gaussian: std (in units of the value range); others: fraction"
    )
    seed: int = Field(default=0, ge=0, le=2**63 - 1, description="same seed, same corruption")


class DenoiseRequest(_ImagesIn, _Out, _LabelIn):
    noise: NoiseIn | None = Field(
        default=None, description="corrupt the images here first; the response then carries the noisy inputs"
    )


class AnomalyScoreRequest(_ImagesIn):
    images: ImagesValue = Field(description=IMAGES_DESC + " (`image` is accepted too)",
                                validation_alias=AliasChoices("images", "image"))
    heatmap: bool = Field(
        default=False, description="also return the maps: `anomaly_map` at each image's own size, "
        "`pred_mask`, and the legacy `heatmaps`")
    format: OutFormat = Field(
        default="json", description="format of the maps and masks (png: a grey PNG per map, scaled to its "
        "own range for the heatmaps, to twice the pixel threshold for anomaly_map)"
    )
    threshold: float | None = Field(
        default=None, description="the image threshold, in raw score units, instead of the calibrated one")
    fpr: float | None = Field(
        default=None, gt=0, lt=1, description="the image threshold that flags this share of normal images "
        "(from the calibration quantiles in the manifest)")
    pixel_threshold: float | None = Field(
        default=None, description="the mask's pixel threshold, in map units, instead of the calibrated one")
    pixel_fpr: float | None = Field(
        default=None, gt=0, lt=1, description="the pixel threshold that flags this share of normal pixels")


# --- responses ----------------------------------------------------------------------------------
class Conversion(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    index: int | str = Field(description="which input item (or `start` / `end` for interpolate)")
    from_: list[int] | str = Field(alias="from", description="[C, H, W] of an array, or 'PNG 28x28 RGB'")
    to: list[int] = Field(description="[C, H, W] the model takes")
    fit: Literal["letterbox", "crop"] | None = Field(
        default=None, description="how another size or aspect entered the model's frame (never squashed)")


class _Answer(BaseModel):
    model: str
    version: int


class _ImagesOut(_Answer):
    format: OutFormat
    shape: list[int] = Field(description="[N, C, H, W] of `images`")
    images: list[Any] = Field(description="nested arrays, or base64 PNG strings with format=png")


class ModelSummary(BaseModel):
    name: str
    latest: int
    versions: list[int]
    family: str
    variant: str
    shape: list[int] = Field(description="[C, H, W] of the images the model takes and makes")
    latent_dim: int
    capabilities: list[str]
    labels: list[str] | None = Field(
        default=None, description="a conditional model's classes, by index: what `label` may name")
    precisions: list[str] = Field(
        default=["fp32"], description="what `precision` may name: fp32, and the twins (int8, fp16) that "
        "every graph of the model has")


class StoreProblemOut(BaseModel):
    model: str
    version: int | None
    reason: str
    serving: Literal["previous"] | None = Field(
        default=None,
        description='"previous": the version served before its files went bad, and still serves that copy',
    )


class ModelsResponse(BaseModel):
    models: list[ModelSummary]
    problems: list[StoreProblemOut] = Field(
        description="versions that failed their last check, with the reason")


class GraphOut(BaseModel):
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    twins: dict[str, dict[str, Any]] | None = Field(
        default=None, description="precision -> the graph's twin at that precision: its file, how it was "
        "made, and its check against FP32 (what it was measured on, max abs diff, SNR, the bound it passed)")


class AnomalyOut(BaseModel):
    score: str
    threshold: float
    scale: float
    rule: str
    params: dict[str, Any]
    map: dict[str, Any] | None = Field(
        default=None, description="a map score: its reduction, pixel threshold (the mask) and rule")
    calibrated_fpr: bool = Field(default=False, description="fpr and pixel_fpr can be asked for")


class ModelDetailResponse(ModelSummary):
    version: int
    created_at: datetime
    code_version: str
    dataset: str
    value_range: list[float]
    preprocessing: str
    prior: str = Field(description="normal, gaussian or gmm")
    graphs: dict[str, GraphOut]
    anomaly: AnomalyOut | None
    spatial: dict[str, Any] | None = Field(
        default=None, description="fully convolutional: any H and W that are multiples of `multiple`, tiled "
        "above `tile`")
    conditioning: dict[str, Any] | None = Field(
        default=None, description="a conditional model's label inputs (graph -> input, one-hot float32 "
        "(N, K)) and the kind of each class's prior (None: the latent prior serves every class)")
    metrics: dict[str, Any]


class EncodeResponse(_Answer):
    mean: list[Any] = Field(description="(N, latent_dim) latent means; (N, C_z, h, w) for a fully "
                            "convolutional model")
    logvar: list[Any] | None = Field(description="(N, latent_dim) log-variances (VAEs only)")
    converted: list[Conversion]


class DecodeResponse(_ImagesOut):
    pass


class SampleResponse(_ImagesOut):
    seed: int = Field(description="the seed used; send it back to get the same images")
    latents: list[list[float]]
    labels: list[str] | None = Field(default=None, description="a conditional model's class of each image")


class InterpolateResponse(_ImagesOut):
    method: str
    t: list[float] = Field(description="position of each step on the path, 0 to 1")
    latents: list[list[float]]
    converted: list[Conversion]
    labels: list[str] | None = Field(
        default=None, description="a conditional model's classes at the start and the end of the path")
    seed: int | None = Field(default=None, description="the seed of the style drawn for a label pair")


class RestyleResponse(_ImagesOut):
    labels: list[str] = Field(description="the class each image is drawn as")
    source: list[int] = Field(description="the input each image restyles (its index)")
    style: list[list[float]] = Field(description="(N, latent_dim) the inputs' codes: their styles")
    converted: list[Conversion]


class ReconstructResponse(_ImagesOut):
    mse: list[float] = Field(description="mean squared error per image")
    converted: list[Conversion]


class DenoiseResponse(_ImagesOut):
    noisy: list[Any] | None = Field(description="the corrupted inputs, when `noise` was given")
    converted: list[Conversion]


class RegionOut(BaseModel):
    box: list[int] = Field(description="[x0, y0, x1, y1] in the image's pixels, the end exclusive")
    area: int = Field(description="pixels in the region")
    peak: float = Field(description="the map's highest value in the region")
    mean: float


class ThresholdsOut(BaseModel):
    image: float = Field(description="the image threshold used, raw score units")
    image_source: str = Field(description="manifest, request, or fpr=<rate>")
    pixel: float | None = Field(description="the pixel threshold of the mask, map units (None: no mask)")
    pixel_source: str | None


class AnomalyScoreResponse(_Answer):
    score: str = Field(description="score kind: reconstruction, vae_elbo, fanogan or segmentation")
    raw: list[float]
    normalised: list[float] = Field(description="logistic map of raw; the threshold used maps to 0.5")
    threshold: float = Field(description="the image threshold used (see `thresholds`)")
    is_anomaly: list[bool]
    heatmaps: list[Any] | None = Field(
        description="heatmap=true: per-pixel maps in the model's frame, (N, C, H, W); for a fully "
        "convolutional model, (1, H, W) per image at its own size")
    converted: list[Conversion]
    pred_score: list[float] = Field(description="anomalib's name for `normalised`")
    pred_label: list[bool] = Field(description="anomalib's name for `is_anomaly`")
    thresholds: ThresholdsOut
    sizes: list[list[int]] = Field(description="[H, W] of each image: the size of its maps and mask")
    anomaly_map: list[Any] | None = Field(
        description="heatmap=true: each image's (H, W) map at its own resolution (arrays, or base64 PNGs)")
    pred_mask: list[Any] | None = Field(
        description="heatmap=true and a pixel threshold: each image's (H, W) mask, map > pixel threshold")
    regions: list[list[RegionOut]] | None = Field(
        description="with a pixel threshold: each image's connected mask regions, highest peak first "
        "(at most 100)")
    regions_total: list[int] | None = Field(description="regions per image before the cut to 100")


class Problem(BaseModel):
    """RFC 9457 problem details (media type application/problem+json)."""

    type: str = Field(description="urn:latentserve:problem:<slug>, e.g. model-not-found")
    title: str
    status: int
    detail: str
    instance: str = Field(description="the request path")
