"""Access control on the real app: API keys guard /v1 and /v2 inference, health and metrics stay open, the
admin routes (V2 load/unload, /admin/reload) do not exist without an admin key and need it when they do,
and no route loads anything named by the request other than a model already in the store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

KEY, ADMIN = "k-0123456789", "adm-9876543210"
DECODE = {"inputs": [{"name": "z", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}


@contextmanager
def client_for(store: Path, **settings: Any) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store=store, **settings)), raise_server_exceptions=False) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(fixture_store: Path) -> Iterator[TestClient]:
    with client_for(fixture_store, api_keys=[KEY, "second-key"], admin_key=ADMIN) as c:
        yield c


def test_v1_needs_a_key(keyed: TestClient) -> None:
    for r in (keyed.get("/v1/models"), keyed.get("/v1/models", headers=auth("wrong")),
              keyed.post("/v1/models/tiny-ae/sample", json={"n": 1})):
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["status"] == 401
    assert keyed.get("/v1/models", headers=auth(KEY)).status_code == 200
    assert keyed.get("/v1/models", headers={"X-API-Key": "second-key"}).status_code == 200
    assert keyed.post("/v1/models/tiny-ae/sample", json={"n": 1}, headers=auth(KEY)).status_code == 200


def test_v2_needs_a_key_and_answers_in_v2_shape(keyed: TestClient) -> None:
    for r in (keyed.get("/v2"), keyed.get("/v2/models/tiny-ae.decoder"),
              keyed.post("/v2/models/tiny-ae.decoder/infer", json=DECODE),
              keyed.post("/v2/repository/index", json={})):
        assert r.status_code == 401, r.request.url
        assert r.json().keys() == {"error"}
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = keyed.post("/v2/models/tiny-ae.decoder/infer", json=DECODE, headers=auth(KEY))
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 1, 8, 8]


def test_health_metrics_and_docs_stay_open(keyed: TestClient) -> None:
    for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics",
                 "/openapi.json", "/docs"):
        assert keyed.get(path).status_code == 200, path


def test_admin_routes_need_the_admin_key_not_an_api_key(keyed: TestClient) -> None:
    for method, path in (("post", "/v2/repository/models/tiny-ae.decoder/unload"),
                         ("post", "/v2/repository/models/tiny-ae.decoder/load"),
                         ("post", "/admin/reload")):
        call = getattr(keyed, method)
        assert call(path).status_code == 401, path
        assert call(path, headers=auth(KEY)).status_code == 401, path
        assert call(path, headers=auth(ADMIN)).status_code == 200, path


def test_admin_routes_do_not_exist_without_an_admin_key(fixture_store: Path) -> None:
    with client_for(fixture_store, api_keys=[KEY]) as c:
        for path in ("/v2/repository/models/tiny-ae.decoder/unload",
                     "/v2/repository/models/tiny-ae.decoder/load", "/admin/reload"):
            assert c.post(path, headers=auth(KEY)).status_code == 404, path
        paths = c.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/admin", "/v2/repository/models"))]


def test_no_keys_configured_means_open_inference_and_no_admin(fixture_store: Path) -> None:
    with client_for(fixture_store) as c:
        assert c.get("/v1/models").status_code == 200
        assert c.post("/v2/models/tiny-ae.decoder/infer", json=DECODE).status_code == 200
        assert c.post("/admin/reload").status_code == 404


@pytest.mark.parametrize("body", [
    {"parameters": {"config": '{"backend": "onnxruntime"}'}},
    {"parameters": {"file:1/model.onnx": "aGVsbG8="}},
    {"parameters": {"url": "http://attacker.example/model.onnx"}},
    {"parameters": {"path": "/etc/passwd"}},
])
def test_v2_load_takes_a_model_name_only(keyed: TestClient, body: dict[str, Any]) -> None:
    """CVE-2023-43654 (TorchServe loaded models from any URL): our load never takes a source."""
    r = keyed.post("/v2/repository/models/tiny-ae.decoder/load", json=body, headers=auth(ADMIN))
    assert r.status_code == 400 and r.json().keys() == {"error"}


def test_v2_load_of_a_model_not_in_the_store_is_404(keyed: TestClient) -> None:
    for name in ("no-such-model.decoder", "tiny-ae.nothing"):
        r = keyed.post(f"/v2/repository/models/{name}/load", headers=auth(ADMIN))
        assert r.status_code == 404, name


@pytest.mark.parametrize("path", [
    "/v1/models/%2e%2e", "/v1/models/..%2F..%2Fetc%2Fpasswd/encode", "/v1/models/%252e%252e%252f",
    "/v1/models/..%5C..%5Cwindows", "/v1/models/%E2%80%A4%E2%80%A4", "/v1/models/%EF%BC%8E%EF%BC%8E",
    "/v1/models/tiny-ae%00", "/v1/models/TINY-AE", "/v2/models/%2e%2e%2ftiny-ae.decoder",
    "/v2/models/tiny-ae..decoder", "/v2/models/tiny-ae.decoder%2f..%2f..",
])
def test_traversal_in_any_encoding_is_404(keyed: TestClient, path: str) -> None:
    r = keyed.get(path, headers=auth(KEY))
    assert r.status_code == 404, (path, r.text)
    r = keyed.post(path, json={"images": [[0.0]]}, headers=auth(KEY))
    assert r.status_code in (404, 405), (path, r.text)
