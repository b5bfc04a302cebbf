"""Typed dependencies: what a handler needs from the app, resolved per request."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request

from service.errors import NotReady, Timeout
from service.runtime import Runtime
from service.settings import Settings
from service.store.repository import ModelStore

T = TypeVar("T")


# Dependencies are `async def` on purpose: FastAPI runs sync ones in the thread pool, one hop each per
# request, which cost /v1 a third of its throughput in bench/serving.py. Access control is not here: it
# is the ASGI guard in service/security.py, in front of every /v1 and /v2 route.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_store(request: Request) -> ModelStore:
    store = getattr(request.app.state, "store", None)
    if store is None:
        raise NotReady("the models store is not open yet")
    return store  # type: ignore[no-any-return]


async def get_runtime(request: Request) -> Runtime:
    rt = getattr(request.app.state, "runtime", None)
    if rt is None:
        raise NotReady("the runtime is not started yet")
    return rt  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def within(settings: Settings, work: Awaitable[T]) -> T:
    """Await `work`, or raise Timeout after request_timeout_s (the worker thread finishes on its own)."""
    try:
        with anyio.fail_after(settings.request_timeout_s):
            return await work
    except TimeoutError:
        raise Timeout(f"the request took longer than {settings.request_timeout_s:g} s") from None
