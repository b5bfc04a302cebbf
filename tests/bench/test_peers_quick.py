"""`bench/peers.py --quick` end to end (slow: it builds the peers' venvs once, then starts nine servers),
checking that the report, its JSON and its plot carry every row, every answer check and every target. No
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
sys.path.insert(0, str(REPO / "bench"))

import peers  # noqa: E402  (bench/ is a folder of scripts)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (.ci/run installs it)"),
    pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed"),
]


@pytest.fixture(scope="module")
def venvs() -> None:
    """The peers' cached venvs (built here the first time, a few minutes); skip when pip cannot build them."""
    done = subprocess.run(
        [sys.executable, "bench/peers.py", "--build"], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        pytest.skip(
            "the peers' venvs cannot be built here (no package registry, or no wheel for this "
            "Python): " + done.stderr[-800:]
        )


@pytest.mark.timeout(2400)
def test_peers_quick_writes_every_row(venvs: None, tmp_path: Path) -> None:
    out = tmp_path / "peers.md"
    done = subprocess.run(
        [sys.executable, "bench/peers.py", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    md = out.read_text()
    servers = {s.key: s for s in peers.servers()}
    for row in peers.rows():
        label = peers.row_label(row, servers[row.server])
        assert f"| {label} | {row.route} | 16 |" in md, (label, row.route)
    assert "## Not run" not in md
    for peer in peers.PEERS.values():
        assert f"| {peer.name} | " in md
    for target in peers.targets([16]):
        if target.c == 16:
            assert f"| {target.name} | 16 | " in md, target.name
    assert "| ours (python -m service, as shipped) | V2 infer JSON b=1 | max abs diff" in md
    assert "## Where our time goes" in md and "| where | share |" in md
    assert out.with_suffix(".png").stat().st_size > 10_000
    report = json.loads(out.with_suffix(".json").read_text())
    assert {r["row"] for r in report["results"]} == {r.key for r in peers.rows()}
    assert all(run["errors"] == 0 and run["requests"] > 0 for r in report["results"] for run in r["runs"])
    assert all(set(p["cpus_allowed"]) == {"0"} for p in report["pinning"].values())
    assert all(c["max_abs_diff"] <= peers.TOLERANCE for c in report["checks"].values() if c["compared"])
