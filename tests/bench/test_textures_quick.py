"""`bench/anomaly_textures.py --quick` end to end (slow: it trains our family and the plain AE for a few
steps, and anomalib's DRAEM for one step in its own venv, built here the first time): the report, its JSON
and its figures carry every row. Our rows are checked first; where anomalib's venv cannot be built, the test
then skips, saying why. With anomalib there, our metrics must equal anomalib's own on its maps. No timing is
asserted: benchmarks are not tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.mark.timeout(2400)
def test_textures_quick_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "textures.md"
    done = subprocess.run(
        [sys.executable, "bench/anomaly_textures.py", "--quick", "--out", str(out), "--work",
         str(tmp_path / "w")], cwd=REPO, capture_output=True, text=True, timeout=2300)
    assert done.returncode == 0, done.stderr[-4000:]
    md = out.read_text()
    report = json.loads(out.with_suffix(".json").read_text())
    rows = report["rows"]
    for method in ("ours", "ae", "pca", "nn"):
        run = rows[method]["textures"]["brick"]["seeds"]["0"]
        assert "error" not in run, (method, run)
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert 0.0 <= run[key] <= 1.0, (method, key, run[key])
    assert rows["ours"]["textures"]["brick"]["seeds"]["0"]["steps"] > 0
    assert "| ours: DRAEM-style (draem-<texture>) |" in md and "| PCA on patches |" in md
    for fig in ("grid-brick.png", "roc-brick.png"):
        assert (tmp_path / "textures" / fig).stat().st_size > 5_000, fig
    if "anomalib" in report["meta"]["not_run"]:
        why = report["meta"]["not_run"]["anomalib"][-800:]
        pytest.skip(f"anomalib's venv could not be built here: {why}")
    peer = rows["anomalib"]["textures"]["brick"]["seeds"]["0"]
    assert "error" not in peer, peer
    assert peer["steps"] >= 1 and "anomalib 2.7.0 Draem" in md
    for key in ("image_auroc", "pixel_auroc", "aupro"):  # ours against anomalib's own metric code
        assert peer[key] == pytest.approx(peer["anomalib_metrics"][key], abs=1e-4), key
