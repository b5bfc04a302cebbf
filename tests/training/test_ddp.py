"""Distributed training: `torchrun --nproc_per_node=2 -m training fit ...` on CPU (gloo) is the same trainer;
both ranks end with identical weights and exactly one version is published (by rank 0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from service.store.layout import STAGING_PREFIX, version_numbers
from service.store.manifest import Manifest

ROOT = Path(__file__).parents[2]

TOML = """
[train]
model = "ae"
data = "synthetic"
epochs = 2
steps_per_epoch = 4
batch_size = 16
device = "cpu"
threads = 1
name = "ddp-ae"
progress = false
[model]
latent_dim = 3
hidden = [32, 16]
"""


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_identical_weights_one_version(tmp_path: Path) -> None:
    cfg = tmp_path / "ddp.toml"
    cfg.write_text(TOML)
    store, run_dir = tmp_path / "store", tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training", "fit", str(cfg), "--store", str(store), "--run_dir", str(run_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    w0 = torch.load(run_dir / "weights-rank0.pt", weights_only=True)
    w1 = torch.load(run_dir / "weights-rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys() and len(w0) > 0
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks disagree on {k}"

    assert version_numbers(store / "ddp-ae") == [1]
    assert not any(p.name.startswith(STAGING_PREFIX) for p in (store / "ddp-ae").iterdir())
    m = Manifest.model_validate_json((store / "ddp-ae" / "1" / "manifest.json").read_text())
    assert m.metrics["world_size"] == 2
    # Only rank 0 logs: one line per epoch, not two.
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    # And what was published is the ranks' model.
    import numpy as np
    import onnxruntime as ort

    from training.models import build

    model = build("ae", hidden=(32, 16), latent_dim=3).eval()
    model.load_state_dict(w0)
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    sess = ort.InferenceSession(str(store / "ddp-ae" / "1" / "encoder.onnx"))
    with torch.no_grad():
        ref = model.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, atol=1e-4)
