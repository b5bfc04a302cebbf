"""Class-conditional generation on /v1 and V2 (issue 18), against linear conditional models whose answers
numpy recomputes: sample by label, decode and encode with labels, interpolate between labels at one style,
restyle, the 422 that lists the labels, V2 metadata and config that name the label set."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from storebuilder import CondWeights, build_conditional_model, build_model

from service.app import create_app
from service.settings import Settings

SHAPE = (1, 8, 8)
NAMES = ["a", "b", "c", "7"]  # "7" is a name at index 3: names win over indices


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, CondWeights]]:
    root = tmp_path_factory.mktemp("cond") / "store"
    _, cvae = build_conditional_model(root, "cvae", seed=1)
    _, saae = build_conditional_model(root, "saae", encoder_label=False, seed=2)
    _, prio = build_conditional_model(root, "prio", encoder_label=False, class_priors=True, seed=3)
    build_model(root, "plain", 1, seed=4)
    return root, {"cvae": cvae, "saae": saae, "prio": prio}


@pytest.fixture(scope="module")
def client(models: tuple[Path, dict[str, CondWeights]]) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store=models[0], max_items=64)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def w(models: tuple[Path, dict[str, CondWeights]]) -> dict[str, CondWeights]:
    return models[1]


def post(client: TestClient, model: str, op: str, **body: Any) -> Any:
    r = client.post(f"/v1/models/{model}/{op}", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def one_hot(idx: list[int], k: int = len(NAMES)) -> np.ndarray:
    return np.eye(k)[idx]


def test_sample_by_label_draws_that_class(client: TestClient, w: dict[str, CondWeights]) -> None:
    for label, index in ((1, 1), ("b", 1), ("7", 3), (3, 3)):
        out = post(client, "saae", "sample", n=5, label=label, seed=11)
        assert out["labels"] == [NAMES[index]] * 5
        z = np.asarray(out["latents"], np.float32)
        want = w["saae"].decode(z, one_hot([index] * 5), SHAPE)
        np.testing.assert_allclose(out["images"], want, atol=1e-5)


def test_a_list_of_labels_is_one_per_image_and_n_follows_it(client: TestClient) -> None:
    out = post(client, "cvae", "sample", label=["a", 2, "7"], seed=0)
    assert out["shape"][0] == 3 and out["labels"] == ["a", "c", "7"]
    r = client.post("/v1/models/cvae/sample", json={"n": 4, "label": ["a", "b"]})
    assert r.status_code == 422 and "2 labels for 4 images" in r.json()["detail"]


def test_the_same_seed_draws_the_same_styles_with_or_without_labels(client: TestClient) -> None:
    drawn = post(client, "saae", "sample", n=6, seed=5)
    given = post(client, "saae", "sample", n=6, seed=5, label="c")
    assert drawn["latents"] == given["latents"]
    assert set(drawn["labels"]) <= set(NAMES) and given["labels"] == ["c"] * 6
    assert post(client, "saae", "sample", n=6, seed=5) == drawn  # the classes drawn are the seed's too


def test_shared_style_is_one_code_drawn_as_each_class(client: TestClient, w: dict[str, CondWeights]) -> None:
    out = post(client, "saae", "sample", label=[0, 1, 2, 3], shared_style=True, seed=9)
    z = np.asarray(out["latents"], np.float32)
    assert (z == z[0]).all()
    np.testing.assert_allclose(out["images"], w["saae"].decode(z, one_hot([0, 1, 2, 3]), SHAPE), atol=1e-5)
    images = np.asarray(out["images"])
    assert all(np.abs(images[i] - images[j]).max() > 0.05 for i in range(4) for j in range(i))


def test_class_priors_draw_each_class_from_its_own(client: TestClient) -> None:
    out = post(client, "prio", "sample", label=[0, 1, 2, 3, 3], seed=1)
    z = np.asarray(out["latents"])
    np.testing.assert_allclose(z.mean(axis=1), [0.0, 3.0, 6.0, 9.0, 9.0], atol=0.5)
    shared = np.asarray(post(client, "prio", "sample", label=[0, 3], shared_style=True, seed=1)["latents"])
    np.testing.assert_allclose(shared[1] - shared[0], 9.0, atol=1e-4)  # the same noise, each class's mean


@pytest.mark.parametrize("label", ["z", 4, -1, "04", True, 1.5, ["a", None], [], "b" * 300])
def test_an_unknown_label_is_a_422_that_lists_the_labels(client: TestClient, label: Any) -> None:
    r = client.post("/v1/models/saae/sample", json={"n": 2, "label": label})
    assert r.status_code == 422, r.text
    body = r.json()
    if isinstance(label, (bool, float)) or label == ["a", None]:
        return  # refused by the request model: not a name or an index at all
    assert len(body["detail"]) < 400
    if label != []:
        assert body["labels"] == NAMES and "'a', 'b', 'c', '7'" in body["detail"], body


def test_labels_on_an_unconditional_model_and_none_on_a_conditional_one(client: TestClient) -> None:
    r = client.post("/v1/models/plain/sample", json={"n": 2, "label": 1})
    assert r.status_code == 422 and "not conditional" in r.json()["detail"]
    r = client.post("/v1/models/cvae/decode", json={"latents": [[0.0, 0.0, 0.0]]})
    assert r.status_code == 422 and "needs a label" in r.json()["detail"] and r.json()["labels"] == NAMES


def test_decode_and_encode_with_labels(client: TestClient, w: dict[str, CondWeights]) -> None:
    z = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)
    out = post(client, "cvae", "decode", latents=z.tolist(), label=["7", "a", "b"])
    np.testing.assert_allclose(out["images"], w["cvae"].decode(z, one_hot([3, 0, 1]), SHAPE), atol=1e-5)
    same = post(client, "cvae", "decode", latents=z.tolist(), label="b")
    np.testing.assert_allclose(same["images"], w["cvae"].decode(z, one_hot([1] * 3), SHAPE), atol=1e-5)
    r = client.post("/v1/models/cvae/decode", json={"latents": z.tolist(), "label": ["a", "b"]})
    assert r.status_code == 422

    x = np.asarray(out["images"], np.float32)
    enc = post(client, "cvae", "encode", images=x.tolist(), label=[3, 0, 1])
    np.testing.assert_allclose(enc["mean"], w["cvae"].encode(x, one_hot([3, 0, 1])), atol=1e-4)
    r = client.post("/v1/models/cvae/encode", json={"images": x.tolist()})
    assert r.status_code == 422 and "encoder needs a label" in r.json()["detail"]
    # a supervised AAE's encoder takes no label: its code is the style either way
    enc = post(client, "saae", "encode", images=x.tolist())
    np.testing.assert_allclose(enc["mean"], w["saae"].encode(x, None), atol=1e-4)


def test_interpolate_between_two_labels_at_one_style(client: TestClient, w: dict[str, CondWeights]) -> None:
    out = post(client, "saae", "interpolate", label=["a", "7"], steps=5, seed=3)
    z, t = np.asarray(out["latents"], np.float32), np.asarray(out["t"])
    assert (z == z[0]).all() and out["labels"] == ["a", "7"] and out["seed"] == 3
    y = np.outer(1 - t, one_hot([0])[0]) + np.outer(t, one_hot([3])[0])
    np.testing.assert_allclose(out["images"], w["saae"].decode(z, y, SHAPE), atol=1e-5)
    assert post(client, "saae", "interpolate", label=["a", "7"], steps=5, seed=3) == out

    # one label holds the class along a latent path; both ends or neither
    held = post(client, "saae", "interpolate", start=[0, 0, 0], end=[1, 1, 1], steps=3, label="c")
    np.testing.assert_allclose(held["images"], w["saae"].decode(np.asarray(held["latents"]),
                                                               one_hot([2] * 3), SHAPE), atol=1e-5)
    for body in ({"label": ["a", "b"], "start": [0, 0, 0]}, {"label": "a"}, {"label": ["a", "b", "c"]},
                 {"start": [0, 0, 0], "end": [1, 1, 1]}):
        assert client.post("/v1/models/saae/interpolate", json=body).status_code == 422, body


def test_interpolate_from_images_encodes_each_end_with_its_class(client: TestClient,
                                                                 w: dict[str, CondWeights]) -> None:
    x = np.random.default_rng(1).uniform(0, 1, (2, *SHAPE[1:])).astype(np.float32)
    out = post(client, "cvae", "interpolate", start=x[0].tolist(), end=x[1].tolist(), label=["b", "c"],
               steps=4)
    z = np.asarray(out["latents"])
    np.testing.assert_allclose(z[0], w["cvae"].encode(x[:1, None], one_hot([1]))[0], atol=1e-4)
    np.testing.assert_allclose(z[-1], w["cvae"].encode(x[1:, None], one_hot([2]))[0], atol=1e-4)


def test_restyle_draws_each_image_as_other_classes(client: TestClient, w: dict[str, CondWeights]) -> None:
    x = np.random.default_rng(2).uniform(0, 1, (2, *SHAPE)).astype(np.float32)
    out = post(client, "saae", "restyle", images=x.tolist())
    assert out["shape"] == [8, *SHAPE] and out["labels"] == NAMES * 2 and out["source"] == [0] * 4 + [1] * 4
    style = w["saae"].encode(x, None)
    np.testing.assert_allclose(out["style"], style, atol=1e-4)
    want = w["saae"].decode(np.repeat(style, 4, axis=0), one_hot([0, 1, 2, 3] * 2), SHAPE)
    np.testing.assert_allclose(out["images"], want, atol=1e-4)

    one = post(client, "cvae", "restyle", images=x.tolist(), label="7", source_label=["a", "b"])
    style = w["cvae"].encode(x, one_hot([0, 1]))
    np.testing.assert_allclose(one["images"], w["cvae"].decode(style, one_hot([3, 3]), SHAPE), atol=1e-4)
    r = client.post("/v1/models/cvae/restyle", json={"images": x.tolist(), "label": "7"})
    assert r.status_code == 422 and "needs a label" in r.json()["detail"]
    r = client.post("/v1/models/plain/restyle", json={"images": x.tolist()})
    assert r.status_code == 409 and r.json()["capability"] == "restyle"


def test_restyle_png_grid_is_one_row_per_image_with_the_image_first(client: TestClient) -> None:
    x = np.random.default_rng(3).uniform(0, 1, (3, *SHAPE)).astype(np.float32)
    r = client.post("/v1/models/saae/restyle", json={"images": x.tolist()}, headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = np.asarray(Image.open(io.BytesIO(r.content)))
    rows, cols = 3, len(NAMES) + 1
    assert img.shape[0] >= rows * 8 and img.shape[1] >= cols * 8
    assert img.shape[1] / img.shape[0] == pytest.approx(cols / rows, rel=0.1)


def test_restyle_takes_a_form_with_a_label_field(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(buf, format="PNG")
    r = client.post("/v1/models/saae/restyle", files=[("images", ("x.png", buf.getvalue(), "image/png"))],
                    data={"label": "b", "format": "png"})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == ["b"] and base64.b64decode(r.json()["images"][0])[:4] == b"\x89PNG"


def test_sixteen_sevens_as_a_png_grid(client: TestClient) -> None:
    r = client.post("/v1/models/saae/sample", json={"n": 16, "label": "7", "seed": 0},
                    headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_model_detail_names_the_labels(client: TestClient) -> None:
    d = client.get("/v1/models/cvae").json()
    assert d["labels"] == NAMES and "restyle" in d["capabilities"]
    assert d["conditioning"] == {"inputs": {"decoder": "y", "encoder": "y"}, "class_priors": None}
    assert client.get("/v1/models/prio").json()["conditioning"]["class_priors"] == ["gaussian"] * 4
    listed = {m["name"]: m["labels"] for m in client.get("/v1/models").json()["models"]}
    assert listed["saae"] == NAMES and listed["plain"] is None


def test_v2_decoder_takes_y_and_its_metadata_names_the_label_set(client: TestClient,
                                                                 w: dict[str, CondWeights]) -> None:
    meta = client.get("/v2/models/cvae.decoder").json()
    y = next(t for t in meta["inputs"] if t["name"] == "y")
    assert y["shape"] == [-1, 4] and json.loads(y["parameters"]["labels"]) == NAMES
    assert "parameters" not in next(t for t in meta["inputs"] if t["name"] == "z")
    cfg = client.get("/v2/models/cvae.decoder/config").json()
    assert json.loads(cfg["parameters"]["labels"]["string_value"]) == NAMES
    assert cfg["parameters"]["label_input"] == {"string_value": "y"}
    assert "parameters" not in client.get("/v2/models/plain.decoder/config").json()

    z = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    yy = one_hot([3, 1]).astype(np.float32)
    body = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [2, 3], "data": z.ravel().tolist()},
                       {"name": "y", "datatype": "FP32", "shape": [2, 4], "data": yy.ravel().tolist()}]}
    out = client.post("/v2/models/cvae.decoder/infer", json=body).json()["outputs"][0]
    got = np.reshape(out["data"], out["shape"])
    np.testing.assert_allclose(got, w["cvae"].decode(z, yy, SHAPE), atol=1e-5)
    body["inputs"].pop()
    r = client.post("/v2/models/cvae.decoder/infer", json=body)
    assert r.status_code == 400 and "y" in r.json()["error"]
