"""The manifest: the typed contract between `training/` (writer) and `service/` (reader).

One `manifest.json` sits in every `models_store/<model>/<version>/` folder. Training builds a `Manifest`
and serialises it; the service parses it with `Manifest.model_validate_json` and refuses anything that
does not validate. The JSON Schema in `models_store/README.md` is generated from these models
(`python -m service.store.schema`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1

#: Model names: lowercase words joined by single hyphens. No dots (V2 names graphs `<model>.<graph>`),
#: no slashes or other path characters, so a name is always a safe single path component.
MODEL_NAME_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
MODEL_NAME_MAX = 64
GRAPH_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"

Family = Literal["ae", "vae", "aae", "wae", "gan"]
Capability = Literal[
    "encode", "decode", "sample", "interpolate", "reconstruct", "denoise", "anomaly-score", "restyle",
]
#: What every unconditional model with an encoder and a decoder can do ("restyle" needs a label set).
ALL_CAPABILITIES: tuple[Capability, ...] = (
    "encode", "decode", "sample", "interpolate", "reconstruct", "denoise", "anomaly-score",
)
DType = Literal["float32"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_valid_model_name(name: str) -> bool:
    """True when `name` is a safe model name (see MODEL_NAME_PATTERN)."""
    return len(name) <= MODEL_NAME_MAX and MODEL_NAME_RE.fullmatch(name) is not None


class TensorSpec(_Strict):
    """One named input or output of a graph. `-1` marks a dynamic dimension (the batch is always dim 0)."""

    name: str
    dtype: DType = "float32"
    shape: list[int]


def _check_file_name(v: str | None) -> str | None:
    if v is not None and (not v or "/" in v or "\\" in v or v.startswith(".")):
        raise ValueError(f"graph file must be a plain file name inside the version folder, got {v!r}")
    return v


#: The precision a graph runs at: its own FP32 file, or a twin (`GraphSpec.twins`) made from it.
Precision = Literal["fp32", "int8", "fp16"]
TwinPrecision = Literal["int8", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8", "fp16")


class TwinCheck(_Strict):
    """How far a twin's outputs are from its FP32 graph's, measured on the same inputs before publishing (a
    twin that misses its bound is not published). A model's whole-path numbers at this precision (e.g. its
    reconstruction PSNR against FP32's) are in `metrics`, prefixed with the precision."""

    measured_on: str = Field(description="the inputs the check ran on, in words")
    n: int = Field(gt=0, description="inputs (batch rows) measured")
    max_abs_diff: float = Field(ge=0, description="largest |twin - FP32| over every output")
    snr_db: float = Field(description="first output: 10 log10(sum FP32^2 / sum (twin - FP32)^2)")
    bound: str = Field(description="the rule the twin had to pass to be published, in words")


class TwinSpec(_Strict):
    """A graph's reduced-precision twin: the same inputs and outputs (float32 at the boundary), another
    file. The service serves it when asked (a setting, or a request's `precision`)."""

    file: str = Field(description="ONNX file name inside the version folder")
    precision: TwinPrecision
    method: str = Field(description="how it was made, in words (quantization scheme, calibration data)")
    check: TwinCheck

    @field_validator("file")
    @classmethod
    def _plain_file_name(cls, v: str) -> str:
        return _check_file_name(v)  # type: ignore[return-value]


class GraphSpec(_Strict):
    """One ONNX graph (and its optional TorchScript and reduced-precision twins) of a model."""

    file: str = Field(description="ONNX file name inside the version folder")
    torchscript: str | None = Field(
        default=None, description="TorchScript twin, for the optional torch backend"
    )
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    twins: dict[TwinPrecision, TwinSpec] | None = Field(
        default=None, description="precision -> an ONNX twin at that precision (e.g. int8), with its check")

    @field_validator("file", "torchscript")
    @classmethod
    def _plain_file_name(cls, v: str | None) -> str | None:
        return _check_file_name(v)

    @model_validator(mode="after")
    def _twins_consistent(self) -> GraphSpec:
        for p, twin in (self.twins or {}).items():
            if twin.precision != p:
                raise ValueError(f"twin {p!r} says its precision is {twin.precision!r}")
            if twin.file in (self.file, self.torchscript):
                raise ValueError(f"twin {p!r} must have a file of its own, not {twin.file!r}")
        return self


