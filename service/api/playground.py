"""The playground: a static web page at `/` that explores every model through the `/v1` API.

The page is plain HTML, CSS and ES modules under `service/static/` (no build step, no CDN): the browser
talks to the same `/v1` endpoints any other client uses, so the playground exercises the real API. This
router only serves the files; it holds no state and loads nothing at import time.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# The page may only talk to its own origin: no CDN, no third-party fetches. Images are drawn from data: and
# blob: URLs (base64 PNGs from the API, canvases), so those are allowed for img-src only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # The assets change with the package, not at run time; revalidate so an upgrade shows at once.
    "Cache-Control": "no-cache",
}
# Module scripts must come with a JavaScript MIME type; some systems map .js to text/plain.
_MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}

router = APIRouter(tags=["playground"], include_in_schema=False)


def _not_found() -> Response:
    # A plain 404 (not problem+json): these are page assets, not API resources.
    return Response(status_code=404, content="not found", media_type="text/plain")


def static_file(relative: str) -> Path | None:
    """The file under STATIC_DIR named by `relative`, or None if it is missing or escapes the folder."""
    if not relative or "\\" in relative or "\x00" in relative:
        return None
    root = STATIC_DIR.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def _file_response(path: Path) -> FileResponse:
    media = _MEDIA_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, headers=_HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])
async def playground_index() -> Response:
    """The playground page."""
    path = static_file("index.html")
    return _file_response(path) if path is not None else _not_found()


@router.api_route("/favicon.ico", methods=["GET", "HEAD"])
async def favicon() -> Response:
    """Browsers ask for /favicon.ico on their own; answer with the page's icon instead of a 404."""
    path = static_file("favicon.svg")
    return _file_response(path) if path is not None else _not_found()


@router.api_route("/static/{relative:path}", methods=["GET", "HEAD"])
async def playground_static(relative: str) -> Response:
    """One asset of the playground (JS module, stylesheet, icon)."""
    path = static_file(relative)
    return _file_response(path) if path is not None else _not_found()
