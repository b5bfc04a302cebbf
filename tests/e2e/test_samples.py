"""The playground's test crops are what docs/samples.py makes from scikit-image's photographs: lower-half
crops only (never what the texture models train on), and the README's defect photo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def test_the_samples_are_fresh() -> None:
    pytest.importorskip("skimage", reason="scikit-image (the train extra) ships the photographs")
    r = subprocess.run([sys.executable, "docs/samples.py", "--check"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_the_samples_are_lower_half_crops() -> None:
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the photographs")
    gravel = np.asarray(skimage_data.gravel())
    crop = np.asarray(Image.open(ROOT / "service/static/samples/gravel.png"))
    assert crop.shape == (256, 256)
    np.testing.assert_array_equal(crop, gravel[256:, 128:384])  # rows 256 to 511: the held-out half
    defects = np.asarray(Image.open(ROOT / "service/static/samples/gravel-defects.png"))
    changed = np.argwhere(defects != crop)
    assert len(changed) > 300 and changed[:, 0].min() >= 50  # the pasted scratch and disc, nothing else
