"""Where a `/v1/.../sample` round trip goes at concurrency 1: the real server with one piece stubbed out.

    .venv/bin/python bench/c1_stubs.py [--reps 3] [--duration 2]

For each variant it starts `python -m service` (default settings, bench/serving.py's store) with a
`sitecustomize` that applies the stub, then alternates wrk runs at c=1 of the ceiling (`GET /health/live`)
and `/v1/models/vae-digits/sample` n=1 on that server, and prints req/s and the median of the paired ratios:

    none      the service as shipped
    ort       onnxruntime's `run` answers a cached result (no inference)
    op        `service.ops.sample` answers a ready result (no draw, no dispatch, no inference)
    numpy     graphs made only of Gemm, LeakyRelu, Relu, Sigmoid, Constant and Reshape (the MLP decoders) run
              as plain NumPy instead of onnxruntime, checked against it on a probe batch first: would a
              lighter executor than onnxruntime help at c=1?

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
async def _sample(rt, mv, n, seed=None, temperature=1.0, *args, **kwargs):
    if (mv.name, n) not in _done:
        _done[(mv.name, n)] = await _real(rt, mv, n, 0, temperature, *args, **kwargs)
    return _done[(mv.name, n)]
ops.sample = _sample
''',
    "numpy": '''
import numpy as np, onnx
from onnx import numpy_helper
from service import runtime
_init = runtime._OnnxSession.__init__
_OPS = {"Gemm", "LeakyRelu", "Relu", "Sigmoid", "Constant", "Reshape"}

def _program(path):
    m = onnx.load(path)
    if any(n.op_type not in _OPS for n in m.graph.node) or len(m.graph.input) != 1:
        return None
    env = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    steps = []
    for n in m.graph.node:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        if n.op_type == "Constant":
            env[n.output[0]] = numpy_helper.to_array(a["value"])
        elif n.op_type == "Gemm":
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                return None
            w = env[n.input[1]]
            w = np.ascontiguousarray(w.T if a.get("transB", 0) else w)
            steps.append(lambda x, w=w, b=env[n.input[2]]: x @ w + b)
        elif n.op_type == "LeakyRelu":
            steps.append(lambda x, k=np.float32(a.get("alpha", 0.01)): np.where(x > 0, x, x * k))
        elif n.op_type == "Relu":
            steps.append(lambda x: np.maximum(x, 0))
        elif n.op_type == "Sigmoid":
            steps.append(lambda x: 1 / (1 + np.exp(-x)))
        else:  # Reshape to a constant shape; a 0 keeps that dim
            shape = [int(v) for v in env[n.input[1]]]
            steps.append(lambda x, shape=shape: x.reshape([x.shape[i] if v == 0 else v
                                                          for i, v in enumerate(shape)]))
    return steps

def __init__(self, path, settings):
    _init(self, path, settings)
    steps = _program(path)
    if steps is None:
        return
    name = self.input_names[0]
    def run(feeds):
        x = feeds[name]
        for f in steps:
            x = f(x)
        return [x.astype(np.float32, copy=False)]
    shape = [d if isinstance(d, int) else 3 for d in self.session.get_inputs()[0].shape]
    probe = {name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    want, got = self.session.run(self.output_names, probe), run(probe)
    assert len(want) == 1 and np.allclose(want[0], got[0], atol=1e-5), path  # same answers as onnxruntime
    self.run = run  # this session's run, in place of onnxruntime's
runtime._OnnxSession.__init__ = __init__
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
                    if not (a["rps"] and b["rps"]):  # a stub that breaks the op answers errors only
                        sys.exit(f"stub {name!r}: no successful request (errors: ceiling {a['errors']}, "
                                 f"sample {b['errors']}); the stub no longer fits the code it replaces")
                    pairs.append(b["rps"] / a["rps"])
                    best = {"a": max(best["a"], a["rps"]), "b": max(best["b"], b["rps"])}
        print(f"| {name} | {best['a']:,.0f} | {best['b']:,.0f} | {1e6 / best['b']:.0f} | "
              f"{statistics.median(pairs):.2f} |", flush=True)


if __name__ == "__main__":
    main()
