"""anomaly-score on a photo at its own size (issue 15): the service against the same work in process.

    .venv/bin/python bench/photo.py [--seconds 5] [--rounds 3] [--out bench/results/photo.md]

The photo is scikit-image's `camera` (512x512 grey, a real photograph), scored by a shipped texture model
(`ae-denoising-brick`: fully convolutional, tiles of 256 overlapping by 64, so 9 tiles for this photo).

    in-process     service.anomaly.score_images on a Runtime in this process (the same recipe, tiles and
                   batcher as the server, no HTTP): images per second, one after another
    HTTP, JSON     POST /v1/models/<m>/anomaly-score with the photo as base64 PNG; scores, thresholds and
                   regions as JSON (no maps)
    HTTP, PNG      the same with Accept: image/png: the overlay (map over the photo, regions boxed)

The server runs with its shipped settings pinned to CPU 0, wrk to CPU 1; in-process runs
pinned to CPU 0 too. Latency at c=1, throughput at c=16; the target reads HTTP JSON at c=16 over in-process:
>= 0.7. bench/serving.py runs this and puts the section in bench/results/serving.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import serving  # noqa: E402  (bench/ is a folder of scripts)

log = logging.getLogger("bench.photo")
MODEL = "ae-denoising-brick"
TARGET = 0.7


def photo_png() -> bytes:
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.camera()).save(buf, format="PNG")
    return buf.getvalue()


def in_process(store: Path, png: bytes, seconds: float) -> float:
    """Images per second through service.anomaly.score_images, in this process, one after another."""
    from service import anomaly, ops
    from service.images import ImageLimits, parse_images
    from service.runtime import Runtime
    from service.settings import Settings
    from service.store.repository import ModelStore

    settings = Settings(store=store)
    rt = Runtime(settings)
    st = ModelStore.open(store, check=rt.prepare)
    mv = st.get(MODEL)
    assert mv.manifest.anomaly is not None

    async def main() -> float:
        run = ops.graph_runner(rt, mv)
        th = anomaly.thresholds(mv.manifest.anomaly)  # type: ignore[arg-type]
        limits = ImageLimits(1, 4096 * 4096, native=True)

        async def once() -> None:
            x = parse_images([png], mv.manifest.data, limits)
            await anomaly.score_images(mv, x.items, x.fits, run, th)

        for _ in range(3):
            await once()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await once()
            n += 1
        return n / (time.perf_counter() - t0)

    return asyncio.run(main())


def scenarios(png: bytes) -> list[serving.Scenario]:
    body = json.dumps({"images": [base64.b64encode(png).decode()]}).encode()
    path = f"/v1/models/{MODEL}/anomaly-score"
    js = {"Content-Type": "application/json"}
    return [serving.Scenario("f", "anomaly-score 512x512 photo, JSON", path, "POST", body, js),
            serving.Scenario("f", "anomaly-score 512x512 photo, PNG overlay", path, "POST", body,
                             {**js, "Accept": "image/png"})]


def _settle(runs: list[dict[str, Any]]) -> None:
    """Let the requests wrk left in flight finish before the next run (one photo takes ~0.5 s)."""
    time.sleep(max(1.0, 2 * runs[-1]["p99_ms"] / 1e3))


def run(seconds: float, rounds: int, workdir: Path) -> dict[str, Any]:
    """Rounds of: in-process, then each HTTP output at c=1 and c=16; ratios taken within a round."""
    png = photo_png()
    store = ROOT / "models_store"
    res: dict[str, Any] = {"in_process_images_s": [], "http": {}}
    with serving.server(store, serving.Config("default", True, None), workdir, cpus="0") as (url, proc):
        scs = scenarios(png)
        for sc in scs:
            serving.check_once(url, sc)
            serving.check_once(url, sc)
        for r in range(rounds):
            os.sched_setaffinity(0, {0})  # in-process: the one core the server gets
            try:
                res["in_process_images_s"].append(in_process(store, png, seconds))
            finally:
                os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
            # A photo takes ~0.2 s, so 16 of them in flight take ~3 s to come back, together (their tiles
            # share the batches): a window of a few seconds would count one wave or none. At c=16 the window
            # holds 8 such waves, so the requests cut off at its end cost at most an eighth.
            long_s = max(seconds, 8 * 16 / max(res["in_process_images_s"][-1], 0.1))
            for sc in scs:
                for c in (1, 16):
                    out = res["http"].setdefault(f"{sc.label}|{c}", [])
                    out.append(serving.wrk(url, sc, c, seconds if c == 1 else long_s, workdir, proc.pid,
                                           cpus="1", timeout_s=60))
                    _settle(out)
            log.info("round %d: in-process %.2f images/s; %s", r + 1, res["in_process_images_s"][-1],
                     {k: round(v[-1]["rps"], 2) for k, v in res["http"].items()})
    return res


def markdown(res: dict[str, Any], seconds: float, rounds: int) -> list[str]:
    ips = res["in_process_images_s"]
    ip = statistics.median(ips)
    md = ["## anomaly-score on a 512x512 photo (issue 15)", "",
          f"`python bench/photo.py`: scikit-image's `camera` (512x512 grey), scored by `{MODEL}` (fully "
          "convolutional; 9 tiles of 256 overlapping by 64). In-process: `service.anomaly.score_images` on a "
          "Runtime in the bench's process (the same recipe, tiles and batcher, no HTTP), one image after "
          f"another. Server and in-process pinned to CPU 0, wrk to CPU 1; {rounds} rounds, each in-process "
          f"({seconds:g} s) then every HTTP point ({seconds:g} s at c=1; at c=16, 8 times the time 16 "
          "photos take in process, so the requests still in flight when wrk stops cost at most an eighth); "
          "ratios within a round, medians.", "",
          f"In-process: {ip:.2f} images/s ({1e3 / ip:.0f} ms an image), median of {len(ips)} rounds.", "",
          "| output | c | req/s | p50 ms | p99 ms | / in-process (per round, median) | target |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, runs in res["http"].items():
        label, c = key.rsplit("|", 1)
        rps = statistics.median(r["rps"] for r in runs)
        p50 = statistics.median(r["p50_ms"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        ratio = statistics.median(r["rps"] / i for r, i in zip(runs, ips, strict=True))
        target = (f">= {TARGET}: {'met' if ratio >= TARGET else 'MISSED'}"
                  if c == "16" and "JSON" in label else "")
        md.append(f"| {label} | {c} | {rps:.2f} | {p50:.0f} | {p99:.0f} | {ratio:.2f} | {target} |")
    return md + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=None,
                   help="also write the section here (bench/serving.py puts it in serving.md)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.seconds, args.rounds, Path(tmp))
    text = "\n".join(markdown(res, args.seconds, args.rounds))
    print(text)
    if args.out is not None:
        args.out.write_text(f"# anomaly-score on a 512x512 photo (issue 15)\n\n`python bench/photo.py --out "
                            f"{args.out}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load "
                            f"average {os.getloadavg()[0]:.1f} at the end.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
