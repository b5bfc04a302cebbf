"""The gRPC Open Inference Protocol through the real tritonclient.grpc (sync and asyncio), against the app
served by uvicorn in a thread with gRPC on its own port, beside tritonclient.http on the same app.

What it proves: gRPC answers what HTTP answers (metadata, configuration, index, outputs), typed and raw
contents both work, errors carry Triton's status codes, the keys, the message limit, the metrics and the
repository state are HTTP's, and a shutdown drains gRPC calls within the grace period."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from storebuilder import build_model
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException
from v2kit import free_port, serve

from service.http.drain import mark_draining
from service.http.replica import replica_id
from service.settings import Settings

ADMIN, KEY = "grpc-admin-key", "grpc-api-key"


@contextlib.contextmanager
def grpc_serve(settings: Settings) -> Iterator[tuple[str, str, Any]]:
    """The app under uvicorn in a thread, gRPC on a free port; yields (http address, grpc address, app)."""
    port = free_port()
    with serve(settings.model_copy(update={"grpc_port": port})) as (url, app):
        yield url, f"127.0.0.1:{port}", app


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpcstore") / "models_store"
    build_model(root, "tiny-ae", kind="ae", dim=4, seed=0)
    build_model(root, "tiny-ae", 2, kind="ae", dim=4, seed=5)
    build_model(root, "tiny-vae", kind="vae", dim=3, seed=1)
    build_model(root, "tiny-gan", kind="gan", dim=5, seed=2)
    return root


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[tuple[str, str, Any]]:
    settings = Settings(store=store, admin_key=ADMIN, max_body_bytes=64 * 1024)
    with grpc_serve(settings) as s:
        yield s


@pytest.fixture
def clients(server: tuple[str, str, Any]) -> Iterator[tuple[grpcclient.InferenceServerClient,
                                                            httpclient.InferenceServerClient]]:
    g, h = grpcclient.InferenceServerClient(server[1]), httpclient.InferenceServerClient(server[0])
    yield g, h
    g.close()
    h.close()


def _status(err: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(err.value.status())


def _inputs(module: Any, feeds: dict[str, np.ndarray]) -> list[Any]:
    out = []
    for n, a in feeds.items():
        i = module.InferInput(n, list(a.shape), "FP32")
        i.set_data_from_numpy(a)
        out.append(i)
    return out


GRAPHS = [("tiny-vae.encoder", ""), ("tiny-ae.decoder", "1"), ("tiny-ae.decoder", "2"),
          ("tiny-gan.critic", ""), ("tiny-gan.decoder", "")]


def test_health_metadata_config_and_index_are_https(clients: tuple[Any, Any]) -> None:
    g, h = clients
    assert g.is_server_live() and g.is_server_ready()
    meta = g.get_server_metadata(as_json=True)
    assert meta["name"] == "latentserve" and meta["extensions"] == h.get_server_metadata()["extensions"]
    for name, version in GRAPHS:
        gm, hm = g.get_model_metadata(name, version), h.get_model_metadata(name, version)
        assert (gm.name, list(gm.versions), gm.platform) == (hm["name"], hm["versions"], hm["platform"])
        for ours, theirs in ((gm.inputs, hm["inputs"]), (gm.outputs, hm["outputs"])):
            assert [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ours] == theirs
        assert g.is_model_ready(name, version)
        cfg, hcfg = g.get_model_config(name, version).config, h.get_model_config(name, version)
        assert (cfg.name, cfg.platform, cfg.backend, cfg.max_batch_size) == \
            (hcfg["name"], hcfg["platform"], hcfg["backend"], hcfg["max_batch_size"])
        for ours, theirs in ((cfg.input, hcfg["input"]), (cfg.output, hcfg["output"])):
            assert [{"name": t.name, "data_type": model_config_pb2.DataType.Name(t.data_type),
                     "dims": list(t.dims)} for t in ours] == theirs
        assert cfg.dynamic_batching.default_queue_policy.max_queue_size == \
            hcfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"]
    index = g.get_model_repository_index(as_json=True)["models"]
    assert sorted((e["name"], e["version"], e["state"]) for e in index) == \
        sorted((e["name"], e["version"], e["state"]) for e in h.get_model_repository_index())
    assert g.get_model_repository_index().models and all(m.state == "READY" for m in
                                                         g.get_model_repository_index().models)


@pytest.mark.parametrize("rows", [1, 7])
@pytest.mark.parametrize("name, version", GRAPHS)
def test_sync_and_aio_outputs_equal_https(server: tuple[str, str, Any], clients: tuple[Any, Any], name: str,
                                          version: str, rows: int) -> None:
    g, h = clients
    meta = h.get_model_metadata(name, version)
    rng = np.random.default_rng(rows)
    feeds = {t["name"]: rng.random((rows, *t["shape"][1:]), dtype=np.float32) for t in meta["inputs"]}
    want = h.infer(name, _inputs(httpclient, feeds), model_version=version)
    got = g.infer(name, _inputs(grpcclient, feeds), model_version=version, request_id="g1")
    assert got.get_response().id == "g1" and got.get_response().model_version == (version or "1")

    async def aio() -> Any:
        async with grpcaio.InferenceServerClient(server[1]) as c:
            return await c.infer(name, _inputs(grpcaio, feeds), model_version=version)

    got_aio = asyncio.run(aio())
    for t in meta["outputs"]:
        expected = want.as_numpy(t["name"])
        assert expected.shape[0] == rows
        np.testing.assert_array_equal(got.as_numpy(t["name"]), expected)
        np.testing.assert_array_equal(got_aio.as_numpy(t["name"]), expected)


def _stub(address: str) -> tuple[grpc.Channel, service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_typed_contents_in_typed_contents_out(server: tuple[str, str, Any], clients: tuple[Any, Any]) -> None:
    """A client that never learnt raw bytes (tritonclient's own messages, built by hand)."""
    z = np.random.default_rng(4).normal(size=(2, 4)).astype(np.float32)
    req = service_pb2.ModelInferRequest(model_name="tiny-ae.decoder", model_version="1", id="typed")
    t = req.inputs.add(name="z", datatype="FP32", shape=[2, 4])
    t.contents.fp32_contents.extend(z.ravel().tolist())
    channel, stub = _stub(server[1])
    with channel:
        resp, call = stub.ModelInfer.with_call(req, timeout=10)
    assert not resp.raw_output_contents and resp.id == "typed"
    assert dict(call.trailing_metadata())["x-served-by"] == replica_id()  # as HTTP's X-Served-By
    [out] = resp.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("x_hat", "FP32", [2, 1, 8, 8])
    want = clients[1].infer("tiny-ae.decoder", _inputs(httpclient, {"z": z}), model_version="1")
    np.testing.assert_array_equal(np.array(out.contents.fp32_contents, np.float32).reshape(2, 1, 8, 8),
                                  want.as_numpy("x_hat"))


def _code(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details(), dict(exc.trailing_metadata() or ())
    raise AssertionError("the call succeeded")


def test_errors_carry_tritons_status_codes(server: tuple[str, str, Any]) -> None:
    channel, stub = _stub(server[1])

    def infer(name: str = "tiny-ae.decoder", version: str = "", dt: str = "FP32", shape: tuple = (1, 4),
              inp: str = "z", raw: bytes | None = None, output: str | None = None) -> Any:
        r = service_pb2.ModelInferRequest(model_name=name, model_version=version)
        r.inputs.add(name=inp, datatype=dt, shape=list(shape))
        r.raw_input_contents.append(raw if raw is not None else b"\0" * (4 * int(np.prod(shape))))
        if output:
            r.outputs.add(name=output)
        return lambda: stub.ModelInfer(r, timeout=10)

    nf, bad = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
    with channel:
        assert _code(infer("nope.decoder"))[0] == nf
        assert _code(infer("tiny-ae.nograph"))[0] == nf
        assert _code(infer("tiny-ae"))[0] == nf
        for version in ("9", "01", "１", "-1", "1.0"):  # ASCII digits without a leading zero, or empty
            assert _code(infer(version=version))[0] == nf, version
        code, detail, _ = _code(infer("../etc.decoder"))
        assert code == nf and detail == "invalid model name"
        unknown = service_pb2.ModelMetadataRequest(name="nope.encoder")
        assert _code(lambda: stub.ModelMetadata(unknown))[0] == nf
        assert _code(lambda: stub.ModelReady(service_pb2.ModelReadyRequest(name="tiny-ae.decoder",
                                                                           version="3")))[0] == nf
        code, detail, _ = _code(infer(shape=(1, 3)))
        assert code == bad and "unexpected shape" in detail
        code, detail, _ = _code(infer(dt="INT32"))
        assert code == bad and "unexpected datatype INT32" in detail  # no silent casts
        code, detail, _ = _code(infer(inp="x"))
        assert code == bad and "expects inputs" in detail
        assert _code(infer(output="nope"))[0] == bad
        assert _code(infer(raw=b"\0" * 3))[0] == bad
        code, detail, _ = _code(infer(shape=(4200, 4)))  # 67 KB: over LATENTSERVE_MAX_BODY_BYTES (64 KiB)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        other_repo = service_pb2.RepositoryIndexRequest(repository_name="x")
        assert _code(lambda: stub.RepositoryIndex(other_repo))[0] == bad
        for method in ("ModelStatistics", "SystemSharedMemoryStatus", "CudaSharedMemoryStatus",
                       "TraceSetting", "LogSettings"):
            request = getattr(service_pb2, f"{method}Request")()
            assert _code(lambda m=method, r=request: getattr(stub, m)(r, timeout=10))[0] == \
                grpc.StatusCode.UNIMPLEMENTED, method
        stream = stub.ModelStreamInfer(iter([service_pb2.ModelInferRequest(model_name="tiny-ae.decoder")]))
        assert _code(lambda: list(stream))[0] == grpc.StatusCode.UNIMPLEMENTED


def test_unload_over_grpc_is_seen_over_http_and_load_puts_it_back(server: tuple[str, str, Any],
                                                                  clients: tuple[Any, Any]) -> None:
    g, h = clients
    admin = {"authorization": f"Bearer {ADMIN}"}
    name = "tiny-vae.decoder"
    channel, stub = _stub(server[1])
    z = np.zeros((1, 3), np.float32)
    try:
        with pytest.raises(InferenceServerException) as err:
            g.unload_model(name)  # no key
        assert "UNAUTHENTICATED" in _status(err)
        with pytest.raises(InferenceServerException) as err:
            g.unload_model(name, headers={"authorization": f"Bearer {KEY}"})
        assert "UNAUTHENTICATED" in _status(err)
        g.unload_model(name, headers=admin)
        assert not g.is_model_ready(name) and not h.is_model_ready(name)
        [entry] = [m for m in g.get_model_repository_index().models if m.name == name]
        assert (entry.state, entry.reason) == ("UNAVAILABLE", "unloaded")
        assert name not in {m.name for m in g.get_model_repository_index(
            as_json=False).models if m.state == "READY"}
        r = service_pb2.ModelInferRequest(model_name=name)
        r.inputs.add(name="z", datatype="FP32", shape=[1, 3])
        r.raw_input_contents.append(z.tobytes())
        with channel:
            code, detail, trailers = _code(lambda: stub.ModelInfer(r, timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE and "unloaded" in detail
        assert trailers["retry-after"] == "1" and trailers["grpc-retry-pushback-ms"] == "1000"
        assert trailers["x-served-by"] == replica_id()
        with pytest.raises(InferenceServerException) as err:  # never from a config, path, URL or files
            g.load_model(name, headers=admin, config='{"backend": "python"}')
        assert "INVALID_ARGUMENT" in _status(err)
        with pytest.raises(InferenceServerException) as err:
            g.load_model("nope.decoder", headers=admin)
        assert "NOT_FOUND" in _status(err)
        h.load_model(name, headers=admin)  # back over HTTP: one catalog
        assert g.is_model_ready(name)
        assert g.infer(name, _inputs(grpcclient, {"z": z})).as_numpy("x_hat").shape == (1, 1, 8, 8)
    finally:
        h.load_model(name, headers=admin)


def test_keys_are_https(store: Path) -> None:
    """LATENTSERVE_API_KEYS guard every method but ServerLive and ServerReady; without an admin key,
    load and unload do not exist."""
    with grpc_serve(Settings(store=store, api_keys=[KEY])) as (_, address, _app):
        g = grpcclient.InferenceServerClient(address)
        try:
            assert g.is_server_live() and g.is_server_ready()
            for call in (lambda **kw: g.get_model_metadata("tiny-ae.decoder", **kw),
                         lambda **kw: g.get_server_metadata(**kw),
                         lambda **kw: g.is_model_ready("tiny-ae.decoder", **kw),
                         lambda **kw: g.get_model_repository_index(**kw)):
                for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": KEY},
                                {"x-api-key": "wrong"}):
                    with pytest.raises(InferenceServerException) as err:
                        call(headers=headers)
                    assert "UNAUTHENTICATED" in _status(err), headers
                call(headers={"authorization": f"Bearer {KEY}"})
                call(headers={"x-api-key": KEY})
            with pytest.raises(InferenceServerException) as err:
                g.unload_model("tiny-ae.decoder", headers={"authorization": f"Bearer {KEY}"})
            assert "UNIMPLEMENTED" in _status(err)
        finally:
            g.close()


def _samples(http: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"http://{http}/metrics").text
    return {(x.name, tuple(sorted(x.labels.items()))): x.value
            for f in text_string_to_metric_families(text) for x in f.samples}


def test_grpc_requests_count_in_the_triton_metrics(server: tuple[str, str, Any],
                                                   clients: tuple[Any, Any]) -> None:
    g, _ = clients
    lab = (("model", "tiny-ae.decoder"), ("version", "2"))
    other = (lab[0], ("reason", "OTHER"), lab[1])
    before = _samples(server[0])
    good = _inputs(grpcclient, {"z": np.zeros((3, 4), np.float32)})
    for _ in range(5):
        g.infer("tiny-ae.decoder", good, model_version="2")
    with pytest.raises(InferenceServerException):
        g.infer("tiny-ae.decoder", _inputs(grpcclient, {"q": np.zeros((1, 4), np.float32)}),
                model_version="2")
    after = _samples(server[0])

    def grew(key: tuple[str, tuple]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew(("nv_inference_request_success", lab)) == 5
    assert grew(("nv_inference_count", lab)) == 15
    assert 1 <= grew(("nv_inference_exec_count", lab)) <= 5
    assert grew(("nv_inference_request_failure", other)) == 1
    ok = (("code", "OK"), ("method", "ModelInfer"))
    assert grew(("latentserve_grpc_request_duration_seconds_count", ok)) == 5
    assert grew(("latentserve_grpc_request_duration_seconds_count",
                 (("code", "INVALID_ARGUMENT"), ("method", "ModelInfer")))) == 1


class _Slow:
    """A graph session that waits for `gate` (set by the test) before it runs."""

    def __init__(self, inner: Any, gate: threading.Event, started: threading.Event) -> None:
        self.inner, self.input_names, self.output_names = inner, inner.input_names, inner.output_names
        self.gate, self.started = gate, started

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.started.set()
        self.gate.wait(10)
        return self.inner.run(feeds)  # type: ignore[no-any-return]


def _slow_decoder(app: Any, model: str) -> tuple[threading.Event, threading.Event]:
    rt, gate, started = app.state.runtime, threading.Event(), threading.Event()
    real = rt.session
    slow = _Slow(real(app.state.store.get(model), "decoder"), gate, started)
    rt.session = lambda mv, graph, *at: slow if graph == "decoder" else real(mv, graph, *at)
    return gate, started


def _request(name: str, dim: int) -> Any:
    r = service_pb2.ModelInferRequest(model_name=name)
    r.inputs.add(name="z", datatype="FP32", shape=[1, dim])
    r.raw_input_contents.append(np.zeros((1, dim), "<f4").tobytes())
    return r


def test_a_full_queue_is_unavailable_with_a_retry_hint(tmp_path: Path) -> None:
    """One slow execution holds the graph; a queue of one then refuses the third call at once, over gRPC as
    over HTTP (one batcher), and a call is counted in flight beside HTTP's."""
    build_model(tmp_path, "slow-ae", kind="ae", dim=4, seed=0)
    settings = Settings(store=tmp_path, batching=True, max_batch_size=1, max_queue_delay_us=0, queue_size=1,
                        batch_instances=1, warmup=False)
    with grpc_serve(settings) as (url, address, app):
        gate, started = _slow_decoder(app, "slow-ae")

        async def main() -> tuple[Any, ...]:
            async with grpc.aio.insecure_channel(address) as ch:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
                first = asyncio.ensure_future(stub.ModelInfer(_request("slow-ae.decoder", 4), timeout=20))
                while not started.is_set():
                    await asyncio.sleep(0.005)
                in_flight = app.state.metrics.in_flight
                second = asyncio.ensure_future(stub.ModelInfer(_request("slow-ae.decoder", 4), timeout=20))
                await asyncio.sleep(0.2)  # the second now waits in the queue (size 1)
                try:
                    await stub.ModelInfer(_request("slow-ae.decoder", 4), timeout=20)
                    third: Any = None
                except grpc.aio.AioRpcError as exc:
                    third = exc
                async with httpx.AsyncClient(base_url=f"http://{url}") as c:
                    v1 = await c.post("/v1/models/slow-ae/decode", json={"latents": [[0, 0, 0, 0]]})
                gate.set()
                return third, v1, in_flight, await first, await second

        third, v1, in_flight, first, second = asyncio.run(main())
    assert in_flight == 1
    assert third is not None and third.code() == grpc.StatusCode.UNAVAILABLE and "full" in third.details()
    trailers = dict(third.trailing_metadata())
    assert trailers["retry-after"] == "1" and trailers["grpc-retry-pushback-ms"] == "1000"
    assert v1.status_code == 503  # /v1 shares the batcher
    assert first.outputs[0].name == "x_hat" and second.outputs[0].name == "x_hat"


def test_a_call_past_the_request_timeout_is_deadline_exceeded(tmp_path: Path) -> None:
    build_model(tmp_path, "slow-ae", kind="ae", dim=4, seed=0)
    with grpc_serve(Settings(store=tmp_path, request_timeout_s=0.3, warmup=False)) as (_, address, app):
        gate, _ = _slow_decoder(app, "slow-ae")
        channel, stub = _stub(address)
        try:
            with channel:
                code, detail, _ = _code(lambda: stub.ModelInfer(_request("slow-ae.decoder", 4), timeout=10))
        finally:
            gate.set()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "0.3 s" in detail


def test_a_shutdown_drops_readiness_then_drains_calls_in_flight(tmp_path: Path) -> None:
    """After the shutdown signal ServerReady and ModelReady say false while calls are still served; when the
    drain window ends gRPC takes no new call, and the one in flight finishes."""
    build_model(tmp_path, "slow-ae", kind="ae", dim=4, seed=0)
    settings = Settings(store=tmp_path, warmup=False, shutdown_drain_s=0.5, shutdown_grace_s=4.0)
    with grpc_serve(settings) as (_, address, app):
        g = grpcclient.InferenceServerClient(address)
        try:
            assert g.is_server_ready()
            gate, started = _slow_decoder(app, "slow-ae")
            channel, stub = _stub(address)
            with channel:
                pending = stub.ModelInfer.future(_request("slow-ae.decoder", 4), timeout=20)
                assert started.wait(10)
                mark_draining(app)  # what the server's SIGTERM handler does
                assert not g.is_server_ready() and not g.is_model_ready("slow-ae.decoder")
                assert g.is_server_live()
                time.sleep(0.8)  # past the drain window: gRPC is stopping
                with pytest.raises(InferenceServerException):
                    g.is_server_live()
                gate.set()
                assert pending.result(10).outputs[0].name == "x_hat"
        finally:
            g.close()
