"""`python -m service`: serve the store with uvicorn, one worker; host, port from LATENTSERVE_*.

A bad setting or a missing store is a one-line error and exit code 2, before anything starts."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

from pydantic import ValidationError

from service.app import create_app
from service.http import server
from service.settings import Settings, get_settings


def _fail(message: str) -> NoReturn:
    print(f"python -m service: {message}", file=sys.stderr)  # noqa: T201 - before logging is set up
    sys.exit(2)


def _settings() -> Settings:
    try:
        settings = get_settings()
    except ValidationError as exc:
        lines = [f"  LATENTSERVE_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}"
                 if e["loc"] else f"  {e['msg']}" for e in exc.errors()]
        _fail("bad settings:\n" + "\n".join(lines))
    if not settings.store.is_dir():
        _fail(f"models store {settings.store} is not a directory (LATENTSERVE_STORE)")
    return settings


def main() -> None:
    settings = _settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Graceful shutdown (service.shutdown): readiness drops at SIGTERM, in-flight requests finish,
    # and the process exits within settings.shutdown_grace_s.
    server.serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
