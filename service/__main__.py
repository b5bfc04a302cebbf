"""`python -m service`: serve the store with uvicorn, one worker; host, port from LATENTSERVE_*."""

from __future__ import annotations

import logging

import uvicorn

from service.app import create_app
from service.settings import get_settings


def main() -> None:
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
