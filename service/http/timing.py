"""HTTP latency per route template, observed at the boundary into `Metrics.http` (service.metrics)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request (cheaper than BaseHTTPMiddleware on the hot path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception that escapes the app is a 500
        start = time.perf_counter()
        self.metrics.in_flight += 1

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight -= 1
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            self.metrics.http.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start)
