"""ModelStore: manifests validated, checksums verified, "latest" resolved, broken versions skipped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from storebuilder import build_model, corrupt_manifest

from service.runtime import Runtime
from service.settings import Settings
from service.store.repository import ModelStore, UnknownModel


def test_latest_is_highest_good_version(store_root: Path) -> None:
    store = ModelStore.open(store_root)
    assert store.versions("tiny-ae") == [1, 2]  # v3 has a broken manifest
    assert store.get("tiny-ae").version == 2
    assert store.get("tiny-ae", "latest").version == 2
    assert store.get("tiny-ae", "1").version == 1
    assert store.get("tiny-ae", 1).manifest.latent.prior.kind == "gaussian"


def test_broken_versions_are_skipped_with_reasons(store_root: Path) -> None:
    store = ModelStore.open(store_root)
    problems = {(p["model"], p["version"]): p["reason"] for p in store.problems}
    assert "sha256 mismatch" in str(problems[("broken-sha", 1)])
    assert "family" in str(problems[("tiny-ae", 3)])
    assert "broken-sha" not in store.names()
    assert {"tiny-ae", "tiny-vae", "tiny-gan", "tiny-gen", "tiny-rgb"} <= set(store.names())


@pytest.mark.parametrize(
    "name", ["..", "../etc", "a/b", "a\\b", "Tiny-AE", "tiny_ae", "", "x" * 65, "%2e%2e"]
)
def test_invalid_names_are_not_found(store_root: Path, name: str) -> None:
    store = ModelStore.open(store_root)
    with pytest.raises(UnknownModel, match="not a valid model name"):
        store.get(name)


@pytest.mark.parametrize("version", ["7", "0", "-1", "abc", "1.0", "99999999999"])
def test_unknown_versions(store_root: Path, version: str) -> None:
    with pytest.raises(UnknownModel):
        ModelStore.open(store_root).get("tiny-ae", version)


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ModelStore.open(tmp_path / "nope")


def test_mismatched_name_missing_file_and_unloadable_graph(tmp_path: Path) -> None:
    build_model(tmp_path, "good", 1)
    corrupt_manifest(build_model(tmp_path, "named", 1), name="other")
    vdir = build_model(tmp_path, "nofile", 1)
    (vdir / "encoder.onnx").unlink()
    # a graph that is not ONNX but whose sha256 matches: only the runtime can reject it
    vdir = build_model(tmp_path, "notonnx", 1)
    (vdir / "decoder.onnx").write_bytes(b"not a graph")
    corrupt_manifest(
        vdir, files={"decoder.onnx": _sha(vdir / "decoder.onnx"), "encoder.onnx": _sha(vdir / "encoder.onnx")}
    )
    rt = Runtime(Settings(store=tmp_path))
    store = ModelStore.open(tmp_path, check=rt.prepare)
    assert store.names() == ["good"]
    reasons = {p["model"]: str(p["reason"]) for p in store.problems}
    assert "does not match folder" in reasons["named"]
    assert "missing file 'encoder.onnx'" in reasons["nofile"]
    assert "onnxruntime cannot load" in reasons["notonnx"]


def test_reload_picks_up_new_and_removed_versions(tmp_path: Path) -> None:
    build_model(tmp_path, "m", 1)
    rt = Runtime(Settings(store=tmp_path))
    store = ModelStore.open(tmp_path, check=rt.prepare)
    old = store.get("m")
    build_model(tmp_path, "m", 2, seed=9)
    assert store.get("m").version == 1  # nothing changes until reload
    store.reload()
    rt.retain(store)
    assert store.get("m").version == 2
    assert old.version == 1  # a request holding the old version keeps a whole one
    shutil.rmtree(tmp_path / "m" / "1")
    store.reload()
    rt.retain(store)
    assert store.versions("m") == [2]
    assert {k[:2] for k in rt.keys()} == {("m", 2)}


def _sha(p: Path) -> str:
    from service.store.layout import sha256_file

    return sha256_file(p)
