"""App wiring: settings from the environment, API keys, no torch on the serving path, the typed client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import ROUTERS, create_app
from service.client import ApiError, LatentClient
from service.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[2]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LATENTSERVE_STORE", str(tmp_path))
    monkeypatch.setenv("LATENTSERVE_PORT", "9123")
    monkeypatch.setenv("LATENTSERVE_API_KEYS", "alpha, beta,,")
    monkeypatch.setenv("LATENTSERVE_BATCHING", "true")
    monkeypatch.setenv("LATENTSERVE_LOG_LEVEL", "DEBUG")
    s = Settings()
    assert (s.store, s.port, s.api_keys, s.batching, s.log_level) == (
        tmp_path,
        9123,
        ["alpha", "beta"],
        True,
        "debug",
    )
    assert s.backend == "onnx" and s.reload_interval_s == 0 and s.admin_key is None
    get_settings.cache_clear()
    assert get_settings().port == 9123
    get_settings.cache_clear()


def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTSERVE_BACKEND", "tensorflow")
    with pytest.raises(ValueError, match="backend"):
        Settings()


def test_creating_the_app_loads_nothing(tmp_path: Path) -> None:
    app = create_app(Settings(store=tmp_path / "does-not-exist"))  # the store only opens in the lifespan
    assert app.state.store is None and len(ROUTERS) >= 3


def test_missing_store_fails_startup(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        with TestClient(create_app(Settings(store=tmp_path / "nope"))):
            pass


def test_no_torch_on_the_serving_path() -> None:
    code = (
        "import sys, service.app, service.__main__, service.client\n"
        "service.app.create_app()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_api_keys_guard_v1_but_not_health(settings: Settings) -> None:
    with TestClient(
        create_app(settings.model_copy(update={"api_keys": ["k1", "k2"]})), raise_server_exceptions=False
    ) as c:
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["type"] == "urn:latentserve:problem:unauthorized"
        assert c.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 200
        assert (
            c.post("/v1/models/tiny-ae/sample", json={"n": 1}, headers={"X-API-Key": "k1"}).status_code == 200
        )
        assert c.post("/v1/models/tiny-ae/sample", json={"n": 1}).status_code == 401
        assert c.get("/health/ready").status_code == 200


def test_client_against_the_app(client: TestClient) -> None:
    c = LatentClient(http=client)
    names = {m["name"] for m in c.models()}
    assert "tiny-vae" in names and c.model("tiny-ae", 1)["version"] == 1
    imgs = c.sample("tiny-vae", 3, seed=5)
    assert imgs.shape == (3, 1, 8, 8) and imgs.dtype == np.float32
    np.testing.assert_array_equal(imgs, c.sample("tiny-vae", 3, seed=5))
    enc = c.encode("tiny-vae", imgs)
    assert enc.mean.shape == (3, 4) and enc.logvar is not None
    assert c.decode("tiny-vae", enc.mean).shape == (3, 1, 8, 8)
    assert c.interpolate("tiny-vae", enc.mean[0], enc.mean[1], steps=5, method="slerp").shape == (5, 1, 8, 8)
    rec = c.reconstruct("tiny-ae", imgs, version=1)
    assert rec.images.shape == imgs.shape and rec.mse.shape == (3,)
    den = c.denoise("tiny-ae", imgs, noise={"kind": "gaussian", "level": 0.2, "seed": 1})
    assert den.noisy is not None and den.noisy.shape == imgs.shape
    an = c.anomaly_score("tiny-gan", imgs, heatmap=True)
    assert an.raw.shape == (3,) and an.heatmaps is not None and an.is_anomaly.dtype == bool
    with pytest.raises(ApiError) as exc:
        c.encode("tiny-gen", imgs)
    assert (
        exc.value.status == 409
        and "encode" in exc.value.detail
        and exc.value.type.endswith("capability-missing")
    )
    with pytest.raises(ApiError, match="404"):
        c.sample("nope")


def _serve_closure() -> set[str]:
    """Distributions the `serve` extra installs: its requirements and theirs, recursively (with markers)."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    serve = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    seen: set[str] = set()
    stack = [Requirement(r) for r in [*serve, *core]]
    while stack:
        req = stack.pop()
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for sub in map(Requirement, dist.requires or []):
            envs = [{"extra": e} for e in (req.extras or {""})]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                stack.append(sub)
    return seen


def test_serving_path_needs_only_the_serve_extra() -> None:
    code = (
        "import sys, json\n"
        "from importlib import metadata\n"
        "before = set(sys.modules)  # site hooks (.pth files) are not ours\n"
        "import service.app\n"
        "service.app.create_app()\n"
        "top = {m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)\n"
        "dists = metadata.packages_distributions()\n"
        "print(json.dumps(sorted({d for m in top for d in dists.get(m, [])})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    from packaging.utils import canonicalize_name

    used = {canonicalize_name(d) for d in __import__("json").loads(r.stdout.splitlines()[-1])}
    # grpcio imports grpcio-tools at import time when it is installed (its `grpc.tools` shim), as the dev
    # extra installs it; the serving path never uses it, and runs without it (test_grpc_wire.py).
    extra = used - _serve_closure() - {"latentserve"} - {"grpcio-tools"}
    assert not extra, f"the serving path imports distributions outside the serve extra: {sorted(extra)}"


def test_a_store_whose_every_version_was_refused_is_not_ready(tmp_path: Path) -> None:
    """As with LATENTSERVE_BACKEND=torchscript and no TorchScript twins: all refused, nothing served."""
    from storebuilder import build_model

    vdir = build_model(tmp_path, "only", 1)
    (vdir / "decoder.onnx").write_bytes(b"not onnx")  # the checksum fails: refused
    with TestClient(create_app(Settings(store=tmp_path))) as c:
        r = c.get("/health/ready")
        assert r.status_code == 503 and r.json()["models"] == 0, r.text
        assert "no version of the store loaded" in r.json()["reason"]
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/health/live").status_code == 200
    empty = tmp_path / "empty"
    empty.mkdir()
    with TestClient(create_app(Settings(store=empty))) as c:  # nothing published yet: ready, serving nothing
        assert c.get("/health/ready").status_code == 200
