"""Hot reload: serve newly published store versions without a restart.

Two triggers, one code path (`reload_store`):

    poll     every `settings.reload_interval_s` (0 = off) a background task takes a cheap fingerprint of the
             store (directory listings and stat() of the version files, no hashing) and rescans only when
             it changed. A full rescan verifies every sha256, which is too costly to repeat every few seconds
             on a big store when nothing happened.
    admin    `POST /admin/reload` rescans now, and answers what changed. The route exists only when
             `settings.admin_key` is set, and needs `Authorization: Bearer <admin key>` (compared in constant
             time); `service.security.AccessGuard` enforces the same rule at the ASGI boundary, this module
             checks it again so the route is never open by a wiring mistake.

Publishing is atomic (staging folder + rename), and `ModelStore.reload()` swaps its snapshot in one
assignment, so a request sees the old store or the new one, never half a version; a version that fails
verification is skipped and what was served keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.errors import NotReady, Unauthorized
from service.http.access import KeyRing, parse_keys
from service.store.layout import model_names, version_numbers
from service.store.repository import ModelStore

log = logging.getLogger(__name__)

#: (model, version, ((file, inode, size, mtime_ns), ...)) for every version folder, sorted.
Fingerprint = tuple[tuple[str, int, tuple[tuple[str, int, int, int], ...]], ...]


def fingerprint(root: Path) -> Fingerprint:
    """What the store looks like on disk, cheaply: a publish, a removal or a rewritten file changes it."""
    out = []
    for name in model_names(root):
        for v in version_numbers(root / name):
            vdir = root / name / str(v)
            files = []
            try:
                with os.scandir(vdir) as it:
                    for e in it:
                        st = e.stat(follow_symlinks=False)
                        files.append((e.name, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:  # removed while we looked: the next poll sees the final state
                continue
            out.append((name, v, tuple(sorted(files))))
    return tuple(out)


class ReloadResponse(BaseModel):
    """What a reload changed: versions now served that were not (`added`), and the reverse (`removed`)."""

    added: list[str]
    removed: list[str]
    models: dict[str, list[int]]
    problems: list[dict[str, Any]]


def _served(store: ModelStore) -> set[str]:
    return {f"{mv.name}/{mv.version}" for mv in store.all_versions()}


def _lock(app: FastAPI) -> asyncio.Lock:
    lock = getattr(app.state, "reload_lock", None)
    if lock is None:
        lock = app.state.reload_lock = asyncio.Lock()
    return lock


async def reload_store(app: FastAPI) -> ReloadResponse:
    """Rescan the store in a worker thread (one reload at a time) and drop sessions of removed versions."""
    store: ModelStore = app.state.store
    if not store.root.is_dir():  # an unmounted volume must not look like an empty store
        raise NotReady("the models store is not a directory now; still serving the previous snapshot")
    async with _lock(app):
        before = _served(store)
        await anyio.to_thread.run_sync(store.reload)
        runtime = getattr(app.state, "runtime", None)
        if runtime is not None:
            runtime.retain(store)
        after = _served(store)
    added, removed = sorted(after - before), sorted(before - after)
    if added or removed:
        log.info("store reloaded: added %s, removed %s", added or "-", removed or "-")
    return ReloadResponse(
        added=added, removed=removed, models={n: store.versions(n) for n in store.names()},
        problems=store.problems,
    )


async def poll(app: FastAPI, every_s: float) -> None:
    """Reload whenever the store's fingerprint changes; runs until cancelled. Errors keep the old store."""
    store: ModelStore = app.state.store
    try:
        last: Fingerprint | None = await anyio.to_thread.run_sync(fingerprint, store.root)
    except OSError:  # the root went away between startup and the first poll: the loop below says so
        last = None
    missing = False
    while True:
        await asyncio.sleep(every_s)
        try:
            if not store.root.is_dir():  # e.g. a volume unmounted: keep serving, say so once
                if not missing:
                    log.warning("models store %s is gone; serving the previous snapshot", store.root)
                missing = True
                continue
            missing = False
            now = await anyio.to_thread.run_sync(fingerprint, store.root)
            if now != last:
                await reload_store(app)
                last = now  # taken before the rescan: a publish during it is seen at the next tick
        except Exception:
            log.exception("store poll failed; keeping the previous snapshot")


@contextlib.asynccontextmanager
async def polling(app: FastAPI, every_s: float) -> AsyncIterator[asyncio.Task[None] | None]:
    """Run `poll` for the lifespan of the app (nothing when `every_s` is 0)."""
    if every_s <= 0:
        yield None
        return
    task = asyncio.create_task(poll(app, every_s), name="store-poll")
    log.info("polling %s for new versions every %.3g s", app.state.store.root, every_s)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def admin_router(admin_key: Any) -> APIRouter | None:
    """The admin routes, or None when no admin key is configured (then they do not exist: 404)."""
    ring = KeyRing(parse_keys(admin_key))
    if not ring:
        return None

    def require_admin(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        if not ring.accepts(token.strip() if scheme.lower() == "bearer" and token.strip() else None):
            raise Unauthorized("a valid admin key is required (Authorization: Bearer <key>)")

    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

    @router.post("/reload", response_model=ReloadResponse)
    async def reload(request: Request) -> JSONResponse:
        """Rescan the models store now and serve what was published since; says what changed."""
        result = await reload_store(request.app)
        return JSONResponse(result.model_dump())

    return router


__all__ = ["Fingerprint", "ReloadResponse", "admin_router", "fingerprint", "poll", "polling", "reload_store"]
