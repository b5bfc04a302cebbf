"""`X-Served-By`: which replica answered. Behind a load balancer this is how an operator (and the e2e test)
sees requests spread over replicas and move away from a dead one.

The id is `<hostname>-<pid>`: unique per container or pod (Docker and Kubernetes set the hostname) and per
process on one machine. It names no path, version or key.
"""

from __future__ import annotations

import os
import socket

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-served-by"


def replica_id() -> str:
    """This process's replica id: `<hostname>-<pid>`."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ServedBy:
    """ASGI middleware adding `X-Served-By: <replica id>` to every HTTP response."""

    def __init__(self, app: ASGIApp, replica: str | None = None) -> None:
        self.app = app
        self.value = (replica or replica_id()).encode("latin-1", "replace")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER, self.value)]
            await send(message)

        await self.app(scope, receive, tagged)
