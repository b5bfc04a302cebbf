"""The application factory. Nothing loads at import time: the lifespan opens the store and runtime.

A request passes, outermost first (service.http has each piece):

    ServedBy         X-Served-By: which replica answered
    MetricsMiddleware HTTP latency per route template, in-flight count
    DrainMiddleware  Connection: close once a shutdown signal arrived
    AccessGuard      keys and model names, before a body byte is read
    Deadline         408 while the body uploads, 504 before the answer starts
    BodyLimit        the body, read once, up to max_body_bytes
    routes           the operations table (every POST: the /v1 operations, V2 infer, the repository), then
                     FastAPI's GET routes (health, metrics, the registry, V2 metadata) and the playground

Every error, from whichever layer, is rendered by service.http.problems. Header limits act before all of
this, in the HTTP protocol (service.http.headers, wired by service.http.server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from fastapi.telemetry import TelemetryConfig
from fastapi_offline import FastAPIOffline

from service import reload as hot_reload
from service.api import health, models, playground
from service.api.table import ADMIN_TABLE, FALLBACK, TABLE
from service.grpc import server as grpc_server
from service.http import openapi, problems, table
from service.http.access import AccessGuard, parse_keys
from service.http.body import BodyLimit
from service.http.deadline import Deadline
from service.http.drain import DrainMiddleware
from service.http.replica import ServedBy
from service.http.timing import MetricsMiddleware
from service.metrics import Metrics
from service.runtime import Runtime
from service.settings import Settings, get_settings
from service.store.repository import ModelStore
from service.v2 import router as v2

log = logging.getLogger(__name__)

#: The GET routers of the app, in the order they are mounted (after the operations table).
ROUTERS: list[APIRouter] = [
    health.router,
    health.metrics_router,
    models.router,
    v2.router,
    playground.router,
]

DOCS_ASSETS = "/docs/static"  # Swagger UI's and ReDoc's scripts and styles
DESCRIPTION = """Encode, decode, sample, interpolate, reconstruct, denoise and score anomalies with
autoencoder-family models (AE, VAE, AAE, WAE, GAN) from the models store, on onnxruntime.
Errors are RFC 9457 problem+json."""


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    received = getattr(app.state, "requests_received", None)  # set by service.http.server

    def alone() -> bool:
        """No other request inside the app, nor (under our uvicorn server) received and waiting its turn."""
        return metrics.in_flight <= 1 and (received is None or received() <= 1)

    runtime = Runtime(settings, stats=metrics.inference, alone=alone)
    store = await anyio.to_thread.run_sync(ModelStore.open, settings.store, runtime.prepare)
    runtime.retain(store)
    await asyncio.get_running_loop().run_in_executor(None, int)  # the batcher's pool: its thread, now
    app.state.runtime, app.state.store, app.state.ready = runtime, store, True
    log.info("serving %d models from %s (%s backend)", len(store.names()), settings.store, settings.backend)
    try:
        async with (hot_reload.polling(app, settings.reload_interval_s),  # hot reload by polling (0 = off)
                    grpc_server.serving(app, settings)):  # the gRPC Open Inference Protocol (0 = off)
            yield
    finally:
        app.state.ready = False


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The store opens in the lifespan, so importing or creating an app loads nothing."""
    settings = settings or get_settings()
    otel: TelemetryConfig | None = None if settings.otel else {"tracing": False, "metrics": False,
                                                                 "logs": False}
    # /docs and /redoc work offline: Swagger UI and ReDoc come from the fastapi-offline wheel, served here.
    app = FastAPIOffline(title="latentserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                         telemetry=otel, static_url=DOCS_ASSETS, favicon_url="/static/favicon.svg")
    app.state.settings = settings
    app.state.store = app.state.runtime = None
    app.state.ready = False
    app.state.draining = False
    app.state.metrics = Metrics()  # one registry per app, so tests can build many
    problems.install(app)
    rows = TABLE + (ADMIN_TABLE if parse_keys(settings.admin_key) else [])
    for router in ROUTERS:
        app.include_router(router)
    table.mount(app, rows)  # first in the router: the hot POSTs match before anything else
    admin = hot_reload.admin_router(settings.admin_key)  # POST /admin/reload, only with an admin key
    if admin is not None:
        app.include_router(admin)
    app.router.routes.extend(FALLBACK)  # last: an unknown /v1 operation is a 404 that lists the operations
    openapi.install(app, rows, settings.api_keys, settings.admin_key)
    # Middleware, innermost first: each add_middleware wraps what is already there.
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(Deadline, timeout_s=settings.request_timeout_s)
    app.add_middleware(AccessGuard, api_keys=settings.api_keys, admin_key=settings.admin_key)
    app.add_middleware(DrainMiddleware, owner=app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(ServedBy)
    return app
