"""Request limits enforced at the ASGI boundary: body size (413) and per-request time (408 / 504).

Why raw ASGI middleware rather than FastAPI dependencies:

- A chunked upload carries no `Content-Length`, so the only honest check is to count bytes as they arrive,
  and to stop reading (413) the moment the limit is passed, before any parser has buffered the whole thing.
- The deadline has to cover body upload and parsing as well as the handler, and it must answer the client
  even when a sync handler is stuck in a thread (the thread cannot be killed; the client is answered anyway).

The body is read here, up to the limit, and replayed to the app as a single message. The app would have
to hold the whole body in memory to parse JSON or a form anyway, so this costs no extra peak memory beyond
one copy of at most `max_body_bytes`.

Errors are rendered here too, in the shape of the API the path belongs to: RFC 9457 problem+json
everywhere except under `/v2`, where the Open Inference Protocol wants `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from service.errors import (
    PROBLEM_JSON,
    TYPE_PREFIX,
    MalformedRequest,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    Timeout,
    Unauthorized,
)

log = logging.getLogger(__name__)

#: The scope key under which the whole request body is left for the app, once read and checked here. The body
#: is also replayed through `receive` as usual; the key only spares a reader that round trip.
BODY_SCOPE_KEY = "latentserve.body"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Problem `type` and `title` per status, from the domain error tree, so these errors look like the app's own.
PROBLEMS: dict[int, tuple[str, str]] = {
    e.status: (e.slug, e.title)
    for e in (MalformedRequest, Unauthorized, ModelNotFound, PayloadTooLarge, Overloaded, Timeout)
}
PROBLEMS[408] = ("request-timeout", "Request timeout")


def route_path(scope: Scope) -> str:
    """The path the router matches on (the request path minus any root_path), already percent-decoded."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path or "/"


def is_v2(path: str) -> bool:
    """True for Open Inference Protocol paths, whose errors are `{"error": ...}` instead of problem+json."""
    return path == "/v2" or path.startswith("/v2/")


def error_payload(
    scope: Scope, status: int, detail: str, kind: tuple[str, str] | None = None, **extra: Any
) -> tuple[bytes, bytes]:
    """(body, content-type) for an error raised outside the app's own handlers, in the path's API style.
    `kind` = (type URI, title) overrides the defaults for the status."""
    path = route_path(scope)
    if is_v2(path):
        return orjson.dumps({"error": detail}), b"application/json"
    if kind is None:
        slug, title = PROBLEMS.get(status, ("internal-error", "Error"))
        kind = (TYPE_PREFIX + slug, title)
    problem = {"type": kind[0], "title": kind[1], "status": status, "detail": detail, "instance": path}
    problem.update(extra)
    return orjson.dumps(problem), PROBLEM_JSON.encode()


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    detail: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    kind: tuple[str, str] | None = None,
    **extra: Any,
) -> None:
    """Answer the request with an error (the server closes the connection if a body was left unread)."""
    body, ctype = error_payload(scope, status, detail, kind, **extra)
    raw = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    raw += headers or []
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header `name` (lower case), read from the raw ASGI list: cheaper than
    building Starlette's Headers for one lookup on a hot path."""
    for k, v in scope.get("headers", []):
        if k == name:
            return v  # type: ignore[no-any-return]
    return None


def _content_length(scope: Scope) -> int | None:
    """Declared Content-Length, or None when absent; -1 when present but not a plain non-negative integer."""
    v = header(scope, b"content-length")
    if v is None:
        return None
    s = v.strip()
    return int(s) if s.isdigit() else -1


