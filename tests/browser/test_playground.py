"""The playground page in a real browser, against the real server and the shipped zoo.

Each test drives one view the way a person would (select, type, click, draw with the mouse) and asserts on
what the page shows: pixels on canvases, scores, frame counts and error messages. A screenshot of each view
is kept under tests/artifacts/ for a human to look at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

# Each test drives a real browser against a real server: seconds each, so `slow` as well as `browser`.
pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Reads each canvas back as grey levels in [0, 1]: (width, height, values) per canvas.
CANVAS_PIXELS = """(canvases) => canvases.map((c) => {
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const v = [];
  for (let i = 0; i < d.length; i += 4) v.push((d[i] + d[i + 1] + d[i + 2]) / 765);
  return [c.width, c.height, v];
})"""

PREFER_DRAW = ("vae-digits", "ae-digits", "aae-digits", "wae-digits")


def pixels(page: Any, selector: str) -> list[tuple[int, int, list[float]]]:
    return [tuple(x) for x in page.locator(selector).evaluate_all(CANVAS_PIXELS)]


def std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


def open_view(page: Any, model: str, view: str) -> None:
    page.goto(f"/?model={model}#{view}")
    page.wait_for_selector("body[data-ready='true']")


def set_range(page: Any, selector: str, value: float) -> None:
    """Move a range slider as a person would: the value changes and an input event fires."""
    page.locator(selector).evaluate(
        "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', { bubbles: true })); }", value
    )


def draw_stroke(page: Any, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through `points`, given as fractions of the drawing pad's size."""
    box = page.locator("#draw-pad").bounding_box()
    at = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for (x0, y0), (x1, y1) in zip(at, at[1:], strict=False):
        for k in range(1, 9):
            page.mouse.move(x0 + (x1 - x0) * k / 8, y0 + (y1 - y0) * k / 8)
    page.mouse.up()


def test_page_loads_without_console_errors(page: Any, server: Any, artifacts: Path) -> None:
    page.goto("/")
    page.wait_for_selector("body[data-ready='true']")
    assert page.title() == "latentserve playground"
    options = page.locator("#model-select option").all_inner_texts()
    assert len(options) == len(server.models)
    first = server.models[0]
    assert page.locator("#model-title").inner_text() == first["name"]
    assert page.locator("#model-family").inner_text() == first["family"].upper()
    chips = page.locator("#model-caps .chip.on").all_inner_texts()
    assert sorted(chips) == sorted(first["capabilities"])
    assert page.locator("#model-metrics > div").count() > 0, "the zoo's models carry metrics"
    assert not page.locator("#global-error").is_visible()
    page.screenshot(path=str(artifacts / "playground-overview.png"), full_page=True)
    assert page.console_log.errors == []


def test_sampling_renders_nonblank_images_and_repeats_with_a_seed(
    page: Any, server: Any, artifacts: Path
) -> None:
    model = server.model("sample", prefer=("gan-digits", "vae-digits"))
    open_view(page, model["name"], "sample")
    page.fill("#sample-n", "9")
    page.fill("#sample-seed", "5")
    set_range(page, "#sample-temperature", 0.8)
    page.click("#sample-go")
    page.wait_for_function("() => document.querySelectorAll('#sample-grid canvas').length === 9")
    page.wait_for_selector("#panel-sample[aria-busy='false']")
    first = pixels(page, "#sample-grid canvas")
    _, h, w = model["shape"]
    assert all((cw, ch) == (w, h) for cw, ch, _ in first), "one canvas pixel per model pixel"
    assert all(std(v) > 0.05 for _, _, v in first), "every sample shows structure, not a flat image"
    page.screenshot(path=str(artifacts / "playground-sample.png"), full_page=True)

    page.click("#sample-go")  # same seed, same grid
    page.wait_for_selector("#panel-sample[aria-busy='false']")
    assert pixels(page, "#sample-grid canvas") == first
    page.fill("#sample-seed", "6")
    page.click("#sample-go")
    page.wait_for_function(
        "(old) => { const c = document.querySelector('#sample-grid canvas');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " return Array.from(d).filter((_, i) => i % 4 === 0).join() !== old; }",
        arg=",".join(str(round(v * 255)) for v in first[0][2]),
    )
    assert pixels(page, "#sample-grid canvas") != first
    assert page.console_log.errors == []


