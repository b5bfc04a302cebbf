"""AccessGuard on a toy app: zones, constant-time keys, 401 shapes, admin routes off unless keyed, names."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from service.http import openapi
from service.http.access import AccessGuard, KeyRing, classify, invalid_name_in, parse_keys

pytestmark = pytest.mark.anyio


def toy_app(api_keys: object = None, admin_key: object = None) -> FastAPI:
    app = FastAPI()

    @app.get("/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v2/health/ready")
    async def ready2() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, str]:
        return {"name": name}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str) -> dict[str, str]:
        return {"model_name": name}

    @app.post("/v2/repository/models/{name}/load")
    async def load(name: str) -> dict[str, str]:
        return {"loaded": name}

    @app.get("/metrics")
    async def metrics() -> str:
        return "ok"

    app.add_middleware(AccessGuard, api_keys=api_keys, admin_key=admin_key)
    openapi.install(app, [], api_keys, admin_key)
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_no_keys_means_open_inference() -> None:
    async with client(toy_app()) as c:
        assert (await c.get("/v1/models/vae-digits")).status_code == 200
        assert (await c.post("/v2/models/vae-digits.decoder/infer")).status_code == 200


async def test_v1_missing_and_wrong_key_are_401_problem() -> None:
    async with client(toy_app(api_keys=["k1", "k2"])) as c:
        missing = await c.get("/v1/models/vae-digits")
        wrong = await c.get("/v1/models/vae-digits", headers=bearer("nope"))
        basic = await c.get("/v1/models/vae-digits", headers={"Authorization": "Basic azE6"})
        ok1 = await c.get("/v1/models/vae-digits", headers=bearer("k1"))
        ok2 = await c.get("/v1/models/vae-digits", headers={"authorization": "bearer k2"})
        ok3 = await c.get("/v1/models/vae-digits", headers={"X-API-Key": "k2"})
    for r in (missing, wrong, basic):
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"].startswith("Bearer")
        body = r.json()
        assert body["status"] == 401 and body["type"].endswith(":unauthorized") and body["title"]
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert ok1.status_code == 200 and ok2.status_code == 200 and ok3.status_code == 200


async def test_v2_401_is_error_object() -> None:
    async with client(toy_app(api_keys="k1")) as c:
        r = await c.post("/v2/models/vae-digits.decoder/infer")
        ok = await c.post("/v2/models/vae-digits.decoder/infer", headers=bearer("k1"))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/json" and set(r.json()) == {"error"}
    assert ok.status_code == 200


async def test_health_and_metrics_stay_open_with_keys() -> None:
    async with client(toy_app(api_keys="k1", admin_key="adm")) as c:
        for path in ("/health/ready", "/v2/health/ready", "/metrics", "/openapi.json", "/docs"):
            assert (await c.get(path)).status_code == 200, path


async def test_admin_routes_are_off_without_admin_key() -> None:
    async with client(toy_app(api_keys="k1")) as c:
        r = await c.post("/v2/repository/models/vae-digits/load", headers=bearer("k1"))
        doc = (await c.get("/openapi.json")).json()
    assert r.status_code == 404 and set(r.json()) == {"error"}
    assert not any("/repository/models/" in p for p in doc["paths"])


async def test_admin_key_guards_admin_routes_and_api_key_does_not_open_them() -> None:
    async with client(toy_app(api_keys="k1", admin_key="adm")) as c:
        none = await c.post("/v2/repository/models/vae-digits/load")
        api = await c.post("/v2/repository/models/vae-digits/load", headers=bearer("k1"))
        adm = await c.post("/v2/repository/models/vae-digits/load", headers=bearer("adm"))
        adm_infer = await c.post("/v2/models/vae-digits.decoder/infer", headers=bearer("adm"))
        x_api_admin = await c.post("/v2/repository/models/vae-digits/load", headers={"X-API-Key": "adm"})
    assert none.status_code == 401 and api.status_code == 401 and x_api_admin.status_code == 401
    assert adm.status_code == 200
    assert adm_infer.status_code == 401  # separate key sets: the admin key is not an API key


async def test_openapi_declares_schemes_and_401() -> None:
    async with client(toy_app(api_keys="k1", admin_key="adm")) as c:
        doc = (await c.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    op = doc["paths"]["/v1/models/{name}"]["get"]
    assert op["security"] == [{"apiKey": []}] and "401" in op["responses"] and "404" in op["responses"]
    load = doc["paths"]["/v2/repository/models/{name}/load"]["post"]
    assert load["security"] == [{"adminKey": []}]
    assert "security" not in doc["paths"]["/health/ready"]["get"]


# Path traversal in every encoding we know of. httpx would normalise some of these, so raw paths are sent
# through the ASGI scope directly: `path` is what the server hands the app after one round of decoding.
HOSTILE = [
    "/v1/models/..",
    "/v1/models/../../etc/passwd",  # %2e%2e%2f decoded once
    "/v1/models/%2e%2e",  # double-encoded, decoded once
    "/v1/models/%252e%252e",
    "/v1/models/..\\..\\windows",
    "/v1/models/\u2024\u2024",  # one-dot leader look-alikes
    "/v1/models/\uff0e\uff0e",  # fullwidth full stops
    "/v1/models/vae\x00digits",
    "/v1/models/VAE-DIGITS",
    "/v1/models/vae_digits",
    "/v1/models/" + "a" * 65,
    "/v2/models/../infer",
    "/v2/models/vae-digits..decoder/infer",
    "/v2/models/vae-digits.decoder.x/infer",
    "/v2/models/vae-digits.Decoder/infer",
    "/v2/models/.decoder/infer",
]


@pytest.mark.parametrize("path", HOSTILE)
async def test_invalid_model_names_never_reach_a_handler(path: str) -> None:
    reached: list[str] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        reached.append(str(scope["path"]))

    guard = AccessGuard(app)  # type: ignore[arg-type]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict[str, object]) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode("utf-8", "replace"),
             "headers": [], "root_path": ""}
    await guard(scope, receive, send)  # type: ignore[arg-type]
    assert reached == []
    assert sent[0]["status"] == 404
    assert invalid_name_in(path) is not None


async def test_traversal_over_http_client_is_404() -> None:
    async with client(toy_app()) as c:
        for raw in ("/v1/models/%2e%2e", "/v1/models/..%2F..%2Fetc", "/v1/models/%252e%252e",
                    "/v1/models/a%5Cb", "/v1/models/%E2%80%A4%E2%80%A4"):
            r = await c.get(raw)
            assert r.status_code == 404, raw


def test_valid_names_pass() -> None:
    for p in ("/v1/models/vae-digits", "/v1/models/ae-8x8-2/encode", "/v2/models/vae-digits.decoder/infer",
              "/v2/models/gan-digits.critic", "/v2/repository/models/vae-digits/load"):
        assert invalid_name_in(p) is None, p


def test_zones() -> None:
    assert classify("/health/live") == "open"
    assert classify("/v2/health/ready") == "open"
    assert classify("/metrics") == "open"
    assert classify("/") == "open"
    assert classify("/v1/models") == "inference"
    assert classify("/v2") == "inference"
    assert classify("/v2/repository/index") == "inference"
    assert classify("/v2/repository/models/x/unload") == "admin"
    assert classify("/v2/repository/models/x/load/") == "admin"
    assert classify("/admin/reload") == "admin"
    assert classify("/v2/repository/reload") == "admin"


def test_keys_parse_from_settings_shapes() -> None:
    assert parse_keys(None) == ()
    assert parse_keys("a, b,,c ") == ("a", "b", "c")
    assert parse_keys(["a", " b "]) == ("a", "b")
    assert parse_keys("") == ()


def test_keyring_compares_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    ring = KeyRing(["first", "second", "third"])
    assert ring.accepts("first")
    assert len(calls) == 3  # no early exit on the first match
    assert not ring.accepts("firs") and not ring.accepts(None) and not ring.accepts("")
    assert not KeyRing([]).accepts("")
