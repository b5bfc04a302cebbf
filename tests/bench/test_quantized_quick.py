"""`bench/quantized.py --quick` end to end (slow: it trains the conv VAE for a few steps with twins, gives the
texture models twins, and starts a server): the report, its JSON and its plot carry every row. No timing is
asserted: benchmarks are not tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (.ci/run installs it)"),
    pytest.mark.skipif(not (REPO / "models_store" / "ae-denoising-brick").is_dir(),
                       reason="the texture models are not in models_store/: run `make models`"),
]


@pytest.mark.timeout(1800)
def test_quantized_bench_quick_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "quantized.md"
    cmd = [sys.executable, "bench/quantized.py", "--quick", "--cache", str(tmp_path / "cache"), "--out",
           str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1700)
    assert done.returncode == 0, done.stderr[-4000:]
    md = out.read_text()
    for section in ("## Throughput at batch 64", "## Quality against FP32",
                    "## What onnxruntime's CPU EP runs"):
        assert section in md, section
    for row in ("| in-process | vae-mnist-zero-conv.decoder | int8 |",
                "| service | ae-denoising-brick.decoder | int8 |",
                "| in-process | ae-denoising-brick.encoder | int8 (no passes) |",
                "| service | photo | int8 |",
                "| ae-denoising-gravel | int8 |", "| ae-denoising-brick.decoder | int8 (no passes) |"):
        assert row in md, row
    report = json.loads(out.with_suffix(".json").read_text())
    assert {r["precision"] for r in report["speed"]} == {"fp32", "int8", "fp16", "int8 (no passes)"}
    assert out.with_suffix(".png").stat().st_size > 0
