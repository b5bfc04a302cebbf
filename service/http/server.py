"""The uvicorn server of `python -m service`: header limits at the protocol, and graceful shutdown.

Headers are bounded while they arrive (service.http.headers): size, field count and a header-phase timeout.

Graceful shutdown: on SIGTERM readiness drops at once, in-flight requests finish, and the process exits
within `settings.shutdown_grace_s`.

The sequence after the first SIGTERM (or SIGINT):

    t = 0        app.state.draining = True: /health/ready and /v2/health/ready answer 503 from now on, and
                 every response carries `Connection: close` so keep-alive clients reconnect elsewhere.
    0 .. drain   the server still accepts and serves: a load balancer or the Kubernetes endpoints controller
                 needs a moment to see the readiness change, and a request sent in that window must not fail.
    drain        uvicorn stops accepting, closes idle connections and waits for the in-flight requests ...
    grace - 1 s  ... but no longer: what is still running is cancelled, the lifespan shuts down (models are
                 unloaded only now, after the last request, so nobody sees "unknown model" while draining).
    grace        a watchdog thread ends the process if anything (a stuck worker thread) still holds it.

A second signal skips the rest of the drain window; SIGINT twice forces an immediate exit (uvicorn's rule).
Triton's pods answered "unknown model" during shutdown because models were unloaded while requests were
still admitted; here the store is only closed after uvicorn has stopped admitting and drained.

Use `serve(app, settings)` (what `python -m service` does). Running the app under a bare `uvicorn` command
still drains in-flight requests, but readiness does not drop early.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
from types import FrameType
from typing import Any

import uvicorn

from service.http.drain import mark_draining
from service.http.headers import HeaderLimits, guarded_protocol

log = logging.getLogger(__name__)

#: Time kept for the lifespan shutdown after the drain, inside the grace period.
LIFESPAN_RESERVE_S = 1.0


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose signal handler drops readiness first and delays the stop by the drain window."""

    def __init__(self, config: uvicorn.Config, app: Any, grace_s: float, drain_s: float) -> None:
        super().__init__(config)
        self.owner = app
        # Requests received and not yet answered, including those whose task has not started: uvicorn's own
        # count (its limit_concurrency reads the same set). The batcher asks it whether a request is alone.
        app.state.requests_received = lambda: len(self.server_state.tasks)
        self.grace_s = grace_s
        self.drain_s = min(drain_s, max(0.0, grace_s - LIFESPAN_RESERVE_S))
        self._signalled = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # Everything loaded by now (modules, routes, schemas, the store's manifests and sessions) lives as
        # long as the process: move it out of the cyclic GC's reach, so collections under load only walk
        # what requests allocate. /v1 sample n=1 went from ~5,400 to ~5,900 req/s at c=16 in
        # bench/serving.py; garbage is collected first, so none is frozen.
        gc.collect()
        gc.freeze()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled:  # a second signal: stop draining now (SIGINT twice forces, as in uvicorn)
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        mark_draining(self.owner)
        log.info("signal %d: readiness is now false; draining for %.1f s, exiting within %.1f s",
                 sig, self.drain_s, self.grace_s)
        watchdog = threading.Timer(self.grace_s, _hard_exit, args=(self.grace_s,))
        watchdog.daemon = True
        watchdog.start()
        if self.drain_s > 0:
            stopper = threading.Timer(self.drain_s, uvicorn.Server.handle_exit, args=(self, sig, None))
            stopper.daemon = True
            stopper.start()
        else:
            super().handle_exit(sig, frame)


def _hard_exit(grace_s: float) -> None:
    log.error("still running %.1f s after the shutdown signal: exiting now", grace_s)
    logging.shutdown()
    os._exit(1)


def server_for(app: Any, settings: Any, **config: Any) -> GracefulServer:
    """A GracefulServer for `app` with host/port/log level from settings; extra uvicorn.Config kwargs win."""
    grace = float(settings.shutdown_grace_s)
    drain = float(settings.shutdown_drain_s)
    drain_budget = max(0.1, grace - min(drain, grace) - LIFESPAN_RESERVE_S)
    kwargs: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": str(getattr(settings, "log_level", "info")).lower(),
        "access_log": bool(getattr(settings, "access_log", False)),
        "timeout_graceful_shutdown": drain_budget,
        "workers": 1,
    }
    limits = HeaderLimits(settings.max_header_bytes, settings.max_header_fields, settings.header_timeout_s)
    protocol = guarded_protocol(limits)
    if protocol is not None:
        kwargs["http"] = protocol
    else:  # no httptools: uvicorn's h11 bounds the header bytes; nothing times out the header phase
        log.warning("httptools is not installed: request headers are bounded in size, not in time")
        kwargs["http"] = "h11"
        kwargs["h11_max_incomplete_event_size"] = limits.max_bytes
    kwargs.update(config)
    return GracefulServer(uvicorn.Config(app, **kwargs), app, grace_s=grace, drain_s=drain)


def serve(app: Any, settings: Any, **config: Any) -> None:
    """Run `app` until a shutdown signal, then shut down gracefully (see the module docstring)."""
    server_for(app, settings, **config).run()


__all__ = ["GracefulServer", "serve", "server_for"]
