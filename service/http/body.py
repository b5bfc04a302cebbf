"""The request body, read once, here, up to `max_body_bytes`.

Why raw ASGI middleware: a chunked upload carries no `Content-Length`, so the only honest check is to count
bytes as they arrive, and to stop reading (413) the moment the limit is passed, before any parser has buffered
the whole thing. The whole body is then left in the scope under `BODY_KEY`, where the operations table
(service.http.table) takes it, and replayed to the app as one message for any other reader. The app would
have to hold the whole body in memory to parse JSON or a form anyway, so this costs no extra peak memory
beyond one copy of at most `max_body_bytes`.

A client that disconnects mid-body is dropped: the app is never called with a partial body.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import MalformedRequest, PayloadTooLarge
from service.http import problems
from service.http.headers import header

log = logging.getLogger(__name__)

#: The scope key under which the whole request body is left for the app, once read and checked here.
BODY_KEY = "latentserve.body"


def body_of(scope: Scope) -> bytes:
    """The request body this middleware read (b"" when it did not run, as for a request without one)."""
    return scope.get(BODY_KEY, b"")  # type: ignore[no-any-return]


def _content_length(scope: Scope) -> int | None:
    """Declared Content-Length, or None when absent; -1 when present but not plain ASCII digits."""
    v = header(scope, b"content-length")
    if v is None:
        return None
    s = v.strip()
    return int(s) if s.isdigit() and len(s) <= 18 else -1  # bytes.isdigit is ASCII only


class BodyLimit:
    """Reads the body of every HTTP request up to `max_body_bytes` (0 = no limit), or answers 413."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = 0) -> None:
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await problems.send(scope, send, MalformedRequest("Content-Length is not a valid integer"),
                                close=True)
            return
        if self.max_body_bytes and declared is not None and declared > self.max_body_bytes:
            await self._too_large(scope, send, declared)
            return
        body = await self._read(receive)
        if body is None:  # the client went away mid-body: nobody to answer
            log.info("client disconnected before sending the whole body of %s", problems.route_path(scope))
            return
        if isinstance(body, int):
            await self._too_large(scope, send, body)
            return
        scope[BODY_KEY] = body
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for http.disconnect, as the app expects

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, send: Send, size: int) -> None:
        log.info("refused %s: body of %d+ bytes over the %d byte limit", problems.route_path(scope), size,
                 self.max_body_bytes)
        err = PayloadTooLarge(f"request body is larger than the limit of {self.max_body_bytes} bytes",
                              limit=self.max_body_bytes)
        await problems.send(scope, send, err, close=True)

    async def _read(self, receive: Receive) -> bytes | int | None:
        """The whole body; or the byte count once it passes the limit; or None if the client disconnected."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if self.max_body_bytes and size > self.max_body_bytes:
                    return size
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
