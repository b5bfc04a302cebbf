"""anomaly-score at the image's own resolution (issue 15): fully convolutional models on whole images and in
tiles (a seam test), fixed-size models through letterbox and crop with the map brought back, masks, regions,
thresholds a request sets, PNG views, and V2 at two sizes."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from fastapi.testclient import TestClient
from PIL import Image
from storebuilder import build_model, build_spatial_model, run

from service import anomaly, spatial
from service.app import create_app
from service.runtime import Runtime
from service.settings import Settings
from service.store.repository import ModelStore

URL = "/v1/models/{}/anomaly-score"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("native") / "store"
    build_spatial_model(root, "tex", tile=32, overlap=8)
    build_spatial_model(root, "tex-blur", tile=32, overlap=8, blur_sigma=1.0)
    build_spatial_model(root, "tex-big", tile=512, overlap=32, blur_sigma=1.0)  # never tiles below 512
    build_spatial_model(root, "tex-rgb", channels=3)
    build_model(root, "tiny-ae", 1, seed=1)
    return root


@pytest.fixture(scope="module")
def client(store: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store=store)), raise_server_exceptions=False) as c:
        yield c


def png(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A flat field with a gentle 2x2-block pattern the block-average model reconstructs exactly."""
    base = np.kron(np.random.default_rng(seed).uniform(0.3, 0.5, (h // 2 + 1, w // 2 + 1)), np.ones((2, 2)))
    return base[:h, :w]


def with_blob(img: np.ndarray, y: int, x: int, r: int = 3) -> np.ndarray:
    out = img.copy()
    yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
    out[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = 1.0
    return out


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def ok(r: Any) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_photo_is_scored_at_its_own_size_with_a_mask_and_regions(client: TestClient) -> None:
    img = with_blob(texture(50, 70), 20, 41)
    body = ok(client.post(URL.format("tex"), json={"images": [png(img)], "heatmap": True}))
    assert body["sizes"] == [[50, 70]]
    amap = np.asarray(body["anomaly_map"][0])
    assert amap.shape == (50, 70)
    mask = np.asarray(body["pred_mask"][0])
    assert mask.shape == (50, 70) and mask.any()
    (region,) = body["regions"][0]
    x0, y0, x1, y1 = region["box"]
    assert x0 <= 41 < x1 and y0 <= 20 < y1, region  # the box holds the blob
    assert region["peak"] == pytest.approx(amap[y0:y1, x0:x1].max(), rel=1e-5)
    assert body["thresholds"] == {"image": 0.002, "image_source": "manifest", "pixel": 0.01,
                                  "pixel_source": "manifest"}
    assert body["pred_score"] == body["normalised"] and body["pred_label"] == body["is_anomaly"]
    assert body["is_anomaly"] == [True]
    clean = ok(client.post(URL.format("tex"), json={"images": [png(texture(50, 70))]}))
    assert clean["raw"][0] < body["raw"][0] and clean["regions"] == [[]]


def test_the_image_score_is_the_maps_reduction(client: TestClient, store: Path) -> None:
    from service.store import scores

    img = with_blob(texture(40, 40), 10, 10)
    body = ok(client.post(URL.format("tex"), json={"images": [png(img)], "heatmap": True}))
    amap = np.asarray(body["anomaly_map"][0], dtype=np.float32)
    assert body["raw"][0] == pytest.approx(scores.reduce_map(amap[None], "top_mean", 0.01)[0], rel=1e-5)


def test_tiles_blend_to_the_whole_image_map_away_from_the_borders(store: Path) -> None:
    """The seam test: tex-blur runs a 100x100 image in 32-pixel tiles overlapping by 8; tex-big (the same
    model) runs it whole. Away from the image's border the maps agree."""
    rt = Runtime(Settings(store=store))
    st = ModelStore.open(store, check=rt.prepare)
    from service import ops

    img = with_blob(np.random.default_rng(1).uniform(0.2, 0.6, (100, 100)), 60, 35, r=5)[None].astype(
        np.float32)
    th = anomaly.Thresholds(0.002, "manifest", 0.01, "manifest")
    maps = {}
    for name in ("tex-blur", "tex-big"):
        mv = st.get(name)
        (res,) = run(anomaly.score_images(mv, [img], [None], ops.graph_runner(rt, mv), th))
        maps[name] = res.map
    assert spatial.tile_starts(100, 32, 8) == [0, 24, 48, 68]
    tiled, whole = maps["tex-blur"], maps["tex-big"]
    inner = (slice(4, -4), slice(4, -4))
    np.testing.assert_allclose(tiled[inner], whole[inner], atol=0.02 * whole.max())
    assert np.abs(tiled[inner] - whole[inner]).mean() < 1e-3 * whole.max() + 1e-6


def test_odd_sizes_are_padded_to_the_models_multiple_and_cropped_back(client: TestClient) -> None:
    for h, w in ((33, 47), (9, 9), (130, 17)):
        body = ok(client.post(URL.format("tex"), json={"images": [png(texture(h, w))], "heatmap": True}))
        assert np.asarray(body["anomaly_map"][0]).shape == (h, w)


def test_images_of_several_sizes_in_one_request(client: TestClient) -> None:
    body = ok(client.post(URL.format("tex"), json={"images": [png(texture(20, 30)), png(texture(64, 40))]}))
    assert body["sizes"] == [[20, 30], [64, 40]] and len(body["raw"]) == 2


def test_rgb_photos_on_an_rgb_model_and_grey_ones_converted(client: TestClient) -> None:
    rgb = np.stack([texture(24, 24, s) for s in range(3)], axis=-1)
    ok(client.post(URL.format("tex-rgb"), json={"images": [png(rgb)]}))
    body = ok(client.post(URL.format("tex-rgb"), json={"images": [png(texture(24, 24))]}))
    assert body["converted"][0]["to"] == [3, 24, 24]


@pytest.mark.parametrize("fit", ["letterbox", "crop"])
def test_fixed_size_models_fit_without_squashing_and_map_back(client: TestClient, fit: str) -> None:
    wide = texture(16, 32)
    body = ok(client.post(URL.format("tiny-ae"), json={"images": [png(wide)], "heatmap": True, "fit": fit}))
    assert body["converted"][0]["fit"] == fit
    assert body["sizes"] == [[16, 32]]
    amap = np.asarray(body["anomaly_map"][0])
    assert amap.shape == (16, 32)
    if fit == "crop":  # the model saw the centre 16x16 only
        assert not amap[:, :8].any() and not amap[:, -8:].any() and amap[:, 8:24].any()
    assert np.asarray(body["heatmaps"]).shape == (1, 1, 8, 8)  # the legacy maps, in the model's frame
    assert body["regions"] is None  # no pixel threshold in this model's manifest
    given = ok(client.post(URL.format("tiny-ae"), json={"images": [png(wide)], "pixel_threshold": 0.0}))
    assert given["thresholds"]["pixel_source"] == "request" and given["regions_total"][0] >= 1


def test_thresholds_a_request_sets(client: TestClient) -> None:
    img = png(with_blob(texture(40, 40), 20, 20))
    base = ok(client.post(URL.format("tex"), json={"images": [img]}))
    high = ok(client.post(URL.format("tex"), json={"images": [img], "threshold": 1e9}))
    assert high["thresholds"]["image_source"] == "request" and high["is_anomaly"] == [False]
    assert high["threshold"] == 1e9 and high["normalised"][0] < 0.5 < base["normalised"][0]
    at = ok(client.post(URL.format("tex"), json={"images": [img], "fpr": 0.01, "pixel_fpr": 0.1}))
    assert at["thresholds"] == {"image": pytest.approx(0.002), "image_source": "fpr=0.01",
                                "pixel": pytest.approx(0.002), "pixel_source": "fpr=0.1"}
    between = ok(client.post(URL.format("tex"), json={"images": [img], "fpr": 0.05}))
    assert 0.001 < between["thresholds"]["image"] < 0.002  # interpolated between the 0.9 and 0.99 quantiles
    for bad in ({"fpr": 0}, {"fpr": 1}, {"fpr": 0.1, "threshold": 1.0}, {"pixel_fpr": -1}):
        r = client.post(URL.format("tex"), json={"images": [img], **bad})
        assert r.status_code == 422, (bad, r.text)
    r = client.post(URL.format("tiny-ae"), json={"images": [png(texture(8, 8))], "fpr": 0.1})
    assert r.status_code == 422 and "calibration" in r.json()["detail"]


def test_png_views_overlay_mask_and_map(client: TestClient) -> None:
    img = png(with_blob(texture(40, 60), 20, 30))
    r = client.post(URL.format("tex"), json={"images": [img]}, headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    over = np.asarray(Image.open(io.BytesIO(r.content)))
    assert over.shape == (40, 60, 3)
    assert (over == (0, 255, 255)).all(axis=-1).any()  # a region box is drawn
    mask = np.asarray(Image.open(io.BytesIO(client.post(
        URL.format("tex") + "?view=mask", json={"images": [img]}, headers={"Accept": "image/png"}).content)))
    assert mask.shape == (40, 60) and set(np.unique(mask)) == {0, 255} and mask[16:25, 26:35].any()
    png_accept = {"Accept": "image/png"}
    amap = client.post(URL.format("tex") + "?view=map", json={"images": [img]}, headers=png_accept)
    assert np.asarray(Image.open(io.BytesIO(amap.content))).shape == (40, 60)
    two = client.post(URL.format("tex"), json={"images": [img, img]}, headers={"Accept": "image/png"})
    assert two.status_code == 422
    bad = client.post(URL.format("tex") + "?view=nope", json={"images": [img]}, headers=png_accept)
    assert bad.status_code == 422


def test_maps_as_pngs_and_the_json_size_limit(client: TestClient) -> None:
    img = with_blob(texture(40, 60), 20, 30)
    body = ok(client.post(URL.format("tex"), json={"images": [png(img)], "heatmap": True, "format": "png"}))
    assert decode(body["anomaly_map"][0]).shape == (40, 60)
    assert decode(body["pred_mask"][0]).shape == (40, 60)
    big = png(texture(1100, 1100))
    r = client.post(URL.format("tex"), json={"images": [big], "heatmap": True})
    assert r.status_code == 422 and "format=png" in r.json()["detail"]


def test_multipart_image_field(client: TestClient) -> None:
    raw = base64.b64decode(png(with_blob(texture(40, 40), 20, 20)))
    body = ok(client.post(URL.format("tex"), files={"image": ("photo.png", raw, "image/png")}))
    assert body["sizes"] == [[40, 40]]


def test_v2_runs_the_graphs_at_any_size(client: TestClient) -> None:
    meta = client.get("/v2/models/tex.encoder").json()
    assert meta["inputs"][0]["shape"] == [-1, 1, -1, -1]
    c = httpclient.InferenceServerClient("testserver")  # only to build bodies; sent with the test client
    for h, w in ((16, 16), (48, 80)):
        x = texture(h, w)[None, None].astype(np.float32)
        i = httpclient.InferInput("x", list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=True)
        body, n = c.generate_request_body([i])
        r = client.post("/v2/models/tex.encoder/infer", content=body,
                        headers={"Inference-Header-Content-Length": str(n)})
        assert r.status_code == 200, r.text
        out = httpclient.InferenceServerClient.parse_response_body(
            r.content, header_length=int(r.headers["Inference-Header-Content-Length"]))
        assert out.as_numpy("z").shape == (1, 1, h // 2, w // 2)


def test_a_photo_reduced_while_decoding_still_maps_back_to_its_own_size(client: TestClient) -> None:
    """A 256x128 photo on an 8x8 model is shrunk 8x while decoded; its map must still be 128x256."""
    body = ok(client.post(URL.format("tiny-ae"), json={"images": [png(texture(128, 256))], "heatmap": True,
                                                        "format": "png"}))
    assert body["sizes"] == [[128, 256]] and decode(body["anomaly_map"][0]).shape == (128, 256)
    crop = ok(client.post(URL.format("tiny-ae"), json={"images": [png(texture(128, 256))], "heatmap": True,
                                                        "fit": "crop"}))
    amap = np.asarray(crop["anomaly_map"][0])
    assert amap.shape == (128, 256) and not amap[:, :60].any() and amap[:, 70:190].any()  # the centre only
