"""Typed dependencies: what a handler needs from the app, resolved per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import NotReady
from service.runtime import Runtime
from service.settings import Settings
from service.store.repository import ModelStore


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


# The request deadline (504) is the limits middleware's alone (service/limits.py): it covers body upload,
# parsing and inference in one timer, so handlers carry no second timeout of their own.
