"""The whole offline path for one model: fit -> evaluate -> calibrate -> export -> parity -> publish.

Every step goes through the family interface only, so a newly registered family is published by the same
code. Under torchrun every rank trains; rank 0 alone evaluates, exports and publishes, between barriers.

With `crop` set, the model trains on random crops of images of any size (`training.data.crops`; folders
stream from disk), and validation, calibration and metrics use crop-sized windows of held-out images. A
fully convolutional model (backbone "fcn") publishes `spatial`, an anomaly map (`anomaly.map`) and score
quantiles (`anomaly.calibration`), and no `sample` or `interpolate`: it has no flat prior to draw from.

A conditional family (training.models.cvae, cgan, saae) takes the number of classes from the data (class
folders' names, else the labels 0..K-1), trains on labelled whole images, and publishes `labels` (the class
names, the graphs' label inputs, and per-class priors where its config asks for them), `restyle`, and no
`denoise` or `anomaly-score` (both would need the label of an image whose label is unknown).
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.store.manifest import (
    ALL_CAPABILITIES,
    MODEL_NAME_PATTERN,
    AnomalySpec,
    DataSpec,
    LabelSet,
    LatentSpec,
    Manifest,
    SpatialSpec,
    is_valid_model_name,
)
from training import calibrate
from training.config import ConfigError, RunSpec, TrainConfig, model_config, to_dict
from training.data import DataError, ImageSet, Splits, load_channels, split
from training.data.crops import ArrayImages, CropSplits, Images, open_images, split_crops
from training.export import export_model
from training.models import REGISTRY
from training.models.base import GenerativeModel
from training.publish import Staging
from training.trainer import (
    DistContext,
    FitResult,
    Trainer,
    init_distributed,
    pick_device,
    pick_threads,
    seed_everything,
    shutdown_distributed,
)

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    name: str
    manifest: Manifest | None  # None when not published (cfg.publish false, or not rank 0)
    path: Path | None
    metrics: dict[str, float | int | str] = field(default_factory=dict)
    model: GenerativeModel | None = None


def code_version() -> str:
    """The package version and, when run from a git checkout, the commit."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("latentserve")
    except PackageNotFoundError:
        v = "0.0.0"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+g{sha}" if sha else v


#: What a fully convolutional model cannot offer: there is no flat prior to sample or walk in.
NO_PRIOR = frozenset({"sample", "interpolate"})
#: What a conditional model does not offer: its decoder needs the image's class, which a request to score
#: an anomaly (or to clean a corrupted image) does not know -- and scoring every class instead would make
#: an anomaly of whichever class explains it best, a different score from the unconditional families'.
NO_LABEL = frozenset({"denoise", "anomaly-score"})
#: Default tile side for the service's tiling of larger images (rounded up to the model's multiple), and the
#: default overlap in latent cells: a tile's border changes its map up to ~6 cells in (48 px on the texture
#: models, 3% of the mean map at 4 cells, 0.3% at 6), and the linear ramps across an 8-cell overlap give
#: the border's pixels little weight.
TILE, OVERLAP_CELLS = 256, 8


def capabilities(graphs: set[str], spatial: bool = False, labelled: bool = False) -> list[str]:
    """What the service can offer with these graphs (mirrors the manifest's own consistency rule); a
    `labelled` (conditional) model also restyles, and neither denoises nor scores anomalies."""
    caps: list[str]
    if {"encoder", "decoder"} <= graphs:
        caps = list(ALL_CAPABILITIES)
    else:
        caps = []
        if "encoder" in graphs:
            caps.append("encode")
        if "decoder" in graphs:
            caps += ["decode", "sample", "interpolate"]
    caps = [c for c in caps if not (spatial and c in NO_PRIOR) and not (labelled and c in NO_LABEL)]
    if labelled and {"encoder", "decoder"} <= graphs:
        caps.append("restyle")
    return caps


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def spatial_spec(cfg: TrainConfig, model: GenerativeModel) -> SpatialSpec | None:
    """The manifest's `spatial` for an fcn model (None for the others); ConfigError before training when the
    tile or overlap does not fit the model."""
    if not model.cfg.spatial:
        return None
    m = model.cfg.multiple
    overlap = cfg.overlap if cfg.overlap is not None else OVERLAP_CELLS * m
    tile = cfg.tile if cfg.tile is not None else max(_round_up(TILE, m), 4 * overlap)
    try:
        return SpatialSpec(multiple=m, latent_channels=model.cfg.latent_dim, tile=tile, overlap=overlap)
    except ValueError as exc:
        raise ConfigError(f"tile {tile} and overlap {overlap} must be multiples of {m} (2 ** depth) with "
                          "overlap < tile / 2") from exc


