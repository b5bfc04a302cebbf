"""The V2 endpoints through the real tritonclient (sync and async, binary and JSON) against a live server.

The store is the tiny fixture set (onnx.helper graphs); test_v2_zoo.py runs the shipped zoo the same way.
Expected outputs always come from onnxruntime in-process on the same ONNX file.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from prometheus_client.parser import text_string_to_metric_families
from storebuilder import build_model
from tritonclient.utils import InferenceServerException
from v2kit import serve

from service.settings import Settings

ADMIN = "test-admin-key"


@pytest.fixture(scope="module")
def v2_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("v2store") / "models_store"
    build_model(root, "tiny-ae", kind="ae", dim=4, seed=0)
    build_model(root, "tiny-ae", 2, kind="ae", dim=4, seed=5)
    build_model(root, "tiny-vae", kind="vae", dim=3, seed=1)
    build_model(root, "tiny-gan", kind="gan", dim=5, seed=2)
    return root


@pytest.fixture(scope="module", params=[False, True], ids=["unbatched", "batched"])
def server(request: pytest.FixtureRequest, v2_store: Path) -> Iterator[tuple[str, Any]]:
    settings = Settings(store=v2_store, batching=request.param, max_queue_delay_us=500, admin_key=ADMIN)
    with serve(settings) as (url, app):
        yield url, app


@pytest.fixture
def client(server: tuple[str, Any]) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server[0])
    yield c
    c.close()


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _inputs(feeds: dict[str, np.ndarray], binary: bool) -> list[httpclient.InferInput]:
    out = []
    for n, a in feeds.items():
        i = httpclient.InferInput(n, list(a.shape), "FP32")
        i.set_data_from_numpy(a, binary_data=binary)
        out.append(i)
    return out


def test_server_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "latentserve" and "binary_tensor_data" in meta["extensions"]
    m = client.get_model_metadata("tiny-vae.encoder")
    assert m["name"] == "tiny-vae.encoder" and m["platform"] == "onnxruntime_onnx" and m["versions"] == ["1"]
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert m["outputs"] == [{"name": "z_mean", "datatype": "FP32", "shape": [-1, 3]},
                            {"name": "z_logvar", "datatype": "FP32", "shape": [-1, 3]}]
    assert client.get_model_metadata("tiny-ae.decoder")["versions"] == ["1", "2"]
    assert client.get_model_metadata("tiny-ae.decoder", "1")["versions"] == ["1"]
    assert client.is_model_ready("tiny-gan.critic") and client.is_model_ready("tiny-ae.decoder", "2")
    cfg = client.get_model_config("tiny-ae.decoder")
    assert cfg["input"] == [{"name": "z", "data_type": "TYPE_FP32", "dims": [4]}]
    index = client.get_model_repository_index()
    names = {(e["name"], e["version"]) for e in index}
    assert {("tiny-gan.critic", "1"), ("tiny-ae.decoder", "1"), ("tiny-ae.decoder", "2")} <= names
    assert all(e["state"] == "READY" for e in index)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("v2_name, version", [("tiny-vae.encoder", ""), ("tiny-ae.decoder", "1"),
                                              ("tiny-ae.decoder", "2"), ("tiny-gan.critic", "")])
def test_sync_infer_equals_onnxruntime(client: httpclient.InferenceServerClient, v2_store: Path,
                                       v2_name: str, version: str, binary: bool) -> None:
    model, graph = v2_name.split(".")
    meta = client.get_model_metadata(v2_name, version)
    rng = np.random.default_rng(7)
    feeds = {t["name"]: rng.random((3, *t["shape"][1:]), dtype=np.float32) for t in meta["inputs"]}
    outs = [httpclient.InferRequestedOutput(t["name"], binary_data=binary) for t in meta["outputs"]]
    res = client.infer(v2_name, _inputs(feeds, binary), model_version=version, outputs=outs, request_id="r1")
    expected = _ort(v2_store / model / (version or "1") / f"{graph}.onnx", feeds)
    assert res.get_response()["id"] == "r1"
    assert res.get_response()["model_version"] == (version or "1")
    for n, e in expected.items():
        np.testing.assert_allclose(res.as_numpy(n), e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo", ["gzip", "deflate"])
def test_compressed_request_and_response(client: httpclient.InferenceServerClient, v2_store: Path,
                                         algo: str) -> None:
    z = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
    res = client.infer("tiny-ae.decoder", _inputs({"z": z}, True), model_version="1",
                       request_compression_algorithm=algo, response_compression_algorithm=algo)
    expected = _ort(v2_store / "tiny-ae/1/decoder.onnx", {"z": z})["x_hat"]
    np.testing.assert_allclose(res.as_numpy("x_hat"), expected, rtol=1e-5, atol=1e-6)


def test_output_selection_and_default_binary(client: httpclient.InferenceServerClient) -> None:
    x = np.random.default_rng(4).random((2, 1, 8, 8), dtype=np.float32)
    only = client.infer("tiny-vae.encoder", _inputs({"x": x}, True),
                        outputs=[httpclient.InferRequestedOutput("z_logvar")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["z_logvar"]
    assert only.as_numpy("z_mean") is None
    every = client.infer("tiny-vae.encoder", _inputs({"x": x}, False))  # no outputs: all, in binary
    assert all("binary_data_size" in o["parameters"] for o in every.get_response()["outputs"])
    np.testing.assert_array_equal(every.as_numpy("z_logvar"), only.as_numpy("z_logvar"))


def test_async_client_binary_and_json(server: tuple[str, Any], v2_store: Path) -> None:
    z = np.random.default_rng(5).normal(size=(4, 4)).astype(np.float32)
    expected = _ort(v2_store / "tiny-ae/2/decoder.onnx", {"z": z})["x_hat"]

    async def main() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(server[0]) as c:
            assert await c.is_server_ready()
            assert (await c.get_model_metadata("tiny-ae.decoder"))["inputs"][0]["name"] == "z"
            got = []
            for binary in (True, False):
                i = aioclient.InferInput("z", list(z.shape), "FP32")
                i.set_data_from_numpy(z, binary_data=binary)
                o = aioclient.InferRequestedOutput("x_hat", binary_data=binary)
                got.append((await c.infer("tiny-ae.decoder", [i], outputs=[o])).as_numpy("x_hat"))
            return got

    for g in asyncio.run(main()):
        np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)


def test_200_concurrent_async_requests_get_their_own_rows(server: tuple[str, Any], v2_store: Path) -> None:
    rng = np.random.default_rng(11)
    zs = [rng.normal(size=(1 + i % 3, 5)).astype(np.float32) for i in range(200)]
    sess_path = v2_store / "tiny-gan/1/decoder.onnx"
    expected = _ort(sess_path, {"z": np.concatenate(zs)})["x_hat"]

    async def main() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(server[0], conn_limit=200) as c:
            async def one(z: np.ndarray) -> np.ndarray:
                i = aioclient.InferInput("z", list(z.shape), "FP32")
                i.set_data_from_numpy(z)
                return (await c.infer("tiny-gan.decoder", [i])).as_numpy("x_hat")
            return await asyncio.gather(*(one(z) for z in zs))

    got = asyncio.run(main())
    start = 0
    for z, g in zip(zs, got, strict=True):
        np.testing.assert_allclose(g, expected[start:start + len(z)], rtol=1e-5, atol=1e-6)
        start += len(z)


def _error(c: httpx.Client, method: str, path: str, status: int, **kw: Any) -> str:
    r = c.request(method, path, **kw)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    return str(body["error"])


def test_errors_follow_triton_mapping(server: tuple[str, Any]) -> None:
    z = {"inputs": [{"name": "z", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
    with httpx.Client(base_url=f"http://{server[0]}") as c:
        assert "unknown model" in _error(c, "GET", "/v2/models/nope.decoder", 404)
        assert "unknown model" in _error(c, "GET", "/v2/models/tiny-ae.nograph", 404)
        _error(c, "GET", "/v2/models/tiny-ae", 404)
        _error(c, "POST", "/v2/models/tiny-ae.decoder/versions/9/infer", 404, json=z)
        _error(c, "POST", "/v2/models/nope.decoder/infer", 404, json=z)
        bad_shape = {"inputs": [{"name": "z", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]}]}
        infer = "/v2/models/tiny-ae.decoder/infer"
        assert "unexpected shape" in _error(c, "POST", infer, 400, json=bad_shape)
        bad_type = {"inputs": [{"name": "z", "shape": [1, 4], "datatype": "INT32", "data": [0, 0, 0, 0]}]}
        assert "datatype" in _error(c, "POST", "/v2/models/tiny-ae.decoder/infer", 400, json=bad_type)
        wrong_name = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
        assert "expects inputs" in _error(c, "POST", "/v2/models/tiny-ae.decoder/infer", 400, json=wrong_name)
        _error(c, "POST", "/v2/models/tiny-ae.decoder/infer", 400, content=b"{not json")
        _error(c, "POST", "/v2/models/tiny-ae.decoder/infer", 400, json={**z, "outputs": [{"name": "nope"}]})
        _error(c, "POST", "/v2/models/tiny-ae.decoder/infer", 400, content=b"{}",
               headers={"Inference-Header-Content-Length": "abc"})
        _error(c, "POST", "/v2/models/tiny-ae.decoder/infer", 400, content=b"garbage",
               headers={"Content-Encoding": "gzip"})
        ok = c.post("/v2/models/tiny-ae.decoder/infer", content=gzip.compress(orjson.dumps(z)),
                    headers={"Content-Encoding": "gzip", "Accept-Encoding": "identity"})
        assert ok.status_code == 200 and len(ok.json()["outputs"][0]["data"]) == 64


def test_nested_json_data_and_id_echo(server: tuple[str, Any], v2_store: Path) -> None:
    z = np.random.default_rng(8).normal(size=(2, 4)).astype(np.float32)
    body = {"id": "abc-1", "inputs": [{"name": "z", "shape": [2, 4], "datatype": "FP32", "data": z.tolist()}]}
    with httpx.Client(base_url=f"http://{server[0]}") as c:
        r = c.post("/v2/models/tiny-ae.decoder/versions/1/infer", json=body)
    assert r.status_code == 200 and "Inference-Header-Content-Length" not in r.headers
    doc = r.json()
    assert doc["id"] == "abc-1" and doc["model_name"] == "tiny-ae.decoder"
    out = doc["outputs"][0]
    assert out["shape"] == [2, 1, 8, 8] and out["datatype"] == "FP32"
    expected = _ort(v2_store / "tiny-ae/1/decoder.onnx", {"z": z})["x_hat"]
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]), expected, rtol=1e-5,
                               atol=1e-6)


def test_unload_and_load_act_in_memory(server: tuple[str, Any]) -> None:
    c = httpclient.InferenceServerClient(server[0])
    auth = {"Authorization": f"Bearer {ADMIN}"}
    try:
        c.unload_model("tiny-vae.decoder", headers=auth)
        assert not c.is_model_ready("tiny-vae.decoder")
        entry = [e for e in c.get_model_repository_index() if e["name"] == "tiny-vae.decoder"][0]
        assert entry["state"] == "UNAVAILABLE"
        i = httpclient.InferInput("z", [1, 3], "FP32")
        i.set_data_from_numpy(np.zeros((1, 3), np.float32))
        with pytest.raises(InferenceServerException) as err:
            c.infer("tiny-vae.decoder", [i])
        assert err.value.status() == "503"
        with pytest.raises(InferenceServerException) as err:  # never from a path, URL or uploaded files
            c.load_model("tiny-vae.decoder", headers=auth, config='{"backend": "python"}')
        assert err.value.status() == "400"
        with pytest.raises(InferenceServerException) as err:
            c.load_model("nope.decoder", headers=auth)
        assert err.value.status() == "404"
        c.load_model("tiny-vae.decoder", headers=auth)
        assert c.is_model_ready("tiny-vae.decoder")
        assert c.infer("tiny-vae.decoder", [i]).as_numpy("x_hat").shape == (1, 1, 8, 8)
    finally:
        c.load_model("tiny-vae.decoder", headers=auth)
        c.close()


def test_metrics_count_requests_and_executions(server: tuple[str, Any]) -> None:
    c = httpclient.InferenceServerClient(server[0])
    z = np.zeros((3, 4), np.float32)
    i = httpclient.InferInput("z", [3, 4], "FP32")
    i.set_data_from_numpy(z)
    for _ in range(4):
        c.infer("tiny-ae.decoder", [i], model_version="2")
    with pytest.raises(InferenceServerException):
        c.infer("tiny-ae.decoder", [httpclient.InferInput("q", [1], "FP32").set_data_from_numpy(
            np.zeros(1, np.float32))], model_version="2")
    c.close()
    text = httpx.get(f"http://{server[0]}/metrics").text
    s = {(x.name, tuple(sorted(x.labels.items()))): x.value
         for f in text_string_to_metric_families(text) for x in f.samples}
    lab = (("model", "tiny-ae.decoder"), ("version", "2"))
    assert s[("nv_inference_request_success", lab)] >= 4
    assert s[("nv_inference_count", lab)] >= 12
    assert 1 <= s[("nv_inference_exec_count", lab)] <= s[("nv_inference_request_success", lab)]
    assert s[("nv_inference_compute_infer_duration_us", lab)] > 0
    assert s[(("nv_inference_request_failure"), (lab[0], ("reason", "OTHER"), lab[1]))] >= 1
    route = (("method", "POST"), ("route", "/v2/models/{model_name}/versions/{model_version}/infer"),
             ("status", "200"))
    assert s[("latentserve_http_request_duration_seconds_count", route)] >= 4


def test_full_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    """One slow execution holds the graph; a queue of one then refuses the third request at once."""
    build_model(tmp_path, "slow-ae", kind="ae", dim=4, seed=0)
    settings = Settings(store=tmp_path, batching=True, max_batch_size=1, max_queue_delay_us=0, queue_size=1,
                        batch_instances=1, warmup=False)  # no estimate: the first execution goes to the pool
    gate, started = threading.Event(), threading.Event()
    with serve(settings) as (url, app):
        rt = app.state.runtime
        real = rt.session

        class Slow:
            def __init__(self, inner: Any) -> None:
                self.inner, self.input_names, self.output_names = inner, inner.input_names, inner.output_names

            def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
                started.set()
                gate.wait(10)
                return self.inner.run(feeds)

        slow = Slow(real(app.state.store.get("slow-ae"), "decoder"))
        rt.session = lambda mv, graph, *at: slow if graph == "decoder" else real(mv, graph, *at)
        body = {"inputs": [{"name": "z", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=f"http://{url}", timeout=20) as c:
                first = asyncio.ensure_future(c.post("/v2/models/slow-ae.decoder/infer", json=body))
                while not started.is_set():
                    await asyncio.sleep(0.005)
                second = asyncio.ensure_future(c.post("/v2/models/slow-ae.decoder/infer", json=body))
                await asyncio.sleep(0.2)  # the second now waits in the queue (size 1)
                third = await c.post("/v2/models/slow-ae.decoder/infer", json=body)
                v1 = await c.post("/v1/models/slow-ae/decode", json={"latents": [[0, 0, 0, 0]]})
                gate.set()
                return [third, v1, await first, await second]

        third, v1, first, second = asyncio.run(main())
    assert third.status_code == 503 and third.headers["retry-after"] == "1"
    assert "full" in third.json()["error"]
    assert v1.status_code == 503 and v1.headers["retry-after"] == "1"  # /v1 shares the batcher
    assert first.status_code == 200 and second.status_code == 200
