"""A toy app served by service.http.server.serve, for the graceful-shutdown test (run as a subprocess).

Usage: python tests/reliability/toy_server.py PORT GRACE_S DRAIN_S HANDLER_S
"""

from __future__ import annotations

import asyncio
import gc
import sys
from types import SimpleNamespace

from fastapi import FastAPI, Request, Response

from service.http import drain as draining
from service.http import server


def main() -> None:
    port = int(sys.argv[1])
    grace, drain, handler_s = (float(a) for a in sys.argv[2:5])
    app = FastAPI()

    @app.get("/health/ready")
    async def ready(request: Request, response: Response) -> dict[str, bool]:
        ok = not draining.is_draining(request.app)
        response.status_code = 200 if ok else 503
        return {"ready": ok}

    @app.get("/work")
    async def work() -> dict[str, bool]:
        await asyncio.sleep(handler_s)
        return {"done": True}

    @app.get("/introspect")
    async def introspect(request: Request) -> dict[str, int]:
        return {"frozen": gc.get_freeze_count(), "received": request.app.state.requests_received()}

    app.state.draining = False
    app.add_middleware(draining.DrainMiddleware, owner=app)
    settings = SimpleNamespace(host="127.0.0.1", port=port, log_level="warning",
                               shutdown_grace_s=grace, shutdown_drain_s=drain, max_header_bytes=65536,
                               max_header_fields=128, header_timeout_s=10.0)
    server.serve(app, settings)


if __name__ == "__main__":
    main()
