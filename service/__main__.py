"""`python -m service`: serve the store with uvicorn, one worker; host, port from LATENTSERVE_*."""

from __future__ import annotations

import logging

from service import shutdown
from service.app import create_app
from service.settings import get_settings


def main() -> None:
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Graceful shutdown (service.shutdown): readiness drops at SIGTERM, in-flight requests finish,
    # and the process exits within settings.shutdown_grace_s.
    shutdown.serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
