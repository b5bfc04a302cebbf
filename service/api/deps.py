"""Typed dependencies of the GET routes: what a handler needs from the app, resolved per request.

The operations (POST) do not use these: they are rows of the operations table (service.http.table), whose
`Call` hands them the same state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import NotReady
from service.store.repository import ModelStore


# `async def` on purpose: FastAPI runs sync dependencies in the thread pool, one hop per request.
async def get_store(request: Request) -> ModelStore:
    store = getattr(request.app.state, "store", None)
    if store is None:
        raise NotReady("the models store is not open yet")
    return store  # type: ignore[no-any-return]


StoreDep = Annotated[ModelStore, Depends(get_store)]