class DataSpec(_Strict):
    """What the model eats: images `[C, H, W]` with values in `value_range`."""

    dataset: str
    shape: tuple[int, int, int] = Field(description="[C, H, W]")
    value_range: tuple[float, float] = (0.0, 1.0)
    preprocessing: str = Field(description="how raw pixels became model input, in words")
    classes: list[int] | None = Field(default=None, description="normal classes, for one-class models")


class NormalPrior(_Strict):
    """Standard normal N(0, I): the prior of AAE, WAE and GAN, and of VAEs by default."""

    kind: Literal["normal"] = "normal"


class GaussianPrior(_Strict):
    """A full-covariance Gaussian fitted on training codes (deterministic AEs; VAEs with `prior = "gaussian"`,
    on their posterior means)."""

    kind: Literal["gaussian"] = "gaussian"
    mean: list[float]
    cov: list[list[float]]


class GMMPrior(_Strict):
    """A Gaussian mixture fitted on training codes, ex-post density estimation (deterministic AEs; VAEs with
    `prior = "gmm"`, on their posterior means)."""

    kind: Literal["gmm"] = "gmm"
    weights: list[float]
    means: list[list[float]]
    covs: list[list[list[float]]]

    @model_validator(mode="after")
    def _consistent(self) -> GMMPrior:
        k = len(self.weights)
        if k == 0 or len(self.means) != k or len(self.covs) != k:
            raise ValueError("gmm prior needs the same number (>0) of weights, means and covs")
        if abs(sum(self.weights) - 1.0) > 1e-3:
            raise ValueError("gmm weights must sum to 1")
        return self


Prior = Annotated[NormalPrior | GaussianPrior | GMMPrior, Field(discriminator="kind")]


class LatentSpec(_Strict):
    dim: int = Field(gt=0)
    prior: Prior

    @model_validator(mode="after")
    def _prior_matches_dim(self) -> LatentSpec:
        p = self.prior
        if isinstance(p, GaussianPrior):
            if len(p.mean) != self.dim or len(p.cov) != self.dim or any(len(r) != self.dim for r in p.cov):
                raise ValueError("gaussian prior shape does not match latent dim")
        if isinstance(p, GMMPrior):
            if any(len(m) != self.dim for m in p.means) or any(
                len(c) != self.dim or any(len(r) != self.dim for r in c) for c in p.covs
            ):
                raise ValueError("gmm prior shape does not match latent dim")
        return self


ScoreKind = Literal["reconstruction", "vae_elbo", "fanogan", "segmentation"]


class MapSpec(_Strict):
    """A score that is a map: the per-pixel map (the channel mean of the score's map, (H, W) per image) is
    the anomaly map, and the image score is its reduction. Pixels above `pixel_threshold` make the mask, and
    its connected parts of at least `min_region_pixels` are the regions."""

    reduction: Literal["mean", "max", "top_mean"] = Field(
        default="top_mean", description="image score from the map: mean, max, or mean of the top fraction")
    top_fraction: float = Field(default=0.01, gt=0, le=1, description="for top_mean: the share of pixels")
    pixel_threshold: float = Field(description="a map value above this is an anomalous pixel")
    pixel_rule: str = Field(description="how the pixel threshold was calibrated, in words")
    min_region_pixels: int = Field(default=1, ge=1, description="smaller connected parts are not regions")


