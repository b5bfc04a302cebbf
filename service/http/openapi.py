"""The OpenAPI document: FastAPI's for its GET routes, the operations table's rows (service.http.table), and
what the boundary in front of every route can answer. /docs, schema clients and fuzzers read one document, and
it agrees with the service.

A row becomes a POST path item: its path parameters, its query model's fields as query parameters, its
request model as the JSON body (and as multipart/form-data where the row takes forms), its response model as
the 200 (with image/png where the row answers PNG grids), and the errors the API answers with (problem+json
on /v1, {"error"} on /v2). Schemas are pydantic's, named as FastAPI names them.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from service.http.access import Zone, classify, parse_keys
from service.http.problems import is_v2
from service.http.table import Row

REF = "#/components/schemas/{model}"
_V2_ERROR: dict[str, Any] = {
    "type": "object",
    "title": "V2Error",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_PROBLEM: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details; extension members (e.g. `errors`, `limit`) may follow",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}
_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}

#: What each kind of row answers besides 200, with the reason shown in the docs.
_V1_ERRORS = {
    "400": "malformed request",
    "404": "unknown model or version",
    "409": "the model lacks this capability",
    "413": "too large: body, items or image pixels",
    "422": "invalid input",
}
_V2_ERRORS = {
    "400": "bad request: the body or its tensors do not fit the model",
    "404": "unknown model or version",
    "500": "inference failed",
    "503": "not ready, unloaded, or overloaded (Retry-After)",
}
#: What the middleware in front of every route can answer, whatever the handler declares.
_BOUNDARY_ERRORS = {
    "413": "Request body above max_body_bytes (or too many items, or too many image pixels)",
    "504": "Not answered within request_timeout_s",
}
_BODY_ERRORS = {"408": "Request body not received within request_timeout_s"}
_NAME_IN_PATH_DOC = re.compile(r"^/(v1/models|v2/models|v2/repository/models)/\{")
MULTIPART: dict[str, Any] = {
    "schema": {
        "type": "object",
        "properties": {
            "images": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "description": "one PNG/JPEG file per image (repeat the field)",
            },
        },
        "additionalProperties": {"type": "string", "description": "other fields, as in the JSON body"},
    }
}


def error_response_doc(path: str, description: str, v2_ref: bool = False) -> dict[str, Any]:
    """An OpenAPI response object for an error on `path`, in that API's error shape."""
    if is_v2(path):
        schema = {"$ref": REF.format(model="V2Error")} if v2_ref else _V2_ERROR
        return {"description": description, "content": {"application/json": {"schema": schema}}}
    return {"description": description, "content": {"application/problem+json": {"schema": _PROBLEM}}}


# --- the table's rows ---------------------------------------------------------------------------------------
def _schemas(rows: list[Row]) -> tuple[dict[tuple[Any, JsonSchemaMode], Any], dict[str, Any]]:
    """JSON schemas of every model the rows name, with shared definitions under components."""
    keyed: dict[tuple[Any, JsonSchemaMode], TypeAdapter[Any]] = {}
    for r in rows:
        for model, mode in ((r.request, "validation"), (r.response, "serialization")):
            if model is not None:
                keyed[(model, mode)] = TypeAdapter(model)  # type: ignore[index]
    if not keyed:
        return {}, {}
    mapping, defs = TypeAdapter.json_schemas([(k[0], k[1], a) for k, a in keyed.items()], ref_template=REF)
    return mapping, defs.get("$defs", {})


def _summary(name: str) -> str:
    return name.replace("_", " ").title()


def _parameters(row: Row) -> list[dict[str, Any]]:
    params = [{"in": "path", "name": p, "required": True,
               "schema": {"title": _summary(p), "type": "string"}} for p in re.findall(r"{(\w+)}", row.path)]
    if row.query is not None:
        props = row.query.model_json_schema()["properties"]
        for name, field in row.query.model_fields.items():
            schema = dict(props[name])
            params.append({"in": "query", "name": name, "required": field.is_required(), "schema": schema,
                           **({"description": field.description} if field.description else {})})
    return params


