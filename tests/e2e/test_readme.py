"""The README is true (issue 17): its API examples run as written against a live server over the shipped
store (docs/readme_examples.py), every answer has the status and the keys the README shows, and its pictures
are the bytes those commands make today (`make docs` rewrites them)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs"))

import readme_examples  # noqa: E402

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl")]


def test_the_readme_examples_hold_against_a_live_server() -> None:
    blocks = readme_examples.blocks(readme_examples.README.read_text())
    commands = [c for b in blocks for c in b.commands]
    assert len(commands) >= 20 and sum(b.lang == "python" for b in blocks) >= 2
    assert {c.picture for c in commands} >= {"docs/sample-grid.png", "docs/interpolation-strip.png"}
    with readme_examples.live_server() as url:
        found = readme_examples.check(url)
    assert not found, "\n".join(found)


def test_the_harness_notices_a_wrong_example(tmp_path: Path) -> None:
    """The check can fail: an example answer that names a key the service does not send is reported."""
    text = "```bash\ncurl -s $API/health/live\n# {\"status\":\"live\",\"uptime\":1}\n```\n"
    (block,) = readme_examples.blocks(text)
    result = readme_examples.Result(block.commands[0], '{"status":"live"}', [200], 0)
    (problem,) = readme_examples.problems([result], text.split("\n"), tmp_path)
    assert "uptime" in problem
    bad = readme_examples.Result(block.commands[0], '{"status":"live"}', [503], 0)
    assert "HTTP [503]" in readme_examples.problems([bad], text.split("\n"), tmp_path)[0]
