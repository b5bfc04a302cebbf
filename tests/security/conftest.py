"""Fixtures for the security and reliability tests. Async tests run on asyncio through anyio's plugin.

The tiny fixture store comes from tests/service/storebuilder.py (onnx.helper graphs, no torch).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[1]
for _p in (_TESTS / "service", _TESTS / "security"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def fixture_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard fixture store (read-only by convention: copy it before changing anything)."""
    from storebuilder import build_store

    return build_store(tmp_path_factory.mktemp("hardening") / "models_store")
