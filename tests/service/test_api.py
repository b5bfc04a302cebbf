"""The /v1 API through create_app and its lifespan: one test per endpoint and per error class."""

from __future__ import annotations

import base64
import io
import json
import warnings
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import BaseModel
from storebuilder import bomb_png, png_b64

from service import schemas
from service.app import create_app
from service.settings import Settings

IMG = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)  # one valid 8x8 image


def ok(r: Any, model: type[BaseModel] | None = None) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    if model is not None:
        model.model_validate(body)  # the documented schema is what we send
    return body


def problem(r: Any, status: int, slug: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    schemas.Problem.model_validate(body)
    assert body["status"] == status and body["detail"] and body["instance"].startswith("/")
    if slug is not None:
        assert body["type"] == f"urn:latentserve:problem:{slug}"
    return body


def png_image(r: Any) -> Image.Image:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(r.content))


# --- health and registry ------------------------------------------------------------------------
def test_health_live_and_ready(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "live"}
    r = client.get("/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True, "models": 5}


def test_not_ready_before_the_lifespan_opens_the_store(settings: Settings) -> None:
    c = TestClient(create_app(settings), raise_server_exceptions=False)  # no `with`: no lifespan
    assert c.get("/health/ready").status_code == 503
    problem(c.get("/v1/models"), 503, "not-ready")


def test_list_models(client: TestClient) -> None:
    body = ok(client.get("/v1/models"), schemas.ModelsResponse)
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"tiny-ae", "tiny-vae", "tiny-gan", "tiny-gen", "tiny-rgb"}
    assert by_name["tiny-ae"]["latest"] == 2 and by_name["tiny-ae"]["versions"] == [1, 2]
    assert by_name["tiny-gen"]["capabilities"] == ["decode", "sample", "interpolate"]
    assert by_name["tiny-rgb"]["shape"] == [3, 6, 6] and by_name["tiny-ae"]["latent_dim"] == 4
    assert {(p["model"], p["version"]) for p in body["problems"]} == {("broken-sha", 1), ("tiny-ae", 3)}


def test_get_model_and_versions(client: TestClient) -> None:
    latest = ok(client.get("/v1/models/tiny-ae"), schemas.ModelDetailResponse)
    assert latest["version"] == 2 and latest["prior"] == "gmm" and latest["metrics"] == {"val_loss": 0.1}
    assert latest["graphs"]["decoder"]["inputs"][0]["name"] == "z"
    assert latest["anomaly"]["score"] == "reconstruction"
    assert ok(client.get("/v1/models/tiny-ae/versions/1"))["prior"] == "gaussian"
    assert ok(client.get("/v1/models/tiny-ae/versions/latest"))["version"] == 2


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/nope",
        "/v1/models/tiny-ae/versions/3",
        "/v1/models/tiny-ae/versions/x",
        "/v1/models/%2e%2e",
        "/v1/models/..%5Cstore",
        "/v1/models/a%5Cb",
        "/v1/models/TINY-AE",
        "/v1/models/%2e%2e/versions/1",
    ],
)
def test_unknown_models_versions_and_path_characters_are_404(client: TestClient, path: str) -> None:
    body = problem(client.get(path), 404)
    assert body["type"] in ("urn:latentserve:problem:model-not-found", "about:blank")


@pytest.mark.parametrize(
    "path", ["/v1/models/..%2Fetc%2Fpasswd", "/v1/models/..%2F..%2Fx/encode", "/v1/models/a%2Fb"]
)
def test_encoded_slashes_never_reach_the_store(client: TestClient, path: str) -> None:
    r = client.post(path, json={"images": [IMG.tolist()]}) if path.endswith("encode") else client.get(path)
    problem(r, 404)


def test_op_on_unknown_model_and_bad_name(client: TestClient) -> None:
    problem(client.post("/v1/models/nope/sample", json={"n": 1}), 404, "model-not-found")
    problem(client.post("/v1/models/%2e%2e/sample", json={"n": 1}), 404, "model-not-found")
    problem(client.post("/v1/models/tiny-ae/versions/9/sample", json={"n": 1}), 404, "model-not-found")


