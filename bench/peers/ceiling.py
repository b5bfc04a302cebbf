"""The ceiling for bench/peers.py: a bare FastAPI app whose POST route reads a small JSON body and answers a
small JSON object, under `uvicorn ceiling:app` (uvloop, httptools, as our server): no model, no validation.

What FastAPI and uvicorn alone cost per request on this machine; a server that decodes a latent on the same
framework cannot beat it. The route takes the same V2 JSON body as ours and answers how many numbers it read.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}


@app.post("/infer")
async def infer(request: Request) -> dict[str, Any]:
    """Parse the JSON body (a V2 request) and answer a small JSON object."""
    body = await request.json()
    return {"outputs": len(body["inputs"][0]["data"])}
