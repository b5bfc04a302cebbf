"""Atomic publish: whole versions or none, auto-incremented numbers, nothing left behind on failure."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.store import layout
from service.store.layout import sha256_file, version_numbers
from service.store.manifest import DataSpec, GraphSpec, LatentSpec, Manifest, NormalPrior, TensorSpec
from training import publish
from training.publish import PublishError, Staging, remove_versions

NAME = "toy-model"


def factory(name: str = NAME):  # noqa: ANN201
    def make(version: int, files: dict[str, str]) -> Manifest:
        return Manifest(
            name=name, version=version, family="ae", variant="plain", created_at=datetime.now(UTC),
            code_version="test", data=DataSpec(dataset="toy", shape=(1, 2, 2), preprocessing="none"),
            latent=LatentSpec(dim=2, prior=NormalPrior()),
            graphs={"decoder": GraphSpec(file="decoder.onnx", inputs=[TensorSpec(name="z", shape=[-1, 2])],
                                         outputs=[TensorSpec(name="x_hat", shape=[-1, 1, 2, 2])])},
            files=files, capabilities=["decode", "sample", "interpolate"],
        )
    return make


def stage_files(stage: Staging, payload: bytes = b"onnx bytes") -> None:
    (stage.path / "decoder.onnx").write_bytes(payload)
    (stage.path / "notes.txt").write_text("extra file, hashed too")


def published(root: Path, name: str = NAME) -> list[int]:
    return version_numbers(root / name)


def leftovers(root: Path, name: str = NAME) -> list[str]:
    return [p.name for p in (root / name).iterdir() if p.name.startswith(layout.STAGING_PREFIX)]


def test_versions_auto_increment_and_manifest_matches_files(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        with Staging(tmp_path, NAME) as stage:
            assert stage.path.name.startswith(layout.STAGING_PREFIX) and stage.path.parent == tmp_path / NAME
            assert published(tmp_path) == list(range(1, i + 1))  # the staging folder is not a version
            stage_files(stage, payload=b"v%d" % i)
            paths.append(stage.commit(factory()))
    assert published(tmp_path) == [1, 2, 3]
    assert [p.name for p in paths] == ["1", "2", "3"]
    assert leftovers(tmp_path) == []
    for v, path in enumerate(paths, start=1):
        m = Manifest.model_validate_json((path / layout.MANIFEST_NAME).read_text())
        assert m.version == v
        assert set(m.files) == {"decoder.onnx", "notes.txt"}
        for f, digest in m.files.items():
            assert sha256_file(path / f) == digest
    assert (paths[2] / "decoder.onnx").read_bytes() == b"v2"


@pytest.mark.parametrize("where", ["manifest", "rename", "writing"])
def test_interrupted_publish_leaves_no_version_and_no_staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              where: str) -> None:
    with Staging(tmp_path, NAME) as stage:
        stage_files(stage)
        stage.commit(factory())

    class Boom(RuntimeError):
        pass

    def boom(*args: object, **kwargs: object) -> None:
        raise Boom(where)

    if where == "manifest":
        monkeypatch.setattr(Staging, "_write_manifest", boom)
    elif where == "rename":
        monkeypatch.setattr(publish.os, "rename", boom)
    with pytest.raises(Boom):
        with Staging(tmp_path, NAME) as stage:
            stage_files(stage)
            if where == "writing":
                raise Boom("exporter crashed midway")
            stage.commit(factory())
    assert published(tmp_path) == [1]
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / NAME).iterdir() if not p.name.startswith(".")) == ["1"]


def test_a_version_that_appears_meanwhile_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that ignores the lock created version 1 after we looked: we take 2, and say so inside."""
    (tmp_path / NAME / "1").mkdir(parents=True)
    monkeypatch.setattr(publish, "version_numbers", lambda d: [])
    with Staging(tmp_path, NAME) as stage:
        stage_files(stage)
        path = stage.commit(factory())
    assert path.name == "2"
    assert Manifest.model_validate_json((path / "manifest.json").read_text()).version == 2


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    results: list[Path] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        with Staging(tmp_path, NAME) as stage:
            stage_files(stage, payload=b"%d" % i)
            p = stage.commit(factory())
        with lock:
            results.append(p)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(p.name) for p in results) == [1, 2, 3, 4]
    assert published(tmp_path) == [1, 2, 3, 4]


def test_manifest_that_lies_about_files_is_refused(tmp_path: Path) -> None:
    def lying(version: int, files: dict[str, str]) -> Manifest:
        return factory()(version, {**files, "decoder.onnx": "0" * 64})

    with pytest.raises(PublishError, match="do not match"):
        with Staging(tmp_path, NAME) as stage:
            stage_files(stage)
            stage.commit(lying)
    assert published(tmp_path) == [] and leftovers(tmp_path) == []


def test_invalid_names_and_remove_versions(tmp_path: Path) -> None:
    with pytest.raises(PublishError):
        Staging(tmp_path, "../escape")
    for _ in range(2):
        with Staging(tmp_path, NAME) as stage:
            stage_files(stage)
            stage.commit(factory())
    os.makedirs(tmp_path / NAME / f"{layout.STAGING_PREFIX}stale")
    assert remove_versions(tmp_path, NAME) == 2
    assert published(tmp_path) == [] and leftovers(tmp_path) == []


def test_store_readme_schema_is_current() -> None:
    """models_store/README.md is generated from the manifest models; `make schema` refreshes it."""
    from service.store import schema

    readme = Path(__file__).parents[2] / "models_store" / "README.md"
    assert schema.main(["--check", str(readme)]) == 0, "models_store/README.md is stale: run `make schema`"
    assert '"title": "Manifest"' in readme.read_text()