class Calibration(_Strict):
    """Quantiles of the scores on held-out normal images, so a client can ask for a false-positive rate
    instead of a threshold: the threshold for rate r is the (1 - r) quantile, interpolated."""

    probs: list[float] = Field(description="ascending, in (0, 1)")
    image: list[float] = Field(description="image-score quantiles at `probs`")
    pixel: list[float] | None = Field(default=None, description="map-value quantiles at `probs` (map scores)")

    @model_validator(mode="after")
    def _consistent(self) -> Calibration:
        n = len(self.probs)
        if n < 2 or any(not 0 < p < 1 for p in self.probs) or self.probs != sorted(self.probs):
            raise ValueError("calibration probs must be at least two ascending values in (0, 1)")
        for name, q in (("image", self.image), ("pixel", self.pixel)):
            if q is not None and (len(q) != n or q != sorted(q)):
                raise ValueError(f"calibration {name} quantiles must be ascending, one per prob")
        return self


class AnomalySpec(_Strict):
    """How the anomaly score is computed and where normal ends.

    normalised = 1 / (1 + exp(-(raw - threshold) / scale)), so the threshold maps to 0.5.
    The score functions themselves live in `service.store.scores`.
    """

    score: ScoreKind
    params: dict[str, float | str] = Field(default_factory=dict, description="e.g. likelihood, kappa")
    threshold: float
    rule: str = Field(description="how the threshold was calibrated, in words")
    normalisation: Literal["logistic"] = "logistic"
    scale: float = Field(gt=0)
    map: MapSpec | None = Field(default=None, description="the score is a reduction of a per-pixel map")
    calibration: Calibration | None = Field(default=None, description="score quantiles on normal images")


class LabelSet(_Strict):
    """A conditional model's classes. `names[i]` is class i. Each graph named in `inputs` takes the label
    as a second input of that name: one-hot float32 (N, len(names)), so a soft label (a mix of two classes)
    is a valid input too. `class_priors`, when the family fits them, are one prior per class (by index) that
    `sample` draws the code (the style) from for that class; else the latent prior serves every class."""

    names: list[str] = Field(min_length=2, description="class names; the position is the class index")
    inputs: dict[str, str] = Field(description="graph -> the name of its one-hot label input")
    class_priors: list[Prior] | None = Field(default=None, description="one latent prior per class")

    @model_validator(mode="after")
    def _consistent(self) -> LabelSet:
        if len(set(self.names)) != len(self.names) or any(not n or len(n) > 64 for n in self.names):
            raise ValueError("label names must be distinct, non-empty and at most 64 characters")
        if self.class_priors is not None and len(self.class_priors) != len(self.names):
            raise ValueError("class_priors needs one prior per label")
        return self


class SpatialSpec(_Strict):
    """A fully convolutional model: each graph runs on any H and W that are multiples of `multiple`, and keeps
    the layout (its latent is (latent_channels, H / multiple, W / multiple)). `data.shape` is the crop it was
    trained on; the service scores an image at its own size, in overlapping tiles when a side exceeds
    `tile`."""

    multiple: int = Field(gt=0, description="H and W must be multiples of this (2 ** depth)")
    latent_channels: int = Field(gt=0)
    tile: int = Field(gt=0, description="images with a side above this run in tiles of tile x tile pixels")
    overlap: int = Field(ge=0, description="pixels shared by neighbouring tiles, blended at the seams")

    @model_validator(mode="after")
    def _consistent(self) -> SpatialSpec:
        if self.tile % self.multiple or self.overlap % self.multiple or self.overlap * 2 >= self.tile:
            raise ValueError("tile and overlap must be multiples of `multiple`, and overlap < tile / 2")
        return self