def test_drawing_gives_a_score_verdict_and_heatmap(page: Any, server: Any, artifacts: Path) -> None:
    model = server.model("reconstruct", "anomaly-score", prefer=PREFER_DRAW)
    open_view(page, model["name"], "draw")
    # A "7": a top bar, then a diagonal down to the left.
    draw_stroke(page, [(0.3, 0.2), (0.7, 0.2), (0.45, 0.85)])
    page.wait_for_selector("#draw-verdict:not([hidden])")
    page.wait_for_selector("#panel-draw[aria-busy='false']")
    badge = page.locator("#draw-badge").inner_text().strip()
    assert badge in ("Normal", "Anomalous")
    raw = float(page.locator("#draw-raw").inner_text())
    threshold = float(page.locator("#draw-threshold").inner_text())
    assert badge == ("Anomalous" if raw > threshold else "Normal")
    assert 0.0 <= float(page.locator("#draw-meter").get_attribute("aria-valuenow")) <= 1.0

    _, h, w = model["shape"]
    [(iw, ih, drawn)] = pixels(page, "#draw-input")
    assert (iw, ih) == (w, h) and std(drawn) > 0.1, "the drawing reaches the model at its size, with ink"
    [(rw, rh, recon)] = pixels(page, "#draw-recon")
    assert (rw, rh) == (w, h) and std(recon) > 0.01
    colours = page.locator("#draw-heatmap").evaluate(
        "(c) => new Set(Array.from({ length: c.width * c.height }, (_, i) =>"
        " c.getContext('2d').getImageData(i % c.width, Math.floor(i / c.width), 1, 1).data.join())).size"
    )
    assert page.locator("#draw-heatmap").evaluate("(c) => [c.width, c.height]") == [w, h]
    assert colours > 3, "the heatmap varies across pixels"
    assert page.locator("#draw-legend").is_visible()
    page.screenshot(path=str(artifacts / "playground-draw.png"), full_page=True)

    # A solid block is nothing like a digit: it must be flagged, clearly.
    page.click("#draw-clear")
    page.locator("#draw-brush").evaluate("(el) => { el.value = '48'; el.dispatchEvent(new Event('input')); }")
    draw_stroke(page, [(0.05 + 0.1 * (k % 2) * 9, 0.05 + 0.05 * k) for k in range(19)])
    page.wait_for_function("() => document.querySelector('#draw-badge').textContent === 'Anomalous'")
    assert float(page.locator("#draw-normalised").inner_text()) > 0.5
    assert page.console_log.errors == []


def test_interpolation_strip_has_the_requested_frames(page: Any, server: Any, artifacts: Path) -> None:
    model = server.model("interpolate", "sample", prefer=("vae-digits",))
    open_view(page, model["name"], "interpolate")
    page.wait_for_selector("#interp-start .frame:not(.empty)")
    for method, steps in (("linear", 7), ("slerp", 12)):
        page.check(f"input[name='method'][value='{method}']")
        set_range(page, "#interp-steps", steps)
        assert page.locator("#interp-steps-out").inner_text() == str(steps)
        page.click("#interp-go")
        page.wait_for_function(f"() => document.querySelectorAll('#interp-strip canvas').length === {steps}")
        page.wait_for_selector("#panel-interpolate[aria-busy='false']")
        frames = pixels(page, "#interp-strip canvas")
        assert len(frames) == steps
        assert all(std(v) > 0.02 for _, _, v in frames)
        assert frames[0][2] != frames[-1][2], "the strip goes somewhere"
        # Endpoints included: the first and last frames are the two ends, up to PNG rounding.
        [(_, _, start)] = pixels(page, "#interp-start canvas")
        [(_, _, end)] = pixels(page, "#interp-end canvas")
        assert max(abs(a - b) for a, b in zip(frames[0][2], start, strict=True)) <= 2 / 255
        assert max(abs(a - b) for a, b in zip(frames[-1][2], end, strict=True)) <= 2 / 255
        captions = page.locator("#interp-strip figcaption").all_inner_texts()
        assert captions[0] == "0.00" and captions[-1] == "1.00"
    page.screenshot(path=str(artifacts / "playground-interpolate.png"), full_page=True)
    assert page.console_log.errors == []


