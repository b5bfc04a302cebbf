"""The playground's photo view in a real browser (issue 15): a lower-half test crop scored at its own size,
the map over it, the mask, the regions, a pasted defect found, and the pixel threshold slider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def scored(page: Any) -> int:
    return int(page.locator("#panel-photo").get_attribute("data-scored") or 0)


def wait_scored(page: Any, after: int) -> None:
    page.wait_for_function(
        f"() => Number(document.querySelector('#panel-photo').dataset.scored || 0) > {after}", timeout=30_000)


def native_model(server: Any) -> dict[str, Any] | None:
    for m in server.models:
        detail = __import__("httpx").get(f"{server.url}/v1/models/{m['name']}", timeout=10).json()
        if detail.get("spatial") and "anomaly-score" in m["capabilities"]:
            return detail  # type: ignore[no-any-return]
    return None


def test_a_test_crop_is_scored_at_its_size_and_a_pasted_blob_is_found(page: Any, server: Any,
                                                                       artifacts: Path) -> None:
    model = native_model(server)
    if model is None:
        pytest.skip("the store has no fully convolutional anomaly model (the texture models: make models)")
    tex = next((t for t in ("brick", "grass", "gravel") if t in model["name"]), "brick")
    page.goto(f"/?model={model['name']}#photo")
    page.wait_for_selector("body[data-ready='true']")
    page.select_option("#photo-sample", tex)
    wait_scored(page, 0)
    assert page.locator("#photo-size").inner_text() == "256 × 256"
    size = page.locator("#photo-overlay").evaluate("(c) => [c.width, c.height]")
    assert size == [256, 256]
    before = float(page.locator("#photo-raw").inner_text())
    n = scored(page)
    page.click("#photo-blob")
    wait_scored(page, n)
    after = float(page.locator("#photo-raw").inner_text())
    assert after > before, (before, after)
    assert int(page.locator("#photo-region-count").inner_text()) >= 1
    assert page.locator("#photo-regions tbody tr").count() >= 1
    page.screenshot(path=str(artifacts / "playground-photo.png"), full_page=True)
    # the pixel threshold slider: higher, fewer mask pixels
    mask_on = page.locator("#photo-mask").evaluate(
        "(c) => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 127; return n; }")
    n = scored(page)
    page.locator("#photo-threshold").focus()
    for _ in range(60):
        page.keyboard.press("ArrowRight")
    wait_scored(page, n)
    page.wait_for_timeout(300)
    mask_high = page.locator("#photo-mask").evaluate(
        "(c) => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 127; return n; }")
    assert mask_high <= mask_on, (mask_on, mask_high)
    assert page.console_log.errors == []


def test_a_fixed_size_model_scores_a_photo_letterboxed(page: Any, server: Any) -> None:
    model = server.model("anomaly-score", prefer=("ae-digits",))
    page.goto(f"/?model={model['name']}#photo")
    page.wait_for_selector("body[data-ready='true']")
    page.select_option("#photo-sample", "gravel")
    wait_scored(page, 0)
    assert page.locator("#photo-overlay").evaluate("(c) => [c.width, c.height]") == [256, 256]
    assert page.locator("#photo-badge").inner_text() in ("Normal", "Anomalous")
    assert page.console_log.errors == []
