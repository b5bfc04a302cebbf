"""Every limit on the real app, one test each: body bytes 413, items per request 413, decoded pixels 413,
queue length 503 + Retry-After, per-request time 504. Each has a safe default in Settings."""

from __future__ import annotations

import asyncio
import base64
import gzip
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hardkit import png_declaring

from service.app import create_app
from service.settings import Settings

DECODE = {"inputs": [{"name": "z", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}


@contextmanager
def client_for(store: Path, **settings: Any) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store=store, **settings)), raise_server_exceptions=False) as c:
        yield c


def test_defaults_are_safe() -> None:
    s = Settings()
    assert 0 < s.max_body_bytes <= 64 * 1024 * 1024
    assert 0 < s.max_items <= 1024
    assert 0 < s.max_image_pixels <= 4096 * 4096
    assert 0 < s.queue_size <= 4096
    assert 0 < s.request_timeout_s <= 60
    assert s.api_keys == [] and s.admin_key is None  # admin routes off by default
    assert 0 < s.shutdown_grace_s < 10  # inside docker stop's 10 s


def test_body_over_limit_is_413_on_v1_and_v2(fixture_store: Path) -> None:
    with client_for(fixture_store, max_body_bytes=4096) as c:
        big = {"latents": [[0.0] * 4] * 2000}
        r1 = c.post("/v1/models/tiny-ae/decode", json=big)
        r2 = c.post("/v2/models/tiny-ae.decoder/infer", content=b"{" + b" " * 5000 + b"}")
        ok = c.post("/v1/models/tiny-ae/decode", json={"latents": [[0.0] * 4]})
    assert r1.status_code == 413 and r1.headers["content-type"] == "application/problem+json"
    assert r1.json()["type"].endswith("payload-too-large")
    assert r2.status_code == 413 and r2.json().keys() == {"error"}
    assert ok.status_code == 200


def test_chunked_body_over_limit_is_413(fixture_store: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"latents": ['
        for _ in range(1000):
            yield b"[0.0, 0.0, 0.0, 0.0],"
        yield b"[0.0, 0.0, 0.0, 0.0]]}"

    with client_for(fixture_store, max_body_bytes=4096) as c:
        r = c.post("/v1/models/tiny-ae/decode", content=chunks(),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_compressed_body_bomb_is_refused(fixture_store: Path) -> None:
    """100 MB of zeros gzip to ~100 kB: under the body limit, far over it once inflated."""
    bomb = gzip.compress(b"\0" * 100_000_000, compresslevel=9)
    with client_for(fixture_store, max_body_bytes=1024 * 1024) as c:
        r = c.post("/v2/models/tiny-ae.decoder/infer", content=bomb,
                   headers={"content-encoding": "gzip", "content-type": "application/json"})
        assert c.get("/health/ready").status_code == 200
    assert len(bomb) < 1024 * 1024
    assert r.status_code in (400, 413) and "exceeds" in r.json()["error"]


def test_too_many_items_is_413(fixture_store: Path) -> None:
    with client_for(fixture_store, max_items=4) as c:
        r = c.post("/v1/models/tiny-ae/decode", json={"latents": [[0.0] * 4] * 5})
        s = c.post("/v1/models/tiny-ae/sample", json={"n": 5})
        ok = c.post("/v1/models/tiny-ae/decode", json={"latents": [[0.0] * 4] * 4})
    assert r.status_code == 413 and "4" in r.json()["detail"]
    assert s.status_code in (413, 422)
    assert ok.status_code == 200


def test_decompression_bomb_is_refused_from_its_header(fixture_store: Path) -> None:
    bomb = base64.b64encode(png_declaring(100_000, 100_000)).decode()
    modest = base64.b64encode(png_declaring(2_000, 2_000)).decode()  # under Pillow's own limit, over ours
    with client_for(fixture_store, max_image_pixels=1_000_000) as c:
        r = c.post("/v1/models/tiny-ae/encode", json={"images": [bomb]})
        m = c.post("/v1/models/tiny-ae/encode", json={"images": [modest]})
        assert c.get("/health/ready").status_code == 200
    assert r.status_code == 413
    assert m.status_code == 413 and "2000x2000" in m.json()["detail"]


@pytest.mark.anyio
async def test_full_queue_is_503_with_retry_after(fixture_store: Path) -> None:
    """queue_size=1, a 1.5 s batching delay: the first request waits in the queue, the next finds it full."""
    settings = Settings(store=fixture_store, batching=True, queue_size=1, max_batch_size=64,
                        max_queue_delay_us=1_500_000)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            first = asyncio.create_task(c.post("/v2/models/tiny-ae.decoder/infer", json=DECODE))
            await asyncio.sleep(0.2)
            v2 = await c.post("/v2/models/tiny-ae.decoder/infer", json=DECODE)
            v1 = await c.post("/v1/models/tiny-ae/decode", json={"latents": [[0.0] * 4]})
            assert (await first).status_code == 200
    assert v2.status_code == 503 and int(v2.headers["retry-after"]) >= 1 and v2.json().keys() == {"error"}
    assert v1.status_code == 503 and int(v1.headers["retry-after"]) >= 1
    assert v1.headers["content-type"] == "application/problem+json"


def test_slow_request_is_504(fixture_store: Path) -> None:
    """A batching delay far past the deadline stands in for a slow model."""
    with client_for(fixture_store, batching=True, max_queue_delay_us=3_000_000, request_timeout_s=0.3) as c:
        r1 = c.post("/v1/models/tiny-ae/decode", json={"latents": [[0.0] * 4]})
        r2 = c.post("/v2/models/tiny-ae.decoder/infer", json=DECODE)
        assert c.get("/health/live").status_code == 200
    assert r1.status_code == 504 and r1.json()["type"].endswith("timeout")
    assert r2.status_code == 504 and r2.json().keys() == {"error"}