def model_name(cfg: TrainConfig, data: ImageSet | Images) -> str:
    """cfg.name, else "<model>-<dataset>" made safe; checked before training, not after."""
    name = cfg.name or re.sub(r"[^a-z0-9]+", "-", f"{cfg.model}-{data.name}".lower()).strip("-")
    if not is_valid_model_name(name):
        raise ConfigError(f"model name {name!r} must match {MODEL_NAME_PATTERN} (at most 64 characters)")
    return name


def evaluate(model: GenerativeModel, splits: Splits, cfg: TrainConfig) -> dict[str, float | int | str]:
    """Test metrics: reconstruction MSE per pixel; the importance-sampled NLL for families with one."""
    run = calibrate.torch_runner(model)
    metrics: dict[str, float | int | str] = {}
    graphs = set(model.export_graphs())
    test = splits.test.x
    y = splits.test.y if model.conditional else None  # a conditional model is given each image's label
    if {"encoder", "decoder"} <= graphs and len(test):
        x_hat = calibrate.first(run("decoder", calibrate.first(run("encoder", test, y)), y))
        metrics["test_recon_mse"] = float(np.mean((test - x_hat) ** 2))
        metrics["test_n"] = len(test)
    nll = calibrate.importance_sampled_nll(model, test, cfg.nll_k, y=y)
    if nll is not None:
        metrics["nll_is"] = nll
        metrics["nll_k"] = cfg.nll_k
        if y is not None:
            metrics["nll_given"] = "label"  # -log p(x | y): not comparable with an unconditional NLL
    return metrics


def anomaly_metrics(model: GenerativeModel, splits: Splits, spec: Any) -> dict[str, float | int | str]:
    """AUROC on the test split in one-class mode (classes outside normal_classes are the anomalies)."""
    if splits.normal_classes is None or not len(splits.test):
        return {}
    from sklearn.metrics import roc_auc_score

    s = calibrate.image_scores(spec, calibrate.torch_runner(model), splits.test.x)
    is_anomaly = ~np.isin(splits.test.y, np.asarray(splits.normal_classes))
    if is_anomaly.all() or not is_anomaly.any():
        return {}
    return {"test_anomaly_auroc": float(roc_auc_score(is_anomaly, s)),
            "test_flagged_rate": float(np.mean(s > spec.threshold))}


def build_model(spec: RunSpec, shape: tuple[int, int, int], num_classes: int | None = None
                ) -> GenerativeModel:
    """The registered family for `shape` (C, H, W): the data's images, or the training crop; a conditional
    family for `num_classes` classes (the data's)."""
    fixed: dict[str, Any] = {"input_shape": shape}
    if REGISTRY[spec.train.model].model.conditional and num_classes is not None:
        fixed["num_classes"] = num_classes
    cfg = model_config(spec.train.model, spec.model, **fixed)
    return REGISTRY[spec.train.model].model(cfg)


def class_names(data: ImageSet) -> list[str]:
    """The classes of labelled data, by index: the source's names (class folders), else "0".."K-1"."""
    if data.classes:
        return list(data.classes)
    if not len(data.y) or int(data.y.min()) < 0:
        raise DataError(f"{data.name}: a conditional model needs labelled images (some labels are -1: "
                        "unlabelled)")
    return [str(i) for i in range(int(data.y.max()) + 1)]


def check_conditional(cfg: TrainConfig, data: ImageSet | Images) -> int | None:
    """The number of classes for a conditional family (None for the others), checked before training: it
    trains on whole labelled images, every class at once."""
    if not REGISTRY[cfg.model].model.conditional:
        return None
    if cfg.crop is not None or not isinstance(data, ImageSet):
        raise ConfigError(f"{cfg.model} is conditional: it trains on whole labelled images, not crops")
    if cfg.normal_classes is not None:
        raise ConfigError(f"{cfg.model} is conditional: it learns every class, so one-class mode "
                          "(normal_classes) does not apply")
    names = class_names(data)
    if len(names) < 2:
        raise DataError(f"{data.name}: a conditional model needs at least two classes, got {names}")
    return len(names)


