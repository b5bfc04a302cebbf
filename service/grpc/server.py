"""The gRPC server: grpcio's asyncio server on LATENTSERVE_GRPC_PORT, in the app's process and event loop.

`serving(app, settings)` runs it for the span of the app's lifespan (service.app): it starts after the store
opened, so its first answer can already be "ready", and it stops gracefully when the lifespan ends.

Shutdown follows HTTP's timeline (service.http.server) inside the same grace period:

    SIGTERM      readiness drops (ServerReady answers false, as /v2/health/ready does); calls are served
    drain        when the drain window ends, uvicorn stops accepting; so does gRPC: new calls are refused
                 (GOAWAY, clients reconnect elsewhere), calls in flight get uvicorn's budget to finish
    lifespan     ends after uvicorn drained; gRPC's stop is awaited, and what still runs is cancelled

Under a server that never marks draining (a bare `uvicorn` command, tests), gRPC stops when the lifespan
ends, with LIFESPAN_RESERVE_S / 2 for the calls in flight.

Limits: a message (compressed or not) is at most LATENTSERVE_MAX_BODY_BYTES and its metadata at most
LATENTSERVE_MAX_HEADER_BYTES (gRPC answers RESOURCE_EXHAUSTED itself). The port is bound exclusively
(no SO_REUSEPORT, which gRPC sets by default): a second server on the same port fails to start instead of
sharing its traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from service.grpc.servicer import Servicer
from service.http.drain import is_draining
from service.http.server import LIFESPAN_RESERVE_S
from service.settings import Settings

log = logging.getLogger(__name__)

DRAIN_POLL_S = 0.1  # how often the stopper looks for the shutdown signal (a flag set by a signal handler)


def options(settings: Settings) -> list[tuple[str, Any]]:
    """grpc.aio.server's channel arguments for these settings."""
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),  # answers are as big as the request asks; HTTP bounds none
        ("grpc.max_metadata_size", settings.max_header_bytes),
        ("grpc.so_reuseport", 0),
    ]


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _budgets(settings: Settings) -> tuple[float, float]:
    """(drain window, time for calls in flight after it): service.http.server's, for uvicorn."""
    grace = float(settings.shutdown_grace_s)
    drain = min(float(settings.shutdown_drain_s), max(0.0, grace - LIFESPAN_RESERVE_S))
    return drain, max(0.1, grace - drain - LIFESPAN_RESERVE_S)


async def _stop_after_drain(app: Any, server: grpc.aio.Server, settings: Settings) -> None:
    while not is_draining(app):
        await asyncio.sleep(DRAIN_POLL_S)
    drain, budget = _budgets(settings)
    await asyncio.sleep(drain)
    log.info("gRPC: no new calls; %.1f s for those in flight", budget)
    await server.stop(budget)


@contextlib.asynccontextmanager
async def serving(app: Any, settings: Settings) -> AsyncIterator[int | None]:
    """Serve gRPC while the block runs; yields the bound port (None when LATENTSERVE_GRPC_PORT is 0)."""
    if not settings.grpc_port:
        yield None
        return
    server = grpc.aio.server(options=options(settings))
    server.add_generic_rpc_handlers((Servicer(app).handler(),))
    where = address(settings.host, settings.grpc_port)
    try:
        port = server.add_insecure_port(where)
    except RuntimeError as exc:
        raise RuntimeError(f"LATENTSERVE_GRPC_PORT={settings.grpc_port}: cannot listen on {where} ({exc}); "
                           "is another server there? Set another port, or 0 to serve no gRPC") from exc
    await server.start()
    log.info("gRPC Open Inference Protocol on %s", where)
    stopper = asyncio.create_task(_stop_after_drain(app, server, settings))
    try:
        yield port
    finally:
        if is_draining(app) and not stopper.done():
            await stopper  # stopping, or about to: within the grace period, calls in flight finish
        else:
            stopper.cancel()
        await server.stop(LIFESPAN_RESERVE_S / 2)
