"""Draining: once a shutdown signal arrives, readiness is false and every response says `Connection: close`.

The flag lives on the app's state: `mark_draining(app)` sets it (from the server's signal handler,
service.http.server), `is_draining(app)` reads it (the readiness probes), and `DrainMiddleware` adds the
header, so that pooled client connections move to another replica while this one finishes its work.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def is_draining(app: Any) -> bool:
    """True once a shutdown signal has arrived: readiness endpoints must then answer "not ready"."""
    return bool(getattr(app.state, "draining", False))


def mark_draining(app: Any) -> None:
    """Flip readiness to false (idempotent). Safe to call from a signal handler: it only sets an attribute."""
    app.state.draining = True


class DrainMiddleware:
    """Adds `Connection: close` to every response once draining, so pooled client connections move away."""

    def __init__(self, app: ASGIApp, owner: Any) -> None:
        self.app = app
        self.owner = owner  # the app whose state carries the flag

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and is_draining(self.owner):
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message["headers"] = headers + [(b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, closing_send)
