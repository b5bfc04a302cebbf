"""Integrity: a version with a checksum mismatch, a truncated ONNX graph or an invalid manifest is not loaded;
the reason shows in /v2/repository/index and in the log, and the previous version keeps serving. Corrupting
the newest version's file while it serves, then reloading, fails no request: the copy verified at load keeps
serving (Triton's rule for a failed reload) and the damage is reported."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hardkit import build_model

from service.app import create_app
from service.settings import Settings
from service.store.layout import sha256_file

ADMIN = {"Authorization": "Bearer integrity-admin"}
LATENT = {"latents": [[0.1, -0.2, 0.3, 0.0]]}


def checksum_mismatch(vdir: Path) -> str:
    (vdir / "decoder.onnx").write_bytes((vdir / "decoder.onnx").read_bytes() + b"\0")
    return "sha256 mismatch"


def truncated_onnx(vdir: Path) -> str:
    """Truncated, and re-hashed, as a buggy publisher would: the checksum passes, the graph must not."""
    f = vdir / "decoder.onnx"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["decoder.onnx"] = sha256_file(f)
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    return "decoder"


def invalid_manifest(vdir: Path) -> str:
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["latent"]["dim"] = -3
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    return "manifest does not validate"


def unparsable_manifest(vdir: Path) -> str:
    (vdir / "manifest.json").write_text('{"name": "victim", ')
    return "manifest does not validate"


BREAKERS: dict[str, Callable[[Path], str]] = {
    "checksum-mismatch": checksum_mismatch,
    "truncated-onnx": truncated_onnx,
    "invalid-manifest": invalid_manifest,
    "unparsable-manifest": unparsable_manifest,
}


def client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize("how", sorted(BREAKERS))
async def test_broken_new_version_is_refused_and_previous_serves(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models_store"
    build_model(root, "victim", 1, seed=1)
    app = create_app(Settings(store=root, admin_key="integrity-admin"))
    async with app.router.lifespan_context(app), client(app) as c:
        before = (await c.post("/v1/models/victim/decode", json=LATENT)).json()
        expect = BREAKERS[how](build_model(root, "victim", 2, seed=2))  # published broken
        with caplog.at_level(logging.WARNING):
            reload = await c.post("/admin/reload", headers=ADMIN)
        assert reload.status_code == 200
        assert [p["version"] for p in reload.json()["problems"] if p["model"] == "victim"] == [2]

        detail = (await c.get("/v1/models/victim")).json()
        assert detail["latest"] == 1 and detail["versions"] == [1]
        after = await c.post("/v1/models/victim/decode", json=LATENT)
        assert after.status_code == 200 and after.json()["version"] == 1
        assert after.json()["images"] == before["images"]
        assert (await c.post("/v1/models/victim/versions/2/decode", json=LATENT)).status_code == 404

        index = (await c.get("/v2/repository/index")).json()
        refused = [e for e in index if e["name"] == "victim" and e["version"] == "2"]
        assert len(refused) == 1 and refused[0]["state"] == "UNAVAILABLE"
        assert expect in refused[0]["reason"], refused[0]
        ready_only = (await c.post("/v2/repository/index", json={"ready": True})).json()
        assert all(e["state"] == "READY" for e in ready_only)
        assert any("victim/2" in r.getMessage() and expect in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_corrupting_the_newest_file_while_serving_fails_no_request(tmp_path: Path) -> None:
    root = tmp_path / "models_store"
    build_model(root, "victim", 1, seed=1)
    v2 = build_model(root, "victim", 2, seed=2)
    app = create_app(Settings(store=root, admin_key="integrity-admin"))
    statuses: list[int] = []
    versions: list[int] = []
    stop = asyncio.Event()

    async with app.router.lifespan_context(app), client(app) as c:
        async def hammer() -> None:
            while not stop.is_set():
                r = await c.post("/v1/models/victim/decode", json=LATENT)
                statuses.append(r.status_code)
                versions.append(r.json().get("version", -1))
                await asyncio.sleep(0)

        workers = [asyncio.create_task(hammer()) for _ in range(4)]
        await asyncio.sleep(0.2)
        (v2 / "decoder.onnx").write_bytes(b"\x08\x07garbage, not a graph")  # in place, serving
        await asyncio.sleep(0.2)
        reload = await c.post("/admin/reload", headers=ADMIN)
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*workers)
        detail = (await c.get("/v1/models/victim")).json()

    assert reload.status_code == 200 and reload.json()["removed"] == [], reload.json()
    problems = reload.json()["problems"]
    assert [(p["model"], p["version"], p["serving"]) for p in problems] == [("victim", 2, "previous")]
    assert statuses and set(statuses) == {200}
    assert set(versions) == {2}  # the copy of v2 verified at load keeps serving; the damage is reported
    assert detail["latest"] == 2