# --- operations ---------------------------------------------------------------------------------
def test_encode_arrays_vae_and_ae(client: TestClient) -> None:
    body = ok(
        client.post("/v1/models/tiny-vae/encode", json={"images": [IMG.tolist()] * 3}), schemas.EncodeResponse
    )
    assert np.asarray(body["mean"]).shape == (3, 4) and np.asarray(body["logvar"]).shape == (3, 4)
    assert body["converted"] == [] and body["model"] == "tiny-vae" and body["version"] == 1
    body = ok(client.post("/v1/models/tiny-ae/versions/1/encode", json={"images": IMG.tolist()}))
    assert body["logvar"] is None and body["version"] == 1 and np.asarray(body["mean"]).shape == (1, 4)


def test_encode_base64_png_matches_arrays(client: TestClient) -> None:
    q = np.rint(IMG * 255) / 255
    from_arrays = ok(client.post("/v1/models/tiny-ae/encode", json={"images": [q.tolist()]}))["mean"]
    for data_url in (False, True):
        body = ok(client.post("/v1/models/tiny-ae/encode", json={"images": [png_b64(IMG, data_url)]}))
        np.testing.assert_allclose(body["mean"], from_arrays, atol=1e-5)
        assert body["converted"] == []


def test_multipart_upload_of_several_files(client: TestClient) -> None:
    files = [
        ("images", (f"{i}.png", base64.b64decode(png_b64(IMG * (i + 1) / 3)), "image/png")) for i in range(3)
    ]
    body = ok(client.post("/v1/models/tiny-ae/reconstruct", files=files, data={"format": "png"}))
    assert body["shape"] == [3, 1, 8, 8] and len(body["images"]) == 3 and len(body["mse"]) == 3
    body = ok(
        client.post(
            "/v1/models/tiny-ae/denoise", files=files[:1], data={"noise": '{"kind": "masking", "level": 0.5}'}
        )
    )
    assert body["noisy"] is not None


def test_conversion_is_reported_and_strict_refuses(client: TestClient) -> None:
    big = png_b64(np.random.default_rng(0).random((28, 28, 3)))  # RGB 28x28 for a 1x8x8 model
    body = ok(client.post("/v1/models/tiny-ae/encode", json={"images": [big, png_b64(IMG)]}))
    assert body["converted"] == [{"index": 0, "from": "PNG 28x28 RGB", "to": [1, 8, 8], "fit": "letterbox"}]
    arr = np.zeros((1, 1, 16, 16)).tolist()
    body = ok(client.post("/v1/models/tiny-rgb/reconstruct", json={"images": arr}))
    assert body["converted"] == [{"index": 0, "from": [1, 16, 16], "to": [3, 6, 6], "fit": "letterbox"}]
    assert body["shape"] == [
        1,
        3,
        6,
        6,
    ]
    p = problem(
        client.post("/v1/models/tiny-ae/encode", json={"images": [big], "strict": True}), 422, "invalid-input"
    )
    assert "strict" in p["detail"]
    ok(client.post("/v1/models/tiny-ae/encode", json={"images": [png_b64(IMG)], "strict": True}))


def test_decode(client: TestClient) -> None:
    body = ok(
        client.post("/v1/models/tiny-gen/decode", json={"latents": [[0, 0, 0, 0], [1, 1, 1, 1]]}),
        schemas.DecodeResponse,
    )
    assert body["shape"] == [2, 1, 8, 8] and np.asarray(body["images"]).shape == (2, 1, 8, 8)
    one = ok(client.post("/v1/models/tiny-gen/decode", json={"latents": [0, 0, 0, 0]}))
    assert one["images"][0] == body["images"][0]


