"""Real-photo anomaly benchmark (issue 20): scikit-image's textures with synthetic defects, pixel-exact masks.

    .venv/bin/python bench/anomaly_textures.py           # -> bench/results/textures.md, .json, textures/*.png
    .venv/bin/python bench/anomaly_textures.py --quick    # one seed, one texture, a few steps: a smoke run
    .venv/bin/python bench/anomaly_textures.py --build    # only build (or find) anomalib's venv

Data: `brick`, `grass` and `gravel` (512x512 grey). Every model trains on the upper half only, on the tiles
of the zoo's seeded split (training.data.textures; 6 of 8 tiles of 128x128 to train on, 2 held out). The test
set of each (texture, seed) is TEST_N crops of CROP x CROP from the LOWER half, at seeded positions; half of
them carry one defect each (bench/texture_defects.py: paste, scratch, blob, blur, hole, in turn).

Rows, all on the same crops in the same run, 3 seeds each (the seed fixes the split, the training and the
test set):
- ours: the DRAEM-style family (training.models.draem) with the shipped zoo spec (training.zoo.draem_spec),
  published to a bench store and scored through the service's own path (service.anomaly.score_images on
  onnxruntime, at the crop's own size); seed 0 is checked against the shipped model in models_store/.
- anomalib DRAEM: anomalib 2.7.0's Draem, trained by its Engine in its own venv
  (bench/peers/anomalib_draem.py) on the same training tiles, with our anomaly-source photographs as its
  `dtd_dir`, for ANOMALIB_SECONDS of wall time per model on one core.
- plain AE: the shipped fully convolutional denoising AE (training.zoo.texture_spec), scored the same way.
- PCA on patches and nearest neighbour on raw patches (PatchCore's idea without pretrained features).
Metrics (bench/anomaly_metrics.py, as anomalib computes them): image AUROC, pixel AUROC, AUPRO to FPR 0.3.
Jobs run on WORKERS processes of one torch thread each.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # service, training
sys.path.insert(0, str(BENCH))  # sibling scripts

import anomaly_metrics as am  # noqa: E402
import texture_defects as td  # noqa: E402

log = logging.getLogger("anomaly_textures")

TEXTURES = ("brick", "grass", "gravel")
SEEDS = (0, 1, 2)
CROP = 128  # test crops are CROP x CROP
TEST_N = 40  # test crops per (texture, seed): half normal, half with one defect (TEST_KINDS in turn)
WORKERS = 2
ANOMALIB_SECONDS = 120  # anomalib DRAEM's training wall time per model (one core)
ANOMALIB = "anomalib==2.7.0"
#: Stores, runs, test sets and anomalib's outputs (git-ignored); --work moves it (spawned workers read the
#: environment variable at import).
WORK = Path(os.environ.get("TEXTURES_BENCH_WORK", ROOT / "runs" / "bench" / "textures"))
VENV = ROOT / "runs" / "bench" / "anomalib-venv"
SHIPPED = ROOT / "models_store"
METHODS = ("ours", "anomalib", "ae", "pca", "nn")
LABELS = {"ours": "ours: DRAEM-style (draem-<texture>)", "anomalib": "anomalib 2.7.0 Draem",
          "ae": "plain conv AE (ae-denoising-<texture>)", "pca": "PCA on patches", "nn": "NN on raw patches"}
#: Baselines' settings, chosen on the proxy set (bench/results/textures_proxy.md): patch side, PCA's share of
#: variance kept, NN's memory bank, and the image score (the mean of the map's top 5%, both).
PATCH = {"pca": 16, "nn": 8}
PCA_VARIANCE = 0.99
NN_BANK = 16384
BASELINE_TOP = 0.05


# --- data ---------------------------------------------------------------------------------------------------
def train_tiles(texture: str, seed: int) -> np.ndarray:
    """The seed's training tiles of the upper half (N, 1, 128, 128): the zoo split, as every model sees it."""
    from training.data import split_indices
    from training.data.textures import load_textures
    from training.zoo import DRAEM_TRAIN

    data = load_textures(f"skimage:{texture}:upper")
    tr, _, _ = split_indices(data.y, data.name, seed, DRAEM_TRAIN["split"], None)
    return data.x[tr]


