"""The shipped default zoo: every REGISTRY entry but the texture-only draem, trained on digits and published
as `<name>-digits` (the conditional ones, cvae, cgan and saae, with the digits' labels 0..9), and a fully
convolutional texture model per scikit-image texture, `<TEXTURE_MODEL>-<texture>`.

`python -m training zoo [--store DIR] [--fresh] [--only NAME ...]` (or `make models`). Same seed, split and
trainer settings for every digits family; ZOO_TUNING holds the few per-model knobs that differ (more epochs
for adversarial training, for instance). `--only` takes registry names (their digits models) and texture
model names. The build time, each model's size and its key metrics are logged and written to
`<store>/ZOO.md`.

Texture models: one per texture rather than one for all three, because each texture is its own "normal":
a model per texture reconstructs it more tightly at the same size, and, more to the point, each gets its
own calibration (normal gravel leaves residuals several times those of brick, so a threshold shared by the
three would miss defects on brick or flag clean gravel). They train on random crops of the upper half of
the photograph only (`skimage:<texture>:upper`); the lower halves are the tests' and benchmarks'. The
settings are those of configs/fcn-texture.toml (a test keeps the two the same).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.store.manifest import Manifest
from training.config import ConfigError, RunSpec, TrainConfig
from training.data import load
from training.models import REGISTRY
from training.pipeline import PipelineResult, check_store_writable, check_writable, run
from training.publish import remove_versions

log = logging.getLogger(__name__)

DATASET = "digits"
#: Shared by every zoo model; small MLPs keep each published model well under 1 MB on 8x8 digits.
BASE_TRAIN: dict[str, Any] = dict(data=DATASET, seed=0, split=(0.8, 0.1, 0.1), epochs=60, patience=8,
                                  batch_size=64, device="cpu", progress=False, threads=1)
BASE_MODEL: dict[str, Any] = dict(hidden=(128, 64))
#: Per registry name: (train overrides, model overrides). Names missing here use the base settings.
ZOO_TUNING: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "gan": ({"epochs": 200}, {"encoder_epochs": 100}),  # adversarial training needs longer; no early stop
    "aae": ({"epochs": 80}, {}),
    # the conditional models' sampling priors: what the quality benchmark's training-split proxy picked on
    # digits (bench/results/quality.md, "Conditional generation": one Gaussian per class for the cvae, one
    # GMM per class for the saae)
    "cvae": ({}, {"class_prior": "gaussian"}),
    "saae": ({"epochs": 80}, {"class_prior": "gmm"}),
    "cgan": ({"epochs": 150}, {"encoder_epochs": 50}),  # as the benchmark; the encoder serves encode, restyle
}
KEY_METRICS = ("test_recon_mse", "nll_is", "val_loss", "epochs_run", "train_seconds",
               "parity_onnx_max_abs_diff")

TEXTURES = ("brick", "grass", "gravel")
TEXTURE_MODEL = "ae-denoising"
#: The texture models' trainer settings (configs/fcn-texture.toml's [train], but the data and the name).
TEXTURE_TRAIN: dict[str, Any] = dict(
    crop=64, crops_per_image=8, epoch_crops=1024, batch_size=32, epochs=8, patience=4, scale_jitter=0.3,
    split=(0.75, 0.25, 0.0),  # of the 8 tiles of 128x128: 6 to train on, 2 to validate and calibrate on
    seed=0, device="cpu", progress=False, threads=1,
    twins=("int8",),  # int8 graphs beside the FP32 ones (speed and quality: bench/results/quantized.md)
)
#: Their model settings (configs/fcn-texture.toml's [model]).
TEXTURE_MODEL_CFG: dict[str, Any] = dict(
    backbone="fcn", channels=(16, 32, 32), latent_dim=4, res_blocks=1, norm="batch", anomaly_blur=2.0,
    corruption="gaussian", noise_level=0.2,
)


#: The DRAEM-style texture models (training.models.draem: reconstruction plus segmentation, trained on
#: synthetic anomalies), `draem-<texture>`. `make models-textures` builds them (`--only` their names); `make
#: models` does not: they would take the zoo past its 5-minute budget. The settings are
#: configs/draem-texture.toml's (a test keeps the two the same); bench/anomaly_textures.py trains these very
#: specs over 3 seeds and checks that seed 0 is the shipped model, byte for byte.
SEGMENTATION_MODEL = "draem"
#: The anomaly source: scikit-image photographs that none of the benchmark's test defects come from.
DRAEM_SOURCE = "skimage:rocket+coins+moon+page+hubble_deep_field+retina+cell+immunohistochemistry"
DRAEM_TRAIN: dict[str, Any] = dict(
    crop=64, crops_per_image=8, epoch_crops=512, batch_size=16, epochs=24, patience=100, scale_jitter=0.3,
    split=(0.75, 0.25, 0.0), seed=0, device="cpu", progress=False, threads=1,
)
DRAEM_MODEL_CFG: dict[str, Any] = dict(
    backbone="fcn", channels=(16, 32, 32), latent_dim=4, res_blocks=1, norm="batch",
    seg_channels=(16, 32, 64, 64), seg_stride=2, anomaly_blur=4.0, anomaly_source=DRAEM_SOURCE,
)


def draem_name(texture: str) -> str:
    return f"{SEGMENTATION_MODEL}-{texture}"


def draem_spec(texture: str, store: Path, runs: Path = Path("runs"), seed: int = 0) -> RunSpec:
    """The RunSpec of one DRAEM-style texture model (`seed` 0 is the shipped one)."""
    name = draem_name(texture)
    cfg = TrainConfig(**{**DRAEM_TRAIN, "model": SEGMENTATION_MODEL, "data": f"skimage:{texture}:upper",
                         "name": name, "store": str(store), "run_dir": str(runs / "zoo" / name),
                         "seed": seed})
    return RunSpec(cfg, dict(DRAEM_MODEL_CFG))


#: Zoo models that `--only` builds and the default build leaves out.
EXTRA_NAMES = tuple(draem_name(t) for t in TEXTURES)


def texture_name(texture: str) -> str:
    return f"{TEXTURE_MODEL}-{texture}"


def texture_spec(texture: str, store: Path, runs: Path = Path("runs")) -> RunSpec:
    """The RunSpec of one texture model: trained on `skimage:<texture>:upper` only."""
    name = texture_name(texture)
    cfg = TrainConfig(**{**TEXTURE_TRAIN, "model": TEXTURE_MODEL, "data": f"skimage:{texture}:upper",
                         "name": name, "store": str(store), "run_dir": str(runs / "zoo" / name)})
    return RunSpec(cfg, dict(TEXTURE_MODEL_CFG))


def zoo_names() -> list[str]:
    """What `make models` builds: the registry names but the texture-only segmentation family (digits
    models), then the texture model names."""
    return [*(m for m in REGISTRY if m != SEGMENTATION_MODEL), *(texture_name(t) for t in TEXTURES)]


def _spec(name: str, store: Path, runs: Path) -> RunSpec:
    textures = {texture_name(t): t for t in TEXTURES}
    segmenters = {draem_name(t): t for t in TEXTURES}
    if name in segmenters:
        return draem_spec(segmenters[name], store, runs)
    return texture_spec(textures[name], store, runs) if name in textures else zoo_spec(name, store, runs)


@dataclass(frozen=True)
class ZooEntry:
    name: str
    model: str
    family: str
    variant: str
    version: int
    size_bytes: int
    seconds: float
    cpu_seconds: float  # process CPU time: robust to a CPU shared with other work, unlike wall time
    metrics: dict[str, Any]
    maps: dict[str, Any] | None = None  # fully convolutional models: crop, tiling and map thresholds
    labels: dict[str, Any] | None = None  # conditional models: classes, label inputs, priors


def zoo_spec(model: str, store: Path, runs: Path = Path("runs")) -> RunSpec:
    train_over, model_over = ZOO_TUNING.get(model, ({}, {}))
    cfg = TrainConfig(**{**BASE_TRAIN, "model": model, "name": f"{model}-{DATASET}", "store": str(store),
                         "run_dir": str(runs / "zoo" / model), **train_over})
    return RunSpec(cfg, {**BASE_MODEL, **model_over})


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def build_zoo(store: Path, fresh: bool = False, only: list[str] | None = None,
              report: Path | None = None, runs: Path = Path("runs")) -> list[ZooEntry]:
    """Train and publish every (or `only` the named) zoo model: the REGISTRY models on digits and the
    texture models; run folders go under `runs`/zoo/."""
    names = zoo_names() if not only else only
    unknown = set(names) - set(zoo_names()) - set(EXTRA_NAMES)
    if unknown:
        raise ConfigError(f"unknown zoo models {sorted(unknown)}; known: {', '.join(zoo_names())} (and with "
                          f"--only: {', '.join(EXTRA_NAMES)})")
    check_store_writable(store)  # both before anything is removed (--fresh) or trained
    check_writable(runs / "zoo", "run folder", hint="choose another with --runs DIR")
    digits = load(DATASET) if set(names) & set(zoo_names()) - {texture_name(t) for t in TEXTURES} else None
    entries: list[ZooEntry] = []
    t_all, c_all = time.perf_counter(), time.process_time()
    for model in names:
        spec = _spec(model, store, runs)
        if fresh:
            removed = remove_versions(store, spec.train.name or model)
            if removed:
                log.info("removed %d old version(s) of %s", removed, spec.train.name)
        t0, c0 = time.perf_counter(), time.process_time()
        res: PipelineResult = run(spec, digits if model in REGISTRY else None)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert res.manifest is not None and res.path is not None
        entry = ZooEntry(res.name, spec.train.model, res.manifest.family, res.manifest.variant,
                         res.manifest.version, _size(res.path), seconds, cpu, dict(res.metrics),
                         _map_summary(res.manifest), _label_summary(res.manifest))
        entries.append(entry)
        log.info("%-22s v%d  %6.1f s (cpu %6.1f s)  %7.1f KB  %s", entry.name, entry.version, seconds, cpu,
                 entry.size_bytes / 1024,
                 {k: entry.metrics[k] for k in KEY_METRICS if k in entry.metrics})
    total, cpu_total = time.perf_counter() - t_all, time.process_time() - c_all
    log.info("zoo: %d models in %.1f s wall, %.1f s CPU", len(entries), total, cpu_total)
    write_report(report or store / "ZOO.md", entries, total, cpu_total)
    return entries


def _map_summary(m: Manifest) -> dict[str, Any] | None:
    if m.spatial is None or m.anomaly is None or m.anomaly.map is None:
        return None
    a, mp, s = m.anomaly, m.anomaly.map, m.spatial
    return {"data": m.training["config"]["data"], "crop": m.data.shape[1], "multiple": s.multiple,
            "latent_channels": s.latent_channels, "tile": s.tile, "overlap": s.overlap,
            "reduction": f"{mp.reduction} ({mp.top_fraction:g})", "threshold": a.threshold,
            "pixel_threshold": mp.pixel_threshold, "windows": m.training["split"]["sizes"]["val"]}


def _label_summary(m: Manifest) -> dict[str, Any] | None:
    if m.labels is None:
        return None
    cp = m.labels.class_priors
    priors = (f"one {cp[0].kind} per class" if cp else f"{m.latent.prior.kind} for every class")
    inputs = ", ".join(f"{g}.{i}" for g, i in m.labels.inputs.items())
    return {"names": ",".join(m.labels.names), "inputs": inputs, "priors": priors,
            "capabilities": ", ".join(m.capabilities)}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_report(path: Path, entries: list[ZooEntry], total: float, cpu_total: float) -> None:
    """ZOO.md: how long the build took, where, and what each model measured."""
    threads = torch.get_num_threads()
    lines = [
        "# The shipped zoo",
        "",
        "Built by `python -m training zoo --fresh` (`make models`): every registered family on",
        "scikit-learn's 8x8 digits, seed 0, split 0.8/0.1/0.1, CPU; and a fully convolutional model per",
        "scikit-image texture, on random crops of the upper half of the photograph only. Regenerated by each",
        "build.",
        "",
        f"- total build time: **{total:.1f} s** wall, {cpu_total:.1f} s CPU, for {len(entries)} models "
        f"({os.cpu_count()} CPUs visible, torch threads {threads}, {platform.machine()}, "
        f"torch {torch.__version__})",
        "- wall time depends on what else the machine runs; CPU time is the steadier number",
        "",
        "| model | family | variant | version | size (KB) | build wall (s) | build CPU (s) | epochs | "
        "test recon MSE/pixel | "
        "NLL-IS (nats, K) | val loss | parity max abs diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        m = e.metrics
        nll = f"{_fmt(m.get('nll_is'))} (K={m['nll_k']})" if "nll_is" in m else "-"
        lines.append(
            f"| {e.name} | {e.family} | {e.variant} | {e.version} | {e.size_bytes / 1024:.1f} | "
            f"{e.seconds:.1f} | {e.cpu_seconds:.1f} | {_fmt(m.get('epochs_run'))} | "
            f"{_fmt(m.get('test_recon_mse'))} | {nll} | {_fmt(m.get('val_loss'))} | "
            f"{_fmt(m.get('parity_onnx_max_abs_diff'))} |"
        )
    labelled = [e for e in entries if e.labels]
    if labelled:
        lines += [
            "",
            "Conditional models (manifest `labels`: the graphs' one-hot label input `y` (N, K), per-class "
            "sampling priors):",
            "",
            "| model | classes | label inputs | sampling prior | capabilities |",
            "| --- | --- | --- | --- | --- |",
        ]
        for e in labelled:
            lb = e.labels or {}
            lines.append(f"| {e.name} | {lb['names']} | {lb['inputs']} | {lb['priors']} | "
                         f"{lb['capabilities']} |")
    maps = [e for e in entries if e.maps]
    if maps:
        lines += [
            "",
            "Fully convolutional models (anomaly maps at any size; manifest `spatial` and `anomaly.map`):",
            "",
            "| model | trained on | crop | multiple | latent channels | tile / overlap | image score | "
            "image threshold | pixel threshold | validation windows |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for e in maps:
            s = e.maps or {}
            lines.append(
                f"| {e.name} | `{s['data']}` | {s['crop']} | {s['multiple']} | {s['latent_channels']} | "
                f"{s['tile']} / {s['overlap']} | {s['reduction']} | {_fmt(s['threshold'])} | "
                f"{_fmt(s['pixel_threshold'])} | {s['windows']} |")
    path.write_text("\n".join(lines) + "\n")
