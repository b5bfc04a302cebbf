"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.shutdown import is_draining

router = APIRouter(prefix="/health", tags=["health"])


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
