"""The HTTP boundary (issue 14) side by side with the commit before it: the same requests, the same machine,
one run.

    .venv/bin/python bench/boundary.py [--rounds 6] [--seconds 3] [--base COMMIT] [--out FILE.md]

Two servers run `python -m service` over the same store with the same settings (the shipped defaults, but
LOG_LEVEL=warning: the base commit wrote an access line per request at info, this one does not): this
checkout, and `--base` (default: the commit before the boundary change) from a `git worktree`. Each server is
pinned to CPU 0 and wrk to CPU 1 (taskset), so the two never fight over a core. For /v1 sample n=1 and V2
infer (batch 1, JSON and binary) at c=1, 16 and 64: `--rounds` rounds, the two servers back to back in each
(the order alternates), the ratio new/base taken per round; the target reads the median of those ratios (>=
0.97).

The stall case: while one request carries 48 PNGs of 4096x4096 at 1 bit (136 KB of body, 805 million pixels
declared), and again while one carries two of them (within the pixel budget), a second client asks
/health/live every 5 ms; the report gives that probe's p50, p99 and max latency during the request, the big
request's status and time, and the server's RSS growth (its peak RSS, VmHWM reset before, over its RSS
before).
Goal: health p99 <= 100 ms, RSS growth < 200 MB.

bench/serving.py runs this too (`make bench`) and puts the section in bench/results/serving.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import serving  # noqa: E402  (bench/ is a folder of scripts)

log = logging.getLogger("bench.boundary")
BASE = "075dd80"  # the commit before the boundary change
CONCS = (1, 16, 64)
TARGET = 0.97
HEALTH_P99_MS, RSS_MB = 100.0, 200.0
AE = "ae-digits"


def worktree(commit: str, where: Path) -> Path:
    """A checkout of `commit` at `where` (a detached git worktree; removed by `drop_worktree`)."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(where), commit],
                   check=True, capture_output=True)
    return where


def drop_worktree(where: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)], capture_output=True)


def scenarios(store: Path) -> list[serving.Scenario]:
    dim = serving.manifest(store, serving.MLP)["latent"]["dim"]
    z = np.random.default_rng(0).standard_normal((1, dim)).astype(np.float32)
    body, hdr = serving.v2_binary_body(z)
    js = {"Content-Type": "application/json"}
    v2json = json.dumps({"inputs": [{"name": "z", "shape": [1, dim], "datatype": "FP32",
                                     "data": z.ravel().tolist()}]}).encode()
    path = f"/v2/models/{serving.MLP}.decoder/infer"
    return [
        serving.Scenario("b", "/v1 sample n=1", f"/v1/models/{serving.MLP}/sample", "POST", b'{"n": 1}', js),
        serving.Scenario("d", "V2 infer b=1 JSON", path, "POST", v2json, js),
        serving.Scenario("d", "V2 infer b=1 binary", path, "POST", body, hdr),
    ]


def speed(urls: dict[str, tuple[str, int]], store: Path, rounds: int, seconds: float, workdir: Path,
          only: str | None = None, concs: tuple[int, ...] = CONCS) -> dict[str, Any]:
    """Per scenario and concurrency: each round's req/s of both servers and their ratio new/base."""
    out: dict[str, Any] = {}
    for sc in scenarios(store):
        if only is not None and only not in sc.label:
            continue
        for _, (url, _) in urls.items():
            serving.check_once(url, sc)
            serving.wrk(url, sc, 8, 1, workdir, cpus="1")  # warm: sessions, allocator, the inline estimate
        for c in concs:
            runs: dict[str, list[dict[str, Any]]] = {"base": [], "new": []}
            ratios = []
            for r in range(rounds):
                order = ("base", "new") if r % 2 == 0 else ("new", "base")
                got = {k: serving.wrk(urls[k][0], sc, c, seconds, workdir, urls[k][1], cpus="1")
                       for k in order}
                for k in order:
                    runs[k].append(got[k])
                ratios.append(got["new"]["rps"] / got["base"]["rps"])
            out[f"{sc.label}|{c}"] = {"scenario": sc.label, "c": c, "ratios": ratios, "runs": runs,
                                      "median": statistics.median(ratios)}
            log.info("%s c=%d: new/base %.3f (%s)", sc.label, c, statistics.median(ratios),
                     " ".join(f"{x:.2f}" for x in ratios))
    return out