def _operation(row: Row, mapping: dict[tuple[Any, JsonSchemaMode], Any]) -> dict[str, Any]:
    name = row.operation_id or row.operation.__name__
    op: dict[str, Any] = {
        "tags": [row.tag], "summary": _summary(row.operation.__name__),
        "description": inspect.cleandoc(row.operation.__doc__ or ""), "operationId": name,
        "parameters": _parameters(row),
    }
    if row.request is not None:
        content = {"application/json": {"schema": mapping[(row.request, "validation")]}}
        if row.forms:
            content["multipart/form-data"] = MULTIPART
        op["requestBody"] = {"content": content, "required": not row.optional_body}
    elif row.body_doc is not None:
        op["requestBody"] = row.body_doc
    ok_schema = mapping[(row.response, "serialization")] if row.response is not None else {}
    ok: dict[str, Any] = {"description": "Successful Response",
                          "content": {"application/json": {"schema": ok_schema}}}
    if row.png:
        ok = {"description": "JSON, or one PNG grid with `Accept: image/png`",
              "content": {"application/json": {"schema": ok_schema}, "image/png": {}}}
    errors = _V2_ERRORS if is_v2(row.path) else _V1_ERRORS
    op["responses"] = {"200": ok, **{code: error_response_doc(row.path, text, v2_ref=True)
                                     for code, text in errors.items()}}
    return op


def table_paths(rows: list[Row]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, component schemas) documenting `rows`."""
    mapping, defs = _schemas(rows)
    return {r.path: {"post": _operation(r, mapping)} for r in rows}, defs


# --- the boundary -------------------------------------------------------------------------------------------
def _document_boundary(path: str, op: dict[str, Any], zone: Zone, has_api: bool) -> None:
    responses: dict[str, Any] = op.setdefault("responses", {})
    if path.startswith("/v1"):
        # Every /v1 error is rendered by one renderer as problem+json, whatever model a route declared.
        for code, resp in responses.items():
            if code[:1] in "45":
                resp["content"] = error_response_doc(path, "")["content"]
    elif is_v2(path):
        responses.pop("422", None)  # bad input on /v2 is a 400, as in Triton
    if path.startswith(("/v1", "/v2")):
        for code, text in _BOUNDARY_ERRORS.items():
            responses.setdefault(code, error_response_doc(path, text))
        if "requestBody" in op:
            for code, text in _BODY_ERRORS.items():
                responses.setdefault(code, error_response_doc(path, text))
    if "{" in path and _NAME_IN_PATH_DOC.match(path):
        responses.setdefault("404", error_response_doc(path, "Unknown or invalid model name"))
    if zone == "admin" or (zone == "inference" and has_api):
        op["security"] = [{"adminKey" if zone == "admin" else "apiKey": []}]
        responses.setdefault("401", error_response_doc(path, "Missing or wrong key"))


def _bearer(env: str) -> dict[str, str]:
    return {"type": "http", "scheme": "bearer", "description": f"one of the keys in {env}"}


def install(app: Any, rows: list[Row], api_keys: Any = None, admin_key: Any = None) -> None:
    """Make `app.openapi` return the whole document: FastAPI's routes, the table's rows, the bearer schemes,
    every error the boundary can answer; the admin routes only while an admin key is set."""
    original: Callable[[], dict[str, Any]] = app.openapi
    has_api = bool(parse_keys(api_keys))
    has_admin = bool(parse_keys(admin_key))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema  # type: ignore[no-any-return]
        schema = original()
        paths: dict[str, dict[str, Any]] = schema.setdefault("paths", {})
        added, defs = table_paths(rows)
        for path, item in added.items():
            paths.setdefault(path, {}).update(item)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs)
        for path in list(paths):
            zone = classify(path)
            if zone == "admin" and not has_admin:
                del paths[path]
                continue
            for method, op in paths[path].items():
                if method in _METHODS:
                    _document_boundary(path, op, zone, has_api)
        if has_api or has_admin:
            schemes = schema["components"].setdefault("securitySchemes", {})
            if has_api:
                schemes["apiKey"] = _bearer("LATENTSERVE_API_KEYS")
            if has_admin:
                schemes["adminKey"] = _bearer("LATENTSERVE_ADMIN_KEY")
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


__all__ = ["error_response_doc", "install", "table_paths"]
