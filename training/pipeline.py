"""The whole offline path for one model: fit -> evaluate -> calibrate -> export -> parity -> publish.

Every step goes through the family interface only, so a newly registered family is published by the same
code. Under torchrun every rank trains; rank 0 alone evaluates, exports and publishes, between barriers.
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
    DataSpec,
    LatentSpec,
    Manifest,
    is_valid_model_name,
)
from training import calibrate
from training.config import ConfigError, RunSpec, TrainConfig, model_config, to_dict
from training.data import ImageSet, Splits, load, split
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


def capabilities(graphs: set[str]) -> list[str]:
    """What the service can offer with these graphs (mirrors the manifest's own consistency rule)."""
    if {"encoder", "decoder"} <= graphs:
        return list(ALL_CAPABILITIES)
    caps = []
    if "encoder" in graphs:
        caps.append("encode")
    if "decoder" in graphs:
        caps += ["decode", "sample", "interpolate"]
    return caps


def model_name(cfg: TrainConfig, data: ImageSet) -> str:
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
    if {"encoder", "decoder"} <= graphs and len(test):
        x_hat = calibrate.first(run("decoder", calibrate.first(run("encoder", test))))
        metrics["test_recon_mse"] = float(np.mean((test - x_hat) ** 2))
        metrics["test_n"] = len(test)
    nll = calibrate.importance_sampled_nll(model, test, cfg.nll_k)
    if nll is not None:
        metrics["nll_is"] = nll
        metrics["nll_k"] = cfg.nll_k
    return metrics


def anomaly_metrics(model: GenerativeModel, splits: Splits, spec: Any) -> dict[str, float | int | str]:
    """AUROC on the test split in one-class mode (classes outside normal_classes are the anomalies)."""
    if splits.normal_classes is None or not len(splits.test):
        return {}
    from sklearn.metrics import roc_auc_score

    s, _ = calibrate.compute_scores(spec.score, spec.params, calibrate.torch_runner(model), splits.test.x)
    is_anomaly = ~np.isin(splits.test.y, np.asarray(splits.normal_classes))
    if is_anomaly.all() or not is_anomaly.any():
        return {}
    return {"test_anomaly_auroc": float(roc_auc_score(is_anomaly, s)),
            "test_flagged_rate": float(np.mean(s > spec.threshold))}


def build_model(spec: RunSpec, data: ImageSet) -> GenerativeModel:
    cfg = model_config(spec.train.model, spec.model, input_shape=data.shape)
    return REGISTRY[spec.train.model].model(cfg)


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
    data = data if data is not None else load(cfg.data)
    splits = split(data, seed=cfg.seed, fractions=cfg.split, normal_classes=cfg.normal_classes)
    model = build_model(spec, data)
    threads, why = pick_threads(cfg.threads, model.cfg.backbone)
    torch.set_num_threads(threads)  # after the build: weight init is the same on any thread count
    name = model_name(cfg, data)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else Path(cfg.runs) / name
    check_writable(run_dir, "run folder", hint="choose another with --runs DIR (or --run_dir DIR)")
    log.info("torch CPU threads: %d (%s)", threads, why)
    log.info("fit %s (%s) on %s: %s", name, cfg.model, data.name, splits.describe()["sizes"])
    fit = Trainer(model, cfg, run_dir, device, ctx).fit(splits)
    if ctx.enabled:
        _save_rank_weights(model, run_dir, ctx)
    result = PipelineResult(name, None, None, model=model)
    ctx.barrier()  # every rank has finished training (and saved its weights) before rank 0 publishes
    if ctx.is_main:
        result = _finish(model, spec, splits, data, fit, name)
    ctx.barrier()  # no rank leaves before the version is published
    return result


def _save_rank_weights(model: GenerativeModel, run_dir: Path, ctx: DistContext) -> None:
    """Every rank's final weights, so a distributed run can be checked for identical replicas."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, run_dir / f"weights-rank{ctx.rank}.pt")


def _finish(model: GenerativeModel, spec: RunSpec, splits: Splits, data: ImageSet, fit: FitResult,
            name: str) -> PipelineResult:
    cfg = spec.train
    model = model.cpu().eval()
    metrics: dict[str, float | int | str] = {
        "epochs_run": fit.epochs_run, "train_seconds": round(fit.train_seconds, 3), "device": fit.device,
        "world_size": fit.world_size,
    }
    if fit.val_loss is not None:
        metrics["val_loss"] = fit.val_loss
    metrics.update(evaluate(model, splits, cfg))
    graphs = model.export_graphs()
    anomaly = None
    if {"encoder", "decoder"} <= set(graphs):
        kind, params = model.anomaly_score()
        val_scores, _ = calibrate.compute_scores(kind, params, calibrate.torch_runner(model), splits.val.x)
        population = (f"normal classes {list(splits.normal_classes)}" if splits.normal_classes is not None
                      else "all classes")
        anomaly = calibrate.calibrate_threshold(kind, params, val_scores, cfg.threshold_quantile, population)
        metrics.update(anomaly_metrics(model, splits, anomaly))
    prior = calibrate.latent_prior(model, splits.train.x, cfg.prior, cfg.prior_components, cfg.seed)
    training = {
        "model": cfg.model, "config": to_dict(cfg), "model_config": to_dict(model.cfg), "seed": cfg.seed,
        "split": splits.describe(), "stages": [vars(s) for s in fit.stages],
    }
    data_spec = DataSpec(
        dataset=data.name, shape=data.shape,
        preprocessing=f"{data.name} pixels as float32 scaled to [0, 1], shape [C, H, W]; "
                      "no mean/std normalisation",
        classes=list(splits.normal_classes) if splits.normal_classes is not None else None,
    )
    real = splits.test.x if len(splits.test) else splits.train.x

    def manifest(version: int, files: dict[str, str]) -> Manifest:
        return Manifest(
            name=name, version=version, family=model.family, variant=model.variant,  # type: ignore[arg-type]
            created_at=datetime.now(UTC), code_version=code_version(), data=data_spec,
            latent=LatentSpec(dim=model.cfg.latent_dim, prior=prior), graphs=exported.graphs, files=files,
            capabilities=capabilities(set(exported.graphs)), anomaly=anomaly, metrics=metrics,  # type: ignore[arg-type]
            training=training,
        )

    if not cfg.publish:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            exported = export_model(model, Path(tmp), real)
            metrics.update(exported.metrics)
            names = [f for g in exported.graphs.values() for f in (g.file, g.torchscript) if f]
            m = manifest(1, dict.fromkeys(names, "0" * 64))  # a dry run: validated, never written
        return PipelineResult(name, m, None, metrics, model)
    with Staging(cfg.store, name) as stage:
        exported = export_model(model, stage.path, real)  # raises ParityError: nothing is published
        metrics.update(exported.metrics)
        path = stage.commit(manifest)
    published = Manifest.model_validate_json((path / "manifest.json").read_text())
    log.info("%s v%d: %s", name, published.version, {k: v for k, v in metrics.items() if k != "device"})
    return PipelineResult(name, published, path, metrics, model)
