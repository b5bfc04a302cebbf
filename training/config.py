"""Training configuration: one frozen dataclass, read from TOML and overridden by typed CLI flags.

A config file has two sections:

    [train]                 # fields of TrainConfig
    model = "vae"
    epochs = 20
    [model]                 # fields of the family's config dataclass (training.models.REGISTRY)
    latent_dim = 4

CLI overrides name a field: `--epochs 5` (or `--train.epochs 5`) and `--model.latent_dim 4`. Every value,
from a file or a flag, is checked against the dataclass field's type (bool, int, float, str, tuples,
Literal choices, optional `None`) so a typo fails before any training starts, with a message naming the
field and what it expected.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config file or flag is malformed; the message names the field."""


Device = Literal["auto", "cpu", "cuda"]
PriorKind = Literal["gaussian", "gmm"]
MapReduction = Literal["mean", "max", "top_mean"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything the pipeline needs besides the model's own config."""

    model: str = "ae"  # a key of training.models.REGISTRY
    data: str = "digits"  # a source understood by training.data.load (name or path)
    seed: int = 0
    epochs: int = 30  # per stage, unless the stage fixes its own
    batch_size: int = 64
    lr: float | None = None  # None: the model config's lr
    patience: int = 5  # epochs without validation improvement before stopping
    min_delta: float = 0.0  # an improvement smaller than this does not count
    steps_per_epoch: int | None = None  # cap on batches per epoch (tests, smoke runs)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test fractions
    normal_classes: tuple[int, ...] | None = None  # one-class mode: train and val on these only
    device: Device = "auto"  # auto: cuda when available
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    nll_k: int = 100  # importance samples for the VAE NLL estimate
    threshold_quantile: float = 0.99  # anomaly threshold = this quantile of validation scores
    prior: PriorKind = "gmm"  # fitted latent prior of deterministic AEs
    prior_components: int = 10
    name: str | None = None  # published model name; None: "<model>-<dataset>"
    store: str = "models_store"
    runs: str = "runs"  # where run folders go: run_dir defaults to <runs>/<name>
    run_dir: str | None = None  # metrics.jsonl and checkpoint.pt; None: <runs>/<name>
    resume: bool = False  # continue from run_dir/checkpoint.pt when it exists
    publish: bool = True  # False: fit, evaluate and check export, but write nothing to the store
    progress: bool = True  # tqdm bar (only on a TTY, only on rank 0)
    # torch CPU threads. None: OMP_NUM_THREADS when set, else 1 for an MLP, else the process's CPUs (affinity,
    # cgroup quota) / local ranks; never torch's default, which oversubscribes a shared or limited CPU: the
    # README's ae-digits run trained in 15.5 s on it against 1.9 s on 1 thread (2 busy cores; see
    # training.trainer.pick_threads)
    threads: int | None = None
    channels: int | None = None  # 1 (grey) or 3 (RGB); None: the source's own (image folders: grey)
    # --- random crops (training.data.crops): images of any size, image folders streamed from disk
    crop: int | None = None  # side of the square training crops; None: whole images, all of one size
    crops_per_image: int = 8  # crops taken from each image read (decoding a photo costs more than a crop)
    epoch_crops: int | None = None  # crops per epoch; None: crops_per_image from every training image
    workers: int | None = None  # DataLoader workers decoding images; None: 2 for an image folder, else 0
    # random zoom of the crops, up to a factor 1 + scale_jitter either way (0: none); a photo taken at an
    # angle shows its surface at several scales (training.data.crops.CropDataset)
    scale_jitter: float = 0.0
    # --- anomaly maps (fcn backbone): published in the manifest's anomaly.map, anomaly.calibration, spatial
    # top_mean with a fraction is a quantile of the map, so its level carries over from the crop to larger
    # images (max grows with the pixel count); the fraction is of the pixels, at least one
    map_reduction: MapReduction = "top_mean"
    top_fraction: float = 0.01
    pixel_quantile: float = 0.999  # pixel threshold = this quantile of map values on validation windows
    min_region_pixels: int = 16  # smaller connected parts of the mask are not regions
    tile: int | None = None  # the service's tile side for larger images; None: 256, or 4 overlaps if larger
    overlap: int | None = None  # pixels shared by neighbouring tiles; None: 8 latent cells (8 * 2**k)
    # --- reduced-precision twins (training.quantize): ONNX files beside the FP32 graphs, made after the
    # parity check (int8 calibrated on training images) and published only when they pass their own check
    # against FP32 on the validation images; the service serves one when a setting or a request asks for it
    twins: tuple[Literal["int8", "fp16"], ...] = ()

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ConfigError("epochs, batch_size and patience must be >= 1")
        if not 0.0 < self.threshold_quantile < 1.0:
            raise ConfigError(f"threshold_quantile must be in (0, 1), got {self.threshold_quantile}")
        if self.nll_k < 1 or self.prior_components < 1:
            raise ConfigError("nll_k and prior_components must be >= 1")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ConfigError(f"min_delta must be >= 0, got {self.min_delta}")
        for field_name in ("steps_per_epoch", "threads", "crop", "epoch_crops", "tile"):
            value = getattr(self, field_name)
            if value is not None and value < 1:
                raise ConfigError(f"{field_name} must be >= 1 (or left out), got {value}")
        if len(set(self.twins)) != len(self.twins):
            raise ConfigError(f"twins names a precision twice: {list(self.twins)}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.crops_per_image < 1 or self.min_region_pixels < 1:
            raise ConfigError("crops_per_image and min_region_pixels must be >= 1")
        if (self.workers is not None and self.workers < 0) or (self.overlap is not None and self.overlap < 0):
            raise ConfigError("workers and overlap must be >= 0 (or left out)")
        if not (math.isfinite(self.scale_jitter) and 0.0 <= self.scale_jitter <= 1.0):
            raise ConfigError(f"scale_jitter must be in [0, 1], got {self.scale_jitter}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if not 0.0 < self.pixel_quantile < 1.0:
            raise ConfigError(f"pixel_quantile must be in (0, 1), got {self.pixel_quantile}")


# --- type checking of values ------------------------------------------------------------------------

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, field: str) -> Any:
    """Convert `value` (a CLI string or a TOML value) to type `tp`, or raise ConfigError naming `field`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, field)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{field}: {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        for choice in args:
            try:
                if coerce(value, type(choice), field) == choice:
                    return choice
            except ConfigError:
                pass
        raise ConfigError(f"{field}: {value!r} is not one of {', '.join(map(repr, args))}")
    if origin is tuple:
        items = _as_items(value, field)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], field) for v in items)
        if len(items) != len(args):
            raise ConfigError(f"{field}: expected {len(args)} values, got {len(items)} ({value!r})")
        return tuple(coerce(v, a, field) for v, a in zip(items, args, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{field}: {value!r} is not a bool (true/false)")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{field}: {value!r} is not an int")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{field}: {value!r} is not a float")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{field}: {value!r} is not a string")
    raise ConfigError(f"{field}: unsupported field type {_type_name(tp)}")


def _as_items(value: Any, field: str) -> Sequence[Any]:
    if isinstance(value, str):
        s = value.strip().strip("()[]")
        return [v.strip() for v in s.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return value
    raise ConfigError(f"{field}: {value!r} is not a list (use comma-separated values on the command line)")


def field_types(cls: type) -> dict[str, Any]:
    """Resolved field types of a dataclass (its module uses postponed annotations)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def typed_fields(cls: type, values: Mapping[str, Any], section: str) -> dict[str, Any]:
    """Check and convert every `values` entry against the dataclass `cls`; unknown names are errors."""
    types_ = field_types(cls)
    out = {}
    for key, value in values.items():
        if key not in types_:
            known = ", ".join(sorted(types_))
            raise ConfigError(f"unknown {section} field {key!r}; known: {known}")
        out[key] = coerce(value, types_[key], f"{section}.{key}")
    return out


# --- files and flags ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """A resolved run: the trainer config plus the raw (typed later) model-config overrides."""

    train: TrainConfig
    model: dict[str, Any]


def read_toml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The [train] and [model] tables of a config file."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    extra = set(doc) - {"train", "model"}
    if extra:
        raise ConfigError(f"{path}: unknown section(s) {sorted(extra)}; use [train] and [model]")
    return dict(doc.get("train", {})), dict(doc.get("model", {}))


def parse_overrides(args: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """`--field value` / `--field=value` / `--model.field value` pairs -> (train, model) raw strings."""
    train: dict[str, str] = {}
    model: dict[str, str] = {}
    it = iter(args)
    for arg in it:
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"expected --field value, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            try:
                value = next(it)
            except StopIteration:
                raise ConfigError(f"flag --{key} needs a value") from None
        key = key.replace("-", "_")
        section, dot, name = key.partition(".")
        if not dot:
            train[key] = value
        elif section == "train":
            train[name] = value
        elif section == "model":
            model[name] = value
        else:
            raise ConfigError(f"unknown section in --{key}; use --field or --model.field")
    return train, model


def resolve(path: Path | None, overrides: Sequence[str] = (), **defaults: Any) -> RunSpec:
    """File values, then `defaults` for fields the file leaves out, then CLI overrides win."""
    train_raw, model_raw = read_toml(path) if path is not None else ({}, {})
    flag_train, flag_model = parse_overrides(overrides)
    train_vals = {**defaults, **train_raw, **flag_train}
    try:
        train = TrainConfig(**typed_fields(TrainConfig, train_vals, "train"))
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
    return RunSpec(train, {**model_raw, **flag_model})


def model_config(name: str, overrides: Mapping[str, Any], **fixed: Any) -> Any:
    """The registered family's config, with `overrides` type-checked against its fields."""
    from training.models import REGISTRY

    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name].config
    values = {**typed_fields(cls, overrides, "model"), **fixed}
    try:
        return cls(**values)
    except ValueError as exc:  # a family's own checks (__post_init__)
        raise ConfigError(f"model: {exc}") from exc


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as plain JSON/TOML-friendly values (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}