def load_splits(cfg: TrainConfig, data: ImageSet | None) -> tuple[Splits | CropSplits, ImageSet | Images]:
    """The splits to train on, and what they came from: whole images of one size, or (with `crop`) images
    of any size to take random crops of."""
    if cfg.crop is None:
        data = data if data is not None else load_channels(cfg.data, cfg.channels)
        return split(data, seed=cfg.seed, fractions=cfg.split, normal_classes=cfg.normal_classes), data
    images = open_images(cfg.data, cfg.channels) if data is None else ArrayImages.of(data)
    splits = split_crops(images, cfg.crop, cfg.seed, cfg.split, cfg.normal_classes)
    if not len(splits.val):  # found out now, not after training
        raise DataError(f"{images.name}: no validation images after the split {cfg.split}; calibration "
                        "needs held-out normal images")
    return splits, images


def run(spec: RunSpec, data: ImageSet | None = None) -> PipelineResult:
    """Fit, evaluate, calibrate, export (parity-gated) and publish one model."""
    cfg = spec.train
    device = pick_device(cfg.device)
    ctx = init_distributed(device)
    try:
        return _run(spec, cfg, data, ctx)
    finally:
        shutdown_distributed(ctx)


def check_writable(folder: Path, what: str, verb: str = "write", hint: str = "") -> None:
    """Raise ConfigError unless a file can be written in `folder` (created if missing): found out before
    training, not after it. A root-owned working directory (a container's /app) is a usual cause."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        then = f"{hint}; " if hint else ""
        raise ConfigError(f"{what} {folder}: cannot {verb} there ({exc.strerror or exc}); {then}"
                          "nothing was trained") from exc


def check_store_writable(store: Path) -> None:
    """Raise ConfigError unless a version could be published under `store` (created if missing)."""
    check_writable(store, "store", verb="publish")


def _run(spec: RunSpec, cfg: TrainConfig, data: ImageSet | None, ctx: DistContext) -> PipelineResult:
    if cfg.publish and ctx.is_main:
        check_store_writable(Path(cfg.store))
    device = pick_device(cfg.device, ctx)
    seed_everything(cfg.seed, device)
    splits, source = load_splits(cfg, data)
    model = build_model(spec, splits.shape, check_conditional(cfg, source))
    spatial = spatial_spec(cfg, model)
    threads, why = pick_threads(cfg.threads, model.cfg.backbone)
    torch.set_num_threads(threads)  # after the build: weight init is the same on any thread count
    name = model_name(cfg, source)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else Path(cfg.runs) / name
    check_writable(run_dir, "run folder", hint="choose another with --runs DIR (or --run_dir DIR)")
    log.info("torch CPU threads: %d (%s)", threads, why)
    log.info("fit %s (%s) on %s: %s", name, cfg.model, source.name, splits.describe()["sizes"])
    fit = Trainer(model, cfg, run_dir, device, ctx).fit(splits)
    if ctx.enabled:
        _save_rank_weights(model, run_dir, ctx)
    result = PipelineResult(name, None, None, model=model)
    ctx.barrier()  # every rank has finished training (and saved its weights) before rank 0 publishes
    if ctx.is_main:
        result = _finish(model, spec, splits, source.name, fit, name, spatial)
    ctx.barrier()  # no rank leaves before the version is published
    return result


def _save_rank_weights(model: GenerativeModel, run_dir: Path, ctx: DistContext) -> None:
    """Every rank's final weights, so a distributed run can be checked for identical replicas."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, run_dir / f"weights-rank{ctx.rank}.pt")


def _anomaly(model: GenerativeModel, splits: Splits, cfg: TrainConfig) -> AnomalySpec | None:
    """The anomaly section, calibrated on the validation split: a threshold on the family's score, or for a
    fully convolutional model the map, its thresholds and quantiles (calibrate.calibrate_map)."""
    if model.conditional or not {"encoder", "decoder"} <= set(model.export_graphs()):
        return None  # a conditional model has none: see NO_LABEL
    kind, params = model.anomaly_score()
    run = calibrate.torch_runner(model)
    population = (f"normal classes {list(splits.normal_classes)}" if splits.normal_classes is not None
                  else "all classes")
    if model.cfg.spatial:
        return calibrate.calibrate_map(
            kind, params, run, splits.val.x, quantile=cfg.threshold_quantile,
            pixel_quantile=cfg.pixel_quantile, reduction=cfg.map_reduction, top_fraction=cfg.top_fraction,
            min_region_pixels=cfg.min_region_pixels, population=population)
    val_scores, _ = calibrate.compute_scores(kind, params, run, splits.val.x)
    return calibrate.calibrate_threshold(kind, params, val_scores, cfg.threshold_quantile, population)


