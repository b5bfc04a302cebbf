"""`python -m service`: serve the store with uvicorn, one worker; host, port from LATENTSERVE_*.

Every problem with the settings is found before anything starts, and all of them are reported at once, one
line each, with exit code 2: values that do not validate, a store that is not a directory, a backend that
cannot load here (the TorchScript backend without torch)."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from service.app import create_app
from service.http import server
from service.settings import Settings, get_settings


def _fail(message: str) -> NoReturn:
    print(f"python -m service: {message}", file=sys.stderr)  # noqa: T201 - before logging is set up
    sys.exit(2)


def _problems() -> tuple[Settings | None, list[str]]:
    """The settings, and every problem with them (one line each)."""
    problems: list[str] = []
    settings: Settings | None = None
    try:
        settings = get_settings()
    except ValidationError as exc:
        problems += [f"LATENTSERVE_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}"
                     if e["loc"] else str(e["msg"]) for e in exc.errors()]
    store = (settings.store if settings is not None
             else Path(os.environ.get("LATENTSERVE_STORE", "models_store")))
    if not store.is_dir():
        problems.append(f"LATENTSERVE_STORE={str(store)!r}: the models store is not a directory")
    backend = settings.backend if settings is not None else os.environ.get("LATENTSERVE_BACKEND", "onnx")
    if backend == "torchscript" and not _imports("torch"):
        problems.append("LATENTSERVE_BACKEND='torchscript': needs torch, which does not import here "
                        "(pip install torch==2.13.0, or use the onnx backend)")
    return settings, problems


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _settings() -> Settings:
    settings, problems = _problems()
    if problems or settings is None:
        _fail("bad settings:\n" + "\n".join(f"  {p}" for p in problems))
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