class Manifest(_Strict):
    """The whole contract of one published model version."""

    schema_version: Literal[1] = 1
    name: str
    version: int = Field(gt=0)
    family: Family
    variant: str = Field(description="e.g. plain, sparse-l1, sparse-kl, denoising, contractive, linear, beta")
    created_at: datetime
    code_version: str
    data: DataSpec
    latent: LatentSpec
    graphs: dict[str, GraphSpec]
    files: dict[str, str] = Field(description="sha256 of every other file in the version folder")
    capabilities: list[Capability]
    anomaly: AnomalySpec | None = None
    spatial: SpatialSpec | None = Field(default=None, description="fully convolutional: runs at any size")
    labels: LabelSet | None = Field(default=None, description="a conditional model's classes")
    metrics: dict[str, float | int | str] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict, description="config, seed and data split")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not is_valid_model_name(v):
            raise ValueError(
                f"model name {v!r} must match {MODEL_NAME_PATTERN} (at most {MODEL_NAME_MAX} chars)"
            )
        return v

    @field_validator("graphs")
    @classmethod
    def _graph_names_ok(cls, v: dict[str, GraphSpec]) -> dict[str, GraphSpec]:
        for g in v:
            if not re.fullmatch(GRAPH_NAME_PATTERN, g):
                raise ValueError(f"graph name {g!r} must match {GRAPH_NAME_PATTERN}")
        return v

    @field_validator("files")
    @classmethod
    def _sha_ok(cls, v: dict[str, str]) -> dict[str, str]:
        for f, h in v.items():
            if "/" in f or "\\" in f or f.startswith(".") or f == "manifest.json":
                raise ValueError(f"file {f!r} must be a plain file name other than manifest.json")
            if not re.fullmatch(r"[0-9a-f]{64}", h):
                raise ValueError(f"sha256 of {f!r} is not 64 hex digits")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        for gname, g in self.graphs.items():
            for f in (g.file, g.torchscript, *(t.file for t in (g.twins or {}).values())):
                if f is not None and f not in self.files:
                    raise ValueError(f"graph {gname!r} file {f!r} has no sha256 in files")
        needs = {
            "encode": {"encoder"}, "decode": {"decoder"}, "sample": {"decoder"},
            "interpolate": {"decoder"}, "reconstruct": {"encoder", "decoder"},
            "denoise": {"encoder", "decoder"}, "anomaly-score": {"encoder", "decoder"},
            "restyle": {"encoder", "decoder"},
        }
        for cap in self.capabilities:
            missing = needs[cap] - set(self.graphs)
            if missing:
                raise ValueError(f"capability {cap!r} needs graphs {sorted(missing)}")
        if "anomaly-score" in self.capabilities and self.anomaly is None:
            raise ValueError("capability 'anomaly-score' needs an 'anomaly' section")
        if self.anomaly is not None and self.anomaly.score == "fanogan" and "critic" not in self.graphs:
            raise ValueError("fanogan score needs a 'critic' graph")
        if self.anomaly is not None and self.anomaly.score == "segmentation" and "segmenter" not in (
                self.graphs):
            raise ValueError("segmentation score needs a 'segmenter' graph")
        if "restyle" in self.capabilities and self.labels is None:
            raise ValueError("capability 'restyle' needs a label set (labels)")
        if self.labels is not None:
            k = len(self.labels.names)
            for gname, input_name in self.labels.inputs.items():
                graph = self.graphs.get(gname)
                spec = next((t for t in graph.inputs if t.name == input_name), None) if graph else None
                if spec is None or spec.shape != [-1, k]:
                    raise ValueError(f"labels.inputs: graph {gname!r} needs an input {input_name!r} of shape "
                                     f"[-1, {k}] (one-hot)")
        if self.spatial is not None:
            if {"sample", "interpolate"} & set(self.capabilities):
                raise ValueError("a fully convolutional model has no prior to sample or interpolate")
            if self.data.shape[1] % self.spatial.multiple or self.data.shape[2] % self.spatial.multiple:
                raise ValueError("the training crop (data.shape) must be a multiple of spatial.multiple")
        return self

    def precisions(self, graphs: Iterable[str] | None = None) -> list[Precision]:
        """"fp32", then every twin precision that each of `graphs` (default: all of them) has."""
        names = list(self.graphs) if graphs is None else list(graphs)
        twins = [set((self.graphs[g].twins or {}) if g in self.graphs else ()) for g in names]
        return ["fp32", *(p for p in PRECISIONS[1:] if twins and all(p in t for t in twins))]

    @property
    def has_logvar(self) -> bool:
        enc = self.graphs.get("encoder")
        return enc is not None and len(enc.outputs) > 1
