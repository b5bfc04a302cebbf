"""The DRAEM-style family's own parts (issue 20): synthetic anomalies (training/anomalies.py), the segmenter
at any size, and its losses against independent computations. The registry-parametrized tests cover the rest
(build, forward, loss decreases, export parity, the fcn backbone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from training.anomalies import AnomalySource, Synthesis, perlin, synthesise
from training.data import DataError
from training.models.draem import SegmentationNet, focal_loss, ssim


def test_anomalies_change_the_mask_and_nothing_else() -> None:
    x = torch.rand(16, 1, 32, 32)
    gen = torch.Generator().manual_seed(0)
    x_aug, mask = synthesise(x, AnomalySource.open("", 1), Synthesis(probability=1.0), gen)
    assert mask.shape == (16, 1, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(x_aug[mask.expand_as(x) == 0], x[mask.expand_as(x) == 0])
    assert mask.sum() > 0 and (x_aug != x).any()
    gen0 = torch.Generator().manual_seed(0)
    again = synthesise(x, AnomalySource.open("", 1), Synthesis(probability=1.0), gen0)
    assert torch.equal(again[0], x_aug) and torch.equal(again[1], mask)  # one seed, one batch of anomalies
    none, empty = synthesise(x, AnomalySource.open("", 1), Synthesis(probability=1e-9), gen)
    assert torch.equal(none, x) and not empty.any()


def test_anomaly_sources(tmp_path: Path) -> None:
    photos = AnomalySource.open("skimage:coins+rocket", 3)
    assert len(photos.images) == 2
    assert all(im.shape[0] == 3 and min(im.shape[1:]) == 256 for im in photos.images)
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((40, 90, 3), 200, np.uint8)).save(tmp_path / "a" / "flat.png")
    folder = AnomalySource.open(str(tmp_path), 1)
    assert len(folder.images) == 1 and folder.images[0].shape == (1, 256, 576)
    patch = folder.patch(1, 24, 24, (0.5, 2.0), torch.Generator().manual_seed(1))
    assert patch.shape == (1, 24, 24) and 0 <= float(patch.min()) and float(patch.max()) <= 1
    with pytest.raises(DataError, match="not a folder"):
        AnomalySource.open(str(tmp_path / "missing"), 1)
    with pytest.raises(DataError, match="one of"):
        AnomalySource.open("skimage:brick", 1)  # the textures are the normals, never a source


def test_perlin_noise_is_smooth_at_its_scale() -> None:
    n = perlin(64, 64, 4, 4, torch.Generator().manual_seed(0))
    assert n.shape == (64, 64) and float(n.abs().max()) <= 1.5 and float(n.std()) > 0.1
    assert float((n[1:] - n[:-1]).abs().mean()) < 0.1  # neighbours are close: 16 px per cell


@pytest.mark.parametrize("size", [(32, 32), (37, 50), (1, 1)])
def test_the_segmenter_runs_at_any_size(size: tuple[int, int]) -> None:
    for stride in (1, 2):
        net = SegmentationNet(2, (8, 8, 16), stride=stride).eval()
        with torch.no_grad():
            assert net(torch.rand(2, 2, *size)).shape == (2, 1, *size)


def test_focal_loss_is_bce_at_gamma_0_and_down_weights_easy_pixels() -> None:
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    assert float(focal_loss(logits, target, 0.0)) == pytest.approx(float(bce), rel=1e-6)
    assert float(focal_loss(logits, target, 2.0)) < float(bce)


def test_ssim_against_scikit_image() -> None:
    from skimage.metrics import structural_similarity

    a = torch.rand(1, 1, 48, 48)
    b = (a + 0.1 * torch.rand(1, 1, 48, 48)).clamp(0, 1)
    ref = structural_similarity(a[0, 0].numpy(), b[0, 0].numpy(), gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=1.0)
    assert float(ssim(a, b)) == pytest.approx(ref, abs=0.01)  # the borders differ (replicated, cropped)
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-5)
