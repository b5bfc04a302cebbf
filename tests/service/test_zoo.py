"""Registry-wide: every model shipped in models_store/ answers every capability it declares, through the API.

This test FAILS (it does not skip) when models_store/ holds no published model: the shipped zoo is part of the
product. Run `make models` to build it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.store.manifest import ALL_CAPABILITIES

ZOO = Path(__file__).resolve().parents[2] / "models_store"
MODELS = sorted({p.parent.parent.name for p in ZOO.glob("*/[0-9]*/manifest.json")})


def _digits(n: int) -> np.ndarray:
    """Real 8x8 digits in [0, 1], (N, 1, 8, 8): held-in data any digits model should handle well."""
    from sklearn.datasets import load_digits

    return (load_digits().images[:n].astype(np.float32) / 16.0)[:, None]


@pytest.fixture(scope="module")
def zoo() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store=ZOO)), raise_server_exceptions=False) as c:
        yield c


def test_the_zoo_is_shipped_and_loads_cleanly(zoo: TestClient) -> None:
    assert MODELS, f"no published models under {ZOO}: run `make models`"
    body = zoo.get("/v1/models").json()
    assert body["problems"] == [], f"shipped versions refused at load: {body['problems']}"
    assert sorted(m["name"] for m in body["models"]) == MODELS


def _post(c: TestClient, name: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
    r = c.post(f"/v1/models/{name}/{op}", json=body)
    assert r.status_code == 200, f"{name} {op}: {r.status_code} {r.text[:500]}"
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", MODELS)
def test_model_answers_every_declared_capability(zoo: TestClient, name: str) -> None:
    info = zoo.get(f"/v1/models/{name}").json()
    caps, (c, h, w), dim = info["capabilities"], info["shape"], info["latent_dim"]
    sp = info["spatial"]  # a fully convolutional model: spatial codes, maps at each image's size
    code = (dim,) if sp is None else (sp["latent_channels"], h // sp["multiple"], w // sp["multiple"])
    x = (
        _digits(6)
        if (c, h, w) == (1, 8, 8)
        else np.random.default_rng(0).random((6, c, h, w), dtype=np.float32)
    )
    images = x.tolist()
    n = len(x)
    lab = {"label": 1} if info["labels"] else {}  # a conditional model's graphs take the class
    if "encode" in caps:
        enc = _post(zoo, name, "encode", {"images": images, **lab})
        assert np.asarray(enc["mean"]).shape == (n, *code) and np.isfinite(enc["mean"]).all()
        assert (enc["logvar"] is not None) == (info["family"] == "vae")
    if "decode" in caps:
        dec = _post(zoo, name, "decode", {"latents": np.zeros((2, *code)).tolist(), **lab})
        out = np.asarray(dec["images"])
        assert out.shape == (2, c, h, w) and np.isfinite(out).all()
    if "sample" in caps:
        a = _post(zoo, name, "sample", {"n": 4, "seed": 0})
        b = _post(zoo, name, "sample", {"n": 4, "seed": 0})
        assert a["images"] == b["images"] and np.asarray(a["images"]).shape == (4, c, h, w)
        assert np.isfinite(a["images"]).all() and np.std(a["images"]) > 1e-4  # not a constant image
    if "interpolate" in caps:
        lat = _post(zoo, name, "interpolate", {"start": [0.0] * dim, "end": [1.0] * dim, "steps": 5, **lab})
        assert lat["shape"] == [5, c, h, w]
        if "encode" in caps:
            img = _post(
                zoo,
                name,
                "interpolate",
                {"start": images[0], "end": images[1], "steps": 3, "method": "slerp", **lab},
            )
            assert img["shape"] == [3, c, h, w]
    if "restyle" in caps:  # each image drawn as another class, in its own style
        body = {"images": images, "label": list(range(n)), "source_label": [1] * n}
        res = _post(zoo, name, "restyle", body)
        assert res["shape"] == [n, c, h, w] and res["labels"] == [info["labels"][i] for i in range(n)]
    if "reconstruct" in caps:
        rec = _post(zoo, name, "reconstruct", {"images": images, **lab})
        assert rec["shape"] == [n, c, h, w] and all(np.isfinite(m) and m >= 0 for m in rec["mse"])
    if "denoise" in caps:
        den = _post(
            zoo, name, "denoise", {"images": images, "noise": {"kind": "gaussian", "level": 0.2, "seed": 0}}
        )
        assert den["shape"] == [n, c, h, w] and np.asarray(den["noisy"]).shape == (n, c, h, w)
    if "anomaly-score" in caps:
        an = _post(zoo, name, "anomaly-score", {"images": images, "heatmap": True})
        norm = np.asarray(an["normalised"])
        maps = (n, c, h, w) if sp is None else (n, 1, h, w)  # a map model's heatmap is its channel mean
        assert np.all((norm >= 0) & (norm <= 1)) and np.asarray(an["heatmaps"]).shape == maps
        assert an["is_anomaly"] == [bool(r > an["threshold"]) for r in an["raw"]]
    bodies: dict[str, dict[str, Any]] = {
        "encode": {"images": images},
        "decode": {"latents": np.zeros((1, *code)).tolist()},
        "sample": {"n": 1},
        "interpolate": {"start": [0.0] * dim, "end": [1.0] * dim},
        "reconstruct": {"images": images, **lab},
        "denoise": {"images": images},
        "anomaly-score": {"images": images},
    }
    for cap in sorted(set(ALL_CAPABILITIES) - set(caps)):  # what is not declared answers 409, naming it
        r = zoo.post(f"/v1/models/{name}/{cap}", json=bodies[cap])
        assert r.status_code == 409 and r.json()["capability"] == cap, f"{name} {cap}: {r.status_code}"


@pytest.mark.parametrize("name", MODELS)
def test_digits_models_behave_like_digits_models(zoo: TestClient, name: str) -> None:
    """Sanity of the shipped weights: real digits reconstruct better and score lower than uniform noise."""
    info = zoo.get(f"/v1/models/{name}").json()
    if info["dataset"] != "digits":
        pytest.skip(f"{name} is not a digits model")
    x = _digits(64).tolist()
    noise = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32).tolist()
    from sklearn.datasets import load_digits

    lab = {"label": load_digits().target[:64].tolist()} if info["labels"] else {}  # their own classes
    if "reconstruct" in info["capabilities"]:
        real = np.mean(_post(zoo, name, "reconstruct", {"images": x, **lab})["mse"])
        fake = np.mean(_post(zoo, name, "reconstruct", {"images": noise, **lab})["mse"])
        assert real < fake, f"{name}: digits mse {real:.4f} >= noise mse {fake:.4f}"
    if "anomaly-score" in info["capabilities"]:
        real = _post(zoo, name, "anomaly-score", {"images": x})
        fake = _post(zoo, name, "anomaly-score", {"images": noise})
        assert np.mean(real["normalised"]) < np.mean(fake["normalised"])
        assert np.mean(real["is_anomaly"]) <= 0.25, (
            f"{name} flags {np.mean(real['is_anomaly']):.0%} of real digits"
        )


def test_manifests_on_disk_match_what_is_served(zoo: TestClient) -> None:
    for name in MODELS:
        versions = sorted(int(p.parent.name) for p in (ZOO / name).glob("[0-9]*/manifest.json"))
        served = zoo.get(f"/v1/models/{name}").json()
        assert served["versions"] == versions and served["latest"] == versions[-1]
        m = json.loads((ZOO / name / str(versions[-1]) / "manifest.json").read_text())
        assert served["capabilities"] == m["capabilities"]
