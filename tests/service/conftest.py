"""Fixtures for the service tests: one tiny store per session, an app over it, and a runtime for ops tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from storebuilder import build_store

from service.app import create_app
from service.runtime import Runtime
from service.settings import Settings
from service.store.repository import ModelStore


@pytest.fixture(scope="session")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("store") / "models_store")


@pytest.fixture(scope="session")
def settings(store_root: Path) -> Settings:
    return Settings(store=store_root, max_items=32, max_body_bytes=256 * 1024, max_image_pixels=10_000)


@pytest.fixture(scope="session")
def runtime_store(settings: Settings) -> tuple[Runtime, ModelStore]:
    rt = Runtime(settings)
    return rt, ModelStore.open(settings.store, check=rt.prepare)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c
