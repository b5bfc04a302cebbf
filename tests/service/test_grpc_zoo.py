"""Every graph of the shipped zoo (models_store/) through tritonclient.grpc, sync and asyncio, against a real
`python -m service` process with gRPC on: the same outputs as tritonclient.http gets from the same server, at
batch 1 and a larger batch, and onnxruntime's in-process. Then the process itself: a gRPC port that is taken
stops it at startup with a message naming the setting, and SIGTERM drops gRPC readiness before it exits.

Skipped, saying why, when the store holds no models (a fresh checkout before `make models`)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from hardkit import Server, build_model, free_port, serve
from tritonclient.utils import InferenceServerException

pytestmark = [pytest.mark.e2e]

ZOO = Path(__file__).resolve().parents[2] / "models_store"


def _feed_shape(path: Path, graph: str, dims: list[int]) -> tuple[int, ...]:
    """A tensor's shape without the batch dimension. Fully convolutional graphs have dynamic sizes: an image
    of the manifest's size for the encoder and critic (a segmenter's pair of images: its own channels), the
    encoder's code of that image for the decoder."""
    if all(d >= 0 for d in dims[1:]):
        return tuple(dims[1:])
    m = json.loads((path.parent / "manifest.json").read_text())
    image = np.zeros((1, *m["data"]["shape"]), np.float32)
    if graph != "decoder":
        return (dims[1] if dims[1] > 0 else image.shape[1], *image.shape[2:])
    encoder = path.parent / m["graphs"]["encoder"]["file"]
    return tuple(next(iter(_ort(encoder, {m["graphs"]["encoder"]["inputs"][0]["name"]: image}).values()))
                 .shape[1:])


def _zoo_graphs() -> list[tuple[str, str, Path]]:
    """(V2 name, version, onnx path) for every graph of every published version."""
    out = []
    for mpath in sorted(ZOO.glob("*/*/manifest.json")):
        if not mpath.parent.name.isdigit():
            continue
        m = json.loads(mpath.read_text())
        for g, spec in sorted(m["graphs"].items()):
            out.append((f"{m['name']}.{g}", str(m["version"]), mpath.parent / spec["file"]))
    return out


GRAPHS = _zoo_graphs()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    port = free_port()
    with serve(ZOO, tmp_path_factory.mktemp("grpc-zoo"), grpc_port=port) as server:
        yield server, f"127.0.0.1:{port}"


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _inputs(module: Any, feeds: dict[str, np.ndarray]) -> list[Any]:
    out = []
    for n, a in feeds.items():
        i = module.InferInput(n, list(a.shape), "FP32")
        i.set_data_from_numpy(a)
        out.append(i)
    return out


@pytest.mark.skipif(not GRAPHS, reason=f"no published models under {ZOO} (run `make models`)")
@pytest.mark.parametrize("v2_name, version, path", GRAPHS or [("-", "-", Path("-"))],
                         ids=[f"{n}@{v}" for n, v, _ in GRAPHS] or ["none"])
def test_zoo_graph_over_grpc_equals_http(zoo: tuple[Server, str], v2_name: str, version: str,
                                         path: Path) -> None:
    server, address = zoo
    h = httpclient.InferenceServerClient(server.base.removeprefix("http://"))
    g = grpcclient.InferenceServerClient(address)
    try:
        meta = h.get_model_metadata(v2_name, version)
        gmeta = g.get_model_metadata(v2_name, version, as_json=True)
        assert gmeta["name"] == meta["name"] and gmeta["versions"] == meta["versions"]
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in gmeta["inputs"]] == \
            [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]]
        assert g.is_model_ready(v2_name, version)
        for rows in (1, 9):
            rng = np.random.default_rng(rows)
            graph = v2_name.rsplit(".", 1)[1]
            feeds = {t["name"]: rng.random((rows, *_feed_shape(path, graph, t["shape"])), dtype=np.float32)
                     for t in meta["inputs"]}
            want = h.infer(v2_name, _inputs(httpclient, feeds), model_version=version)
            got = g.infer(v2_name, _inputs(grpcclient, feeds), model_version=version)

            async def aio(feeds: dict[str, np.ndarray] = feeds) -> Any:
                async with grpcaio.InferenceServerClient(address) as c:
                    return await c.infer(v2_name, _inputs(grpcaio, feeds), model_version=version)

            got_aio = asyncio.run(aio())
            expected = _ort(path, feeds)
            assert [o.name for o in got.get_response().outputs] == [t["name"] for t in meta["outputs"]]
            for name, e in expected.items():
                http_out = want.as_numpy(name)
                assert http_out.shape == e.shape and http_out.dtype == e.dtype
                np.testing.assert_array_equal(got.as_numpy(name), http_out)
                np.testing.assert_array_equal(got_aio.as_numpy(name), http_out)
                np.testing.assert_allclose(got.as_numpy(name), e, rtol=1e-5, atol=1e-5)
    finally:
        h.close()
        g.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc-tiny") / "models_store"
    build_model(root, "tiny-ae", kind="ae", dim=4, seed=0)
    return root


@pytest.mark.slow
def test_a_taken_grpc_port_stops_the_server_at_startup(tiny: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        why = f"LATENTSERVE_GRPC_PORT={port}: cannot listen on 127.0.0.1:{port}"
        with pytest.raises(RuntimeError, match=why):
            with serve(tiny, tmp_path, grpc_port=port):
                pass


@pytest.mark.slow
def test_sigterm_drops_grpc_readiness_then_the_process_exits(tiny: Path, tmp_path: Path) -> None:
    port = free_port()
    with serve(tiny, tmp_path, grpc_port=port, shutdown_drain_s=1.0, shutdown_grace_s=4.0) as server:
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            assert g.is_server_ready() and g.is_model_ready("tiny-ae.decoder")
            z = _inputs(grpcclient, {"z": np.zeros((1, 4), np.float32)})
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 0.8
            while g.is_server_ready() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not g.is_server_ready()
            assert g.infer("tiny-ae.decoder", z).as_numpy("x_hat").shape == (1, 1, 8, 8)  # still served
            assert server.proc.wait(10) in (0, -signal.SIGTERM)
            with pytest.raises(InferenceServerException):
                g.is_server_live()
        finally:
            g.close()
    assert "gRPC Open Inference Protocol on" in server.logs()