def test_sample_json_png_and_grid(client: TestClient) -> None:
    body = ok(client.post("/v1/models/tiny-ae/sample", json={"n": 4, "seed": 3}), schemas.SampleResponse)
    assert body["shape"] == [4, 1, 8, 8] and body["seed"] == 3 and np.asarray(body["latents"]).shape == (4, 4)
    pngs = ok(client.post("/v1/models/tiny-ae/sample", json={"n": 4, "seed": 3, "format": "png"}))["images"]
    first = Image.open(io.BytesIO(base64.b64decode(pngs[0])))
    assert first.size == (8, 8) and first.mode == "L"
    expected = np.rint(np.clip(np.asarray(body["images"][0][0]), 0, 1) * 255)
    np.testing.assert_array_equal(np.asarray(first), expected)
    grid = png_image(
        client.post(
            "/v1/models/tiny-ae/sample?scale=2", json={"n": 4, "seed": 3}, headers={"Accept": "image/png"}
        )
    )
    assert grid.size == (2 * (1 + 2 * 9), 2 * (1 + 2 * 9))  # 2x2 tiles of 8 px, 1 px gutters, upscaled 2x
    auto = client.post("/v1/models/tiny-ae/sample", json={"n": 2}).json()
    assert isinstance(auto["seed"], int)


def test_sample_same_seed_same_bytes_over_http(client: TestClient) -> None:
    a = client.post("/v1/models/tiny-vae/sample", json={"n": 6, "seed": 11}).content
    b = client.post("/v1/models/tiny-vae/sample", json={"n": 6, "seed": 11}).content
    c = client.post("/v1/models/tiny-vae/sample", json={"n": 6, "seed": 12}).content
    assert a == b and a != c


def test_interpolate_latents_images_and_strip(client: TestClient) -> None:
    body = ok(
        client.post(
            "/v1/models/tiny-ae/interpolate", json={"start": [0, 0, 0, 0], "end": [1, 2, 3, 4], "steps": 5}
        ),
        schemas.InterpolateResponse,
    )
    assert body["shape"] == [5, 1, 8, 8] and body["t"] == [0, 0.25, 0.5, 0.75, 1]
    assert body["latents"][-1] == [1, 2, 3, 4] and body["method"] == "linear"
    body = ok(
        client.post(
            "/v1/models/tiny-ae/interpolate",
            json={"start": IMG.tolist(), "end": png_b64(1 - IMG), "method": "slerp", "steps": 3},
        )
    )
    assert body["shape"] == [3, 1, 8, 8]
    strip = png_image(
        client.post(
            "/v1/models/tiny-ae/interpolate",
            json={"start": [0] * 4, "end": [1] * 4, "steps": 7},
            headers={"Accept": "image/png"},
        )
    )
    assert strip.size == (1 + 7 * 9, 1 + 9)  # one row


def test_reconstruct_and_grid_pairs(client: TestClient) -> None:
    body = ok(
        client.post("/v1/models/tiny-ae/reconstruct", json={"images": [IMG.tolist()] * 2}),
        schemas.ReconstructResponse,
    )
    assert len(body["mse"]) == 2 and body["mse"][0] == pytest.approx(body["mse"][1]) and body["mse"][0] > 0
    recon = np.asarray(body["images"])
    assert body["mse"][0] == pytest.approx(float(((recon[0, 0] - IMG) ** 2).mean()), rel=1e-4)
    grid = png_image(
        client.post(
            "/v1/models/tiny-ae/reconstruct",
            json={"images": [IMG.tolist()] * 3},
            headers={"Accept": "image/png"},
        )
    )
    assert grid.size == (1 + 3 * 9, 1 + 2 * 9)  # inputs over reconstructions


def test_denoise(client: TestClient) -> None:
    req = {"images": [IMG.tolist()], "noise": {"kind": "salt-and-pepper", "level": 0.3, "seed": 1}}
    body = ok(client.post("/v1/models/tiny-ae/denoise", json=req), schemas.DenoiseResponse)
    noisy = np.asarray(body["noisy"])
    assert noisy.shape == (1, 1, 8, 8) and not np.allclose(noisy[0, 0], IMG)
    assert ok(client.post("/v1/models/tiny-ae/denoise", json=req))["noisy"] == body["noisy"]  # seeded
    assert ok(client.post("/v1/models/tiny-ae/denoise", json={"images": [IMG.tolist()]}))["noisy"] is None
    png_image(client.post("/v1/models/tiny-ae/denoise", json=req, headers={"Accept": "image/png"}))


