"""Hot reload: a version published while requests flow is served within the poll interval, with zero failed
requests; and the admin reload call (404 when off, 401 without the key, 200 with it)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from deploykit import MODEL, SHAPE, publish
from fastapi.testclient import TestClient

from service.app import create_app
from service.reload import fingerprint
from service.settings import Settings
from service.store.layout import MANIFEST_NAME, STAGING_PREFIX, sha256_file
from service.store.repository import ModelStore

ADMIN = "admin-s3cret"


def _latest(client: httpx.Client | TestClient) -> int:
    r = client.get(f"/v1/models/{MODEL}")
    assert r.status_code == 200, r.text
    return int(r.json()["latest"])


def _problems_soon(client: TestClient, within_s: float = 5.0) -> list[dict]:
    """The store's problems as soon as the poller reports any (or none after `within_s`)."""
    deadline = time.monotonic() + within_s
    while True:
        problems: list[dict] = client.get("/v1/models").json()["problems"]
        if problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.05)


# --- the poller, against a real `python -m service` under load ----------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_publish_under_load_is_served_within_the_poll_interval(
    onnx_store: Path, start_replica: Callable
) -> None:
    interval = 1.0
    _, url = start_replica(onnx_store, "hot", LATENTSERVE_RELOAD_INTERVAL_S=str(interval))
    failures: list[str] = []
    count = 0
    done = threading.Event()
    lock = threading.Lock()

    def load(i: int) -> None:
        nonlocal count
        with httpx.Client(base_url=url, timeout=10) as c:
            while not done.is_set():
                try:
                    if i % 2:
                        r = c.post(f"/v1/models/{MODEL}/decode", json={"latents": [[0.1, -0.2], [0.0, 0.3]]})
                    else:
                        r = c.get(f"/v1/models/{MODEL}")
                    ok = r.status_code == 200
                    why = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, why = False, repr(exc)
                with lock:
                    count += 1
                    if not ok:
                        failures.append(why)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(interval * 1.5)  # a poll or two with nothing new
        with httpx.Client(base_url=url, timeout=10) as c:
            assert _latest(c) == 1
            published_at = time.monotonic()
            publish(onnx_store, MODEL, 2)  # staging folder + fsync + rename, as training.publish does
            seen_after = None
            while time.monotonic() - published_at < interval + 10:
                if _latest(c) == 2:
                    seen_after = time.monotonic() - published_at
                    break
                time.sleep(0.02)
            time.sleep(0.3)  # keep the load on across the swap
    finally:
        done.set()
        for t in threads:
            t.join(30)

    assert seen_after is not None, "the new version was never served"
    # one poll interval, plus the rescan itself (sha256 + session creation; slow on a loaded 2-core box)
    assert seen_after <= interval + 3.0, f"served {seen_after:.2f}s after publishing (interval {interval}s)"
    assert not failures, f"{len(failures)} of {count} requests failed during the reload: {failures[:3]}"
    assert count > 20
    with httpx.Client(base_url=url, timeout=10) as c:
        r = c.post(f"/v1/models/{MODEL}/versions/2/decode", json={"latents": [[0.0, 0.0]]})
        assert r.status_code == 200, r.text
        r = c.get(f"/v1/models/{MODEL}/versions/1")  # the old version keeps serving beside the new one
        assert r.status_code == 200
    print(f"v2 served {seen_after:.2f}s after publish (poll {interval}s); {count} requests, 0 failed")


# --- the poller, in process: reloads only when the store changed -----------------------------------------


def test_fingerprint_sees_publish_and_removal_but_not_staging(onnx_store: Path) -> None:
    before = fingerprint(onnx_store)
    assert fingerprint(onnx_store) == before
    staging = onnx_store / MODEL / f"{STAGING_PREFIX}half"
    staging.mkdir()
    (staging / "manifest.json").write_text("{}")
    assert fingerprint(onnx_store) == before, "a publish in progress is invisible"
    shutil.rmtree(staging)
    publish(onnx_store, MODEL, 2)
    after = fingerprint(onnx_store)
    assert after != before and [v for _, v, _ in after] == [1, 2]
    shutil.rmtree(onnx_store / MODEL / "1")
    assert [v for _, v, _ in fingerprint(onnx_store)] == [2]


