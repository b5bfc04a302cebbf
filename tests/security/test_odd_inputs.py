"""Odd but plausible requests to every /v1 and /v2 route of the shipped digits VAE: none may be a 5xx, none
may make numpy warn (an overflowing cast is a value the service did not check), and no answer may carry a
null where a number belongs (how orjson writes a NaN).

The schemathesis fuzz (test_fuzz.py) draws from the OpenAPI schema; these are the cases it did not reach and a
user did: integers an INT8 cannot hold, latents the decoder overflows on, headers that lie about sizes.
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

STORE = Path(__file__).resolve().parents[2] / "models_store"
MODEL = "vae-digits"
V2 = f"/v2/models/{MODEL}.decoder/infer"
Z = [0.0] * 8

pytestmark = pytest.mark.skipif(not (STORE / MODEL).is_dir(), reason=f"no {MODEL} in the shipped store")


def _tensor(datatype: Any = "FP32", shape: Any = (1, 8), data: Any = Z) -> dict[str, Any]:
    shape = list(shape) if isinstance(shape, tuple) else shape
    return {"inputs": [{"name": "z", "datatype": datatype, "shape": shape, "data": data}]}


def _cases() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx request kwargs)."""
    for shape in ([2**40, 2**40], [2**62, 8], [-5, 8], [1.5, 8], [True, 8], ["1", 8], [], [0, 8], [1, 8, 1],
                  None, "x", [[1], 8]):
        yield "POST", V2, {"json": _tensor(shape=shape)}
    for dt in ("fp32", "FP32 ", None, 5, "BF16", "BYTES", "INT16", "UINT32", "FP64", "BOOL"):
        yield "POST", V2, {"json": _tensor(datatype=dt, data=[1] * 8)}
    for dt, data in (("INT8", [300] * 8), ("UINT8", [-1] * 8), ("INT32", [2**40] * 8), ("FP32", [1e300] * 8),
                     ("FP32", [3e38] * 8)):
        yield "POST", V2, {"json": _tensor(datatype=dt, data=data)}
    for data in ([[1, 2], [3]], [None] * 8, [True] * 8, [{"a": 1}] * 8, "abc", 5, [[[0.0] * 8]]):
        yield "POST", V2, {"content": json.dumps(_tensor(data=data)).encode(),
                           "headers": {"content-type": "application/json"}}
    yield "POST", V2, {"content": json.dumps(_tensor(datatype="INT64", data=[2**70] * 8)).encode()}
    for params in ({"binary_data_size": 2**62}, {"binary_data_size": -1}, {"binary_data_size": 1.5},
                   "x", [1]):
        head = json.dumps({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 8],
                                       "parameters": params}]}).encode()
        yield "POST", V2, {"content": head + b"\0" * 32,
                           "headers": {"Inference-Header-Content-Length": str(len(head))}}
    head = json.dumps(_tensor()).encode()
    for hlen in ("-1", "abc", "99999999999999999999", str(len(head) + 5), "1.5", ""):
        yield "POST", V2, {"content": head, "headers": {"Inference-Header-Content-Length": hlen}}
    for encoding in ("gzip", "deflate", "br", "gzip, deflate"):
        yield "POST", V2, {"content": b"\x1f\x8bnot gzip", "headers": {"Content-Encoding": encoding}}
    yield "POST", V2, {"content": gzip.compress(b"\0" * (32 << 20)), "headers": {"Content-Encoding": "gzip"}}
    for outputs in ([{"name": "x_hat", "parameters": {"binary_data": "yes"}}], [{"name": "nope"}],
                    [{"name": 5}], {"a": 1}, [{"name": "x_hat", "parameters": {"classification": -1}}]):
        yield "POST", V2, {"json": {**_tensor(), "outputs": outputs}}
    for name in ("vae-digits.nope", "vae-digits", ".decoder", "vae-digits..decoder", "a" * 5000):
        yield "POST", f"/v2/models/{name}/infer", {"json": _tensor()}
        yield "GET", f"/v2/models/{name}", {}
    for version in ("0", "-1", "99999999999999999999", "1.0", "abc"):
        yield "POST", f"/v2/models/{MODEL}.decoder/versions/{version}/infer", {"json": _tensor()}
        yield "GET", f"/v2/models/{MODEL}.decoder/versions/{version}/ready", {}

    v1 = f"/v1/models/{MODEL}"
    for body in ({"n": 2**63}, {"n": -1}, {"n": 1.5}, {"seed": -1}, {"seed": 2**64}, {"seed": 2**200},
                 {"temperature": 1e308}, {"temperature": 1e-320}, {"n": 1, "format": "gif"}, {"n": 0}):
        yield "POST", f"{v1}/sample", {"json": body}
    for literal in (b"NaN", b"Infinity", b"1e999"):
        yield "POST", f"{v1}/sample", {"content": b'{"temperature": ' + literal + b"}",
                                       "headers": {"content-type": "application/json"}}
    for query in ("scale=0", "scale=17", "scale=16", "columns=0", "columns=100000", "columns=abc"):
        yield "POST", f"{v1}/sample?{query}", {"json": {"n": 64}, "headers": {"Accept": "image/png"}}
    for body in ({"start": Z, "end": Z, "steps": 10**9}, {"start": [1e-45] * 8, "end": [-1e-45] * 8,
                 "method": "slerp"}, {"start": [3e38] * 8, "end": [-3e38] * 8, "method": "slerp"},
                 {"start": [1e300] * 8, "end": Z}, {"start": Z[:7], "end": Z}, {"start": [], "end": []},
                 {"start": "abc", "end": Z}):
        yield "POST", f"{v1}/interpolate", {"json": body}
    for latents in ([[3e38] * 8], [[1e300] * 8], [], [[]], [[0] * 8] * 5):
        for fmt in ("json", "png"):
            yield "POST", f"{v1}/decode", {"json": {"latents": latents, "format": fmt}}
        yield "POST", f"{v1}/decode", {"json": {"latents": latents}, "headers": {"Accept": "image/png"}}
    tile = [[0.0] * 8] * 8
    for images in ([tile], [[tile]] * 3, [tile[:7] + [[0.0] * 7]], [[[[[0.0]]]]], [""],
                   ["data:image/png;base64,"], ["!!!"], [None], [[]], 5, [[[3e38] * 8] * 8],
                   [[[1e300] * 8] * 8]):
        for op in ("encode", "reconstruct", "denoise", "anomaly-score"):
            yield "POST", f"{v1}/{op}", {"json": {"images": images}}
    for noise in ({"kind": "gaussian", "level": 1e308}, {"kind": "saltpepper", "level": 2},
                  {"kind": "gaussian", "level": 0.1, "seed": 2**70}):
        yield "POST", f"{v1}/denoise", {"json": {"images": [tile], "noise": noise}}
    for path in ("/v1/models/" + "a" * 10000, f"{v1}/versions/0/sample", f"{v1}/versions/99999999999/sample",
                 f"{v1}/versions/-1/sample"):
        yield "POST", path, {"json": {"n": 1}}
        yield "GET", path, {}


CASES = list(_cases())


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store=STORE)), raise_server_exceptions=False) as c:
        yield c


def _null_in_a_list(doc: Any) -> bool:
    if isinstance(doc, list):
        return any(x is None or _null_in_a_list(x) for x in doc)
    if isinstance(doc, dict):
        return any(_null_in_a_list(x) for x in doc.values())
    return False


def test_odd_requests_get_4xx_or_2xx_and_numpy_never_warns(client: TestClient) -> None:
    assert len(CASES) > 150
    failures = []
    for method, path, kwargs in CASES:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            r = client.request(method, path, **kwargs)
        numeric = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        if r.status_code < 300 and r.headers.get("content-type", "").startswith("application/json"):
            if _null_in_a_list(r.json()):
                numeric.append("a null among numbers in the answer")
        if r.status_code >= 500 or numeric:
            failures.append(f"{method} {path[:80]} {str(kwargs)[:160]} -> {r.status_code} {r.text[:160]} "
                            f"{numeric}")
    assert not failures, "\n".join(failures)
