"""Reduced-precision twins (issue 19, item 4): FP32 against int8 and fp16 at batch 64, side by side in one
run.

    .venv/bin/python bench/quantized.py [--seconds 2] [--rounds 5] [--rebuild] [--quick] [--out FILE.md]

The models, published with twins by the project's own code (training.quantize), in a private store cached
under runs/bench/quantized-store (models_store/ is never written):

    conv 28x28 VAE   the conv VAE of bench/serving.py (channels 32, 64; latent 16) with the settings of
                     configs/vae-mnist-conv.toml: one-class digit 0, trained on the TRAINING part of mnist-10k
                     (seeded 8000/2000, bench/quality_common.py), `twins = ["int8", "fp16"]`: the pipeline's
                     own path. Without the MNIST folder: on synthetic 28x28 images, and no quality numbers.
    texture models   ae-denoising-{brick,grass,gravel} as models_store/ ships them, given twins by
                     `training.quantize.publish_twins` (calibrated on their training windows: upper halves).

Throughput at batch 64 (every precision of a graph in each round; ratios to FP32 within a round, medians):

    in-process   the twin's onnxruntime session with the service's options (one thread, pinned to CPU 0), one
                 run after another: runs per wall second, and per CPU second of the thread (steady on a
                 shared host)
    service      V2 infer over HTTP, binary tensors, batch 64, request parameter `precision`, to `python -m
                 service` (shipped settings) pinned to CPU 0, wrk at c=4 on CPU 1 (the server's core kept
                 busy; 64 rows a request is the batcher's max, so requests are not merged): req/s, and the
                 server's CPU per request. Beside it, /v1 anomaly-score (?precision=) on a texture's 256x512
                 lower half (in tiles of 256), an extra row without a target.

Quality, on test images only (twins are calibrated on training images, checked at publish on validation ones):

    PSNR    reconstruction PSNR against the input: FP32's and the twin's, on the mnist-10k test split (2000)
            and on 64x64 windows of each texture's held-out lower half
    AUROC   conv VAE: one-class digit 0 on the 2000 test images with its published anomaly score; textures:
            the defect check of tests/training/test_maps.py (a 3x32 scratch or a radius-6 blob, value 1.0)
            pasted at seeded places into 128x128 windows of the lower half, clean windows against defective,
            with the published map score

Results: bench/results/quantized.md (tables, targets met or missed), quantized.json, quantized.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import serving  # noqa: E402  (bench/ is a folder of scripts)

log = logging.getLogger("bench.quantized")

RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "runs" / "bench" / "quantized-store"
CONV = "vae-mnist-zero-conv"
TEXTURES = ("brick", "grass", "gravel")
SPEED_TEXTURE = "brick"  # the three texture models share one architecture: one is timed, all are scored
PRECISIONS = ("fp32", "int8", "fp16")
BATCH = 64
CONCURRENCY = 4  # requests in flight: enough to keep the server's one core busy between requests
TARGET_SPEEDUP, TARGET_PSNR_DB, TARGET_AUROC_POINTS = 2.0, 0.5, 0.5
#: The graphs the issue sets the speed target on: the conv 28x28 decoder and the texture model's two graphs
#: (the conv encoder and the /v1 photo path are extra rows).
TARGETED = (f"{CONV}.decoder", *(f"ae-denoising-{SPEED_TEXTURE}.{g}" for g in ("encoder", "decoder")))


def texture_model(texture: str) -> str:
    return f"ae-denoising-{texture}"


# --- the store ------------------------------------------------------------------------------------------
def mnist_splits() -> tuple[Any, Any] | None:
    """mnist-10k's training and test parts (bench/quality_common.py's split), or None without the folder."""
    from quality_common import load_datasets

    got = load_datasets(("mnist-10k",))
    return (got[0].train, got[0].test) if got else None


def train_conv(store: Path, mnist: tuple[Any, Any] | None, quick: bool, runs: Path) -> str:
    """The conv VAE, trained and published with twins through training.pipeline (cached)."""
    from training.config import RunSpec, TrainConfig
    from training.data import synthetic
    from training.pipeline import run

    if (store / CONV).is_dir():
        return "cached"
    data = mnist[0] if mnist is not None else synthetic(n=320, shape=(1, 28, 28))
    cfg = TrainConfig(model="vae", seed=0, epochs=2 if quick else 20, batch_size=128, device="cpu",
                      progress=False, threads=1, nll_k=4, name=CONV, store=str(store), split=(0.9, 0.1, 0.0),
                      normal_classes=(0,) if mnist is not None else None, prior_components=40 if mnist else 4,
                      twins=("int8", "fp16"), run_dir=str(runs / CONV),
                      steps_per_epoch=4 if quick else None)
    run(RunSpec(cfg, {"backbone": "conv", "latent_dim": 16, "prior": "gmm"}), data)
    return "trained here"


def add_textures(store: Path) -> None:
    """The shipped texture models, copied, with twins for every precision they lack (a new version)."""
    from service.store.layout import version_numbers
    from service.store.manifest import Manifest
    from training.quantize import publish_twins

    for t in TEXTURES:
        name = texture_model(t)
        if not (store / name).is_dir():
            src = ROOT / "models_store" / name
            last = version_numbers(src)[-1]
            shutil.copytree(src / str(last), store / name / "1")
            m = Manifest.model_validate_json((store / name / "1" / "manifest.json").read_text())
            (store / name / "1" / "manifest.json").write_text(m.model_copy(update={"version": 1})
                                                               .model_dump_json(indent=2))
        last = version_numbers(store / name)[-1]
        m = Manifest.model_validate_json((store / name / str(last) / "manifest.json").read_text())
        missing = [p for p in PRECISIONS[1:] if p not in m.precisions()]
        if missing:
            publish_twins(store, name, missing)  # type: ignore[arg-type]


def build_store(quick: bool, cache: Path = CACHE) -> tuple[Path, tuple[Any, Any] | None]:
    store = cache / ("quick" if quick else "full")
    store.mkdir(parents=True, exist_ok=True)
    mnist = mnist_splits()
    log.info("conv VAE: %s", train_conv(store, mnist, quick, cache / "runs"))
    add_textures(store)
    return store, mnist


def latest(store: Path, name: str) -> tuple[Path, Any]:
    from service.store.layout import version_numbers
    from service.store.manifest import Manifest

    folder = store / name / str(version_numbers(store / name)[-1])
    return folder, Manifest.model_validate_json((folder / "manifest.json").read_text())


# --- quality ---------------------------------------------------------------------------------------------
def sessions(folder: Path, m: Any, precision: str) -> dict[str, Any]:
    from training.quantize import session

    return {g: session(folder / (s.file if precision == "fp32" else s.twins[precision].file))
            for g, s in m.graphs.items() if precision == "fp32" or (s.twins and precision in s.twins)}


def recipe(m: Any, sess: dict[str, Any], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image scores, reconstructions) as the service computes them (service.store.scores)."""
    from service.store import scores
    from training.quantize import run

    async def graph(name: str, a: np.ndarray) -> dict[str, np.ndarray]:
        s = sess[name]
        return dict(zip([o.name for o in s.get_outputs()], run(s, a), strict=True))

    spec = m.anomaly
    raw, score_map = asyncio.run(scores.anomaly(spec.score, spec.params, x, graph))
    if spec.map is not None:
        raw = scores.reduce_map(scores.pixel_map(score_map), spec.map.reduction, spec.map.top_fraction)
    recon = run(sess["decoder"], run(sess["encoder"], x)[0])[0]
    return np.asarray(raw, dtype=np.float64), recon


