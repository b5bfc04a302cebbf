"""Liveness, readiness and metrics, for load balancers, orchestrators and Prometheus."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.http.drain import is_draining
from service.metrics import Metrics

router = APIRouter(prefix="/health", tags=["health"])
metrics_router = APIRouter(tags=["operations"])


def readiness(app: Any) -> tuple[bool, str]:
    """Whether the service is ready for inference, and why not: the store is open, the server is not shutting
    down, and if the store has versions, at least one of them loaded (a store whose every version was refused,
    say by a backend that cannot load them, serves nothing). The one rule of /health/ready, /v2/health/ready
    and V2 model readiness."""
    state = app.state
    store = getattr(state, "store", None)
    if store is None or not getattr(state, "ready", False):
        return False, "the models store is not open yet"
    if is_draining(app):
        return False, "shutting down"
    if not store.names() and store.problems:
        return False, f"no version of the store loaded ({len(store.problems)} refused; see GET /v1/models)"
    return True, ""


@router.get("/live")
async def live() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "live"}


@router.get("/ready", responses={503: {"description": "not ready: the store is not open (or shutting down)"}})
async def ready(request: Request) -> JSONResponse:
    """Ready to serve: the models store is open and something in it loaded. 503 until then, and from a
    shutdown signal on."""
    ok, why = readiness(request.app)
    store = getattr(request.app.state, "store", None)
    body: dict[str, Any] = {"ready": ok, "models": len(store.names()) if store is not None else 0}
    if not ok:
        body["reason"] = why
    return JSONResponse(body, status_code=200 if ok else 503)


@metrics_router.get("/metrics", response_class=Response)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics (text format): Triton-named inference statistics and HTTP latency histograms."""
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
