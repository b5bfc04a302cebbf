"""FastAPI's native OpenTelemetry: off unless LATENTSERVE_OTEL asks for it."""

from __future__ import annotations

from pathlib import Path

from service.app import create_app
from service.settings import Settings


def test_otel_is_off_by_default_and_on_when_asked(tmp_path: Path) -> None:
    off = create_app(Settings(store=tmp_path))
    assert not off._native_telemetry.enabled()  # noqa: SLF001  no per-request provider lookups
    on = create_app(Settings(store=tmp_path, otel=True))
    cfg = on._telemetry  # noqa: SLF001
    assert cfg["tracing"] and cfg["metrics"] and cfg["logs"]  # FastAPI's defaults: follow global providers