def test_anomaly_score(client: TestClient) -> None:
    body = ok(
        client.post("/v1/models/tiny-vae/anomaly-score", json={"images": [IMG.tolist()] * 2}),
        schemas.AnomalyScoreResponse,
    )
    assert body["score"] == "vae_elbo" and body["threshold"] == 40.0 and body["heatmaps"] is None
    raw = np.asarray(body["raw"])
    np.testing.assert_allclose(body["normalised"], 1 / (1 + np.exp(-(raw - 40.0) / 2.0)), rtol=1e-6)
    assert body["is_anomaly"] == [bool(r > 40.0) for r in raw]
    body = ok(
        client.post("/v1/models/tiny-gan/anomaly-score", json={"images": [IMG.tolist()], "heatmap": True})
    )
    assert np.asarray(body["heatmaps"]).shape == (1, 1, 8, 8) and body["score"] == "fanogan"
    body = ok(
        client.post(
            "/v1/models/tiny-ae/anomaly-score",
            json={"images": [IMG.tolist()], "heatmap": True, "format": "png"},
        )
    )
    assert Image.open(io.BytesIO(base64.b64decode(body["heatmaps"][0]))).size == (8, 8)


def test_body_without_json_content_type_is_read_as_json(client: TestClient) -> None:
    r = client.post(
        "/v1/models/tiny-ae/sample",
        content=b'{"n": 2, "seed": 0}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert ok(r)["shape"] == [2, 1, 8, 8]


# --- errors -------------------------------------------------------------------------------------
def test_malformed_json(client: TestClient) -> None:
    r = client.post(
        "/v1/models/tiny-ae/sample", content=b'{"n": 2,', headers={"content-type": "application/json"}
    )
    problem(r, 400, "malformed-request")


@pytest.mark.parametrize(
    "body",
    [
        {"n": "many"},
        {"n": 0},
        {"n": 2, "temperature": -1},
        {"n": 2, "unknown": 1},
        {"seed": -5},
    ],
)
def test_schema_violations_are_422_with_errors(client: TestClient, body: dict[str, Any]) -> None:
    p = problem(client.post("/v1/models/tiny-ae/sample", json=body), 422, "invalid-input")
    assert p["errors"] and "input" not in p["errors"][0]


@pytest.mark.parametrize(
    ("op", "body", "needle"),
    [
        ("decode", {"latents": [[0, 0, 0]]}, "(N, 4)"),
        ("decode", {"latents": [[0, 0, 0, 0], [0, 0]]}, "latents"),
        ("encode", {"images": [[[[0.0] * 8] * 8]] * 2 + [[[0.0] * 7] * 8]}, "rectangular"),
        ("encode", {"images": [[[[[0.0]]]]]}, "shape"),
        ("encode", {"images": []}, "non-empty"),
        ("encode", {"images": [[1.5] * 8] * 8}, "[0.0, 1.0]"),
        ("encode", {"images": [[-0.1] * 8] * 8}, "[0.0, 1.0]"),
        ("encode", {"images": ["bm90IGFuIGltYWdl"]}, "not a decodable"),
        ("encode", {"images": ["***"]}, "base64"),
        ("encode", {"images": ["abc", [0.0]]}, "mixes"),
        ("interpolate", {"start": [0, 0], "end": [0, 0, 0, 0]}, "start"),
        ("interpolate", {"start": [[[0.0] * 8] * 8] * 2, "end": [0, 0, 0, 0]}, "one latent or one image"),
        ("interpolate", {"start": [0] * 4, "end": [0] * 4, "steps": 1}, "steps"),
        ("interpolate", {"start": [0] * 4, "end": [0] * 4, "steps": 257}, "steps"),
    ],
)
def test_wrong_shapes_values_and_images_are_422(
    client: TestClient, op: str, body: dict[str, Any], needle: str
) -> None:
    p = problem(client.post(f"/v1/models/tiny-ae/{op}", json=body), 422)
    assert needle in p["detail"] or needle in json.dumps(p.get("errors", ""))


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_nan_and_inf_in_images(client: TestClient, literal: bytes) -> None:
    raw = b'{"images": [[' + literal + b", 0, 0, 0, 0, 0, 0, 0]" + b", [0, 0, 0, 0, 0, 0, 0, 0]" * 7 + b"]}"
    r = client.post("/v1/models/tiny-ae/encode", content=raw, headers={"content-type": "application/json"})
    assert "NaN or infinite" in problem(r, 422, "invalid-input")["detail"]


def test_nan_in_latents(client: TestClient) -> None:
    r = client.post(
        "/v1/models/tiny-ae/decode",
        content=b'{"latents": [[0, NaN, 0, 0]]}',
        headers={"content-type": "application/json"},
    )
    assert "finite number" in problem(r, 422, "invalid-input")["detail"]  # NaN is not one


@pytest.mark.parametrize("op, body", [
    ("decode", {"latents": [[1e300, 0.0, 0.0, 0.0]]}),
    ("interpolate", {"start": [0.0, -1e39, 0.0, 0.0], "end": [0.0, 0.0, 0.0, 0.0]}),
])
def test_latents_beyond_float32_are_refused_without_a_warning(
    client: TestClient, op: str, body: dict[str, Any]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the cast overflowing is expected, not news
        p = problem(client.post(f"/v1/models/tiny-ae/{op}", json=body), 422, "invalid-input")
    assert "float32" in p["detail"], p


def test_decompression_bomb_refused_from_the_header(client: TestClient) -> None:
    bomb = base64.b64encode(bomb_png()).decode()
    p = problem(client.post("/v1/models/tiny-ae/encode", json={"images": [bomb]}), 413, "payload-too-large")
    assert "image 0" in p["detail"] and "pixels" in p["detail"]
    over_our_limit = base64.b64encode(bomb_png(200, 200)).decode()  # the test settings allow 10,000 pixels
    p = problem(client.post("/v1/models/tiny-ae/encode", json={"images": [over_our_limit]}), 413)
    assert "200x200" in p["detail"] and "10000" in p["detail"]
    files = [("images", ("bomb.png", bomb_png(), "image/png"))]
    problem(client.post("/v1/models/tiny-ae/encode", files=files), 413, "payload-too-large")


def test_too_many_items(client: TestClient, settings: Settings) -> None:
    n = settings.max_items + 1
    problem(
        client.post("/v1/models/tiny-ae/encode", json={"images": [[[0.0] * 2] * 2] * n}),
        413,
        "payload-too-large",
    )
    problem(client.post("/v1/models/tiny-ae/sample", json={"n": n}), 413, "payload-too-large")
    problem(
        client.post("/v1/models/tiny-ae/decode", json={"latents": [[0.0] * 4] * n}), 413, "payload-too-large"
    )


def test_body_too_large_declared_and_chunked(client: TestClient, settings: Settings) -> None:
    big = b'{"images": "' + b"A" * (settings.max_body_bytes + 10) + b'"}'
    problem(
        client.post("/v1/models/tiny-ae/encode", content=big, headers={"content-type": "application/json"}),
        413,
        "payload-too-large",
    )

    def chunks():  # no Content-Length: the limit must hold for streamed bodies too
        yield b'{"images": "'
        for _ in range(settings.max_body_bytes // 4096 + 2):
            yield b"A" * 4096
        yield b'"}'

    r = client.post(
        "/v1/models/tiny-ae/encode", content=chunks(), headers={"content-type": "application/json"}
    )
    problem(r, 413, "payload-too-large")


def test_capability_missing_is_409_naming_it(client: TestClient) -> None:
    for op, body in (
        ("encode", {"images": [IMG.tolist()]}),
        ("anomaly-score", {"images": [IMG.tolist()]}),
        ("reconstruct", {"images": [IMG.tolist()]}),
    ):
        p = problem(client.post(f"/v1/models/tiny-gen/{op}", json=body), 409, "capability-missing")
        assert (
            p["capability"] == op
            and op in p["detail"]
            and p["capabilities"] == ["decode", "sample", "interpolate"]
        )
    p = problem(
        client.post("/v1/models/tiny-gen/interpolate", json={"start": IMG.tolist(), "end": [0] * 4}), 409
    )
    assert p["capability"] == "encode"


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    problem(client.get("/v2x/nothing"), 404)
    problem(client.get("/v1/models/tiny-ae/sample"), 405)


@pytest.mark.parametrize("path", ["/v1/models/tiny-ae/samples", "/v1/models/tiny-ae/versions/1/Sample",
                                  "/v1/models/tiny-ae/reconstruction"])
def test_an_unknown_operation_lists_the_operations(client: TestClient, path: str) -> None:
    for r in (client.post(path, json={}), client.get(path)):
        p = problem(r, 404)
        assert p["operations"] == ["encode", "decode", "sample", "interpolate", "reconstruct", "denoise",
                                   "anomaly-score", "restyle"]
        assert "no operation" in p["detail"] and "anomaly-score" in p["detail"]


def test_v2_repository_index_takes_curl_d_without_a_content_type(client: TestClient) -> None:
    r = client.post("/v2/repository/index", content=b'{"ready": true}',
                    headers={"content-type": "application/x-www-form-urlencoded"})  # what curl -d sends
    assert r.status_code == 200 and all(e["state"] == "READY" for e in r.json()), r.text
    assert client.post("/v2/repository/index").status_code == 200
    bad = client.post("/v2/repository/index", content=b'{"ready": "maybe"}')
    assert bad.status_code == 400 and "error" in bad.json()


def test_docs_and_redoc_are_served_without_a_cdn(client: TestClient) -> None:
    for page, asset in (("/docs", "/docs/static/swagger-ui-bundle.js"),
                        ("/redoc", "/docs/static/redoc.standalone.js")):
        html = client.get(page)
        assert html.status_code == 200 and asset in html.text
        for cdn in ("cdn.jsdelivr", "unpkg", "fonts.googleapis"):
            assert cdn not in html.text
        js = client.get(asset)
        assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/docs/static/swagger-ui.css").status_code == 200


def test_server_stays_healthy_after_bad_requests(client: TestClient) -> None:
    client.post("/v1/models/tiny-ae/encode", json={"images": [base64.b64encode(bomb_png()).decode()]})
    client.post("/v1/models/tiny-ae/sample", content=b"{", headers={"content-type": "application/json"})
    assert client.get("/health/ready").status_code == 200
    ok(client.post("/v1/models/tiny-ae/sample", json={"n": 1}))


def test_unexpected_errors_are_generic_500_without_traceback(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import ops

    async def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(ops, "sample", boom)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        p = problem(c.post("/v1/models/tiny-ae/sample", json={"n": 1}), 500, "internal-error")
        assert "secret" not in json.dumps(p) and "Traceback" not in json.dumps(p)


def test_inference_failure_is_500_inference_failed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import runtime

    def broken_run(self: Any, feeds: Any) -> Any:
        raise RuntimeError("onnxruntime exploded")

    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        monkeypatch.setattr(runtime._OnnxSession, "run", broken_run)  # after the warm-up (it would refuse)
        p = problem(c.post("/v1/models/tiny-ae/sample", json={"n": 1}), 500, "inference-failed")
        assert "exploded" not in p["detail"]


def test_timeout_is_504(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio

    from service import ops

    async def slow(*a: Any, **k: Any) -> None:
        await anyio.sleep(5)

    monkeypatch.setattr(ops, "sample", slow)
    with TestClient(
        create_app(settings.model_copy(update={"request_timeout_s": 0.05})), raise_server_exceptions=False
    ) as c:
        problem(c.post("/v1/models/tiny-ae/sample", json={"n": 1}), 504, "timeout")


def test_openapi_documents_every_operation_and_multipart(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for op in ("encode", "decode", "sample", "interpolate", "reconstruct", "denoise", "anomaly-score"):
        assert f"/v1/models/{{name}}/{op}" in spec["paths"]
        assert f"/v1/models/{{name}}/versions/{{version}}/{op}" in spec["paths"]
    content = spec["paths"]["/v1/models/{name}/encode"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert "image/png" in spec["paths"]["/v1/models/{name}/sample"]["post"]["responses"]["200"]["content"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(("path", "query"), [("anomaly-score", "heatmap=true"), ("sample", "n=4"),
                                             ("reconstruct", "format=png")])
def test_a_body_field_sent_as_a_query_parameter_is_a_422_naming_it(client: TestClient, path: str,
                                                                   query: str) -> None:
    body = {"n": 1} if path == "sample" else {"images": [[[0.0] * 8] * 8]}
    p = problem(client.post(f"/v1/models/tiny-ae/{path}?{query}", json=body), 422)
    name = query.split("=")[0]
    assert f"query.{name}" in p["detail"] and p["errors"][0]["loc"] == ["query", name], p
