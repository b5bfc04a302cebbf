"""Typed dependencies: what a handler needs from the app, resolved per request."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request

from service.errors import NotReady, Timeout, Unauthorized
from service.runtime import Runtime
from service.settings import Settings
from service.store.repository import ModelStore

T = TypeVar("T")


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_store(request: Request) -> ModelStore:
    store = getattr(request.app.state, "store", None)
    if store is None:
        raise NotReady("the models store is not open yet")
    return store  # type: ignore[no-any-return]


def get_runtime(request: Request) -> Runtime:
    rt = getattr(request.app.state, "runtime", None)
    if rt is None:
        raise NotReady("the runtime is not started yet")
    return rt  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """When api_keys is set, every /v1 call needs `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    if not settings.api_keys:
        return
    auth = request.headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not key or not any(hmac.compare_digest(key.encode(), k.encode()) for k in settings.api_keys):
        raise Unauthorized("a valid API key is required (Authorization: Bearer <key> or X-API-Key)")


async def within(settings: Settings, work: Awaitable[T]) -> T:
    """Await `work`, or raise Timeout after request_timeout_s (the worker thread finishes on its own)."""
    try:
        with anyio.fail_after(settings.request_timeout_s):
            return await work
    except TimeoutError:
        raise Timeout(f"the request took longer than {settings.request_timeout_s:g} s") from None