def test_set(texture: str, seed: int, n: int = TEST_N, size: int = CROP) -> dict[str, np.ndarray]:
    """Crops of the lower half at seeded positions; the odd ones get a defect of TEST_KINDS in turn."""
    from training.data.textures import lower_half

    half = lower_half(texture)
    rng = np.random.default_rng([seed, 20, TEXTURES.index(texture)])
    images, masks, labels, kinds = [], [], [], []
    for i in range(n):
        y, x = int(rng.integers(0, half.shape[0] - size + 1)), int(rng.integers(0, half.shape[1] - size + 1))
        crop = half[y:y + size, x:x + size].copy()
        if i % 2:
            kind = td.TEST_KINDS[(i // 2) % len(td.TEST_KINDS)]
            crop, mask = td.apply(crop, kind, rng)
        else:
            kind, mask = "normal", np.zeros((size, size), bool)
        images.append(crop)
        masks.append(mask)
        labels.append(int(i % 2))
        kinds.append(kind)
    return {"images": np.stack(images)[:, None].astype(np.float32), "masks": np.stack(masks),
            "labels": np.asarray(labels), "kinds": np.asarray(kinds)}


# --- ours and the plain AE: published, then scored by the service's path -------------------------------
def served_maps(store: Path, name: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image scores (N,), maps (N, H, W)) of a published model, through service.anomaly.score_images on
    onnxruntime: what POST /v1/models/{name}/anomaly-score answers, each crop at its own size."""
    from service import anomaly, ops
    from service.runtime import Runtime
    from service.settings import Settings
    from service.store.repository import ModelStore

    rt = Runtime(Settings(store=store, warmup=False, intra_op_threads=1))
    st = ModelStore.open(store, check=rt.prepare)
    mv = st.get(name)
    assert mv.manifest.anomaly is not None

    async def score() -> list[anomaly.ImageScore]:
        th = anomaly.thresholds(mv.manifest.anomaly)  # type: ignore[arg-type]
        items = list(images)
        return await anomaly.score_images(mv, items, [None] * len(items), ops.graph_runner(rt, mv), th)

    out = asyncio.run(score())
    return np.asarray([o.raw for o in out]), np.stack([o.map for o in out])


def _train_published(kind: str, texture: str, seed: int, quick: bool) -> tuple[Path, str, dict[str, Any]]:
    from training import zoo
    from training.pipeline import run

    store, runs = WORK / f"store-s{seed}", WORK / f"runs-s{seed}"
    spec = (zoo.draem_spec(texture, store, runs, seed) if kind == "ours"
            else zoo.texture_spec(texture, store, runs))
    train = dataclasses.replace(spec.train, seed=seed)
    if quick:
        train = dataclasses.replace(train, epochs=1, epoch_crops=64)
    from training.publish import remove_versions

    remove_versions(store, train.name or "")
    t0 = time.perf_counter()
    res = run(dataclasses.replace(spec, train=train))
    seconds = time.perf_counter() - t0
    assert res.path is not None and res.manifest is not None
    steps = int(res.metrics["epochs_run"]) * -(-(train.epoch_crops or 0) // train.batch_size)
    info = {"train_s": round(seconds, 1), "epochs": res.metrics["epochs_run"], "steps": steps,
            "batch_size": train.batch_size, "crop": train.crop,
            "train_seconds": res.metrics.get("train_seconds"), "files": dict(res.manifest.files)}
    return store, train.name or "", info


def job_published(kind: str, texture: str, seed: int, test_npz: str, quick: bool) -> dict[str, Any]:
    _one_thread()
    store, name, info = _train_published(kind, texture, seed, quick)
    test = np.load(test_npz)
    t0 = time.perf_counter()
    s, maps = served_maps(store, name, test["images"])
    info["infer_s"] = round(time.perf_counter() - t0, 1)
    return {"scores": s, "maps": maps, **info}


# --- baselines on raw patches -------------------------------------------------------------------------------
def patches(img: np.ndarray, p: int, stride: int) -> np.ndarray:
    """(n, p*p) patches of a (H, W) image on a grid of `stride`."""
    from numpy.lib.stride_tricks import sliding_window_view

    return sliding_window_view(img, (p, p))[::stride, ::stride].reshape(-1, p * p)


def spread(values: np.ndarray, shape: tuple[int, int], p: int, stride: int) -> np.ndarray:
    """Per-patch values on a grid of `stride` to a per-pixel map (h, w): the mean over the patches that cover
    each pixel."""
    from scipy.signal import fftconvolve

    h, w = shape
    grid = np.zeros((h - p + 1, w - p + 1))
    hit = np.zeros_like(grid)
    grid[::stride, ::stride] = values
    hit[::stride, ::stride] = 1.0
    ones = np.ones((p, p))
    num, den = fftconvolve(grid, ones, mode="full"), fftconvolve(hit, ones, mode="full")
    return num / np.maximum(den, 1e-9)


def baseline_maps(method: str, tiles: np.ndarray, images: np.ndarray, seed: int, p: int | None = None,
                  variance: float = PCA_VARIANCE, bank: int = NN_BANK) -> np.ndarray:
    """Anomaly maps (N, H, W) of PCA on patches (squared residual of each patch off the principal subspace
    that keeps `variance` of the training patches' variance) or of nearest neighbour on raw patches
    (distance to the closest of `bank` training patches); each patch's value spread over its pixels."""
    import torch

    p = p if p is not None else PATCH[method]
    train = np.concatenate([patches(t[0], p, 2) for t in tiles]).astype(np.float64)
    if method == "pca":
        mean = train.mean(axis=0)
        _, sv, vt = np.linalg.svd(train - mean, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(sv**2) / np.sum(sv**2), variance) + 1)
        basis = vt[:k]
    else:
        pick = np.random.default_rng(seed).choice(len(train), min(bank, len(train)), replace=False)
        memory = torch.from_numpy(train[pick]).float()
    maps = []
    stride = 1 if method == "pca" else 2  # NN: a query patch every other pixel (each pixel is in 16 or more)
    for img in images[:, 0]:
        h, w = img.shape
        q = patches(img, p, stride).astype(np.float64)  # (n, p*p)
        if method == "pca":
            r = (q - mean) - ((q - mean) @ basis.T) @ basis
            val = np.square(r).mean(axis=1)
        else:
            qt = torch.from_numpy(q).float()
            val = torch.cat([torch.cdist(qt[i:i + 4096], memory).min(dim=1).values
                             for i in range(0, len(qt), 4096)]).numpy()
        n_y, n_x = len(range(0, h - p + 1, stride)), len(range(0, w - p + 1, stride))
        maps.append(spread(val.reshape(n_y, n_x), (h, w), p, stride))
    return np.stack(maps).astype(np.float32)


def job_baseline(method: str, texture: str, seed: int, test_npz: str, quick: bool) -> dict[str, Any]:
    _one_thread()
    from service.store import scores

    test = np.load(test_npz)
    t0 = time.perf_counter()
    maps = baseline_maps(method, train_tiles(texture, seed), test["images"], seed)
    return {"scores": scores.reduce_map(maps, "top_mean", BASELINE_TOP), "maps": maps, "train_s": 0.0,
            "infer_s": round(time.perf_counter() - t0, 1)}


# --- anomalib -----------------------------------------------------------------------------------------------
def build_venv() -> dict[str, Any]:
    """anomalib's venv, built once (torch pinned first, then anomalib under a constraint that keeps it):
    its stamp, or RuntimeError with pip's last lines."""
    import torch

    pins = [f"torch=={torch.__version__.split('+')[0]}", ANOMALIB]
    stamp = VENV / "bench-stamp.json"
    if stamp.exists() and (VENV / "bin/python").exists():
        info = json.loads(stamp.read_text())
        if info.get("pins") == pins:
            return dict(info)
    shutil.rmtree(VENV, ignore_errors=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    logfile = VENV.parent / "anomalib-venv-build.log"
    constraints = VENV.parent / "anomalib-constraints.txt"
    constraints.write_text(pins[0] + "\n")
    t0 = time.perf_counter()
    py = str(VENV / "bin" / "python")
    steps = [[sys.executable, "-m", "venv", str(VENV)],
             [py, "-m", "pip", "install", "--disable-pip-version-check", pins[0]],
             [py, "-m", "pip", "install", "--disable-pip-version-check", "-c", str(constraints), ANOMALIB]]
    log.info("building anomalib's venv at %s (%s); pip's log: %s", VENV, ", ".join(pins), logfile)
    with open(logfile, "w") as out:
        for cmd in steps:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
            if done.returncode != 0:
                tail = " | ".join(logfile.read_text().splitlines()[-6:])
                raise RuntimeError(f"anomalib's venv: `{' '.join(cmd[2:])}` failed: {tail}")
    info = {"pins": pins, "build_s": round(time.perf_counter() - t0, 1),
            "built_at": time.strftime("%Y-%m-%d %H:%M")}
    stamp.write_text(json.dumps(info))
    return info


def source_folder() -> Path:
    """Our anomaly-source photographs as RGB PNGs: anomalib's `dtd_dir`."""
    from PIL import Image

    from training.anomalies import skimage_photo
    from training.zoo import DRAEM_SOURCE

    folder = WORK / "data" / "anomaly-source"
    folder.mkdir(parents=True, exist_ok=True)
    for name in DRAEM_SOURCE.split(":", 1)[1].split("+"):
        a = skimage_photo(name, 3).transpose(1, 2, 0)
        Image.fromarray((a * 255).round().astype(np.uint8)).save(folder / f"{name}.png")
    return folder


def job_anomalib(texture: str, seed: int, test_npz: str, quick: bool) -> dict[str, Any]:
    from PIL import Image

    base = WORK / "anomalib" / f"{texture}-s{seed}"
    shutil.rmtree(base, ignore_errors=True)
    train_dir = base / "train"
    train_dir.mkdir(parents=True)
    for i, t in enumerate(train_tiles(texture, seed)):
        Image.fromarray((t[0] * 255).round().astype(np.uint8)).save(train_dir / f"tile{i}.png")
    job = {"train_dir": str(train_dir), "source_dir": str(WORK / "data" / "anomaly-source"),
           "test_npz": test_npz, "out_npz": str(base / "out.npz"), "result_json": str(base / "result.json"),
           "seconds": 1 if quick else ANOMALIB_SECONDS, "seed": seed, "size": CROP,
           "root": str(base / "root")}
    (base / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    done = subprocess.run([str(VENV / "bin" / "python"), str(BENCH / "peers" / "anomalib_draem.py"),
                           str(base / "job.json")], capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"anomalib DRAEM on {texture} seed {seed} failed: {done.stderr[-1500:]}")
    out = np.load(base / "out.npz")
    res = json.loads((base / "result.json").read_text())
    return {"scores": out["scores"], "maps": out["maps"], "wall_s": round(time.perf_counter() - t0, 1), **res}


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (anomalib's runs)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_job(job: tuple[str, str, int, str, bool]) -> dict[str, Any]:
    method, texture, seed, test_npz, quick = job
    logging.basicConfig(level=logging.WARNING)
    t0, c0 = time.perf_counter(), _cpu()
    if method in ("ours", "ae"):
        out = job_published(method, texture, seed, test_npz, quick)
    elif method == "anomalib":
        out = job_anomalib(texture, seed, test_npz, quick)
    else:
        out = job_baseline(method, texture, seed, test_npz, quick)
    out["job_s"] = round(time.perf_counter() - t0, 1)
    out["job_cpu_s"] = round(_cpu() - c0, 1)
    return out


# --- the run ------------------------------------------------------------------------------------------------
def shipped_identical(texture: str, files: dict[str, str]) -> bool | None:
    """Whether a seed-0 model's graphs have the sha256 of the shipped draem-<texture> (None: none shipped)."""
    from training.zoo import draem_name

    versions = sorted(SHIPPED.glob(f"{draem_name(texture)}/[0-9]*/manifest.json"),
                      key=lambda p: int(p.parent.name))
    if not versions:
        return None
    shipped = json.loads(versions[-1].read_text())["files"]
    graphs = [f for f in shipped if f.endswith(".onnx")]
    return all(shipped[f] == files.get(f) for f in graphs)


def plan(textures: tuple[str, ...], seeds: tuple[int, ...], methods: tuple[str, ...], quick: bool
         ) -> list[tuple[str, str, int, str, bool]]:
    """Every job, the long ones first (two workers finish together), with its test set written."""
    jobs = []
    for seed in seeds:
        for texture in textures:
            path = WORK / "data" / f"test-{texture}-s{seed}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, **test_set(texture, seed, 8 if quick else TEST_N))
            jobs += [(m, texture, seed, str(path), quick) for m in methods]
    order = {"anomalib": 0, "ours": 1, "ae": 2, "nn": 3, "pca": 4}
    return sorted(jobs, key=lambda j: order[j[0]])


def run_all(jobs: list[tuple[str, str, int, str, bool]], workers: int) -> dict[tuple[str, str, int], Any]:
    results: dict[tuple[str, str, int], Any] = {}
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(run_job, j): j for j in jobs}
        for fut in cf.as_completed(futures):
            method, texture, seed = futures[fut][:3]
            try:
                results[(method, texture, seed)] = fut.result()
                log.info("done %s %s seed %d (%.0f s)", method, texture, seed,
                         results[(method, texture, seed)]["job_s"])
            except Exception as exc:  # noqa: BLE001 - one failed row is reported, the others still run
                results[(method, texture, seed)] = {"error": f"{type(exc).__name__}: {exc}"}
                log.error("%s %s seed %d failed: %s", method, texture, seed, exc)
    return results


def summarise(results: dict[tuple[str, str, int], Any], textures: tuple[str, ...], seeds: tuple[int, ...],
              methods: tuple[str, ...]) -> dict[str, Any]:
    """Metrics per (method, texture, seed); mean and sd over seeds per texture and of the texture means."""
    rows: dict[str, Any] = {}
    for m in methods:
        per: dict[str, Any] = {}
        for t in textures:
            runs = {}
            for s in seeds:
                r = results.get((m, t, s), {"error": "not run"})
                if "error" in r:
                    runs[str(s)] = {"error": r["error"]}
                    continue
                test = np.load(WORK / "data" / f"test-{t}-s{s}.npz")
                runs[str(s)] = {**am.all_metrics(test["labels"], r["scores"], test["masks"], r["maps"]),
                                **{k: v for k, v in r.items() if k not in ("scores", "maps", "files")}}
            per[t] = {"seeds": runs, **_mean_sd([v for v in runs.values() if "error" not in v])}
        ok = [per[t] for t in textures if "image_auroc" in per[t]]
        mean: dict[str, Any] = {}
        if len(ok) == len(textures):  # the mean over categories, per seed, then over seeds
            for key in ("image_auroc", "pixel_auroc", "aupro"):
                by_seed = [np.mean([per[t]["seeds"][str(s)][key] for t in textures]) for s in seeds
                           if all(key in per[t]["seeds"][str(s)] for t in textures)]
                if by_seed:
                    mean[key] = {"mean": float(np.mean(by_seed)), "sd": float(np.std(by_seed, ddof=1))
                                 if len(by_seed) > 1 else 0.0, "n": len(by_seed)}
        rows[m] = {"textures": per, "mean": mean}
    return rows


def _mean_sd(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        v = [r[key] for r in runs if key in r]
        if v:
            out[key] = {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                        "n": len(v)}
    return out


def fmt(m: dict[str, Any] | None) -> str:
    if not m:
        return "-"
    return f"{m['mean']:.3f} ± {m['sd']:.3f}" if m["n"] > 1 else f"{m['mean']:.3f}"


# --- figures ------------------------------------------------------------------------------------------------
def figures(results: dict[tuple[str, str, int], Any], textures: tuple[str, ...], seed: int,
            methods: tuple[str, ...], out_dir: Path) -> list[str]:
    """Per texture: a grid of inputs, ground truth, our map and our mask (seed `seed`: one crop per kind and a
    normal one), and the image and pixel ROC curves of every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from service.store.manifest import Manifest
    from training.zoo import draem_name

    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for t in textures:
        test = np.load(WORK / "data" / f"test-{t}-s{seed}.npz")
        ours = results.get(("ours", t, seed), {})
        if "maps" not in ours:
            continue
        man = Manifest.model_validate_json(
            next((WORK / f"store-s{seed}" / draem_name(t)).glob("[0-9]*/manifest.json")).read_text())
        pix_t = man.anomaly.map.pixel_threshold if man.anomaly and man.anomaly.map else 0.5
        kinds = list(test["kinds"])
        pick = [kinds.index(k) for k in ("normal", *td.TEST_KINDS) if k in kinds]
        fig, axes = plt.subplots(4, len(pick), figsize=(1.9 * len(pick), 7.8), squeeze=False)
        for col, i in enumerate(pick):
            panels = [(test["images"][i, 0], "gray", (0, 1)), (test["masks"][i], "gray", (0, 1)),
                      (ours["maps"][i], "inferno", (0, 1)), (ours["maps"][i] > pix_t, "gray", (0, 1))]
            for row, (img, cmap, (lo, hi)) in enumerate(panels):
                ax = axes[row, col]
                ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"{kinds[i]} ({ours['scores'][i]:.2f})", fontsize=9)
                if col == 0:
                    ax.set_ylabel(("input", "ground truth", "our map", "our mask")[row], fontsize=9)
        fig.suptitle(f"{t}, seed {seed}: lower-half test crops (title: kind, our image score)", fontsize=10)
        fig.tight_layout()
        name = f"grid-{t}.png"
        fig.savefig(out_dir / name, dpi=80)
        plt.close(fig)
        names.append(name)
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        for m in methods:
            r = results.get((m, t, seed), {})
            if "maps" not in r:
                continue
            pairs = ((test["labels"], r["scores"]), (test["masks"], r["maps"]))
            for ax, (y, s) in zip(axes, pairs, strict=True):
                fpr, tpr = am.roc(y, s)
                ax.plot(fpr, tpr, label=LABELS[m].split(" (")[0])
        for ax, title in zip(axes, ("image ROC", "pixel ROC"), strict=True):
            ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
            ax.set_title(f"{t}, seed {seed}: {title}", fontsize=10)
            ax.set_xlabel("false-positive rate")
            ax.set_ylabel("true-positive rate")
        axes[1].legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        name = f"roc-{t}.png"
        fig.savefig(out_dir / name, dpi=80)
        plt.close(fig)
        names.append(name)
    return names


# --- the report ---------------------------------------------------------------------------------------------
TARGETS = (("image_auroc", 0.97), ("pixel_auroc", 0.97), ("aupro", 0.90))
KNOBS = """\
Knobs, each chosen on a training-split proxy, never on these test crops: held-out upper-half windows (the two
validation tiles of the seed's split, 96x96 windows at stride 16, and their mirror images), half of them with
one proxy defect (cutpaste, noise, grating: bench/texture_defects.py), none of the test kinds or sources.
`bench/anomaly_textures_proxy.py` reruns them; bench/results/textures_proxy.md has the numbers.
"""


def markdown(rows: dict[str, Any], results: dict[tuple[str, str, int], Any], textures: tuple[str, ...],
             seeds: tuple[int, ...], methods: tuple[str, ...], meta: dict[str, Any], figs: list[str]) -> str:
    from training import zoo

    lines = [
        "# Real-photo anomaly benchmark: scikit-image's textures (issue 20)",
        "",
        f"`{meta['command']}` on {meta['date']}: {meta['wall_s']:.0f} s wall "
        f"({meta.get('cpu_s', 0):.0f} s of CPU in its jobs) on {meta['cpus']} CPUs "
        f"({WORKERS} jobs at a time, one torch thread each; load average {meta['load_start']} at the start, "
        f"{meta['load_end']} at the end, other work included), torch {meta['torch']}"
        + (", **quick run: a smoke test, not a measurement**" if meta["quick"] else "") + ".",
        "",
        "## Headline: the mean over " + ", ".join(textures) + f" (mean ± sd over seeds {list(seeds)})",
        "",
        "| method | image AUROC | pixel AUROC | AUPRO (FPR ≤ 0.3) |",
        "| --- | --- | --- | --- |",
    ]
    for m in methods:
        mean = rows[m]["mean"]
        lines.append(f"| {LABELS[m]} | " + " | ".join(fmt(mean.get(k)) for k, _ in TARGETS) + " |")
    lines += ["", "## Targets (the mean over categories, over seeds)", "", "| target | ours | met |",
              "| --- | --- | --- |"]
    ours, peer = rows["ours"]["mean"], rows.get("anomalib", {}).get("mean", {})
    for key, goal in TARGETS:
        v = ours.get(key)
        lines.append(f"| {key} ≥ {goal} | {fmt(v)} | {'yes' if v and v['mean'] >= goal else 'no'} |")
    for key, _ in TARGETS:
        v, p = ours.get(key), peer.get(key)
        met = "yes" if v and p and v["mean"] >= p["mean"] else ("no" if v and p else "not measured")
        lines.append(f"| {key} ≥ anomalib DRAEM's ({fmt(p)}) | {fmt(v)} | {met} |")
    lines += ["", "## Per category (mean ± sd over seeds)", "",
              "| category | method | image AUROC | pixel AUROC | AUPRO |", "| --- | --- | --- | --- | --- |"]
    for t in textures:
        for m in methods:
            r = rows[m]["textures"][t]
            lines.append(f"| {t} | {LABELS[m]} | " + " | ".join(fmt(r.get(k)) for k, _ in TARGETS) + " |")
    lines += ["", "## What each model got", "",
              "| method | category | seed | training steps (batch) | training s | inference s | job s (wall) "
              "| job CPU s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in methods:
        for t in textures:
            for s in seeds:
                r = rows[m]["textures"][t]["seeds"].get(str(s), {})
                if "error" in r:
                    lines.append(f"| {m} | {t} | {s} | failed: {r['error'][:300]} | | | | |")
                    continue
                steps = f"{r['steps']} ({r['batch_size']})" if "steps" in r else "- (fit, no steps)"
                lines.append(f"| {m} | {t} | {s} | {steps} | {r.get('train_s', '-')} | "
                             f"{r.get('infer_s', '-')} | {r.get('job_s', '-')} | {r.get('job_cpu_s', '-')} |")
    lines += ["", "## Checks", ""]
    diffs = [abs(r["anomalib_metrics"][k] - r[k]) for m in ("anomalib",) if m in methods for t in textures
             for r in rows[m]["textures"][t]["seeds"].values() if "anomalib_metrics" in r for k in
             ("image_auroc", "pixel_auroc", "aupro")]
    if diffs:
        lines.append("- Metrics: anomalib's own AUROC and AUPRO (anomalib.metrics, in its venv) on its "
                     "DRAEM's maps against ours (bench/anomaly_metrics.py) on the same arrays: max abs "
                     f"difference {max(diffs):.2g} over {len(diffs)} numbers.")
    same = [meta["shipped"].get(t) for t in textures]
    lines.append("- Shipped models: seed 0 of ours trained here has the same ONNX graphs (sha256) as the "
                 "shipped "
                 + ", ".join(f"`{zoo.draem_name(t)}`: {meta['shipped'].get(t)}" for t in textures)
                 + ("" if all(same) else " (None: not shipped in models_store/; False: differs)") + ".")
    lines += ["", "## Protocol", "",
              f"- Test set per (category, seed): {meta['test_n']} crops of {CROP}x{CROP} from the lower half "
              "(rows 256..511) at seeded positions, half normal, half with one defect: "
              + ", ".join(td.TEST_KINDS) + " in turn (bench/texture_defects.py; pastes from scikit-image's "
              + ", ".join(td.PASTE_SOURCES) + "). Masks are exact.",
              "- Training data: the upper half only, the zoo's seeded split into 8 tiles of 128x128: 6 to "
              "train "
              "on, 2 held out (validation, calibration, the proxies).",
              f"- Ours: `training.zoo.draem_spec` (configs/draem-texture.toml): {_spec_line()}; its "
              "synthetic "
              f"anomalies are Perlin-shaped patches of `{zoo.DRAEM_SOURCE}`, augmented (gamma, brightness, "
              "solarize, posterize, invert, autocontrast, rotation), blended in at opacity 0.2..1 "
              "(training/anomalies.py): neither the test kinds nor their sources. Scored by the service's "
              "own "
              "path (service.anomaly.score_images on onnxruntime, each crop at its size): the map is the "
              "segmenter's p(anomalous), the image score the manifest's reduction of it.",
              f"- anomalib DRAEM: `{ANOMALIB}` in its own venv (runs/bench/anomalib-venv, torch pinned "
              "first), "
              "`Draem(dtd_dir=<our anomaly-source photographs as RGB PNGs>)` at its defaults, trained by "
              f"`Engine.fit` on an `anomalib.data.Folder` of the same 6 training tiles (RGB, 128x128, batch "
              "4, "
              f"Adam 1e-4) for {ANOMALIB_SECONDS} s of wall time each on one core (Lightning's max_time), no "
              "validation; maps and scores are its torch model's eval outputs (anomaly_map, pred_score = "
              "max). At its default widths one step of 4 crops takes about 15 s of one core here, so it gets "
              "the few steps the table above lists: this anchor is anomalib's DRAEM at about the CPU budget "
              "of ours (compare the job CPU columns), not at convergence. "
              "Two shims, for torchvision 0.28.0 (whose compiled operators need the CUDA torch): an empty "
              "`torchvision._meta_registrations` and a PIL `read_image` for its anomaly-source loader "
              "(bench/peers/anomalib_draem.py).",
              "- Plain AE: the shipped fully convolutional denoising AE (training.zoo.texture_spec: 64x64 "
              "crops, "
              "map = sigma-2 blurred squared residual, image score top_mean 1%), same path as ours.",
              f"- PCA on raw {PATCH['pca']}x{PATCH['pca']} patches of the training tiles (stride 2) keeps "
              f"{PCA_VARIANCE:.0%} of their variance, a patch's score is its squared residual; NN on raw "
              f"{PATCH['nn']}x{PATCH['nn']} patches keeps {NN_BANK} random ones, a patch's score is the "
              "distance to the nearest (queries every other pixel); every pixel gets the mean of the patches "
              f"over it, the image score is the mean of the map's top {BASELINE_TOP:.0%}.",
              "- Metrics: bench/anomaly_metrics.py, as anomalib 2.x computes them (image AUROC; pixel AUROC "
              "over "
              "every pixel of every crop; AUPRO to FPR 0.3 over 8-connected ground-truth regions).", "",
              KNOBS]
    if figs:
        lines += ["## Figures (seed 0)", ""] + [f"![{f}](textures/{f})" for f in figs]
    return "\n".join(lines) + "\n"


def _spec_line() -> str:
    from training import zoo

    t, m = zoo.DRAEM_TRAIN, zoo.DRAEM_MODEL_CFG
    return (f"{t['crop']}x{t['crop']} crops, batch {t['batch_size']}, {t['epochs']} epochs of "
            f"{t['epoch_crops']} crops, reconstruction AE channels {tuple(m['channels'])} (latent "
            f"{m['latent_dim']}), U-Net {tuple(m['seg_channels'])} at stride {m['seg_stride']}")


def main(argv: list[str] | None = None) -> int:
    global WORK
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one texture, one seed, few steps: a smoke run")
    p.add_argument("--build", action="store_true", help="only build anomalib's venv (exit 1 if it fails)")
    p.add_argument("--no-anomalib", action="store_true", help="leave anomalib's row out")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--textures", nargs="+", default=list(TEXTURES), choices=TEXTURES)
    p.add_argument("--out", type=Path, default=BENCH / "results" / "textures.md")
    p.add_argument("--work", type=Path, default=None, help=f"working folder (default {WORK})")
    a = p.parse_args(argv)
    if a.work is not None:
        WORK = a.work.resolve()
        os.environ["TEXTURES_BENCH_WORK"] = str(WORK)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    if a.build:
        try:
            log.info("anomalib venv: %s", build_venv())
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            log.error("%s", exc)
            return 1
        return 0
    textures = ("brick",) if a.quick else tuple(a.textures)
    seeds = (0,) if a.quick else tuple(a.seeds)
    methods = [m for m in METHODS if m != "anomalib" or not a.no_anomalib]
    not_run: dict[str, str] = {}
    if "anomalib" in methods:
        try:
            build_venv()
            source_folder()
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            not_run["anomalib"] = str(exc)
            methods.remove("anomalib")
    results = run_all(plan(textures, seeds, tuple(methods), a.quick), WORKERS)
    import torch

    from training.zoo import TEXTURES as ZOO_TEXTURES

    assert set(textures) <= set(ZOO_TEXTURES)
    meta = {"command": "python bench/anomaly_textures.py" + (" --quick" if a.quick else ""),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "wall_s": time.perf_counter() - t_start,
            "cpus": os.cpu_count(), "load_start": f"{load_start:.1f}",
            "load_end": f"{os.getloadavg()[0]:.1f}",
            "cpu_s": sum(r.get("job_cpu_s", 0.0) for r in results.values()),
            "torch": torch.__version__, "quick": a.quick, "test_n": 8 if a.quick else TEST_N,
            "machine": platform.machine(), "not_run": not_run,
            "shipped": {t: shipped_identical(t, results.get(("ours", t, 0), {}).get("files", {}))
                        for t in textures if 0 in seeds}}
    rows = summarise(results, textures, seeds, tuple(methods))
    figs = figures(results, textures, seeds[0], tuple(methods), a.out.parent / a.out.stem)
    md = markdown(rows, results, textures, seeds, tuple(methods), meta, figs)
    if not_run:
        md += "\n## Not run\n\n" + "\n".join(f"- {k}: {v}" for k, v in not_run.items()) + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(md)
    a.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    log.info("wrote %s (%.0f s)", a.out, time.perf_counter() - t_start)
    failed = [k for k, r in results.items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
