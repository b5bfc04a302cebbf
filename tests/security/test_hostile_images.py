"""Hostile images: truncated, bomb-sized headers, 16-bit, exotic modes, animated, not-an-image. Each is a 4xx
(never a 5xx, never a hang) through both JSON base64 and multipart uploads, and the server stays healthy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hardkit import b64, good_png, hostile_images

from service.app import create_app
from service.settings import Settings

HOSTILE = hostile_images()


@pytest.fixture(scope="module")
def client(fixture_store: Path) -> Iterator[TestClient]:
    settings = Settings(store=fixture_store, max_image_pixels=1_000_000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def assert_healthy(c: TestClient) -> None:
    assert c.get("/health/ready").status_code == 200
    r = c.post("/v1/models/tiny-ae/encode", json={"images": [b64(good_png())]})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_image_as_base64_is_4xx(client: TestClient, name: str) -> None:
    r = client.post("/v1/models/tiny-ae/reconstruct", json={"images": [b64(HOSTILE[name])]})
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == r.status_code
    assert_healthy(client)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_image_as_upload_named_png_is_4xx(client: TestClient, name: str) -> None:
    files = [("images", ("digit.png", HOSTILE[name], "image/png"))]
    r = client.post("/v1/models/tiny-ae/anomaly-score", files=files)
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    assert_healthy(client)


def test_bomb_header_is_refused_as_too_large(client: TestClient) -> None:
    r = client.post("/v1/models/tiny-ae/encode", json={"images": [b64(HOSTILE["declares-100000x100000"])]})
    assert r.status_code == 413
    assert r.json()["type"].endswith("payload-too-large")


@pytest.mark.parametrize("name", ["16-bit-grayscale-png", "16-bit-rgb-png", "cmyk-jpeg", "animated-png"])
def test_wrong_depth_mode_or_animation_is_422_with_a_reason(client: TestClient, name: str) -> None:
    r = client.post("/v1/models/tiny-ae/encode", json={"images": [b64(HOSTILE[name])]})
    assert r.status_code == 422, r.text
    assert r.json()["type"].endswith("invalid-input")


def test_ordinary_modes_still_work(client: TestClient) -> None:
    """Palette, RGB and RGBA 8-bit PNGs are ordinary images: converted to the model's channels, reported."""
    for mode in ("P", "RGB", "RGBA", "LA", "1"):
        r = client.post("/v1/models/tiny-ae/encode", json={"images": [b64(good_png(mode=mode))]})
        assert r.status_code == 200, (mode, r.text)