def test_poll_rescans_only_on_change(onnx_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    original = ModelStore.reload

    def counting(self: ModelStore) -> ModelStore:
        nonlocal calls
        calls += 1
        return original(self)

    monkeypatch.setattr(ModelStore, "reload", counting)
    app = create_app(Settings(store=onnx_store, reload_interval_s=0.05))
    with TestClient(app) as client:
        opened = calls  # the open itself
        time.sleep(0.4)  # ~8 polls, nothing changed
        assert calls == opened, "an unchanged store is not rescanned"
        publish(onnx_store, MODEL, 2)
        deadline = time.monotonic() + 5
        while _latest(client) != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _latest(client) == 2
        assert calls == opened + 1


def test_a_broken_publish_keeps_serving_what_was_there(onnx_store: Path) -> None:
    app = create_app(Settings(store=onnx_store, reload_interval_s=0.05))
    with TestClient(app) as client:
        publish(onnx_store, MODEL, 2)
        (onnx_store / MODEL / "2" / "decoder.onnx").write_bytes(b"corrupted after publish")
        problems = _problems_soon(client)
        assert problems and problems[0]["version"] == 2 and "sha256" in problems[0]["reason"]
        assert _latest(client) == 1
        r = client.post(f"/v1/models/{MODEL}/decode", json={"latents": [[0.0, 0.0]]})
        assert r.status_code == 200


def test_a_served_version_whose_files_go_bad_keeps_serving_its_loaded_copy(onnx_store: Path) -> None:
    """Triton's rule for a failed reload of a loaded model: the loaded copy stays. Removing the folder still
    unpublishes it."""
    app = create_app(Settings(store=onnx_store, reload_interval_s=0.05))
    decode = {"latents": [[0.1, -0.2]]}
    with TestClient(app) as client:
        before = client.post(f"/v1/models/{MODEL}/decode", json=decode).json()["images"]
        (onnx_store / MODEL / "1" / "decoder.onnx").write_bytes(b"damaged on disk")
        problems = _problems_soon(client)
        assert len(problems) == 1, problems
        assert problems[0]["version"] == 1 and problems[0]["serving"] == "previous"
        assert "sha256" in problems[0]["reason"]
        assert _latest(client) == 1
        r = client.post(f"/v1/models/{MODEL}/decode", json=decode)
        assert r.status_code == 200 and r.json()["images"] == before  # the verified copy, not the damage
        index = {(e["name"], e["version"]): e for e in client.get("/v2/repository/index").json()}
        entry = index[(f"{MODEL}.decoder", "1")]
        assert entry["state"] == "READY" and "sha256" in entry["reason"], entry
        assert all(e["state"] == "READY" for e in index.values()), index  # no UNAVAILABLE twin row
        assert client.post(f"/v2/models/{MODEL}.decoder/infer", json={"inputs": [
            {"name": "z", "datatype": "FP32", "shape": [1, 2], "data": [0.1, -0.2]}]}).status_code == 200

        shutil.rmtree(onnx_store / MODEL / "1")  # unpublished: gone, as before
        deadline = time.monotonic() + 5
        while client.get(f"/v1/models/{MODEL}").status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get(f"/v1/models/{MODEL}").status_code == 404
        assert client.get("/v1/models").json()["problems"] == []


def test_a_failed_prepare_leaves_the_served_sessions_alone(onnx_store: Path) -> None:
    """A rewritten version that verifies but cannot serve (graph inputs differ from its manifest) must not
    take the sessions of the copy that serves."""
    app = create_app(Settings(store=onnx_store))
    with TestClient(app) as client:
        runtime = app.state.runtime
        served = {k: runtime.session(app.state.store.get(MODEL, 1), k[2]) for k in runtime.keys()}
        mpath = onnx_store / MODEL / "1" / MANIFEST_NAME
        manifest = json.loads(mpath.read_text())
        enc = onnx_store / MODEL / "1" / manifest["graphs"]["encoder"]["file"]
        dec = onnx_store / MODEL / "1" / manifest["graphs"]["decoder"]["file"]
        enc.write_bytes(dec.read_bytes())  # the decoder under the encoder's name: a new digest, wrong inputs
        manifest["files"][enc.name] = sha256_file(enc)
        mpath.write_text(json.dumps(manifest))
        app.state.store.reload()  # what the poller and /admin/reload run
        runtime.retain(app.state.store)
        problems = app.state.store.problems
        assert problems and problems[0]["serving"] == "previous", problems
        assert "inputs" in problems[0]["reason"], problems
        assert {k: runtime.session(app.state.store.get(MODEL, 1), k[2]) for k in runtime.keys()} == served
        x = np.zeros((1, *SHAPE), np.float32)
        r = client.post(f"/v2/models/{MODEL}.encoder/infer", json={"inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]})
        assert r.status_code == 200, r.text


# --- the admin reload call --------------------------------------------------------------------------------


def test_admin_reload_needs_the_admin_key(onnx_store: Path) -> None:
    app = create_app(Settings(store=onnx_store, admin_key=ADMIN, api_keys=["user-key"]))
    with TestClient(app) as client:
        publish(onnx_store, MODEL, 2)
        auth = {"Authorization": "Bearer user-key"}
        assert client.get(f"/v1/models/{MODEL}", headers=auth).json()["latest"] == 1  # no polling here

        for headers in ({}, {"Authorization": "Bearer wrong"}, auth, {"Authorization": f"Basic {ADMIN}"}):
            r = client.post("/admin/reload", headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert client.get(f"/v1/models/{MODEL}", headers=auth).json()["latest"] == 1

        r = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["added"] == [f"{MODEL}/2"] and body["removed"] == []
        assert body["models"] == {MODEL: [1, 2]} and body["problems"] == []
        assert client.get(f"/v1/models/{MODEL}", headers=auth).json()["latest"] == 2

        shutil.rmtree(onnx_store / MODEL / "1")
        r = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.json()["removed"] == [f"{MODEL}/1"]
        assert client.get(f"/v1/models/{MODEL}/versions/1", headers=auth).status_code == 404
        assert "/admin/reload" in client.get("/openapi.json", headers=auth).json()["paths"]


def test_admin_reload_does_not_exist_without_an_admin_key(onnx_store: Path) -> None:
    for key in (None, ""):
        app = create_app(Settings(store=onnx_store, admin_key=key))
        with TestClient(app) as client:
            for headers in ({}, {"Authorization": "Bearer anything"}):
                assert client.post("/admin/reload", headers=headers).status_code == 404
            assert "/admin/reload" not in client.get("/openapi.json").json()["paths"]


def test_admin_route_checks_the_key_itself() -> None:
    """Defence in depth: the route refuses a wrong key even on an app without the access-guard middleware."""
    from fastapi import FastAPI

    from service.http import problems
    from service.reload import admin_router

    assert admin_router(None) is None and admin_router("") is None
    bare = FastAPI()
    problems.install(bare)
    router = admin_router(ADMIN)
    assert router is not None
    bare.include_router(router)
    with TestClient(bare) as client:
        assert client.post("/admin/reload").status_code == 401
        assert client.post("/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_vanished_store_root_keeps_the_snapshot(onnx_store: Path, tmp_path: Path) -> None:
    """An unmounted volume (the root disappears) must not empty the service: the reload is refused."""
    app = create_app(Settings(store=onnx_store, admin_key=ADMIN, reload_interval_s=0.05))
    with TestClient(app) as client:
        onnx_store.rename(tmp_path / "elsewhere")
        time.sleep(0.3)  # several polls see no root
        assert _latest(client) == 1
        r = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 503 and "not a directory" in r.json()["detail"]
        assert _latest(client) == 1


def test_a_root_gone_before_the_first_poll_keeps_polling(
    onnx_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The root may vanish between `model_names`' check and its listing, on the poll's first fingerprint (CI
    saw it): the poll keeps going and the snapshot keeps serving (the error ended the poll and failed the
    app's shutdown)."""
    import anyio

    from service import reload as hot

    real, calls = hot.fingerprint, []

    def vanishing(root: Path) -> Any:
        calls.append(root)
        if len(calls) == 1:
            raise FileNotFoundError(2, "No such file or directory", str(root))
        return real(root)

    monkeypatch.setattr(hot, "fingerprint", vanishing)
    app = create_app(Settings(store=onnx_store, admin_key=ADMIN, reload_interval_s=0))
    with TestClient(app) as client:

        async def briefly() -> None:
            with anyio.move_on_after(0.3):
                await hot.poll(app, 0.05)

        client.portal.call(briefly)  # type: ignore[union-attr]
        assert len(calls) > 1 and _latest(client) == 1
