"""Every graph of the shipped zoo (models_store/) through tritonclient, sync and async, binary and JSON.

Outputs must equal onnxruntime run in-process on the same file. Skipped, saying why, when the store holds no
models (a fresh checkout before `make models`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from v2kit import serve

from service.settings import Settings

ZOO = Path(__file__).resolve().parents[2] / "models_store"


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
def zoo_server() -> Iterator[str]:
    with serve(Settings(store=ZOO, batching=True)) as (url, app):
        served = {f"{mv.name}.{g}" for mv in app.state.store.all_versions() for g in mv.manifest.graphs}
        missing = {name for name, _, _ in GRAPHS} - served
        assert not missing, f"the server refused shipped graphs {sorted(missing)}: {app.state.store.problems}"
        yield url


def _feeds(meta: dict[str, Any], rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # a fully convolutional graph's height and width are dynamic (-1): 32 is a multiple of its model's
    return {t["name"]: rng.random((rows, *(d if d > 0 else 32 for d in t["shape"][1:])), dtype=np.float32)
            for t in meta["inputs"]}


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not GRAPHS, reason=f"no published models under {ZOO} (run `make models`)")
@pytest.mark.parametrize("v2_name, version, path", GRAPHS or [("-", "-", Path("-"))],
                         ids=[f"{n}@{v}" for n, v, _ in GRAPHS] or ["none"])
def test_zoo_graph_equals_onnxruntime(zoo_server: str, v2_name: str, version: str, path: Path) -> None:
    c = httpclient.InferenceServerClient(zoo_server)
    try:
        meta = c.get_model_metadata(v2_name, version)
        assert all(t["datatype"] == "FP32" and t["shape"][0] == -1 for t in meta["inputs"] + meta["outputs"])
        assert c.is_model_ready(v2_name, version)
        for binary, rows in ((True, 3), (False, 2)):
            feeds = _feeds(meta, rows, seed=rows)
            inputs = []
            for n, a in feeds.items():
                i = httpclient.InferInput(n, list(a.shape), "FP32")
                i.set_data_from_numpy(a, binary_data=binary)
                inputs.append(i)
            outs = [httpclient.InferRequestedOutput(t["name"], binary_data=binary) for t in meta["outputs"]]
            res = c.infer(v2_name, inputs, model_version=version, outputs=outs)
            for n, want in _ort(path, feeds).items():
                _close(res.as_numpy(n), want)
    finally:
        c.close()

    feeds = _feeds(meta, 4, seed=9)

    async def via_aio() -> Any:
        async with aioclient.InferenceServerClient(zoo_server) as ac:
            inputs = []
            for n, a in feeds.items():
                i = aioclient.InferInput(n, list(a.shape), "FP32")
                i.set_data_from_numpy(a)
                inputs.append(i)
            return await ac.infer(v2_name, inputs, model_version=version)

    res = asyncio.run(via_aio())
    for n, want in _ort(path, feeds).items():
        _close(res.as_numpy(n), want)