def test_denoise_shows_noisy_and_clean_side_by_side(page: Any, server: Any, artifacts: Path) -> None:
    model = server.model("denoise", "sample", prefer=("ae-denoising-digits", "vae-digits"))
    open_view(page, model["name"], "sample")
    page.click("#sample-actions [data-use='denoise']")
    page.select_option("#denoise-kind", "salt-and-pepper")
    set_range(page, "#denoise-level", 0.25)
    page.click("#denoise-go")
    page.wait_for_function("() => document.querySelector('#denoise-result').width > 0")
    page.wait_for_selector("#panel-denoise[aria-busy='false']")
    [(_, _, clean)] = pixels(page, "#denoise-clean")
    [(_, _, noisy)] = pixels(page, "#denoise-noisy")
    [(_, _, out)] = pixels(page, "#denoise-result")
    assert noisy != clean, "noise was added"
    assert std(out) > 0.02
    page.screenshot(path=str(artifacts / "playground-denoise.png"), full_page=True)
    assert page.console_log.errors == []


def test_latent_sliders_decode_live(page: Any, server: Any, artifacts: Path) -> None:
    small = [m for m in server.models if "decode" in m["capabilities"] and m["latent_dim"] <= 16]
    if not small:
        pytest.fail("the zoo should have a model with a latent of 16 dimensions or fewer")
    model = next((m for m in small if m["name"] == "vae-digits"), small[0])
    open_view(page, model["name"], "latent")
    page.wait_for_function("() => document.querySelector('#latent-image').width > 0")
    page.wait_for_function("() => document.querySelectorAll('#latent-sweep canvas').length === 49")
    [(_, _, before)] = pixels(page, "#latent-image")
    page.focus("#latent-x")
    for _ in range(30):
        page.keyboard.press("ArrowRight")  # keyboard use: the slider moves and the image follows
    page.wait_for_function(
        "(old) => { const c = document.querySelector('#latent-image');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " return Array.from(d).filter((_, i) => i % 4 === 0).join() !== old; }",
        arg=",".join(str(round(v * 255)) for v in before),
    )
    assert page.locator("#latent-sweep canvas.current").count() == 1
    page.screenshot(path=str(artifacts / "playground-latent.png"), full_page=True)
    assert page.console_log.errors == []


def test_api_errors_are_shown_as_readable_messages(page: Any, server: Any, artifacts: Path) -> None:
    page.goto("/?model=no-such-model")
    page.wait_for_selector("body[data-ready='true']")
    error = page.locator("#global-error")
    assert error.is_visible()
    text = error.inner_text()
    assert "no-such-model" in text and "Unknown model" in text, text
    assert page.locator("#model-select option").count() == len(server.models), "the page still works"
    # one model everywhere: the dropdown, the card, the URL; and its buttons follow its capabilities
    shown = page.locator("#model-select").input_value()
    assert page.locator("#model-title").inner_text() == shown
    assert f"model={shown}" in page.url

    model = server.model("sample")
    open_view(page, model["name"], "sample")
    page.fill("#sample-n", "100000")  # far above the server's items-per-request limit
    page.click("#sample-go")
    problem = page.locator("#panel-sample .problem")
    problem.wait_for(state="visible")
    text = problem.inner_text()
    assert "413" in text and "100000" in text, text
    page.screenshot(path=str(artifacts / "playground-error.png"), full_page=True)
    page.fill("#sample-n", "4")  # and it recovers
    page.click("#sample-go")
    page.wait_for_function("() => document.querySelectorAll('#sample-grid canvas').length === 4")
    assert not problem.is_visible()


