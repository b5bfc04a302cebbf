"""Reduced-precision twins of a model's graphs: the store contract (`GraphSpec.twins`), the runtime's choice
of precision (the setting, a request's `precision`), and /v1 and V2 answers from the twin.

The twins here are real int8-weight graphs made in numpy: each Gemm or MatMul weight quantized per output
column to int8 and dequantized in the graph (DequantizeLinear), so they differ from FP32 by a little, and the
check recorded in the manifest is measured with onnxruntime as training.quantize measures it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper
from pydantic import ValidationError
from storebuilder import build_model, run

from service import precision
from service.app import create_app
from service.runtime import Runtime
from service.settings import Settings
from service.store.layout import sha256_file
from service.store.manifest import Manifest, TwinCheck, TwinSpec
from service.store.repository import ModelStore

MODEL, PLAIN = "twin-ae", "plain-ae"


def quantize_weights(src: Path, dst: Path) -> None:
    """`src` with every 2-D weight int8 per output column, dequantized inside the graph."""
    m = onnx.load(str(src))
    g = m.graph
    for t in [t for t in g.initializer if len(t.dims) == 2]:
        w = numpy_helper.to_array(t)  # (in, out)
        scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        g.initializer.remove(t)
        names = [f"{t.name}_q", f"{t.name}_s", f"{t.name}_z"]
        g.initializer.extend([numpy_helper.from_array(a, n) for a, n in
                              zip((q, scale, np.zeros_like(scale, dtype=np.int8)), names, strict=True)])
        g.node.insert(0, onnx.helper.make_node("DequantizeLinear", names, [t.name], axis=1))
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


def outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})  # type: ignore[no-any-return]


def add_twins(vdir: Path) -> Manifest:
    """Give every graph of a built version an int8 twin, with its check measured on 32 random inputs."""
    path = vdir / "manifest.json"
    m = Manifest.model_validate_json(path.read_text())
    rng = np.random.default_rng(0)
    graphs = {}
    for g, spec in m.graphs.items():
        twin = f"{g}.int8.onnx"
        quantize_weights(vdir / spec.file, vdir / twin)
        x = rng.random((32, *[d if d > 0 else 1 for d in spec.inputs[0].shape[1:]]), dtype=np.float32)
        ref, got = outputs(vdir / spec.file, x), outputs(vdir / twin, x)
        check = TwinCheck(measured_on="32 random inputs", n=32,
                          max_abs_diff=max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True)),
                          snr_db=30.0, bound="test")
        graphs[g] = spec.model_copy(update={"twins": {"int8": TwinSpec(file=twin, precision="int8",
                                                                       method="int8 weights", check=check)}})
    files = {f: sha256_file(vdir / f) for f in [*m.files, *(f"{g}.int8.onnx" for g in m.graphs)]}
    m = m.model_copy(update={"graphs": graphs, "files": files})
    path.write_text(m.model_dump_json(indent=2))
    return Manifest.model_validate_json(path.read_text())


@pytest.fixture(scope="module")
def twin_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("twins") / "store"
    add_twins(build_model(root, MODEL, 1, seed=11))
    build_model(root, PLAIN, 1, seed=12)
    bad = build_model(root, "bad-twin", 1, seed=13)
    add_twins(bad)
    (bad / "decoder.int8.onnx").write_bytes((bad / "decoder.int8.onnx").read_bytes() + b"\0")
    return root


def opened(root: Path, **settings: Any) -> tuple[Runtime, ModelStore]:
    rt = Runtime(Settings(store=root, **settings))
    return rt, ModelStore.open(root, check=rt.prepare)


# --- the store contract ------------------------------------------------------------------------------------


def test_a_manifest_lists_each_twin_with_its_check(twin_root: Path) -> None:
    m = Manifest.model_validate_json((twin_root / MODEL / "1" / "manifest.json").read_text())
    assert m.precisions() == ["fp32", "int8"] and m.precisions(["decoder"]) == ["fp32", "int8"]
    twin = m.graphs["decoder"].twins["int8"]  # type: ignore[index]
    assert twin.file in m.files and 0 < twin.check.max_abs_diff < 0.05
    plain = Manifest.model_validate_json((twin_root / PLAIN / "1" / "manifest.json").read_text())
    assert plain.precisions() == ["fp32"] and plain.graphs["decoder"].twins is None  # old manifests: valid


@pytest.mark.parametrize("change,message", [
    (lambda d, t: d["files"].pop("decoder.int8.onnx"), "has no sha256 in files"),
    (lambda d, t: t["int8"].update(precision="fp16"), "says its precision is"),
    (lambda d, t: t["int8"].update(file="decoder.onnx"), "a file of its own"),
    (lambda d, t: t["int8"].update(file="../decoder.int8.onnx"), "plain file name"),
    (lambda d, t: t.update(int4=t["int8"]), "int4"),
])
def test_a_twin_the_contract_refuses(twin_root: Path, change: Any, message: str) -> None:
    doc = json.loads((twin_root / MODEL / "1" / "manifest.json").read_text())
    change(doc, doc["graphs"]["decoder"]["twins"])
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(doc)


def test_a_twin_whose_bytes_do_not_match_its_sha256_refuses_the_version(twin_root: Path) -> None:
    rt, store = opened(twin_root)
    assert "bad-twin" not in store.names()
    (problem,) = [p for p in store.problems if p["model"] == "bad-twin"]
    assert "sha256 mismatch for 'decoder.int8.onnx'" in str(problem["reason"])


# --- the runtime's choice -----------------------------------------------------------------------------------


def test_the_runtime_serves_fp32_unless_the_setting_or_the_request_names_a_twin(twin_root: Path) -> None:
    z = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    vdir = twin_root / MODEL / "1"
    fp32, int8 = outputs(vdir / "decoder.onnx", z)[0], outputs(vdir / "decoder.int8.onnx", z)[0]
    assert not np.allclose(fp32, int8, atol=1e-6)

    rt, store = opened(twin_root)
    mv = store.get(MODEL)
    assert ("twin-ae", 1, "decoder", "int8") in set(rt.keys())
    np.testing.assert_allclose(run(rt.infer(mv, "decoder", {"z": z}))["x_hat"], fp32, atol=1e-6)
    np.testing.assert_allclose(run(rt.infer(mv, "decoder", {"z": z}, "int8"))["x_hat"], int8, atol=1e-6)
    assert rt.precision(mv, "int8") == "int8" and rt.precision(mv) == "fp32"

    rt8, store8 = opened(twin_root, precision="int8")
    mv8 = store8.get(MODEL)
    np.testing.assert_allclose(run(rt8.infer(mv8, "decoder", {"z": z}))["x_hat"], int8, atol=1e-6)
    assert rt8.precision(store8.get(PLAIN)) == "fp32"  # a model without the twin serves FP32
    np.testing.assert_allclose(run(rt8.infer(mv8, "decoder", {"z": z}, "fp32"))["x_hat"], fp32, atol=1e-6)


def test_an_unknown_or_missing_precision_is_a_422_listing_what_the_model_has(twin_root: Path) -> None:
    rt, store = opened(twin_root)
    with pytest.raises(precision.UnknownPrecision, match="has no precision 'int4'") as exc:
        rt.precision(store.get(MODEL), "int4")
    assert exc.value.status == 422 and exc.value.extra == {"precisions": ["fp32", "int8"]}
    with pytest.raises(precision.UnknownPrecision, match="it has fp32") as exc:
        rt.precision(store.get(PLAIN), "int8")
    assert exc.value.extra == {"precisions": ["fp32"]}
    assert precision.available(store.get(MODEL), backend="torchscript") == ["fp32"]


def test_batches_never_mix_precisions(twin_root: Path) -> None:
    """Concurrent requests at both precisions: each answer is its own graph's, and each precision has its
    own queue and metrics (the twin's labelled <model>.<graph>@int8)."""
    rt, store = opened(twin_root, max_queue_delay_us=20_000)
    mv = store.get(MODEL)
    vdir = twin_root / MODEL / "1"
    zs = [np.full((1, 4), i / 8, dtype=np.float32) for i in range(8)]
    at = ["fp32", "int8"] * 4

    async def all_at_once() -> list[dict[str, np.ndarray]]:
        calls = (rt.infer(mv, "decoder", {"z": z}, p) for z, p in zip(zs, at, strict=True))
        return await asyncio.gather(*calls)

    for z, p, out in zip(zs, at, run(all_at_once()), strict=True):
        want = outputs(vdir / ("decoder.onnx" if p == "fp32" else "decoder.int8.onnx"), z)[0]
        np.testing.assert_allclose(out["x_hat"], want, atol=1e-6)
    for label in (f"{MODEL}.decoder", f"{MODEL}.decoder@int8"):
        assert rt.stats.value("nv_inference_count", label, "1") == 4


# --- /v1 and V2 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twin_client(twin_root: Path) -> Any:
    with TestClient(create_app(Settings(store=twin_root)), raise_server_exceptions=False) as c:
        yield c


def test_v1_answers_from_the_twin_within_its_recorded_check(twin_client: TestClient, twin_root: Path) -> None:
    m = Manifest.model_validate_json((twin_root / MODEL / "1" / "manifest.json").read_text())
    z = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    r = twin_client.post(f"/v1/models/{MODEL}/decode", json={"latents": z.tolist()})
    fp32 = np.asarray(r.json()["images"])
    r = twin_client.post(f"/v1/models/{MODEL}/decode?precision=int8", json={"latents": z.tolist()})
    assert r.status_code == 200, r.text
    int8 = np.asarray(r.json()["images"])
    want = outputs(twin_root / MODEL / "1" / "decoder.int8.onnx", z)[0]
    np.testing.assert_allclose(int8, want, atol=1e-6)  # the twin served it
    assert 0 < np.abs(int8 - fp32).max() <= 4 * m.graphs["decoder"].twins["int8"].check.max_abs_diff  # type: ignore[index]
    x = np.random.default_rng(3).random((2, 1, 8, 8)).tolist()
    for op in ("reconstruct", "anomaly-score", "encode"):
        r = twin_client.post(f"/v1/models/{MODEL}/{op}?precision=int8", json={"images": x})
        assert r.status_code == 200, (op, r.text)


def test_v1_refuses_a_precision_the_model_has_not(twin_client: TestClient) -> None:
    r = twin_client.post(f"/v1/models/{MODEL}/sample?precision=int4", json={"n": 1})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["precisions"] == ["fp32", "int8"]
    r = twin_client.post(f"/v1/models/{PLAIN}/encode?precision=int8", json={"images": [[[0.5] * 8] * 8]})
    assert r.status_code == 422 and r.json()["precisions"] == ["fp32"]


def test_v1_models_show_the_twins_and_their_checks(twin_client: TestClient) -> None:
    listed = {m["name"]: m for m in twin_client.get("/v1/models").json()["models"]}
    assert listed[MODEL]["precisions"] == ["fp32", "int8"] and listed[PLAIN]["precisions"] == ["fp32"]
    detail = twin_client.get(f"/v1/models/{MODEL}").json()
    twin = detail["graphs"]["decoder"]["twins"]["int8"]
    assert twin["file"] == "decoder.int8.onnx" and twin["check"]["measured_on"] == "32 random inputs"
    assert twin_client.get(f"/v1/models/{PLAIN}").json()["graphs"]["decoder"]["twins"] is None


def v2_infer(client: TestClient, z: np.ndarray, **params: Any) -> Any:
    body = {"inputs": [{"name": "z", "shape": list(z.shape), "datatype": "FP32", "data": z.ravel().tolist()}],
            "parameters": params}
    return client.post(f"/v2/models/{MODEL}.decoder/infer", json=body)


def test_v2_answers_from_the_twin_the_request_names(twin_client: TestClient, twin_root: Path) -> None:
    z = np.random.default_rng(4).standard_normal((2, 4)).astype(np.float32)
    vdir = twin_root / MODEL / "1"
    for p, file in (("fp32", "decoder.onnx"), ("int8", "decoder.int8.onnx"), (None, "decoder.onnx")):
        r = v2_infer(twin_client, z, **({} if p is None else {"precision": p}))
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(2, 1, 8, 8)
        np.testing.assert_allclose(got, outputs(vdir / file, z)[0], atol=1e-6)
    r = v2_infer(twin_client, z, precision="int4")
    assert r.status_code in (400, 422) and "it has fp32, int8" in r.json()["error"]
    cfg = twin_client.get(f"/v2/models/{MODEL}.decoder/config").json()
    assert cfg["parameters"]["precisions"] == {"string_value": "fp32,int8"}


def test_grpc_answers_from_the_twin_the_request_parameter_names(twin_root: Path) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException
    from v2kit import free_port, serve

    z = np.random.default_rng(5).standard_normal((2, 4)).astype(np.float32)
    port = free_port()
    with serve(Settings(store=twin_root, grpc_port=port)) as _:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            inp = grpcclient.InferInput("z", [2, 4], "FP32")
            inp.set_data_from_numpy(z)
            got = client.infer(f"{MODEL}.decoder", [inp], parameters={"precision": "int8"}).as_numpy("x_hat")
            np.testing.assert_allclose(got, outputs(twin_root / MODEL / "1" / "decoder.int8.onnx", z)[0],
                                       atol=1e-6)
            with pytest.raises(InferenceServerException, match="it has fp32, int8") as err:
                client.infer(f"{MODEL}.decoder", [inp], parameters={"precision": "int4"})
            assert "INVALID_ARGUMENT" in str(err.value.status())
        finally:
            client.close()
