"""A lean per-request path for FastAPI routes: fill the endpoint's parameters directly from a plan made once.

Why: bench/serving.py measured FastAPI's per-request dependency solver (`solve_dependencies`, run for every
request whatever the endpoint needs) at about a quarter of the server's CPU on `/v1/.../sample`. Our
endpoints only ever take path strings, simple query values, one JSON body model, the `Request`, and async
dependencies built from those, so the work can be planned once per route at start-up.

`plan(route)` reads the `Dependant` FastAPI already built for the route (so OpenAPI and the signature stay
the single source of truth) and returns an async `fill(request, body, errors)` giving the keyword arguments
(None when validation failed); or it returns None when the route uses anything else (headers, cookies, sync
dependencies, embedded bodies, ...), and such routes keep FastAPI's own handler. Validation goes through
the same pydantic adapters FastAPI uses (a body that fails the fast JSON parse is re-validated FastAPI's way,
for its exact messages), and errors are raised as `RequestValidationError` with FastAPI's `loc` conventions
(`("body", ...)`, `("query", name)`), so clients see the same 422s either way (tests/service/test_lean.py).
The endpoint must return a `Response` itself (ours all do): there is no response-model serialisation here.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.routing import BaseRoute, Match, get_route_path
from starlette.types import Receive, Scope, Send

from service.limits import BODY_SCOPE_KEY

Out = dict[str, Any]  # the keyword arguments being filled
Errs = list[dict[str, Any]]  # validation errors, in pydantic's shape
Fill = Callable[[Request, bytes | None, Errs], Awaitable[Out | None]]
Step = Callable[[Request, bytes | None, Out, Errs], None]
DepStep = Callable[[Request, bytes | None, Out, Errs], Awaitable[None]]


def _missing(loc: tuple[str | int, ...]) -> dict[str, Any]:
    return {"type": "missing", "loc": loc, "msg": "Field required", "input": None}


def _path_step(field: Any) -> Step | None:
    if field.field_info.annotation is not str:
        return None
    name, alias = field.name, field.alias

    def step(request: Request, body: bytes | None, out: Out, errs: Errs) -> None:
        out[name] = request.path_params[alias]

    return step


def _query_step(field: Any) -> Step | None:
    ann = field.field_info.annotation
    if getattr(ann, "__origin__", None) in (list, tuple, set, frozenset):
        return None  # repeated query values: FastAPI's handler
    name, alias, required = field.name, field.alias, field.field_info.is_required()
    default = None if required else field.get_default()
    is_str = ann is str

    def step(request: Request, body: bytes | None, out: Out, errs: Errs) -> None:
        # No query string (the usual case): skip building QueryParams just to find nothing in it.
        raw = request.query_params.get(alias) if request.scope.get("query_string") else None
        if raw is None:
            if required:
                errs.append(_missing(("query", alias)))
            else:
                out[name] = default
            return
        if is_str:
            out[name] = raw
            return
        value, e = field.validate(raw, {}, loc=("query", alias))
        if e:
            errs.extend(e)
        else:
            out[name] = value

    return step


def _body_step(field: Any) -> Step | None:
    model = field.field_info.annotation
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        return None
    name = field.name

    def step(request: Request, body: bytes | None, out: Out, errs: Errs) -> None:
        if not body:
            errs.append(_missing(("body",)))
            return
        try:  # the fast way: pydantic parses and validates the JSON bytes in one pass
            out[name] = model.model_validate_json(body)
        except ValidationError:  # the error path: FastAPI's own steps, for its exact messages
            try:
                doc = json.loads(body)
            except json.JSONDecodeError as exc:
                errs.append({"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                             "input": {}, "ctx": {"error": exc.msg}})
                return
            _, e = field.validate(doc, {}, loc=("body",))
            errs.extend(e)

    return step


def _dependency_step(sub: Dependant) -> DepStep | None:
    call, name = sub.call, sub.name
    if call is None or name is None or not inspect.iscoroutinefunction(call):
        return None  # sync dependencies run in the thread pool: leave those to FastAPI
    fill = _plan(sub)
    if fill is None:
        return None
    if _request_only(sub):  # e.g. get_store(request): call it straight, no filling
        request_name = sub.request_param_name
        assert request_name is not None

        async def direct(request: Request, body: bytes | None, out: Out, errs: Errs) -> None:
            out[name] = await call(**{request_name: request})

        return direct

    async def step(request: Request, body: bytes | None, out: Out, errs: Errs) -> None:
        kwargs = await fill(request, body, errs)
        if kwargs is not None:  # as FastAPI: a dependency whose own parameters failed is not called
            out[name] = await call(**kwargs)

    return step


def _request_only(d: Dependant) -> bool:
    """True when the dependency takes the `Request` and nothing else."""
    return d.request_param_name is not None and not (
        d.dependencies or d.path_params or d.query_params or d.body_params)


def _plan(d: Dependant) -> Fill | None:
    """Fill in FastAPI's order: sub-dependencies first, then path, query and body; all errors collected."""
    if (d.header_params or d.cookie_params or d.websocket_param_name or d.http_connection_param_name
            or d.response_param_name or d.background_tasks_param_name or d.security_scopes_param_name
            or len(d.body_params) > 1):
        return None
    deps: list[DepStep] = []
    for sub in d.dependencies:
        ds = _dependency_step(sub)
        if ds is None:
            return None
        deps.append(ds)
    params: list[Step] = []
    kinds = ((_path_step, d.path_params), (_query_step, d.query_params), (_body_step, d.body_params))
    for make, fields in kinds:
        for f in fields:
            s = make(f)
            if s is None:
                return None
            params.append(s)
    request_name = d.request_param_name

    async def fill(request: Request, body: bytes | None, errs: Errs) -> Out | None:
        out: Out = {}
        before = len(errs)
        for ds in deps:
            await ds(request, body, out, errs)
        for s in params:
            s(request, body, out, errs)
        if request_name is not None:
            out[request_name] = request
        return out if len(errs) == before else None

    return fill


