"""The lean request path (service/api/lean.py) answers exactly as FastAPI's own handler would."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from service.api.lean import HotIndex, LeanRoute, plan
from service.errors import install_handlers


class Body(BaseModel):
    n: int = Field(ge=1, le=10)
    label: str = "x"
    weights: list[float] = Field(default_factory=list, max_length=3)


async def grid(
    columns: Annotated[int | None, Query(ge=1, le=5)] = None, scale: Annotated[int, Query(ge=1)] = 1
) -> dict[str, Any]:
    return {"columns": columns, "scale": scale}


async def path_of(request: Request) -> str:
    return request.url.path


async def op(
    name: str,
    body: Body,
    request: Request,
    g: Annotated[dict[str, Any], Depends(grid)],
    where: Annotated[str, Depends(path_of)],
    version: str = "latest",
) -> Response:
    return JSONResponse({"name": name, "version": version, "body": body.model_dump(), "grid": g,
                         "where": where, "method": request.method})


async def with_header(x_token: Annotated[str, Header()]) -> Response:  # headers: FastAPI's handler
    return JSONResponse({"t": x_token})


def build(route_class: type[APIRoute]) -> FastAPI:
    app = FastAPI()
    install_handlers(app)
    router = APIRouter(prefix="/m", route_class=route_class)
    router.add_api_route("/{name}/op", op, methods=["POST"])
    router.add_api_route("/{name}/versions/{version}/op", op, methods=["POST"])
    router.add_api_route("/{name}/h", with_header, methods=["GET"])
    app.include_router(router)
    app.state.router = router
    return app


CASES: list[tuple[str, str, bytes | None]] = [
    ("/m/a/op", "", b'{"n": 3}'),
    ("/m/a/op", "", b'{"n": 3, "label": "y", "weights": [1, 2.5]}'),
    ("/m/a/versions/7/op", "columns=2&scale=3", b'{"n": 1}'),
    ("/m/a/op", "version=2", b'{"n": 1}'),
    ("/m/a/op", "", b"{not json"),
    ("/m/a/op", "", b""),
    ("/m/a/op", "", b"[1, 2]"),
    ("/m/a/op", "", b'{"n": 0}'),
    ("/m/a/op", "", b'{"n": "many"}'),
    ("/m/a/op", "", b'{"label": "no n"}'),
    ("/m/a/op", "", b'{"n": 2, "weights": [1, 2, 3, 4]}'),
    ("/m/a/op", "columns=0", b'{"n": 2}'),
    ("/m/a/op", "columns=abc&scale=0", b'{"n": 2}'),
    ("/m/a/op", "columns=6", b'{"n": 0}'),
    ("/m/a/op", "scale=2.5", b'{"n": 2}'),
]


@pytest.mark.parametrize(("path", "query", "body"), CASES)
def test_lean_routes_answer_like_fastapi(path: str, query: str, body: bytes | None) -> None:
    url = f"{path}?{query}" if query else path
    headers = {"content-type": "application/json"}
    with TestClient(build(APIRoute)) as plain, TestClient(build(LeanRoute)) as lean:
        want = plain.post(url, content=body, headers=headers)
        got = lean.post(url, content=body, headers=headers)
    assert got.status_code == want.status_code, (got.text, want.text)
    assert got.json() == want.json()
    assert got.headers["content-type"] == want.headers["content-type"]


def test_the_lean_plan_covers_our_shapes_and_refuses_the_rest() -> None:
    routes = {(r.path, tuple(r.methods)): r for r in build(LeanRoute).state.router.routes}
    lean = [r for r in routes.values() if r.endpoint is op]
    assert len(lean) == 2 and all(plan(r) is not None for r in lean)  # the comparisons above ran lean
    assert plan(routes[("/m/{name}/h", ("GET",))]) is None  # header parameters: FastAPI's own handler
    with TestClient(build(LeanRoute)) as c:
        assert c.get("/m/a/h", headers={"x-token": "k"}).json() == {"t": "k"}
        assert c.get("/m/a/h").status_code == 422


def test_every_operation_and_v2_infer_runs_lean() -> None:
    """The hot routes must not silently fall back to the slow path (bench/serving.py measures the gap)."""
    from service.api import ops
    from service.v2 import router as v2

    hot = [r for r in ops.router.routes if isinstance(r, APIRoute)]
    hot += [r for r in v2.router.routes if isinstance(r, APIRoute) and r.path.endswith("/infer")]
    assert len(hot) >= 16
    assert [r.path for r in hot if plan(r) is None] == []


def test_hot_index_finds_post_routes_and_leaves_the_rest_to_the_router() -> None:
    app = build(LeanRoute)
    index = HotIndex(list(app.state.router.routes))
    app.router.routes.insert(0, index)
    assert set(index.by_tail) == {"op"}
    seen: list[Any] = []

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        seen.append(request.scope.get("route"))
        return response

    with TestClient(app) as c:
        ok = c.post("/m/a/versions/3/op", json={"n": 2})
        assert ok.status_code == 200 and ok.json()["version"] == "3"
        assert getattr(seen[-1], "path", None) == "/m/{name}/versions/{version}/op"  # metrics label
        assert c.get("/m/a/op").status_code == 405  # not a POST: the normal walk answers
        assert c.post("/m/a/b/c/op", json={"n": 2}).status_code == 404
        assert c.post("/m/a/nope", json={"n": 2}).status_code == 404


def test_request_body_comes_from_the_limits_middleware_or_the_stream() -> None:
    """The limits middleware leaves the body it read in the scope; without it the stream is read."""
    import asyncio

    from starlette.requests import Request

    from service.api.lean import request_body
    from service.limits import BODY_SCOPE_KEY

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b'{"n": 2}', "more_body": False}

    base = {"type": "http", "method": "POST", "headers": [], "path": "/", "query_string": b""}
    assert asyncio.run(request_body(Request({**base, BODY_SCOPE_KEY: b'{"n": 1}'}, receive))) == b'{"n": 1}'
    assert asyncio.run(request_body(Request(base, receive))) == b'{"n": 2}'
