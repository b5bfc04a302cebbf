"""/docs and /redoc render in a browser with nothing but the service (issue 17): Swagger UI and ReDoc come
from the fastapi-offline wheel, served by the service itself, so an offline machine sees the operations."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse


def _requests_elsewhere(page: Any, server: Any) -> list[str]:
    own = urlparse(server.url).netloc
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if urlparse(r.url).netloc not in (own, "") and
            not r.url.startswith(("data:", "blob:")) else None)
    return seen


def test_swagger_ui_lists_the_operations_offline(page: Any, server: Any, artifacts: Path) -> None:
    elsewhere = _requests_elsewhere(page, server)
    page.goto("/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    summaries = page.locator(".opblock-summary-path").all_inner_texts()
    for op in ("sample", "anomaly-score", "infer"):
        assert any(s.rstrip().endswith(op) for s in summaries), (op, summaries[:10])
    assert len(summaries) >= 30
    page.screenshot(path=str(artifacts / "docs-swagger.png"), full_page=False)
    assert elsewhere == [], elsewhere


def test_redoc_renders_the_document_offline(page: Any, server: Any, artifacts: Path) -> None:
    elsewhere = _requests_elsewhere(page, server)
    page.goto("/redoc")
    page.wait_for_function("() => document.body.innerText.includes('Anomaly Score')", timeout=30_000)
    assert page.locator("h1").first.inner_text().startswith("latentserve")
    page.screenshot(path=str(artifacts / "docs-redoc.png"), full_page=False)
    # ReDoc's "API docs by Redocly" badge points at its CDN's logo: offline the badge shows no logo, and the
    # document is complete without it. Anything else from elsewhere would be a missing asset.
    assert [u for u in elsewhere if not u.startswith("https://cdn.redoc.ly/redoc/logo")] == [], elsewhere
