"""BodyLimit and Deadline on a toy app: body size (declared, chunked), 408 slow bodies, 504 slow handlers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from service.http.body import BodyLimit
from service.http.deadline import Deadline

pytestmark = pytest.mark.anyio


def toy_app(max_body: int = 1000, timeout_s: float = 0.0) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.post("/v2/echo")
    async def echo2(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.get("/v1/slow")
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(5)
        return {"ok": True}

    @app.get("/v1/slow-sync")
    def slow_sync() -> dict[str, bool]:
        time.sleep(1.0)  # a stuck worker thread cannot be cancelled; the client is answered anyway
        return {"ok": True}

    @app.get("/v1/stream")
    async def stream() -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            for _ in range(3):
                await asyncio.sleep(0.1)
                yield b"x"
        return StreamingResponse(gen())

    app.add_middleware(BodyLimit, max_body_bytes=max_body)
    app.add_middleware(Deadline, timeout_s=timeout_s)
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_body_within_limit_reaches_the_app() -> None:
    async with client(toy_app()) as c:
        r = await c.post("/v1/echo", content=b"a" * 1000)
    assert r.status_code == 200 and r.json() == {"size": 1000}


async def test_declared_length_over_limit_is_413_problem() -> None:
    async with client(toy_app()) as c:
        r = await c.post("/v1/echo", content=b"a" * 1001)
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == 413 and body["type"].endswith(":payload-too-large") and "1000" in body["detail"]


async def test_chunked_body_over_limit_is_413_without_content_length() -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 1
            yield b"b" * 300

    async with client(toy_app()) as c:
        r = await c.post("/v1/echo", content=chunks())
    assert r.request.headers.get("content-length") is None
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413
    assert sent < 100  # reading stopped at the limit, the rest was never pulled


async def test_v2_errors_are_error_objects() -> None:
    async with client(toy_app()) as c:
        r = await c.post("/v2/echo", content=b"a" * 5000)
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"error"}


async def test_bad_content_length_is_400() -> None:
    app = toy_app()
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict[str, object]) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/v1/echo", "headers": [(b"content-length", b"12x")]}
    await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 400


async def test_slow_handler_is_504() -> None:
    async with client(toy_app(timeout_s=0.3)) as c:
        t0 = time.monotonic()
        r = await c.get("/v1/slow")
    assert r.status_code == 504 and r.json()["type"].endswith(":timeout")
    assert time.monotonic() - t0 < 2


async def test_stuck_sync_handler_still_gets_504_on_time() -> None:
    async with client(toy_app(timeout_s=0.2)) as c:
        t0 = time.monotonic()
        r = await c.get("/v1/slow-sync")
        elapsed = time.monotonic() - t0
    assert r.status_code == 504
    assert elapsed < 0.9  # answered before the worker thread returned


async def test_streaming_response_started_in_time_is_not_cut() -> None:
    async with client(toy_app(timeout_s=0.15)) as c:
        r = await c.get("/v1/stream")
    assert r.status_code == 200 and r.content == b"xxx"


async def test_slow_body_upload_is_408() -> None:
    async def trickle() -> AsyncIterator[bytes]:
        yield b"a"
        await asyncio.sleep(1)
        yield b"b"

    async with client(toy_app(timeout_s=0.2)) as c:
        r = await c.post("/v1/echo", content=trickle())
    assert r.status_code == 408


async def test_disconnect_mid_body_never_calls_the_app() -> None:
    called = False

    async def app(scope: object, receive: object, send: object) -> None:
        nonlocal called
        called = True

    mw = BodyLimit(app, max_body_bytes=100)  # type: ignore[arg-type]
    messages = iter([
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.disconnect"},
    ])

    async def receive() -> object:
        return next(messages)

    sent: list[object] = []

    async def send(msg: object) -> None:
        sent.append(msg)

    await mw({"type": "http", "path": "/v1/echo", "headers": []}, receive, send)  # type: ignore[arg-type]
    assert not called and sent == []


@pytest.mark.parametrize("limit", [0])
async def test_zero_disables_the_body_limit(limit: int) -> None:
    async with client(toy_app(max_body=limit)) as c:
        r = await c.post("/v1/echo", content=b"a" * 100_000)
    assert r.status_code == 200 and r.json()["size"] == 100_000
