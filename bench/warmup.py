"""First requests after ready: the warm-up's effect (issue 17). bench/serving.py runs it and reports it.

    .venv/bin/python bench/warmup.py [--starts 3] [--out bench/results/warmup.md]

The server starts `--starts` times with the shipped settings (the warm-up on) and as many with
LATENTSERVE_WARMUP=false; after /health/ready answers 200, one client sends ten requests one after another
on one connection, for each scenario (the conv VAE's /v1 sample n=1, its decoder through V2 binary, and the
digits MLP's sample). The report gives the latency of the first request and of the tenth, medians over starts.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import serving  # noqa: E402  (bench/ is a folder of scripts)

log = logging.getLogger("bench.warmup")
REQUESTS = 10
LABELS = ("/v1 sample n=1 [conv]", "V2 infer decoder b=1 binary [conv]", "/v1 sample n=1 [mlp]")


def latencies(url: str, sc: serving.Scenario, n: int = REQUESTS) -> list[float]:
    """Milliseconds of `n` requests in a row on one keep-alive connection."""
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request(sc.method, sc.path, body=sc.body or None, headers=sc.headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"{sc.label}: HTTP {r.status}")
        out.append((time.perf_counter() - t) * 1e3)
    conn.close()
    return out


def run(starts: int, workdir: Path) -> dict[str, Any]:
    serving.CACHE.mkdir(parents=True, exist_ok=True)
    serving.build_store(serving.CACHE)
    scs = [s for s in serving.scenarios(serving.CACHE) if s.label in LABELS]
    res: dict[str, Any] = {}
    for warm in (True, False):
        cfg = serving.Config("default" if warm else "default/no-warmup", True, None)
        runs: dict[str, list[list[float]]] = {sc.label: [] for sc in scs}
        for _ in range(starts):
            for sc in scs:  # a fresh server per scenario: its graph's first run is its first request
                env = {} if warm else {"LATENTSERVE_WARMUP": "false"}
                with serving.server(serving.CACHE, cfg, workdir, env=env) as (url, _):
                    runs[sc.label].append(latencies(url, sc))
        res[cfg.key] = runs
        for label, rows in runs.items():
            log.info("%s %s: first %.2f ms, tenth %.2f ms", cfg.key, label,
                     statistics.median(r[0] for r in rows), statistics.median(r[-1] for r in rows))
    return res


def markdown(res: dict[str, Any], starts: int) -> list[str]:
    md = ["## First requests after ready (the warm-up)", "",
          f"`python bench/warmup.py`: a fresh server per scenario and start ({starts} starts), ten requests "
          "in a row on one connection right after /health/ready answers; medians over starts. `default` runs "
          "each graph once before it is ready (LATENTSERVE_WARMUP, on by default); `default/no-warmup` does "
          "not.", "",
          "| server | scenario | 1st request ms | 2nd ms | 10th ms | 1st / 10th |",
          "| --- | --- | --- | --- | --- | --- |"]
    for key, runs in res.items():
        for label, rows in runs.items():
            first, second, tenth = (statistics.median(r[i] for r in rows) for i in (0, 1, -1))
            md.append(f"| {key} | {label} | {first:.2f} | {second:.2f} | {tenth:.2f} | {first / tenth:.1f} |")
    return md + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--starts", type=int, default=3)
    p.add_argument("--out", type=Path, default=None,
                   help="also write the section here (bench/serving.py puts it in serving.md)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.starts, Path(tmp))
    text = "\n".join(markdown(res, args.starts))
    print(text)
    if args.out is not None:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        args.out.write_text(f"# First requests after ready (issue 17)\n\n"
                            f"`python bench/warmup.py --out {args.out}` on {when}.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
