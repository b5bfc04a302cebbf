"""The soak benchmark runs end to end on a tiny store and finds no unexpected errors (no timing asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.e2e
def test_tiny_soak_runs_clean(fixture_store: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("soak", ROOT / "bench/soak.py")
    assert spec is not None and spec.loader is not None
    soak = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = soak  # dataclasses look their module up there
    spec.loader.exec_module(soak)
    out = tmp_path / "soak.md"
    code = soak.main(["--requests", "300", "--concurrency", "16", "--store", str(fixture_store),
                      "--out", str(out)])
    report = out.read_text()
    assert "**unexpected errors: 0**" in report, report
    assert "300 requests at concurrency 16 over 5 models" in report
    for kind in ("encode", "sample", "v2-infer", "err-401", "err-413", "err-422"):
        assert f"| {kind} |" in report
    assert (tmp_path / "soak.png").stat().st_size > 1000
    assert code in (0, 1)  # 1 only if RSS grew by 10% or more, which 300 requests cannot judge