def test_accessible_controls_and_phone_width(page: Any, server: Any, artifacts: Path) -> None:
    page.goto("/")
    page.wait_for_selector("body[data-ready='true']")
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
             .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
             .map((el) => el.id || el.name)"""
    )
    assert unlabelled == []
    assert page.locator("[role='tab']").evaluate_all("(ts) => ts.every((t) => t.tagName === 'BUTTON')")
    tile = page.locator("#sample-grid canvas").first
    rendering = tile.evaluate("(c) => getComputedStyle(c).imageRendering")
    assert rendering in ("pixelated", "crisp-edges"), "model pixels stay crisp squares when scaled up"
    page.focus("#tab-sample")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-interpolate"
    assert page.locator("#panel-interpolate").is_visible()
    assert not page.locator("#panel-sample").is_visible()
    page.keyboard.press("Enter")  # a focused tab stays selected and usable from the keyboard
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('#panel-interpolate') !== null")

    page.set_viewport_size({"width": 390, "height": 844})
    for view in ("sample", "interpolate", "denoise", "latent", "draw"):
        page.click(f"#tab-{view}")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the {view} view scrolls sideways by {overflow}px at phone width"
    pad = page.locator("#draw-pad").bounding_box()
    assert pad["width"] > 250, "the drawing pad stays usable on a phone"
    page.screenshot(path=str(artifacts / "playground-phone.png"), full_page=True)
    assert page.console_log.errors == []


def _served(server: Any, model: str, body: dict[str, Any]) -> list[list[float]]:
    """The service's own answer to a sample request, as flat grey levels per image."""
    r = httpx.post(f"{server.url}/v1/models/{model}/sample", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return [[v for row in img[0] for v in row] for img in r.json()["images"]]


def _same_images(shown: list[tuple[int, int, list[float]]], served: list[list[float]]) -> bool:
    """Canvases show 8-bit grey levels: each pixel within 1.5/255 of the served value."""
    return len(shown) == len(served) and all(
        max(abs(a - b) for a, b in zip(v, s, strict=True)) <= 1.5 / 255 for (_, _, v), s in zip(shown, served,
                                                                                             strict=True))


def test_a_conditional_model_draws_the_picked_class_and_every_class(
    page: Any, server: Any, artifacts: Path
) -> None:
    """Issue 18's playground: the class picker asks for that class, and "Every class" draws each class in one
    style per row; both show exactly what the service answers for the same request."""
    model = server.model("sample", prefer=("cvae-digits", "saae-digits", "cgan-digits"))
    names = model.get("labels")
    if not names:
        pytest.fail(f"no conditional model in the shipped zoo ({model['name']} has no labels)")
    open_view(page, model["name"], "sample")
    assert page.locator("#sample-label-field").is_visible() and page.locator("#sample-every").is_visible()
    page.fill("#sample-n", "8")
    page.fill("#sample-seed", "0")
    page.select_option("#sample-label", names[7])  # the change itself samples
    page.wait_for_function("() => document.querySelectorAll('#sample-grid canvas').length === 8")
    page.wait_for_selector("#panel-sample[aria-busy='false']")
    want = _served(server, model["name"], {"n": 8, "seed": 0, "temperature": 1.0, "label": names[7]})
    assert _same_images(pixels(page, "#sample-grid canvas"), want)

    page.fill("#sample-n", str(len(names)))
    page.click("#sample-every")
    page.wait_for_selector("#class-grid:not([hidden])")
    page.wait_for_selector("#panel-sample[aria-busy='false']")
    heads = page.locator("#class-grid .head").all_inner_texts()
    assert heads == names
    want = _served(server, model["name"], {"n": len(names), "seed": 0, "temperature": 1.0, "label": names,
                                           "shared_style": True})
    assert _same_images(pixels(page, "#class-grid canvas"), want)
    page.screenshot(path=str(artifacts / "playground-classes.png"), full_page=True)
    assert page.console_log.errors == []
