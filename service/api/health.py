"""Liveness, readiness and metrics, for load balancers, orchestrators and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.http.drain import is_draining
from service.metrics import Metrics

router = APIRouter(prefix="/health", tags=["health"])
metrics_router = APIRouter(tags=["operations"])


@router.get("/live")
async def live() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "live"}


@router.get("/ready", responses={503: {"description": "not ready: the store is not open (or shutting down)"}})
async def ready(request: Request) -> JSONResponse:
    """Ready to serve: the models store is open. 503 until then."""
    state = request.app.state
    store = getattr(state, "store", None)
    ok = store is not None and getattr(state, "ready", False) and not is_draining(request.app)
    body = {"ready": ok, "models": len(store.names()) if store is not None else 0}
    return JSONResponse(body, status_code=200 if ok else 503)


@metrics_router.get("/metrics", response_class=Response)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics (text format): Triton-named inference statistics and HTTP latency histograms."""
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
