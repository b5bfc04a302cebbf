"""A do-nothing ASGI app for bench/serving.py: reads the request body and answers FLOOR_BYTES bytes.

Run under the same uvicorn (uvloop, httptools) as the service, it measures what HTTP alone costs for an
exchange of a given size on this machine: the floor under any server's (e) number, whatever its framework.
"""

from __future__ import annotations

import os
from typing import Any

BODY = b"\0" * int(os.environ.get("FLOOR_BYTES", "0"))
HEADERS = [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
