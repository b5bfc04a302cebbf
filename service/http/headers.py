"""Request headers: read from the scope cheaply, and bounded before the app ever sees them.

The bounds have to act while the headers arrive, in the HTTP protocol, not in ASGI middleware: by the time an
ASGI app is called the server has already buffered and parsed every header byte (a 48 MB header line took the
event loop 2 s), and a client that never finishes its headers never reaches the app at all (slowloris). So the
server's protocol (uvicorn's httptools protocol, through its `http=` setting) is extended with three limits:

    max_header_bytes     request line + header fields, in bytes        431, connection closed
    max_header_fields    number of header fields                       431, connection closed
    header_timeout_s     from a connection's start, or a request's     408, connection closed
                         first byte, to the end of its headers

A head that is complete is measured exactly (its URL and fields, as the parser reports them); while a field
is still incomplete, the raw bytes fed to the parser are counted: a header block over the limit is refused
after at most the limit plus two reads (256 KiB each) were buffered. The per-request cost is three
overridden callbacks (about 2 us); uvicorn's own attributes (`url`, `headers`) are read only by the
subclass. The answers are rendered by the one renderer (service.http.problems), in the API style of the path
when the path has arrived.
"""

from __future__ import annotations

import asyncio
import http
import logging
from dataclasses import dataclass
from typing import Any

from starlette.types import Scope

from service.errors import HeadersTooLarge, RequestTimeout, ServiceError
from service.http import problems

log = logging.getLogger(__name__)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header `name` (lower case), read from the raw ASGI list: cheaper than
    building Starlette's Headers for one lookup on a hot path."""
    for k, v in scope.get("headers", ()):
        if k == name:
            return v  # type: ignore[no-any-return]
    return None


@dataclass(frozen=True)
class HeaderLimits:
    max_bytes: int = 64 * 1024
    max_fields: int = 128
    timeout_s: float = 10.0


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


def guarded_protocol(limits: HeaderLimits) -> Any:
    """uvicorn's httptools protocol with the header limits above, as a class for `uvicorn.Config(http=...)`;
    None when httptools is not installed (then uvicorn's h11 protocol bounds the header bytes alone).

    The header phase is timed by a timestamp, and one sweep a second (per process) closes the connections
    whose header phase has run past `timeout_s`."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class _Refused(Exception):
        """Raised from a parser callback to stop parsing a request that was refused."""

    def _too_many_bytes() -> HeadersTooLarge:
        return HeadersTooLarge(
            f"request line and headers are larger than the limit of {limits.max_bytes} bytes",
            limit=limits.max_bytes)

    in_head: set[GuardedHttpToolsProtocol] = set()  # connections now in a header phase
    sweeper: list[asyncio.Task[None]] = []

    async def sweep() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, limits.timeout_s / 4))
            now = loop.time()
            for p in [p for p in in_head if now - p._head_since > limits.timeout_s]:
                p._refuse(RequestTimeout(f"request headers did not arrive within {limits.timeout_s:g} s"))

    class GuardedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._refused = False
            self._begin()  # a connection that sends nothing is closed too
            if limits.timeout_s > 0 and not sweeper:
                sweeper.append(self.loop.create_task(sweep()))

        def connection_lost(self, exc: Exception | None) -> None:
            in_head.discard(self)
            super().connection_lost(exc)

        def _begin(self) -> None:
            self._head_raw = 0
            self._in_head = True
            self._head_since = self.loop.time()
            in_head.add(self)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            was_head = self._in_head
            super().data_received(data)
            if was_head and self._in_head and not self._refused:
                # The whole read belongs to the head and a field is still incomplete: the parser buffers it
                # without reporting it, so the raw bytes are counted (a lower bound of the head's size).
                self._head_raw += len(data)
                if self._head_raw > limits.max_bytes:
                    self._refuse(_too_many_bytes())

        def on_message_begin(self) -> None:
            if not self._in_head:
                self._begin()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            # The head is whole: its exact size is the URL and the fields the parser reported.
            self._in_head = False
            in_head.discard(self)
            size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
            if size > limits.max_bytes or len(self.headers) > limits.max_fields:
                self._refuse(_too_many_bytes() if size > limits.max_bytes else HeadersTooLarge(
                    f"request has more than the limit of {limits.max_fields} header fields",
                    limit=limits.max_fields))
                raise _Refused  # stops the parser: the app never sees this request
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            if not self._refused:  # (our refusal, raised through the parser, arrives here as a parse error)
                super().send_400_response(msg)

        def _refuse(self, err: ServiceError) -> None:
            """Answer `err` and close the connection (the path, when it arrived, picks the API's style)."""
            self._refused = True
            in_head.discard(self)
            if self.transport.is_closing():  # uvicorn answered already (a request it could not parse)
                return
            url = self.url if isinstance(getattr(self, "url", None), bytes) else b""
            path = url[:2048].split(b"?", 1)[0].decode("latin-1")
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            log.info("closing connection from %s: %s", client, err.detail)
            status, body, headers = problems.raw(err, path if path.startswith("/") else "/")
            head = [_status_line(status)] + [k + b": " + v + b"\r\n" for k, v in headers]
            self.transport.write(b"".join([*head, b"connection: close\r\n\r\n", body]))
            self.transport.close()

    return GuardedHttpToolsProtocol