def plan(route: APIRoute) -> Fill | None:
    """The parameter filler for `route`, or None when FastAPI's own handler must serve it."""
    ret = inspect.signature(route.endpoint).return_annotation
    if isinstance(ret, str):  # postponed annotations: resolve against the endpoint's module
        ret = route.endpoint.__globals__.get(ret)
    if not (inspect.isclass(ret) and issubclass(ret, Response)):
        return None
    if not inspect.iscoroutinefunction(route.endpoint) or route._embed_body_fields:  # noqa: SLF001
        return None
    return _plan(route.dependant)


def lean_handler(route: APIRoute, read_body: Callable[[Request], Awaitable[bytes | None]]
                 ) -> Callable[[Request], Awaitable[Response]] | None:
    """A request handler for `route` that skips FastAPI's dependency solver, or None if it cannot.
    `read_body` turns the request into the JSON body bytes (or None when the route takes no body)."""
    fill = plan(route)
    if fill is None:
        return None
    endpoint = route.endpoint
    takes_body = bool(route.dependant.body_params) or any(s.body_params for s in route.dependant.dependencies)

    async def handler(request: Request) -> Response:
        body = await read_body(request) if takes_body else None
        errs: Errs = []
        kwargs = await fill(request, body, errs)
        if kwargs is None:
            raise RequestValidationError(errs, body=body)
        return await endpoint(**kwargs)  # type: ignore[no-any-return]

    return handler


async def request_body(request: Request) -> bytes:
    """The whole body: as the limits middleware left it in the scope, else read from the request."""
    body = request.scope.get(BODY_SCOPE_KEY)
    return body if body is not None else await request.body()


class LeanRoute(APIRoute):
    """An APIRoute served by the lean handler wherever `plan` allows, else by FastAPI's own.

    Subclasses say how a body is read (`read_body`) and may adapt FastAPI's handler for the routes the lean
    path cannot serve (`fastapi_handler`); the choice between the two is made here, once per route."""

    async def read_body(self, request: Request) -> bytes:
        """The body as sent, read as JSON whatever its content-type: as the limits middleware left it in the
        scope (sparing Starlette's stream machinery), else from the request."""
        return await request_body(request)

    def fastapi_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return super().get_route_handler()

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return lean_handler(self, self.read_body) or self.fastapi_handler()  # type: ignore[return-value]


class HotIndex(BaseRoute):
    """The POST routes of the hot routers, found by their last path segment before any regex runs.

    FastAPI 0.16x walks included routers route by route, with bookkeeping per candidate: about 15% of a
    `/v1/.../sample` request in a profile. Mounted first, this index sends the hot POSTs straight to their
    route; anything it does not fully match (other methods, unknown paths) falls through to the normal walk,
    so 404s and 405s are FastAPI's own. Only POST routes with a literal last segment are indexed, and the
    routes before them in the app are GET-only, so no precedence changes.
    """

    def __init__(self, routes: list[BaseRoute]) -> None:
        self.by_tail: dict[str, list[APIRoute]] = {}
        for r in routes:
            if isinstance(r, APIRoute) and r.methods == {"POST"}:
                tail = r.path.rsplit("/", 1)[-1]
                if tail and "{" not in tail:
                    self.by_tail.setdefault(tail, []).append(r)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] != "POST":
            return Match.NONE, {}
        path = get_route_path(scope)
        for route in self.by_tail.get(path[path.rfind("/") + 1:], ()):
            match, child = route.matches(scope)
            if match is Match.FULL:
                return match, child  # child["route"] is the APIRoute: metrics label it by its template
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["route"].handle(scope, receive, send)