class _Deadline:
    """The one timer of a request. Firing while the body uploads cancels the request task (408); firing before
    the response starts sends 504 from a side task, on time even when the handler is stuck in a worker thread
    (whose cancellation waits for the thread), then cancels the request task. No task is created unless it
    fires, so a request within its deadline pays for one timer handle."""

    __slots__ = ("answer", "expired", "handle", "phase", "scope", "send", "task", "timeout_s")

    def __init__(self, scope: Scope, send: Send, timeout_s: float) -> None:
        self.scope, self.send, self.timeout_s = scope, send, timeout_s
        self.phase = "body"  # then "app", then "responding"
        self.expired = False
        self.answer: asyncio.Task[None] | None = None
        self.task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        self.handle = loop.call_at(loop.time() + timeout_s, self._fire)

    def _fire(self) -> None:
        if self.phase == "responding":
            return
        self.expired = True
        path = route_path(self.scope)
        if self.phase == "app":
            log.warning("request to %s timed out after %g s", path, self.timeout_s)
            self.answer = asyncio.get_running_loop().create_task(send_error(
                self.scope, self.send, 504, f"the request did not complete within {self.timeout_s:g} s"))
        else:
            log.info("request body to %s did not arrive within %g s", path, self.timeout_s)
        if self.task is not None:
            self.task.cancel()

    def owns(self, exc: BaseException) -> bool:
        """True when `exc` is this deadline's cancellation (then it is consumed, not propagated)."""
        if not (self.expired and isinstance(exc, asyncio.CancelledError)):
            return False
        if self.task is not None:
            self.task.uncancel()
        return True


class LimitsMiddleware:
    """Bounds the body size and the time to first response byte of every HTTP request.

    - `max_body_bytes`: a declared Content-Length above it is refused at once; a chunked body is counted as it
      streams and refused (413) as soon as it passes the limit. `0` disables the check.
    - `timeout_s`: one deadline from the moment the request reaches the app. A body still uploading at the
      deadline gets 408 (the client is slow); a handler that has not started its response gets 504 (we are
      slow). A response already streaming is left to finish. `0` disables the deadline.

    A client that disconnects mid-body is simply dropped: the app is never called with a partial body.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int = 0, timeout_s: float = 0.0) -> None:
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self.timeout_s = float(timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await send_error(scope, send, 400, "Content-Length is not a valid integer")
            return
        if self.max_body_bytes and declared is not None and declared > self.max_body_bytes:
            await self._too_large(scope, send, declared)
            return
        deadline = _Deadline(scope, send, self.timeout_s) if self.timeout_s > 0 else None
        try:
            await self._serve(scope, receive, send, deadline)
        except asyncio.CancelledError as exc:
            if deadline is None or not deadline.owns(exc):
                raise
            if deadline.answer is None:  # expired while the body was still arriving
                detail = f"the request body did not arrive within {self.timeout_s:g} s"
                await send_error(scope, send, 408, detail, [(b"connection", b"close")])
        except Exception as exc:
            if deadline is None or not deadline.expired:
                raise
            log.warning("timed-out request to %s later failed: %r", route_path(scope), exc)
        finally:
            if deadline is not None:
                deadline.handle.cancel()
        if deadline is not None and deadline.answer is not None:
            await deadline.answer

    async def _serve(self, scope: Scope, receive: Receive, send: Send, deadline: _Deadline | None) -> None:
        body = await self._read_body(receive)
        if body is None:  # the client went away mid-body: nobody to answer
            log.info("client disconnected before sending the whole body of %s", route_path(scope))
            return
        if isinstance(body, int):
            await self._too_large(scope, send, body)
            return

        scope[BODY_SCOPE_KEY] = body  # for readers that can take it from here (service.api.lean)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for http.disconnect, as the app expects

        if deadline is None:
            await self.app(scope, replay, send)
            return
        deadline.phase = "app"

        async def guarded_send(message: Message) -> None:
            if deadline.expired:  # the client has its 504; a late handler writes nowhere
                return
            if message["type"] == "http.response.start":
                deadline.phase = "responding"  # set before awaiting: the timer must not race the start
            await send(message)

        await self.app(scope, replay, guarded_send)

    async def _too_large(self, scope: Scope, send: Send, size: int) -> None:
        log.info("refused %s: body of %d+ bytes over the %d byte limit", route_path(scope), size,
                 self.max_body_bytes)
        await send_error(
            scope, send, 413, f"request body is larger than the limit of {self.max_body_bytes} bytes",
            [(b"connection", b"close")], limit=self.max_body_bytes,
        )

    async def _read_body(self, receive: Receive) -> bytes | int | None:
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


def install(app: Any, settings: Any) -> None:
    """Add the limits to `app`. Install the access guard after this one, so that the guard runs first."""
    app.add_middleware(
        LimitsMiddleware,
        max_body_bytes=settings.max_body_bytes,
        timeout_s=settings.request_timeout_s,
    )
