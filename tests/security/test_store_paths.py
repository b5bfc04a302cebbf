"""Nothing is loaded from outside the store: a graph file named with a path, or an ONNX graph whose external
data points outside its version folder, makes that version unservable (the previous one keeps serving)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from hardkit import build_model
from onnx import TensorProto, helper

from service.runtime import Runtime
from service.settings import Settings
from service.store.layout import sha256_file
from service.store.repository import ModelStore


def external_data_graph(location: str) -> onnx.ModelProto:
    """decoder-shaped graph z (N, 4) -> x_hat (N, 1, 8, 8) whose weight lives in an external file."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 64], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", location), ("offset", "0"), ("length", str(4 * 64 * 4))):
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [-1, 1, 8, 8])
    nodes = [helper.make_node("MatMul", ["z", "w"], ["flat"]), helper.make_node("Reshape", ["flat", "shape"],
                                                                                  ["x_hat"])]
    graph = helper.make_graph(
        nodes, "decoder",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("x_hat", TensorProto.FLOAT, [None, 1, 8, 8])],
        [w, shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def swap_decoder(vdir: Path, model: onnx.ModelProto) -> None:
    (vdir / "decoder.onnx").write_bytes(model.SerializeToString())
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["decoder.onnx"] = sha256_file(vdir / "decoder.onnx")  # checksums pass; the path not
    (vdir / "manifest.json").write_text(json.dumps(manifest))


def open_store(root: Path) -> ModelStore:
    runtime = Runtime(Settings(store=root))
    return ModelStore.open(root, check=runtime.prepare)


def test_external_data_outside_the_version_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "models_store"
    build_model(root, "victim", 1, seed=1)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 4 * 64 * 4)
    swap_decoder(build_model(root, "victim", 2, seed=2), external_data_graph("../../../secret.bin"))
    swap_decoder(build_model(root, "absolute", 1, seed=3), external_data_graph(str(secret)))
    inside = build_model(root, "inside", 1, seed=4)  # the control: the same graph, its data in its own folder
    (inside / "w.bin").write_bytes(secret.read_bytes())
    swap_decoder(inside, external_data_graph("w.bin"))
    store = open_store(root)
    assert store.versions("victim") == [1] and "absolute" not in store.names()
    assert store.versions("inside") == [1]
    refused = {(p["model"], p["version"]) for p in store.problems}
    assert refused == {("victim", 2), ("absolute", 1)}


def test_graph_file_names_with_paths_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "models_store"
    build_model(root, "victim", 1, seed=1)
    outside = tmp_path / "evil.onnx"
    outside.write_bytes(b"not read")
    names = ("../../../evil.onnx", str(outside), "..\\evil.onnx", ".hidden.onnx")
    for version, name in enumerate(names, start=2):
        vdir = build_model(root, "victim", version, seed=version)
        manifest = json.loads((vdir / "manifest.json").read_text())
        manifest["graphs"]["decoder"]["file"] = name
        manifest["files"][name] = sha256_file(outside)
        (vdir / "manifest.json").write_text(json.dumps(manifest))
    store = open_store(root)
    assert store.versions("victim") == [1]
    assert sorted(p["version"] for p in store.problems) == [2, 3, 4, 5]
    assert all("manifest does not validate" in str(p["reason"]) for p in store.problems)
