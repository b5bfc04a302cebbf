"""Where a request's CPU goes without HTTP: the app driven in-process through ASGI, piece by piece.

    .venv/bin/python bench/serving_breakdown.py [STORE]

bench/serving.py calls `breakdown()` and puts the table in its report. Each row is the event-loop thread's CPU
per request (time.thread_time, the minimum over rounds, so a busy host inflates it little) for:

- the ceiling (GET /health/live) and `/v1/.../sample` n=1 through the whole app (middleware, routing,
  handler);
- the same sample request with `service.ops.sample` replaced by a stub returning a ready answer: the cost of
  everything but the operation itself;
- the operation alone (`service.ops.sample`: seeded prior draw, `Runtime.infer`, onnxruntime), and
  onnxruntime's `run` alone on the same decoder input.

The service runs with its default settings except where a row says otherwise.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MLP = "vae-digits"


def _scope(method: str, path: str, body: bytes) -> dict[str, Any]:
    headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
    if body:
        headers.append((b"content-length", str(len(body)).encode()))
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}


async def _call(app: Any, method: str, path: str, body: bytes = b"") -> None:
    scope = _scope(method, path, body)
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    if status != 200:
        raise RuntimeError(f"{method} {path}: HTTP {status}")


async def _cpu_us(fn: Callable[[], Awaitable[Any]], n: int, rounds: int) -> float:
    for _ in range(max(n // 4, 20)):  # warm-up: sessions, caches, the inline estimate
        await fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.thread_time()
        for _ in range(n):
            await fn()
        best = min(best, (time.thread_time() - t) / n * 1e6)
    return best


async def _breakdown(store: Path, rounds: int) -> list[tuple[str, float]]:
    os.environ["LATENTSERVE_STORE"] = str(store)
    from service import ops
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings())
    sample_path = f"/v1/models/{MLP}/sample"
    body = b'{"n": 1}'
    rows: list[tuple[str, float]] = []
    async with app.router.lifespan_context(app):
        rt, mv = app.state.runtime, app.state.store.get(MLP, "latest")
        rows.append(("GET /health/live through the app (the ceiling)",
                     await _cpu_us(lambda: _call(app, "GET", "/health/live"), 200, rounds)))
        rows.append((f"POST {sample_path} n=1 through the app",
                     await _cpu_us(lambda: _call(app, "POST", sample_path, body), 200, rounds)))
        real = ops.sample
        ready = await real(rt, mv, 1, 0, 1.0)

        async def stub(*args: Any, **kwargs: Any) -> Any:
            return ready

        ops.sample = stub  # type: ignore[assignment]
        try:
            rows.append(("the same, with `ops.sample` stubbed (all but the operation)",
                         await _cpu_us(lambda: _call(app, "POST", sample_path, body), 200, rounds)))
        finally:
            ops.sample = real  # type: ignore[assignment]
        rows.append(("`ops.sample` alone (seeded draw, Runtime.infer, onnxruntime)",
                     await _cpu_us(lambda: ops.sample(rt, mv, 1, None, 1.0), 500, rounds)))
        spec = mv.manifest.graphs["decoder"]
        z = np.zeros((1, mv.manifest.latent.dim), np.float32)
        feeds = {spec.inputs[0].name: z}
        rows.append(("`Runtime.infer` alone (batcher, metrics, onnxruntime)",
                     await _cpu_us(lambda: rt.infer(mv, "decoder", feeds), 500, rounds)))
        sess = rt.session(mv, "decoder")

        async def bare() -> None:
            sess.run(feeds)

        rows.append(("onnxruntime `run` alone", await _cpu_us(bare, 500, rounds)))
    return rows


def breakdown(store: Path, rounds: int = 10) -> list[tuple[str, float]]:
    """(what, event-loop CPU us per call) rows; see the module docstring."""
    return asyncio.run(_breakdown(store, rounds))


def markdown(rows: list[tuple[str, float]]) -> list[str]:
    return ["| what | loop-thread CPU us per call |", "| --- | ---: |",
            *[f"| {what} | {us:.1f} |" for what, us in rows]]


if __name__ == "__main__":
    store = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "bench" / "serving-store"
    print("\n".join(markdown(breakdown(store))))
