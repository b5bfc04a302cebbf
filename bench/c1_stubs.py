"""Where a `/v1/.../sample` round trip goes at concurrency 1: the real server with one piece stubbed out.

    .venv/bin/python bench/c1_stubs.py [--reps 3] [--duration 2]

For each variant it starts `python -m service` (default settings, bench/serving.py's store) with a
`sitecustomize` that applies the stub, then alternates wrk runs at c=1 of the ceiling (`GET /health/live`)
and `/v1/models/vae-digits/sample` n=1 on that server, and prints req/s and the median of the paired ratios:

    none      the service as shipped
    ort       onnxruntime's `run` answers a cached result (no inference)
    op        `service.ops.sample` answers a ready result (no draw, no dispatch, no inference)

The difference of the round trips says what each piece costs in place, caches and all, which a tight loop
cannot show. Not part of `make bench`; stubs never leave the temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as S  # noqa: E402  (bench/serving.py: store, server, wrk)

STUBS = {
    "none": "",
    "ort": '''
from service import runtime
_real, _done = runtime._OnnxSession.run, {}
def _run(self, feeds):
    if id(self) not in _done:
        _done[id(self)] = _real(self, feeds)
    return _done[id(self)]
runtime._OnnxSession.run = _run
''',
    "op": '''
from service import ops
_real, _done = ops.sample, {}
async def _sample(rt, mv, n, seed=None, temperature=1.0):
    if (mv.name, n) not in _done:
        _done[(mv.name, n)] = await _real(rt, mv, n, 0, temperature)
    return _done[(mv.name, n)]
ops.sample = _sample
''',
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=2.0)
    args = p.parse_args()
    S.CACHE.mkdir(parents=True, exist_ok=True)
    S.build_store(S.CACHE)
    scs = {s.key: s for s in S.scenarios(S.CACHE) if s.label in ("GET /health/live (ceiling)",
                                                                   "/v1 sample n=1 [mlp]")}
    print("| stub | ceiling req/s | sample req/s | sample round trip (us) | sample / ceiling, paired median"
          " |")
    print("| --- | --- | --- | --- | --- |")
    for name, code in STUBS.items():
        with tempfile.TemporaryDirectory() as tmp:
            site = Path(tmp) / "site"
            site.mkdir()
            (site / "sitecustomize.py").write_text(code)
            with S.server(S.CACHE, S.CONFIGS[0], Path(tmp), pythonpath=(site,)) as (url, proc):
                for sc in scs.values():
                    S.wrk(url, sc, 1, 1, Path(tmp))  # warm-up
                pairs, best = [], {"a": 0.0, "b": 0.0}
                for _ in range(args.reps):
                    a = S.wrk(url, scs["a"], 1, args.duration, Path(tmp), proc.pid)
                    b = S.wrk(url, scs["b"], 1, args.duration, Path(tmp), proc.pid)
                    pairs.append(b["rps"] / a["rps"])
                    best = {"a": max(best["a"], a["rps"]), "b": max(best["b"], b["rps"])}
        print(f"| {name} | {best['a']:,.0f} | {best['b']:,.0f} | {1e6 / best['b']:.0f} | "
              f"{statistics.median(pairs):.2f} |", flush=True)


if __name__ == "__main__":
    main()
