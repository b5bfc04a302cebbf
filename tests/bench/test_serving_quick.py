"""`bench/serving.py` end to end on a tiny slice (slow: it starts four servers and the HTTP floor app),
checking that the report, its JSON and its plot are written with every configuration and target row. No
timing is asserted: benchmarks are not tests.
"""

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
]


def test_serving_bench_quick_slice_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "serving.md"
    cmd = [sys.executable, "bench/serving.py", "--quick", "--concs", "1", "--c1-starts", "1", "--profile",
           "--only", "sample n=1 [mlp]", "decode n=1024 binary [mlp]", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    md = out.read_text()
    for row in ("| GET /health/live (ceiling) | default | 1 |", "| /v1 sample n=1 [mlp] | pool/on | 1 |",
                "| /v1 sample n=1 [mlp] | pool/off | 1 |", "| /v1 sample n=1 [mlp] | default/off | 1 |",
                "| V2 decode n=1024 binary [mlp] | default | 1 |",
                "(same bytes, no app) | bare uvicorn | 1 |"):
        assert row in md, row
    for ratio in ("| (b) /v1 sample [mlp] / (a) ceiling, default | 1 |", "1 pairs)",
                  "(e) V2 binary n=1024 [mlp] / in-process",
                  "with `ops.sample` stubbed",
                  "(e) bound [mlp]", "batching on / off (pool): /v1 sample n=1 [mlp]",
                  "batching on / off (default): /v1 sample n=1 [mlp]",
                  "default / pool/on: /v1 sample n=1 [mlp]"):
        assert ratio in md, ratio
    assert "## (b) at c=1 over fresh server starts" in md and "| 1 | " in md
    assert "2 pairs)" in md  # the c=1 target reads the main table's pair and the fresh start's
    assert out.with_suffix(".png").stat().st_size > 10_000
    report = json.loads(out.with_suffix(".json").read_text())
    assert [len(st["pairs"]) for st in report["c1_fresh_starts"]] == [1]
    results = report["results"]
    assert {r["server"] for r in results} == {"default", "pool/on", "pool/off", "default/off", "bare"}
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in results)
    sample = [r for r in results if r["scenario"] == "/v1 sample n=1 [mlp]" and r["server"] == "default"]
    assert len(sample[0]["paired_ratios"]) == 1 and sample[0]["paired_ratios"][0] > 0


def test_c1_stub_comparison_runs_every_variant() -> None:
    """bench/c1_stubs.py starts a server per stub and prints one row each (no timing asserted)."""
    done = subprocess.run([sys.executable, "bench/c1_stubs.py", "--reps", "1", "--duration", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["none", "ort", "op", "numpy"]
    assert all(float(r.split("|")[-2]) > 0 for r in rows)