def _label_set(model: GenerativeModel, splits: Splits, cfg: TrainConfig) -> LabelSet:
    """The manifest's `labels`: class names, the graphs that take the label, and per-class priors when the
    family's config asks for them (fitted on each class's training codes)."""
    names = class_names(splits.train)
    names += [str(i) for i in range(len(names), model.num_classes)]  # classes absent from the train split
    inputs = {name: g.input_names[1] for name, g in model.export_graphs().items() if g.num_classes}
    priors = calibrate.class_priors(model, splits.train.x, splits.train.y, cfg.prior_components, cfg.seed)
    return LabelSet(names=names[:model.num_classes], inputs=inputs, class_priors=priors)


def _finish(model: GenerativeModel, spec: RunSpec, trained_on: Splits | CropSplits, dataset: str,
            fit: FitResult, name: str, spatial: SpatialSpec | None) -> PipelineResult:
    cfg = spec.train
    model = model.cpu().eval()
    # crops: a fixed sample of training windows stands in for the training images (prior, export)
    splits = trained_on.fixed() if isinstance(trained_on, CropSplits) else trained_on
    metrics: dict[str, float | int | str] = {
        "epochs_run": fit.epochs_run, "train_seconds": round(fit.train_seconds, 3), "device": fit.device,
        "world_size": fit.world_size,
    }
    if fit.val_loss is not None:
        metrics["val_loss"] = fit.val_loss
    metrics.update(evaluate(model, splits, cfg))
    anomaly = _anomaly(model, splits, cfg)
    if anomaly is not None:
        metrics.update(anomaly_metrics(model, splits, anomaly))
    labelled = model.conditional
    train_y = splits.train.y if labelled else None
    prior = calibrate.latent_prior(model, splits.train.x, cfg.prior, cfg.prior_components, cfg.seed, train_y)
    labels = _label_set(model, splits, cfg) if labelled else None
    training = {
        "model": cfg.model, "config": to_dict(cfg), "model_config": to_dict(model.cfg), "seed": cfg.seed,
        "split": trained_on.describe(), "stages": [vars(s) for s in fit.stages],
    }
    how = (f"random {cfg.crop}x{cfg.crop} crops of {dataset} images of any size" if cfg.crop is not None
           else f"{dataset} pixels")
    data_spec = DataSpec(
        dataset=dataset, shape=model.cfg.input_shape,
        preprocessing=f"{how} as float32 scaled to [0, 1], shape [C, H, W]; no mean/std normalisation",
        classes=list(splits.normal_classes) if splits.normal_classes is not None else None,
    )
    real_part = splits.test if len(splits.test) else splits.train
    real, real_y = real_part.x, (real_part.y if labelled else None)

    def manifest(version: int, files: dict[str, str]) -> Manifest:
        return Manifest(
            name=name, version=version, family=model.family, variant=model.variant,  # type: ignore[arg-type]
            created_at=datetime.now(UTC), code_version=code_version(), data=data_spec,
            latent=LatentSpec(dim=model.cfg.latent_dim, prior=prior), graphs=exported.graphs, files=files,
            capabilities=capabilities(set(exported.graphs), spatial is not None, labelled),  # type: ignore[arg-type]
            anomaly=anomaly, spatial=spatial, labels=labels, metrics=metrics, training=training,
        )

    if not cfg.publish:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            exported = export_model(model, Path(tmp), real, real_labels=real_y)
            metrics.update(exported.metrics)
            names = [f for g in exported.graphs.values() for f in (g.file, g.torchscript) if f]
            m = manifest(1, dict.fromkeys(names, "0" * 64))  # a dry run: validated, never written
        return PipelineResult(name, m, None, metrics, model)
    with Staging(cfg.store, name) as stage:
        exported = export_model(model, stage.path, real, real_labels=real_y)  # ParityError: nothing published
        if cfg.twins:  # int8 / fp16 twins of the graphs just exported, each checked against them
            from training import quantize
            exported = quantize.add_twins(exported, stage.path, cfg.twins, quantize.twin_data(
                splits.train.x, splits.val.x, dataset, cfg.crop is not None, data_spec.value_range, anomaly))
        metrics.update(exported.metrics)
        path = stage.commit(manifest)
    published = Manifest.model_validate_json((path / "manifest.json").read_text())
    log.info("%s v%d: %s", name, published.version, {k: v for k, v in metrics.items() if k != "device"})
    return PipelineResult(name, published, path, metrics, model)
