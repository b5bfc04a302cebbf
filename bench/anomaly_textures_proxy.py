"""The texture benchmark's knobs, chosen on a training-split proxy (never on the test crops).

    .venv/bin/python bench/anomaly_textures_proxy.py ours TEXTURE SEED '{"epochs": 32}' '{"res_blocks": 0}'
    .venv/bin/python bench/anomaly_textures_proxy.py baselines TEXTURE SEED
    .venv/bin/python bench/anomaly_textures_proxy.py report        # bench/results/textures_proxy.md

The proxy set: the two held-out tiles of the seed's split of the upper half (the ones the models validate and
calibrate on, never trained on), cut into 96x96 windows at stride 16, and their mirror images; each window
once as it is and once, flipped upside down, with one proxy defect (bench/texture_defects.PROXY_KINDS:
cutpaste, noise, grating in turn): none of the test kinds (paste, scratch, blob, blur, hole) or sources, and
not the family's own training anomalies (Perlin-shaped photo patches).

`ours` trains the shipped spec (training.zoo.draem_spec) with the given train and model overrides and scores
the proxy set with the training recipe (the torch graphs); `baselines` scores PCA and NN at several patch
settings. Each run appends a JSON line to bench/results/textures_proxy.jsonl; `report` tabulates them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import anomaly_metrics as am  # noqa: E402
import texture_defects as td  # noqa: E402

LOG = BENCH / "results" / "textures_proxy.jsonl"
WINDOW, STRIDE = 96, 16


def proxy_set(texture: str, seed: int) -> dict[str, np.ndarray]:
    """Held-out upper-half windows, half with a proxy defect (see the module docstring)."""
    from training.data import split_indices
    from training.data.textures import load_textures
    from training.zoo import DRAEM_TRAIN

    data = load_textures(f"skimage:{texture}:upper")
    _, va, _ = split_indices(data.y, data.name, seed, DRAEM_TRAIN["split"], None)
    rng = np.random.default_rng([seed, 99])
    last = data.x.shape[-1] - WINDOW + 1
    wins = [t[0, y:y + WINDOW, x:x + WINDOW] for t in data.x[va] for y in range(0, last, STRIDE)
            for x in range(0, last, STRIDE)]
    wins += [w[:, ::-1] for w in wins]
    images, masks, labels, kinds = [], [], [], []
    for w in wins:
        images.append(w.copy())
        masks.append(np.zeros(w.shape, bool))
        labels.append(0)
        kinds.append("normal")
    for i, w in enumerate(wins):
        kind = td.PROXY_KINDS[i % len(td.PROXY_KINDS)]
        img, m = td.apply(w[::-1].copy(), kind, rng)
        images.append(img)
        masks.append(m)
        labels.append(1)
        kinds.append(kind)
    return {"images": np.stack(images)[:, None].astype(np.float32), "masks": np.stack(masks),
            "labels": np.asarray(labels), "kinds": np.asarray(kinds)}


def metrics(p: dict[str, np.ndarray], maps: np.ndarray) -> dict[str, float]:
    """Pixel AUROC and AUPRO of the maps, image AUROC of three reductions, and per proxy kind."""
    from service.store import scores

    out = {f"image_auroc_{r}": am.image_auroc(p["labels"], scores.reduce_map(maps, *r.split("@")[:1],
                                                                              *map(float, r.split("@")[1:])))
           for r in ("max", "top_mean@0.01", "top_mean@0.05")}
    out |= {"pixel_auroc": am.pixel_auroc(p["masks"], maps), "aupro": am.aupro(p["masks"], maps)}
    for k in td.PROXY_KINDS:
        sel = (p["kinds"] == k) | (p["kinds"] == "normal")
        out[f"pixel_auroc_{k}"] = am.pixel_auroc(p["masks"][sel], maps[sel])
    return {k: round(float(v), 4) for k, v in out.items()}


BLURS = (0.0, 1.0, 2.0, 4.0, 8.0)  # the map blurs (anomaly_blur) each trained model is scored with


def ours(texture: str, seed: int, train: dict[str, Any], model: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    from service.store import scores
    from training import calibrate, zoo
    from training.pipeline import run

    torch.set_num_threads(1)
    spec = zoo.draem_spec(texture, Path("/tmp/unused"), BENCH.parent / "runs" / "bench" / "proxy", seed)
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, publish=False, **train),
                               model={**spec.model, **model})
    t0 = time.perf_counter()
    res = run(spec)
    seconds = time.perf_counter() - t0
    p = proxy_set(texture, seed)
    runner = calibrate.torch_runner(res.model)  # type: ignore[arg-type]
    _, smap = calibrate.compute_scores("segmentation", {}, runner, p["images"])  # the map, unblurred
    amap = scores.pixel_map(smap)
    return [{"method": "ours", "texture": texture, "seed": seed, "train": train,
             "model": {**model, "anomaly_blur": blur}, "seconds": round(seconds),
             "epochs": res.metrics["epochs_run"],
             **metrics(p, scores.gaussian_blur(amap, blur) if blur else amap)} for blur in BLURS]


def baselines(texture: str, seed: int) -> list[dict[str, Any]]:
    import anomaly_textures as bench

    p = proxy_set(texture, seed)
    tiles = bench.train_tiles(texture, seed)
    out = []
    for method, settings in (("pca", [dict(p=8, variance=0.9), dict(p=8, variance=0.99),
                                      dict(p=16, variance=0.9), dict(p=16, variance=0.99)]),
                             ("nn", [dict(p=8), dict(p=16)])):
        for s in settings:
            maps = bench.baseline_maps(method, tiles, p["images"], seed, **s)  # type: ignore[arg-type]
            out.append({"method": method, "texture": texture, "seed": seed, "settings": s,
                        **metrics(p, maps)})
    return out


def report() -> str:
    rows = [json.loads(line) for line in LOG.read_text().splitlines() if line.strip()]
    lines = ["# Texture benchmark: the proxy runs that chose its knobs", "",
             "Written by `python bench/anomaly_textures_proxy.py report` from textures_proxy.jsonl (a line "
             "a run). The proxy set: held-out upper-half windows with proxy defects (see the script's "
             "docstring); never the test crops.", "",
             "| method | texture | seed | settings | s | image AUROC max / top 1% / top 5% | pixel AUROC "
             "| AUPRO | pixel AUROC cutpaste / noise / grating |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        settings = json.dumps(r.get("settings") or {**r.get("train", {}), **r.get("model", {})})
        lines.append(
            f"| {r['method']} | {r['texture']} | {r['seed']} | `{settings}` | {r.get('seconds', '-')} | "
            f"{r['image_auroc_max']:.3f} / {r['image_auroc_top_mean@0.01']:.3f} / "
            f"{r['image_auroc_top_mean@0.05']:.3f} | {r['pixel_auroc']:.3f} | {r['aupro']:.3f} | "
            f"{r['pixel_auroc_cutpaste']:.3f} / {r['pixel_auroc_noise']:.3f} / "
            f"{r['pixel_auroc_grating']:.3f} |")
    return "\n".join(lines + [""] + choices(rows)) + "\n"


REDUCTIONS = ("image_auroc_max", "image_auroc_top_mean@0.01", "image_auroc_top_mean@0.05")


def choices(rows: list[dict[str, Any]]) -> list[str]:
    """The rule every knob was chosen by: the largest mean over textures of image AUROC (of the reduction) +
    pixel AUROC + AUPRO, among settings measured on all three textures."""
    groups: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in rows:
        if r["method"] == "ours" and r.get("train") != {"epochs": 32}:
            continue  # the map blur and the image score were compared on the 32-epoch models
        settings = json.dumps(r.get("settings") or r.get("model") or {})
        for red in REDUCTIONS:
            groups.setdefault((r["method"], settings, red), {})[r["texture"]] = (
                r[red] + r["pixel_auroc"] + r["aupro"])
    lines = ["## The choices", "",
             "Rule: the largest mean over brick, grass and gravel (seed 0) of image AUROC + pixel AUROC + "
             "AUPRO; ours compared on its 32-epoch models (map blur and image score), the baselines on patch "
             "size, PCA's variance and image score. The opacity range (0.2..1 against 0.5..1, gravel) and "
             "the epochs (16 against 32, brick and gravel) were compared by the same sum on the textures "
             "run.", "",
             "| method | settings | image score | mean sum |", "| --- | --- | --- | --- |"]
    best: dict[str, tuple[float, str]] = {}
    for (method, settings, red), by_tex in sorted(groups.items()):
        if len(by_tex) < 3:
            continue
        v = sum(by_tex.values()) / 3
        lines.append(f"| {method} | `{settings}` | {red.removeprefix('image_auroc_')} | {v:.3f} |")
        if v > best.get(method, (-1.0, ""))[0]:
            best[method] = (v, f"`{settings}`, {red.removeprefix('image_auroc_')}")
    lines += [""] + [f"- the rule's pick for {m}: {b} ({v:.3f})" for m, (v, b) in best.items()]
    lines.append("- shipped for ours: anomaly_blur 4 with top_mean@0.01, 0.002 behind the max on this sum: "
                 "the mean of the top 1% is a quantile of the map, so its level (and the threshold "
                 "calibrated on 64x64 windows) carries over to whole photos, where the max grows with the "
                 "pixel count.")
    return lines


def main(argv: list[str]) -> int:
    if argv[0] == "report":
        out = LOG.with_suffix(".md")
        out.write_text(report())
        print(out)
        return 0
    texture, seed = argv[1], int(argv[2])
    if argv[0] == "ours":
        rows = ours(texture, seed, json.loads(argv[3]) if len(argv) > 3 else {},
                    json.loads(argv[4]) if len(argv) > 4 else {})
    else:
        rows = baselines(texture, seed)
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(LOG, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
