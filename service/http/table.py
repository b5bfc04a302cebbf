"""The operations table: each /v1 operation and V2 infer is one `Row` (path, request model, operation,
response), mounted as a plain Starlette route. The OpenAPI document is generated from the same rows
(service.http.openapi).

This is where a request body is parsed and validated, and the only place:

    bytes     read once by service.http.body, up to max_body_bytes, and left in the scope
    JSON      `row.request.model_validate_json(bytes)`: pydantic parses and validates in one pass; nothing
              else parses it. A body that pydantic refuses is a 400 when it is not JSON at all (the message
              names a BOM or UTF-16 when that is why), else a 422 listing the fields at fault
    forms     multipart/form-data is mapped onto the same request model (service.http.forms)
    query     `row.query`, a pydantic model of the query string; unknown parameters are refused
    big       a body over OFFLOAD_BYTES is validated in a worker thread, so the event loop keeps serving

then the operation runs with a `Call` (the request, the app's store, runtime and settings) and the validated
body, and returns the response. Operations raise `service.errors`; service.http.problems renders them.
A row whose `request` is None gets the body as bytes (V2 infer, whose tensors the V2 codec reads).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route, get_route_path
from starlette.types import Receive, Scope, Send

from service.errors import InvalidInput, NotReady
from service.http import forms, problems
from service.http.body import body_of
from service.http.headers import header
from service.runtime import Runtime
from service.settings import Settings
from service.store.repository import ModelStore, ModelVersion

#: Bodies above this are validated off the event loop: pydantic builds every number of a JSON image as a
#: Python object, ~0.1 s per MB, and the loop must keep answering meanwhile (health probes, small requests).
OFFLOAD_BYTES = 256 * 1024

Operation = Callable[["Call", Any], Awaitable[Response]]


@dataclass(frozen=True)
class Row:
    """One operation of the table."""

    path: str  # a Starlette path template, e.g. "/v1/models/{name}/sample"
    request: type[BaseModel] | None  # the body's model; None: the operation reads the bytes itself
    operation: Operation
    response: Any  # the type of what a 200 carries in JSON (for the docs and the tests); None: undocumented
    query: type[BaseModel] | None = None  # query parameters, when the operation takes any
    forms: bool = False  # multipart/form-data uploads map onto `request`
    png: bool = False  # `Accept: image/png` gives one PNG instead of JSON
    optional_body: bool = False  # an empty body means the request model's defaults
    operation_id: str = ""  # default: the operation's name
    tag: str = "operations"
    body_doc: dict[str, Any] | None = None  # the OpenAPI requestBody of a bytes row


class Call:
    """What an operation gets beside its body: the request, its validated query, and the app's state."""

    __slots__ = ("query", "request", "state")

    def __init__(self, request: Request, query: BaseModel | None) -> None:
        self.request = request
        self.query = query
        self.state = request.app.state

    @property
    def settings(self) -> Settings:
        return self.state.settings  # type: ignore[no-any-return]

    @property
    def store(self) -> ModelStore:
        store = self.state.store
        if store is None:
            raise NotReady("the models store is not open yet")
        return store  # type: ignore[no-any-return]

    @property
    def runtime(self) -> Runtime:
        rt = self.state.runtime
        if rt is None:
            raise NotReady("the runtime is not started yet")
        return rt  # type: ignore[no-any-return]

    @property
    def path_params(self) -> dict[str, str]:
        return self.request.path_params

    def model(self) -> ModelVersion:
        """The model version the path names: `{name}`, and `{version}` when the path has one."""
        params = self.request.path_params
        return self.store.get(params["name"], params.get("version"))

    def header(self, name: bytes) -> bytes | None:
        """The first value of a request header (lower-case name)."""
        return header(self.request.scope, name)

    def wants_png(self) -> bool:
        """True when the first of image/png or application/json named in Accept is image/png."""
        accept = (self.header(b"accept") or b"").decode("latin-1")
        for part in accept.split(","):
            media = part.split(";")[0].strip().lower()
            if media == "image/png":
                return True
            if media in ("application/json", "application/*"):
                return False
        return False


def validate_json(model: type[BaseModel], body: bytes) -> BaseModel:
    """The request model from JSON bytes, or the 400/422 that says what is wrong with them."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise problems.invalid_body(exc, body) from None


async def _body(row: Row, request: Request) -> Any:
    body = body_of(request.scope)
    if row.request is None:
        return body
    if row.forms:
        ctype = header(request.scope, b"content-type") or b""
        if ctype[:19].lower() == b"multipart/form-data":
            return await forms.parse(request, row.request)
    if not body:
        if row.optional_body:
            return row.request()
        raise InvalidInput("body: Field required (a JSON object)", errors=[
            {"loc": ["body"], "msg": "Field required", "type": "missing"}])
    if len(body) > OFFLOAD_BYTES:
        return await anyio.to_thread.run_sync(validate_json, row.request, body)
    return validate_json(row.request, body)


def _query(row: Row, request: Request) -> BaseModel | None:
    if not request.scope.get("query_string"):  # the usual case: no QueryParams to build
        return None if row.query is None else _DEFAULTS.setdefault(row.query, row.query())
    if row.query is None:
        names = sorted(request.query_params.keys())
        errors = [{"loc": ["query", n], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
                  for n in names[:20]]
        raise InvalidInput(f"this operation takes no query parameters, got {names[:8]}: send them as fields "
                           "of the JSON body", errors=errors)
    try:
        return row.query.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise problems.invalid_body(exc, b"", where="query") from None


_DEFAULTS: dict[type[BaseModel], BaseModel] = {}  # each query model with every parameter left out


class TableRoute(Route):
    """A Starlette route that names itself in the scope, as Starlette's own router does (FastAPI's router does
    not for routes other than its own), so that the metrics label a request by the route's template."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


def route(row: Row) -> Route:
    """The Starlette route of a row: query and body validated, then the operation called."""
    operation = row.operation

    async def endpoint(request: Request) -> Response:
        query = _query(row, request)
        body = await _body(row, request)
        return await operation(Call(request, query), body)

    endpoint.__name__ = row.operation_id or operation.__name__
    endpoint.__doc__ = operation.__doc__
    return TableRoute(row.path, endpoint, methods=["POST"], name=endpoint.__name__)


class TableIndex(BaseRoute):
    """The table's routes, found by the last segment of the path: a dict lookup instead of a regex per row.

    FastAPI's router tries its routes in order, so whatever comes first is tried by every request. Mounted
    first, this index costs a request of any other route one call, and finds a table route's candidates at
    once; the candidates match as Starlette routes do (so a GET on a POST route is still a 405)."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self.by_tail: dict[str, list[Route]] = {}
        for r in routes:
            self.by_tail.setdefault(r.path.rsplit("/", 1)[-1], []).append(r)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        path = get_route_path(scope)
        partial: tuple[Match, Scope] | None = None
        for r in self.by_tail.get(path[path.rfind("/") + 1:], ()):
            match, child = r.matches(scope)
            if match is Match.FULL:
                return match, child
            if match is Match.PARTIAL and partial is None:
                partial = (match, child)
        return partial or (Match.NONE, {})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["route"].handle(scope, receive, send)


def mount(app: Any, rows: list[Row]) -> None:
    """Put the rows' routes, behind their index, first in the app's router."""
    app.router.routes.insert(0, TableIndex([route(r) for r in rows]))