def one_bit_png_b64(side: int) -> str:
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak(pid: int) -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def stall(url: str, pid: int, images: int, timeout_s: float = 120) -> dict[str, Any]:
    """/health/live every 5 ms from another connection while one request carries `images` 1-bit PNGs of
    4096x4096: the probe's latencies during the request, its status and time, the server's RSS growth."""
    body = json.dumps({"images": [one_bit_png_b64(4096)] * images}).encode()
    lat: list[tuple[float, float]] = []
    _reset_peak(pid)
    rss0 = _status_mb(pid, "VmRSS")
    done = threading.Event()

    def probe() -> None:
        import http.client

        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=timeout_s)
        while not done.is_set():
            t = time.perf_counter()
            conn.request("GET", "/health/live")
            conn.getresponse().read()
            lat.append((t, time.perf_counter() - t))
            time.sleep(0.005)
        conn.close()

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    time.sleep(0.2)
    req = urllib.request.Request(f"{url}/v1/models/{AE}/encode", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    t1 = time.perf_counter()
    time.sleep(0.05)
    done.set()
    th.join(timeout_s)
    rss_peak = _status_mb(pid, "VmHWM")
    window = sorted(d for t, d in lat if t0 <= t + d and t <= t1)  # probes that overlapped the request
    worst = window or [0.0]
    return {"images": images, "body_kb": len(body) / 1024, "status": status, "seconds": t1 - t0,
            "probes": len(window), "p50_ms": 1e3 * statistics.median(worst),
            "p99_ms": 1e3 * float(np.percentile(worst, 99)), "max_ms": 1e3 * max(worst),
            "rss_before_mb": rss0, "rss_growth_mb": rss_peak - rss0}


def markdown(res: dict[str, Any], base: str, rounds: int, seconds: float) -> list[str]:
    speed_rows = res["speed"].values()
    md = [
        "## The request path against the commit before it (issue 14)",
        "",
        f"`python bench/boundary.py`: this checkout against `{base}` (the commit before the boundary change) "
        f"from a git worktree, same store and settings (defaults, LOG_LEVEL=warning); each server pinned to "
        f"CPU 0, wrk to CPU 1; {rounds} rounds of {seconds:g} s per point, the two servers back to back in "
        f"each round (alternating order), ratio new/base per round, target: the median >= {TARGET}.",
        "",
        "| scenario | c | new/base, median of rounds | range | req/s base (median) | req/s new (median) | "
        "CPU us/req base | CPU us/req new | met? |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in speed_rows:
        med = {k: statistics.median(x["rps"] for x in r["runs"][k]) for k in ("base", "new")}
        cpu = {k: statistics.median(x["cpu_us"] for x in r["runs"][k]) for k in ("base", "new")}
        md.append(f"| {r['scenario']} | {r['c']} | {r['median']:.3f} | {min(r['ratios']):.2f} to "
                  f"{max(r['ratios']):.2f} | {med['base']:,.0f} | {med['new']:,.0f} | {cpu['base']:.0f} | "
                  f"{cpu['new']:.0f} | {'yes' if r['median'] >= TARGET else 'NO'} |")
    md += [
        "",
        "### One request against everyone: /health/live from another client while it is served",
        "",
        f"Goal: the health probe's p99 <= {HEALTH_P99_MS:g} ms during the request, and RSS growth < "
        f"{RSS_MB:g} MB. 48 images is the attack (805 million pixels declared); 2 is within the pixel budget "
        f"(2 x 4096 x 4096), so the new server decodes them, off the event loop.",
        "",
        "| server | request | status | request s | probes during | health p50 ms | health p99 ms | "
        "health max ms | RSS growth MB | met? |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, rows in res["stall"].items():
        for s in rows:
            ok = s["p99_ms"] <= HEALTH_P99_MS and s["rss_growth_mb"] < RSS_MB
            md.append(f"| {key} | {s['images']} PNGs 4096x4096, 1 bit ({s['body_kb']:.0f} KB) | "
                      f"{s['status']} | {s['seconds']:.2f} | {s['probes']} | {s['p50_ms']:.1f} | "
                      f"{s['p99_ms']:.1f} | {s['max_ms']:.1f} | {s['rss_growth_mb']:.0f} | "
                      f"{'yes' if ok else 'no'} |")
    return md + [""]


def _without_nulls(doc: Any) -> Any:
    """A manifest without its null members: the fields added since the base commit (labels, spatial, a
    graph's twins ...) are null on these models, and the base's strict schema refuses names it does not know
    (its models would be 404s)."""
    if isinstance(doc, dict):
        return {k: _without_nulls(v) for k, v in doc.items() if v is not None}
    if isinstance(doc, list):
        return [_without_nulls(v) for v in doc]
    return doc


def run(rounds: int, seconds: float, base: str, workdir: Path, only: str | None = None,
        concs: tuple[int, ...] = CONCS, stalls: bool = True) -> dict[str, Any]:
    serving.CACHE.mkdir(parents=True, exist_ok=True)
    serving.build_store(serving.CACHE)
    store = workdir / "store"
    import shutil

    shutil.copytree(serving.CACHE, store)
    shutil.copytree(ROOT / "models_store" / AE, store / AE, ignore=shutil.ignore_patterns(".staging-*"))
    base_store = workdir / "store-base"  # the same files, manifests as the base commit reads them
    shutil.copytree(store, base_store)
    for path in base_store.glob("*/*/manifest.json"):
        path.write_text(json.dumps(_without_nulls(json.loads(path.read_text())), indent=1))
    tree = worktree(base, workdir / "base")
    cfg = serving.Config("default", True, None)
    try:
        with contextlib.ExitStack() as stack:
            urls: dict[str, tuple[str, int]] = {}
            for key, root, where in (("base", tree, base_store), ("new", ROOT, store)):
                url, proc = stack.enter_context(serving.server(where, cfg, workdir, root=root, cpus="0",
                                                                  env={"LATENTSERVE_LOG_LEVEL": "warning"}))
                urls[key] = (url, proc.pid)
            res: dict[str, Any] = {"speed": speed(urls, store, rounds, seconds, workdir, only, concs),
                                   "stall": {}}
            for key in ("new", "base") if stalls else ():
                res["stall"][key] = [stall(urls[key][0], urls[key][1], n) for n in (2, 48)]
                log.info("stall %s: %s", key, res["stall"][key])
    finally:
        drop_worktree(tree)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--base", default=BASE, help="the commit to compare with (default: before the change)")
    p.add_argument("--out", type=Path, default=serving.RESULTS / "boundary.md")
    p.add_argument("--only", default=None, help="only the scenarios whose label contains this (trials)")
    p.add_argument("--concs", type=int, nargs="*", default=list(CONCS))
    p.add_argument("--no-stall", action="store_true", help="skip the stall case (trials)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.rounds, args.seconds, args.base, Path(tmp), args.only, tuple(args.concs),
                  not args.no_stall)
    info = serving.machine()
    md = ["# The HTTP boundary against the commit before it", "", *[f"- {k}: {v}" for k, v in info.items()],
          f"- whole run: {time.perf_counter() - t0:.0f} s", "", *markdown(res, args.base, args.rounds,
                                                                          args.seconds)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(md))
    args.out.with_suffix(".json").write_text(json.dumps({"machine": info, **res}, indent=1))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
