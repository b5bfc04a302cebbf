"""A route class for the operations: JSON bodies whatever the content-type, and multipart uploads.

Operations are documented with their JSON body. A multipart/form-data request is turned into that same JSON
body here (files become base64 strings, other fields are parsed as JSON when they can be), so one handler and
one validation path serve both. A body without `content-type: application/json` (curl -d) is read as JSON.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.lean import LeanRoute
from service.errors import MalformedRequest
from service.limits import header

#: Fields that hold images and so may repeat (lists); `start`/`end` take one file each.
LIST_FIELDS = {"images"}
MULTIPART_DOC = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "images": {
                    "type": "array",
                    "items": {"type": "string", "format": "binary"},
                    "description": "one PNG/JPEG file per image (repeat the field)",
                },
            },
            "additionalProperties": {"type": "string", "description": "other fields, as in the JSON body"},
        }
    }
}


def _field_value(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v  # plain strings such as format=png


async def _form_to_json(request: Request) -> bytes:
    settings = request.app.state.settings
    try:
        form = await request.form(
            max_files=settings.max_items + 2, max_fields=64, max_part_size=settings.max_body_bytes
        )
    except StarletteHTTPException as exc:
        raise MalformedRequest(f"multipart body could not be parsed: {exc.detail}") from exc
    body: dict[str, Any] = {}
    try:
        for key in set(form.keys()):
            values = []
            for v in form.getlist(key):
                if isinstance(v, UploadFile):
                    values.append(base64.b64encode(await v.read()).decode("ascii"))
                else:
                    values.append(_field_value(v))
            body[key] = values if key in LIST_FIELDS else values[0]
    finally:
        await form.close()
    return orjson.dumps(body)


def _with_json(request: Request, body: bytes | None) -> Request:
    headers = [(k, v) for k, v in request.scope["headers"] if k not in (b"content-type", b"content-length")]
    headers.append((b"content-type", b"application/json"))
    if body is not None:
        headers.append((b"content-length", str(len(body)).encode()))
    new = Request({**request.scope, "headers": headers}, request.receive)
    if body is not None:
        new._body = body  # noqa: SLF001  (Starlette caches the body here; the original stream is consumed)
    return new


class JSONOrFormRoute(LeanRoute):
    async def read_body(self, request: Request) -> bytes:
        """The request body as JSON bytes: multipart forms converted, anything else taken as JSON."""
        ctype = header(request.scope, b"content-type") or b""
        if ctype.lower().startswith(b"multipart/form-data"):
            return await _form_to_json(request)
        return await super().read_body(request)

    def fastapi_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().fastapi_handler()

        async def route(request: Request) -> Response:
            ctype = request.headers.get("content-type", "").lower()
            if ctype.startswith("multipart/form-data"):
                request = _with_json(request, await _form_to_json(request))
            elif not ctype.startswith("application/json") and not ctype.endswith("+json"):
                request = _with_json(request, None)
            return await handler(request)

        return route
