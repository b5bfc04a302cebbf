"""The FastAPI application factory. Nothing loads at import time: the lifespan opens the store and runtime.

Routers are listed once, in ROUTERS; add yours there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from fastapi.telemetry import TelemetryConfig

from service import limits, security, shutdown
from service import reload as hot_reload
from service.api import health, models, ops, playground
from service.api.lean import HotIndex
from service.errors import install_handlers
from service.metrics import Metrics, MetricsMiddleware
from service.metrics import router as metrics_router
from service.replica import ServedBy
from service.runtime import Runtime
from service.settings import Settings, get_settings
from service.store.repository import ModelStore
from service.v2 import router as v2

log = logging.getLogger(__name__)

#: Every router of the app, in the order they are mounted.
ROUTERS: list[APIRouter] = [
    health.router,
    models.router,
    ops.router,
    v2.router,
    v2.admin_router,
    metrics_router,
    playground.router,
]

DESCRIPTION = """Encode, decode, sample, interpolate, reconstruct, denoise and score anomalies with
autoencoder-family models (AE, VAE, AAE, WAE, GAN) from the models store, on onnxruntime.
Errors are RFC 9457 problem+json."""


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    received = getattr(app.state, "requests_received", None)  # set by service.shutdown's server

    def alone() -> bool:
        """No other request inside the app, nor (under our uvicorn server) received and waiting its turn."""
        return metrics.in_flight <= 1 and (received is None or received() <= 1)

    runtime = Runtime(settings, stats=metrics.inference, alone=alone)
    store = await anyio.to_thread.run_sync(ModelStore.open, settings.store, runtime.prepare)
    runtime.retain(store)
    app.state.runtime, app.state.store, app.state.ready = runtime, store, True
    log.info("serving %d models from %s (%s backend)", len(store.names()), settings.store, settings.backend)
    try:
        async with hot_reload.polling(app, settings.reload_interval_s):  # hot reload by polling (0 = off)
            yield
    finally:
        app.state.ready = False


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The store opens in the lifespan, so importing or creating an app loads nothing."""
    settings = settings or get_settings()
    otel: TelemetryConfig | None = None if settings.otel else {"tracing": False, "metrics": False,
                                                                 "logs": False}
    app = FastAPI(title="latentserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  telemetry=otel)
    app.state.settings = settings
    app.state.store = app.state.runtime = None
    app.state.ready = False
    install_handlers(app)
    # Hardening (issue 8), innermost first: body size + deadline; the access guard outside them, so an
    # unauthenticated client is answered before a single body byte is read; the drain flag outermost.
    limits.install(app, settings)
    security.install(app, settings)
    shutdown.install(app, settings)
    app.state.metrics = Metrics()  # one registry per app, so tests can build many
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for router in ROUTERS:
        app.include_router(router)
    # The hot POSTs (the operations, V2 infer) are found through an index placed before the router walk.
    app.router.routes.insert(0, HotIndex([r for router in (ops.router, v2.router) for r in router.routes]))
    admin = hot_reload.admin_router(settings.admin_key)  # POST /admin/reload, only with an admin key
    if admin is not None:
        app.include_router(admin)
    app.add_middleware(ServedBy)  # X-Served-By: which replica answered (behind a load balancer)
    return app
