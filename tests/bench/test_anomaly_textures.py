"""The texture benchmark's pieces (issue 20): its metrics on inputs whose answers are known, its defects'
masks, and the DRAEM-style family served: a draem model published by the pipeline answers anomaly-score with
its segmenter's map as the heatmap, and the served score is the one the benchmark measures and the one
training calibrates with."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import anomaly_metrics as am  # noqa: E402  (bench/ is a folder of scripts)
import anomaly_textures as bench  # noqa: E402
import texture_defects as td  # noqa: E402

from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402


# --- metrics ------------------------------------------------------------------------------------------------
def test_aupro_of_a_perfect_map_is_one_and_of_an_inverted_one_zero() -> None:
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 10:12, 3:15] = True
    maps = masks.astype(np.float32) + 0.01 * np.random.default_rng(0).random(masks.shape)
    assert am.aupro(masks, maps) == pytest.approx(1.0)
    assert am.aupro(masks, -maps) == pytest.approx(0.0, abs=1e-9)
    assert am.pixel_auroc(masks, maps) == 1.0


def test_aupro_averages_regions_not_pixels() -> None:
    """Two regions, one found (score 1) and one missed (score 0, as the background): up to FPR 0.3 the big
    missed region counts as much as the small found one, so the PRO is 1/2 until the threshold reaches the
    background, and the background's pixels all come at once (one distinct score): the curve is (0, 0),
    (0, 0.5), then straight to (1, 1), cut at 0.3 with PRO 0.5 + 0.5 * 0.3."""
    masks = np.zeros((1, 20, 20), bool)
    masks[0, 0:2, 0:2] = True  # found
    masks[0, 10:20, 10:20] = True  # missed
    maps = np.zeros((1, 20, 20))
    maps[0, 0:2, 0:2] = 1.0
    fpr, pro = am.pro_curve(masks, maps)
    assert fpr.tolist() == pytest.approx([0.0, 0.0, 0.3]) and pro.tolist() == pytest.approx([0.0, 0.5, 0.65])
    assert am.aupro(masks, maps) == pytest.approx((0.5 + 0.65) / 2 * 0.3 / 0.3)


def test_regions_are_eight_connected_and_counted_per_image() -> None:
    masks = np.zeros((2, 6, 6), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region
    masks[1, 4, 4] = True
    lab = am.regions(masks)
    assert lab.max() == 2 and lab[0, 0, 0] == lab[0, 1, 1] == 1 and lab[1, 4, 4] == 2


@pytest.mark.parametrize("kind", [*td.TEST_KINDS, *td.PROXY_KINDS])
def test_each_defect_changes_its_mask_and_only_its_mask(kind: str) -> None:
    img = np.random.default_rng(1).uniform(0.3, 0.7, (128, 128)).astype(np.float32)
    out, mask = td.apply(img, kind, np.random.default_rng(2))
    changed = np.abs(out - img) > 1e-6
    assert mask.any() and out.shape == img.shape and 0 <= out.min() and out.max() <= 1
    assert not (changed & ~mask).any(), "a pixel outside the mask was changed"
    assert changed[mask].mean() > 0.5, "most of the mask must be changed"


def test_the_test_set_is_lower_half_crops_half_defective() -> None:
    from training.data.textures import lower_half

    t = bench.test_set("brick", 0, n=10, size=64)
    assert t["images"].shape == (10, 1, 64, 64) and t["labels"].tolist() == [0, 1] * 5
    assert all(not m.any() for m in t["masks"][::2]) and all(m.any() for m in t["masks"][1::2])
    half = lower_half("brick")
    crop = t["images"][0, 0]
    hits = [(y, x) for y in range(half.shape[0] - 63) for x in range(0, half.shape[1] - 63)
            if np.array_equal(half[y:y + 64, x:x + 64], crop)]
    assert hits, "a normal test crop is a crop of the lower half"
    assert list(t["kinds"][1::2]) == list(td.TEST_KINDS)


# --- the family served --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, object]:
    """A draem model trained for a few steps on brick's upper half and published by the pipeline."""
    import torch

    from training.config import RunSpec, TrainConfig
    from training.pipeline import run

    root = tmp_path_factory.mktemp("draem")
    before = torch.get_num_threads()
    cfg = TrainConfig(model="draem", data="skimage:brick:upper", crop=32, epochs=1, epoch_crops=32,
                      batch_size=8, split=(0.75, 0.25, 0.0), store=str(root / "store"),
                      run_dir=str(root / "run"), name="draem-tiny", progress=False, threads=1, device="cpu")
    res = run(RunSpec(cfg, dict(backbone="fcn", channels=(8, 8), latent_dim=2, seg_channels=(8, 8, 8),
                                seg_stride=2, anomaly_source="skimage:coins")))
    torch.set_num_threads(before)
    return root / "store", "draem-tiny", res.model


@pytest.fixture(scope="module")
def client(published: tuple[Path, str, object]) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store=published[0])), raise_server_exceptions=False) as c:
        yield c  # warm-up on: every graph, the segmenter included, ran on its signature at load


def test_the_served_score_and_map_are_the_benchmarks_and_trainings(
        published: tuple[Path, str, object], client: TestClient) -> None:
    from service.store import scores
    from training import calibrate

    store, name, model = published
    t = bench.test_set("brick", 3, n=2, size=96)
    x = t["images"][1:]  # (1, 1, 96, 96): a defective crop
    r = client.post(f"/v1/models/{name}/anomaly-score", json={"images": x[:, 0].tolist(), "heatmap": True})
    assert r.status_code == 200, r.text
    body = r.json()
    served_map = np.asarray(body["anomaly_map"][0], dtype=np.float32)
    b_scores, b_maps = bench.served_maps(store, name, x)
    assert body["raw"][0] == pytest.approx(float(b_scores[0]), rel=1e-6)
    assert np.allclose(served_map, b_maps[0], atol=1e-6)
    # training's recipe on the torch model: the same map (the segmenter's p(anomalous)) and score
    kind, params = model.anomaly_score()  # type: ignore[attr-defined]
    assert kind == "segmentation"
    _, smap = calibrate.compute_scores(kind, params, calibrate.torch_runner(model), x)  # type: ignore[arg-type]
    assert np.allclose(scores.pixel_map(smap)[0], served_map, atol=1e-4)
    spec = client.get(f"/v1/models/{name}").json()
    assert body["raw"][0] == pytest.approx(float(scores.reduce_map(served_map[None], "top_mean", 0.01)[0]),
                                           rel=1e-5)
    assert 0.0 <= served_map.min() and served_map.max() <= 1.0 and spec["name"] == name
    assert np.asarray(body["pred_mask"][0]).shape == (96, 96) and "thresholds" in body


def test_a_photo_of_any_size_is_mapped_at_its_size(client: TestClient, published: tuple[Path, str, object]
                                                   ) -> None:
    store, name, _ = published
    img = np.random.default_rng(0).uniform(0.2, 0.8, (70, 45)).astype(np.float32)
    r = client.post(f"/v1/models/{name}/anomaly-score", json={"images": [img.tolist()], "heatmap": True})
    body = r.json()
    assert np.asarray(body["anomaly_map"][0]).shape == (70, 45) and body["sizes"] == [[70, 45]]
    b_scores, b_maps = bench.served_maps(store, name, img[None, None])
    assert np.allclose(np.asarray(body["anomaly_map"][0]), b_maps[0], atol=1e-6)
