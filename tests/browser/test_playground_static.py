"""The playground's files as the server hands them out: no browser needed, so these run everywhere.

They pin what the browser tests rely on: every asset the page names exists and comes with the right type,
the page forbids third-party origins, and the static route cannot be walked out of its folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.playground import STATIC_DIR, static_file
from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    empty_store = tmp_path_factory.mktemp("empty_store")
    with TestClient(create_app(Settings(store=empty_store)), raise_server_exceptions=False) as c:
        yield c


def referenced_assets() -> set[str]:
    """Every /static/ path in index.html, and every module the JS files import."""
    html = (STATIC_DIR / "index.html").read_text()
    names = set(re.findall(r'(?:src|href)="/static/([^"#]+)', html))
    for js in STATIC_DIR.glob("*.js"):
        names |= set(re.findall(r'from "\./([^"]+)"', js.read_text()))
    return names


def test_index_is_served_with_a_strict_policy(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/static/app.js">' in r.text


def test_every_referenced_asset_exists_with_its_type(client: TestClient) -> None:
    names = referenced_assets()
    assert {"app.js", "style.css", "api.js", "imaging.js", "draw.js", "favicon.svg"} <= names
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for name in sorted(names):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200, name
        ctype = r.headers["content-type"]
        assert ctype.startswith(types[Path(name).suffix]), (name, ctype)
    assert client.get("/favicon.ico").headers["content-type"].startswith("image/svg+xml")


def test_no_third_party_urls_in_the_page() -> None:
    for f in STATIC_DIR.rglob("*"):
        if not f.is_file() or f.suffix == ".png":  # the test crops under samples/ are pictures
            continue
        text = f.read_text()
        urls = re.findall(r"https?://[^\s\"')]+", text)
        assert [u for u in urls if not u.startswith("http://www.w3.org/")] == [], f.name


@pytest.mark.parametrize(
    "path",
    ["/static/../api/playground.py", "/static/%2e%2e/api/playground.py", "/static/..%2F..%2Fpyproject.toml",
     "/static/%5c..%5capp.py", "/static/", "/static/nope.js", "/static/%00app.js"],
)
def test_static_route_stays_inside_its_folder(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert "def " not in r.text and "[project]" not in r.text


def test_static_file_resolution() -> None:
    assert static_file("app.js") == (STATIC_DIR / "app.js").resolve()
    for bad in ("", "../app.py", "..\\app.py", "/etc/passwd", "a\x00b", "."):
        assert static_file(bad) is None, bad