def paste(x: np.ndarray, kind: str, top: int, left: int) -> np.ndarray:
    """tests/training/test_maps.py's defects: a bright 3x32 scratch, or a bright disc of radius 6."""
    out = x.copy()
    if kind == "scratch":
        out[top:top + 3, left:left + 32] = 1.0
    else:
        yy, xx = np.mgrid[0:x.shape[0], 0:x.shape[1]]
        out[(yy - top - 6) ** 2 + (xx - left - 6) ** 2 <= 36] = 1.0
    return out


def texture_sets(texture: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(64x64 windows for PSNR, 128x128 clean windows, the same windows with a defect each of both kinds), all
    from the held-out lower half."""
    from training.data import textures as tx

    low = tx.lower_half(texture)  # (256, 512)
    w64 = np.stack([low[t:t + 64, s:s + 64] for t in range(0, 193, 32) for s in range(0, 449, 32)])[:, None]
    clean = np.stack([low[t:t + 128, s:s + 128] for t in range(0, 129, 32) for s in range(0, 385, 32)])
    rng = np.random.default_rng(0)
    bad = [paste(c, kind, int(rng.integers(8, 110)), int(rng.integers(8, 90 if kind == "scratch" else 110)))
           for c in clean for kind in ("scratch", "blob")]
    f32 = np.float32
    return w64.astype(f32), clean[:, None].astype(f32), np.stack(bad)[:, None].astype(f32)


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean(np.square(x.astype(np.float64) - y))))


def quality(store: Path, mnist: tuple[Any, Any] | None) -> dict[str, dict[str, dict[str, float]]]:
    """model -> precision -> {psnr_db, auroc, n_psnr, n_auroc}."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, dict[str, dict[str, float]]] = {}
    if mnist is not None:
        folder, m = latest(store, CONV)
        x, y = mnist[1].x, mnist[1].y
        for p in m.precisions():
            s, recon = recipe(m, sessions(folder, m, p), x)
            auroc = float(roc_auc_score(y != 0, s))
            out.setdefault(CONV, {})[p] = {"psnr_db": psnr(x, recon), "auroc": auroc, "n_psnr": len(x),
                                           "n_auroc": len(x)}
    for t in TEXTURES:
        folder, m = latest(store, texture_model(t))
        w64, clean, bad = texture_sets(t)
        labels = np.r_[np.zeros(len(clean)), np.ones(len(bad))]
        for p in m.precisions():
            sess = sessions(folder, m, p)
            _, recon = recipe(m, sess, w64)
            s_clean, _ = recipe(m, sess, clean)
            s_bad, r_bad = recipe(m, sess, bad)
            out.setdefault(texture_model(t), {})[p] = {
                "psnr_db": psnr(w64, recon), "auroc": float(roc_auc_score(labels, np.r_[s_clean, s_bad])),
                "n_psnr": len(w64), "n_auroc": len(labels),
                "defect_recon_mean": float(r_bad[bad == 1.0].mean()), "recon_max": float(r_bad.max())}
    return out


# --- throughput ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    model: str
    graph: str
    feed: np.ndarray  # batch 64
    input_name: str
    output_names: tuple[str, ...]
    files: dict[str, Path]  # variant -> ONNX file: fp32, the twins, int8 without training.quantize's passes

    @property
    def label(self) -> str:
        return f"{self.model}.{self.graph}"


PLAIN = "int8 (no passes)"


def calibration_images(name: str, mnist: tuple[Any, Any] | None, shape: tuple[int, int, int]) -> np.ndarray:
    """Training images, for the int8 graphs made without the passes: the conv VAE's class-0 training images
    (synthetic ones without MNIST), a texture's upper-half crops."""
    rng = np.random.default_rng(0)
    if name == CONV:
        if mnist is None:
            return rng.random((128, *shape), dtype=np.float32)
        return mnist[0].x[mnist[0].y == 0][:128]
    from training.data import textures as tx

    up, c = tx.upper_half(SPEED_TEXTURE), shape[1]
    tops, lefts = rng.integers(0, 256 - c, 128), rng.integers(0, 512 - c, 128)
    return np.stack([up[t:t + c, s:s + c] for t, s in zip(tops, lefts, strict=True)])[:, None]


def points(store: Path, mnist: tuple[Any, Any] | None, workdir: Path) -> list[Point]:
    """The timed graphs, a batch of 64 each (test images: mnist-10k's test part, lower-half windows)."""
    from training.quantize import int8_twin, run, session

    out = []
    rng = np.random.default_rng(0)
    for name in (CONV, texture_model(SPEED_TEXTURE)):
        folder, m = latest(store, name)
        c, h, w = m.data.shape
        x = mnist[1].x[:BATCH] if mnist is not None else rng.random((BATCH, c, h, w), dtype=np.float32)
        if name != CONV:
            from training.data import textures as tx

            low = tx.lower_half(SPEED_TEXTURE)
            x = np.stack([low[t:t + h, s:s + w] for t in range(0, 192, 24) for s in range(0, 448, 56)])
            x = x[:BATCH, None].astype(np.float32)
        calib = calibration_images(name, mnist, (c, h, w)).astype(np.float32)
        z, zc = (run(session(folder / m.graphs["encoder"].file), a)[0] for a in (x, calib))
        for g, feed, cal in (("encoder", x, calib), ("decoder", z, zc)):
            spec = m.graphs[g]
            files = {"fp32": folder / spec.file} | {p: folder / t.file for p, t in (spec.twins or {}).items()}
            if "int8" in files:
                int8_twin(folder / spec.file, workdir / f"{name}.{g}.plain.onnx", cal, passes=False)
                files[PLAIN] = workdir / f"{name}.{g}.plain.onnx"
            out.append(Point(name, g, np.ascontiguousarray(feed), spec.inputs[0].name,
                             tuple(t.name for t in spec.outputs), files))
    return out


#: Ops that only move data: they run on whatever their data input is (8-bit or float).
MOVERS = {"Pad", "Transpose", "Reshape", "Expand", "Unsqueeze", "Squeeze", "Resize", "Concat", "DepthToSpace",
          "Flatten", "Slice", "Gather", "Identity"}
SHAPE_OPS = {"Shape", "Gather", "Mul", "Concat", "Slice", "Add", "Div", "Cast"}  # on int64 shape tensors


def kernels(pts: list[Point], workdir: Path) -> dict[str, dict[str, Any]]:
    """`label|variant` -> what onnxruntime's CPU EP runs after its graph optimisations, per op type and per
    the kind of tensor it reads: 8-bit (QuantizeLinear's, the QLinear/QGemm kernels', and what data-moving
    ops pass on from them) or float (the graph input, DequantizeLinear's, and what float ops make)."""
    import onnx

    from training.quantize import session

    out = {}
    for pt in pts:
        for variant in ("int8", PLAIN):
            if variant not in pt.files:
                continue
            opt = workdir / f"{pt.label}.{'plain' if variant == PLAIN else variant}.optimized.onnx"
            session(pt.files[variant], optimized=opt)
            graph = onnx.load(str(opt)).graph
            consts = {t.name for t in graph.initializer}
            eight: set[str] = set()
            shapes: set[str] = set()
            on8: dict[str, int] = {}
            onf: dict[str, int] = {}
            for n in graph.node:
                data = next((i for i in n.input if i and i not in consts), "")
                if n.op_type == "Shape" or (data in shapes and n.op_type in SHAPE_OPS):
                    shapes.update(n.output)
                    continue
                if n.op_type == "QuantizeLinear" or n.op_type.startswith(("QLinear", "QGemm")):
                    eight.update(n.output)
                    if n.op_type != "QuantizeLinear":
                        on8[n.op_type] = on8.get(n.op_type, 0) + 1
                    continue
                if n.op_type == "DequantizeLinear":
                    continue
                if data in eight and n.op_type in MOVERS:
                    eight.update(n.output)
                    on8[n.op_type] = on8.get(n.op_type, 0) + 1
                else:
                    onf[n.op_type] = onf.get(n.op_type, 0) + 1
            quant = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
            out[f"{pt.label}|{variant}"] = {"on_8bit": on8, "on_float": onf, "quantize_dequantize": quant}
    return out


def in_process(pts: list[Point], seconds: float) -> dict[str, dict[str, float]]:
    """`label|variant` -> runs per wall second and per thread CPU second, on CPU 0."""
    from training.quantize import session

    out = {}
    os.sched_setaffinity(0, {0})
    try:
        for pt in pts:
            for p, file in pt.files.items():
                sess = session(file)
                feeds = {pt.input_name: pt.feed}
                sess.run(None, feeds)
                n, w0, c0 = 0, time.perf_counter(), time.thread_time()
                while time.perf_counter() - w0 < seconds or n < 3:
                    sess.run(None, feeds)
                    n += 1
                out[f"{pt.label}|{p}"] = {"wall_rps": n / (time.perf_counter() - w0),
                                          "cpu_rps": n / max(time.thread_time() - c0, 1e-9)}
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return out


def v2_scenario(pt: Point, precision: str) -> serving.Scenario:
    head = json.dumps({"inputs": [{"name": pt.input_name, "shape": list(pt.feed.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": pt.feed.nbytes}}],
                       "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in pt.output_names],
                       "parameters": {"precision": precision}}).encode()
    return serving.Scenario("q", f"V2 {pt.label} b={BATCH} {precision}", f"/v2/models/{pt.label}/infer",
                            "POST", head + pt.feed.astype("<f4").tobytes(),
                            {"Inference-Header-Content-Length": str(len(head)),
                             "Content-Type": "application/octet-stream"}, rows=BATCH)


def photo_scenario(precision: str) -> serving.Scenario:
    import base64
    import io

    from PIL import Image

    from training.data import textures as tx

    buf = io.BytesIO()
    Image.fromarray((tx.lower_half(SPEED_TEXTURE) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    body = json.dumps({"images": [base64.b64encode(buf.getvalue()).decode()]}).encode()
    name = texture_model(SPEED_TEXTURE)
    return serving.Scenario("q", f"/v1 {name} anomaly-score 256x512 {precision}",
                            f"/v1/models/{name}/anomaly-score?precision={precision}", "POST", body,
                            {"Content-Type": "application/json"})


def check_v2(url: str, sc: serving.Scenario, pt: Point, want: np.ndarray, atol: float) -> None:
    """The service's answer against the twin's own in-process output (the service adds nothing)."""
    import urllib.request

    req = urllib.request.Request(url + sc.path, data=sc.body, method="POST", headers=sc.headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        body, head_len = r.read(), int(r.headers["Inference-Header-Content-Length"])
    head = json.loads(body[:head_len])
    first = head["outputs"][0]
    got = np.frombuffer(body[head_len:head_len + first["parameters"]["binary_data_size"]], "<f4")
    if not np.allclose(got.reshape(first["shape"]), want, atol=atol):
        raise RuntimeError(f"{sc.label}: the service's answer differs from in-process onnxruntime's")


def service_points(store: Path, pts: list[Point]) -> list[tuple[str, serving.Scenario, Point | None]]:
    out: list[tuple[str, serving.Scenario, Point | None]] = []
    for pt in pts:
        _, m = latest(store, pt.model)
        out += [(f"{pt.label}|{p}", v2_scenario(pt, p), pt) for p in m.precisions([pt.graph])]
    _, m = latest(store, texture_model(SPEED_TEXTURE))
    out += [(f"photo|{p}", photo_scenario(p), None) for p in m.precisions()]
    return out


def run_rounds(store: Path, pts: list[Point], seconds: float, rounds: int, workdir: Path
               ) -> dict[str, Any]:
    """Rounds of: every in-process point, then every service point; each variant of a point in each round."""
    from training.quantize import run, session

    res: dict[str, Any] = {"in_process": defaultdict(list), "service": defaultdict(list), "load": []}
    with serving.server(store, serving.Config("default", True, None), workdir, cpus="0") as (url, proc):
        svc = service_points(store, pts)
        for key, sc, pt in svc:
            if pt is not None:
                folder, m = latest(store, pt.model)
                spec, prec = m.graphs[pt.graph], key.split("|")[1]
                file = spec.file if prec == "fp32" else spec.twins[prec].file
                check_v2(url, sc, pt, run(session(folder / file), pt.feed)[0], 1e-5)
            serving.check_once(url, sc)
        for r in range(rounds):
            load0 = os.getloadavg()[0]
            for k, v in in_process(pts, seconds).items():
                res["in_process"][k].append(v)
            for key, sc, _ in svc:
                res["service"][key].append(serving.wrk(url, sc, CONCURRENCY, seconds, workdir, proc.pid,
                                                       cpus="1", timeout_s=60))
            res["load"].append([load0, os.getloadavg()[0]])
            log.info("round %d/%d done (load average %.1f -> %.1f)", r + 1, rounds, *res["load"][-1])
    return res


def ratio(runs: list[dict[str, float]], base: list[dict[str, float]], key: str, inverse: bool = False
          ) -> float:
    """Median over rounds of runs/base (base/runs for a cost such as CPU per request)."""
    rs = [(b[key] / a[key]) if inverse else (a[key] / b[key]) for a, b in zip(runs, base, strict=True)]
    return float(statistics.median(rs))


# --- report ------------------------------------------------------------------------------------------
def speed_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for where in ("in_process", "service"):
        for key, runs in res[where].items():
            label, p = key.split("|")
            base = res[where][f"{label}|fp32"]
            if where == "in_process":
                r = {"wall": ratio(runs, base, "wall_rps"), "cpu": ratio(runs, base, "cpu_rps"),
                     "value": statistics.median(v["wall_rps"] for v in runs)}
            else:
                r = {"wall": ratio(runs, base, "rps"), "cpu": ratio(runs, base, "cpu_us", inverse=True),
                     "value": statistics.median(v["rps"] for v in runs),
                     "p50_ms": statistics.median(v["p50_ms"] for v in runs)}
            rows.append({"where": where, "label": label, "precision": p, **r})
    return rows


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def markdown(rows: list[dict[str, Any]], qual: dict[str, Any], res: dict[str, Any], args: argparse.Namespace,
             origin: str) -> list[str]:
    loads = [x for pair in res["load"] for x in pair]
    md = ["# Reduced-precision twins: FP32 against int8 and fp16, batch 64", "",
          f"`python bench/quantized.py` ({datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, onnxruntime {__import__('onnxruntime').__version__}; {args.rounds} rounds "
          f"of {args.seconds:g} s per point; load average {min(loads):.1f} to {max(loads):.1f} from other "
          "jobs during the run). See the module docstring for the method; twins made by `training.quantize` "
          f"(the conv VAE: {origin}).", "", *summary(rows, qual), "",
          "## Throughput at batch 64, ratio to FP32 (median of per-round ratios)", "",
          "In-process: the session alone, one thread on CPU 0 (per wall second, and per CPU second of the "
          "thread). Service: V2 binary over HTTP to the server pinned to CPU 0, wrk c=4 on CPU 1 (req/s, and "
          "the server's CPU per request, FP32's over the twin's).", "",
          "| where | graph | precision | FP32 runs or req/s | wall ratio | CPU ratio | target >= 2x |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    fp32 = {(r["where"], r["label"]): r["value"] for r in rows if r["precision"] == "fp32"}
    for r in rows:
        if r["precision"] == "fp32":
            continue
        targeted = r["precision"] == "int8" and r["label"] in TARGETED
        tgt = verdict(min(r["wall"], r["cpu"]) >= TARGET_SPEEDUP) if targeted else ""
        md.append(f"| {r['where'].replace('_', '-')} | {r['label']} | {r['precision']} | "
                  f"{fp32[(r['where'], r['label'])]:.1f} | {r['wall']:.2f} | {r['cpu']:.2f} | {tgt} |")
    md += ["", "## Quality against FP32, on test images", "",
           "| model | precision | PSNR dB (FP32) | PSNR dB | loss dB | target <= 0.5 | AUROC (FP32) | AUROC "
           "| loss (points) | target <= 0.5 |", "|" + " --- |" * 10]
    for model, per in qual.items():
        base = per["fp32"]
        for p, q in per.items():
            if p == "fp32":
                continue
            dp, da = base["psnr_db"] - q["psnr_db"], 100 * (base["auroc"] - q["auroc"])
            md.append(f"| {model} | {p} | {base['psnr_db']:.2f} | {q['psnr_db']:.2f} | {dp:.3f} | "
                      f"{verdict(dp <= TARGET_PSNR_DB)} | {100 * base['auroc']:.2f} | {100 * q['auroc']:.2f} "
                      f"| {da:.2f} | {verdict(da <= TARGET_AUROC_POINTS)} |")
    tex = {m: per for m, per in qual.items() if "defect_recon_mean" in per["fp32"] and "int8" in per}
    if tex:
        md += ["", "The texture defects are pasted at 1.0 (white). What each model reconstructs there, mean "
               "over the defect pixels (and the brightest pixel it outputs on the defective windows), FP32 "
               "against int8: " + "; ".join(
                   f"{m.removeprefix('ae-denoising-')} {per['fp32']['defect_recon_mean']:.3f} "
                   f"({per['fp32']['recon_max']:.3f}) against {per['int8']['defect_recon_mean']:.3f} "
                   f"({per['int8']['recon_max']:.3f})" for m, per in tex.items())
               + ". The int8 decoder's activations are clipped to the ranges calibrated on normal training "
               "windows, so it reconstructs a bright defect less: the residual, and the score, grow. That is "
               "where the int8 AUROC gain on these synthetic defects comes from; a defect darker than the "
               "texture, or one the FP32 model already misses, need not gain."]
    return md + [""]


def cpu_has(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def summary(rows: list[dict[str, Any]], qual: dict[str, Any]) -> list[str]:
    """The targets, met or missed, and what the numbers say, in a few lines."""
    int8 = [r for r in rows if r["precision"] == "int8" and r["label"] in TARGETED]
    worst = min(min(r["wall"], r["cpu"]) for r in int8) if int8 else float("nan")
    losses = [(f["psnr_db"] - q["psnr_db"], 100 * (f["auroc"] - q["auroc"]))
              for f, q in ((per["fp32"], per["int8"]) for per in qual.values() if "int8" in per)]
    fp16 = [r["cpu"] for r in rows if r["precision"] == "fp16"]
    plain = {r["label"]: r["cpu"] for r in rows if r["precision"] == PLAIN}
    md = ["## Summary", "",
          "- **Speed, int8, batch 64** (conv 28x28 decoder; texture encoder and decoder; in-process and "
          f"through the service): the lowest of the wall and CPU ratios is {worst:.2f}x: target >= 2x "
          f"**{verdict(worst >= TARGET_SPEEDUP)}**."]
    if losses:
        dp, da = max(x[0] for x in losses), max(x[1] for x in losses)
        md.append(f"- **Quality, int8**: reconstruction PSNR loss at most {dp:.3f} dB (target <= 0.5: "
                  f"**{verdict(dp <= TARGET_PSNR_DB)}**), AUROC loss at most {da:.2f} points (target <= 0.5: "
                  f"**{verdict(da <= TARGET_AUROC_POINTS)}**; a negative loss is a gain).")
    if plain:
        md.append("- **Without training.quantize's passes** (onnxruntime.quantization's QDQ output as it "
                  "is): " + ", ".join(f"{k} {v:.2f}x" for k, v in plain.items()) + " (CPU, in-process). The "
                  "conv decoder's ConvTranspose has no int8 kernel on the CPU EP: it runs in float between a "
                  "DequantizeLinear and a QuantizeLinear, slower than FP32; the texture graphs keep their "
                  "Pads in float (a Quantize/Dequantize pair around each) and the decoder's nearest upsample "
                  "runs in a slow uint8 kernel.")
    if fp16:
        why = "" if cpu_has("avx512_fp16") else " (this CPU has no AVX512-FP16)"
        md.append(f"- **fp16** runs at {min(fp16):.2f}x to {max(fp16):.2f}x FP32 here: onnxruntime's CPU EP "
                  f"has few float16 kernels on x86{why}, so it adds casts and loses; fp16 twins are offered, "
                  "not shipped.")
    return md


def kernels_markdown(ops: dict[str, dict[str, Any]]) -> list[str]:
    md = ["## What onnxruntime's CPU EP runs", "",
          "The int8 graphs after onnxruntime's optimisations (the graph it executes), each op by the tensor "
          "it reads: 8-bit, or float (read from the graph: QuantizeLinear and the QLinear/QGemm kernels make "
          "8-bit tensors, data-moving ops pass on what they read). `int8 (no passes)` is "
          "onnxruntime.quantization's QDQ output as it is; `int8` is the published twin (training.quantize's "
          "passes: ConvTranspose as phase Convs, uint8 Pad "
          "and upsample, short dot products kept float).", "",
          "| graph | variant | ops on 8-bit tensors (count) | ops on float tensors (count) | Quantize/"
          "DequantizeLinear left |", "|" + " --- |" * 5]
    for key, k in ops.items():
        label, variant = key.split("|")
        eight = ", ".join(f"{o} {n}" for o, n in k["on_8bit"].items()) or "-"
        left = ", ".join(f"{o} {n}" for o, n in k["on_float"].items()) or "-"
        md.append(f"| {label} | {variant} | {eight} | {left} | {k['quantize_dequantize']} |")
    return md + [""]


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """One horizontal bar per graph, place and variant: the CPU ratio as the bar, the wall ratio as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["precision"] != "fp32"]
    colours = {"int8": "tab:blue", "fp16": "tab:orange", PLAIN: "tab:grey"}

    def name(r: dict[str, Any]) -> str:
        model = "conv VAE" if r["label"].startswith(CONV) else "texture"
        graph = r["label"].split(".")[-1]
        what = "/v1 anomaly-score 256x512" if r["label"] == "photo" else f"{model} {graph}"
        return f"{what}, {r['where'].replace('_', '-')}, {r['precision']}"

    fig, ax = plt.subplots(figsize=(9, 0.32 * len(shown) + 1.2))
    ys = np.arange(len(shown))[::-1]
    ax.barh(ys, [r["cpu"] for r in shown], color=[colours.get(r["precision"], "k") for r in shown],
            label="CPU time ratio (bar)")
    ax.plot([r["wall"] for r in shown], ys, "k.", label="wall time ratio (dot)")
    ax.axvline(TARGET_SPEEDUP, color="k", ls="--", lw=1, label="target: 2x FP32")
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_yticks(ys, [name(r) for r in shown], fontsize=7)
    ax.set_xlabel("throughput / FP32's at batch 64 (int8 blue, fp16 orange, int8 without the passes grey)")
    ax.set_title("Reduced-precision twins against FP32 (bench/quantized.py)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 epochs, 1 round of 0.3 s")
    p.add_argument("--rebuild", action="store_true", help="train and quantize again (drop the cached store)")
    p.add_argument("--cache", type=Path, default=CACHE, help=f"the private store's folder (default: {CACHE})")
    p.add_argument("--out", type=Path, default=RESULTS / "quantized.md")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 0.3, 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.rebuild:
        shutil.rmtree(args.cache / ("quick" if args.quick else "full"), ignore_errors=True)
    store, mnist = build_store(args.quick, args.cache)
    origin = ("trained on mnist-10k's training part, one-class digit 0" if mnist is not None
              else "trained on synthetic 28x28 images: ../shared/datasets/mnist-t10k is absent, so no "
              "quality numbers for it")
    qual = quality(store, mnist)
    with tempfile.TemporaryDirectory() as tmp:
        pts = points(store, mnist, Path(tmp))
        ops = kernels(pts, Path(tmp))
        res = run_rounds(store, pts, args.seconds, args.rounds, Path(tmp))
    rows = speed_rows(res)
    md = markdown(rows, qual, res, args, origin) + kernels_markdown(ops)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(md))
    args.out.with_suffix(".json").write_text(json.dumps(
        {"speed": rows, "quality": qual, "kernels": ops, "raw": res, "seconds": args.seconds,
         "rounds": args.rounds},
        indent=1, default=float))
    plot(rows, args.out.with_suffix(".png"))
    print("\n".join(md))  # noqa: T201 - the report, as bench/photo.py prints its own
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
