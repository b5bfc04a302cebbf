"""The operations table: every POST the service answers, one row each (path, request model, operation,
response). service.http.table mounts the rows as Starlette routes, validates each body once with the row's
model, and service.http.openapi documents the rows from the same table.

Each /v1 operation is mounted twice: on the latest version and on `/versions/{version}` (a number or
`latest`). V2 infer likewise.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import schemas as v1
from service.api import ops
from service.errors import MethodNotAllowed, RouteNotFound
from service.http.table import Row
from service.v2 import router as v2
from service.v2 import schemas as v2s

_V1 = (
    # op               request model             operation          response model            forms  png
    ("encode",         v1.EncodeRequest,         ops.encode,        v1.EncodeResponse,        True,  False),
    ("decode",         v1.DecodeRequest,         ops.decode,        v1.DecodeResponse,        False, True),
    ("sample",         v1.SampleRequest,         ops.sample,        v1.SampleResponse,        False, True),
    ("interpolate",    v1.InterpolateRequest,    ops.interpolate,   v1.InterpolateResponse,   True,  True),
    ("reconstruct",    v1.ReconstructRequest,    ops.reconstruct,   v1.ReconstructResponse,   True,  True),
    ("denoise",        v1.DenoiseRequest,        ops.denoise,       v1.DenoiseResponse,       True,  True),
    ("anomaly-score",  v1.AnomalyScoreRequest,   ops.anomaly_score, v1.AnomalyScoreResponse,  True,  True),
    ("restyle",        v1.RestyleRequest,        ops.restyle,       v1.RestyleResponse,       True,  True),
)

#: The /v1 operations, by name (the 404 for an unknown one lists them).
V1_OPERATIONS = tuple(op for op, *_ in _V1)

TABLE: list[Row] = [
    *(Row(f"/v1/models/{{name}}{at}/{op}", request, operation, response,
          query=(ops.AnomalyQuery if op == "anomaly-score" else ops.GridQuery) if png else ops.PrecisionQuery,
          forms=forms, png=png,
          operation_id=operation.__name__ + suffix)
      for op, request, operation, response, forms, png in _V1
      for at, suffix in (("", ""), ("/versions/{version}", "_version"))),
    Row("/v2/models/{model_name}/infer", None, v2.infer, None, tag="v2", body_doc=v2.INFER_DOC),
    Row("/v2/models/{model_name}/versions/{model_version}/infer", None, v2.infer, None, tag="v2",
        body_doc=v2.INFER_DOC, operation_id="infer_version"),
    Row("/v2/repository/index", v2s.RepositoryIndexRequest, v2.repository_index,
        list[v2s.RepositoryIndexEntry], tag="v2", optional_body=True),
]

async def unknown_operation(request: Request) -> Response:
    """Any other /v1/models/{name}/{op}: a 404 that lists the operations there are (a 405 for an operation
    asked with another method than POST)."""
    op = request.path_params["op"]
    if op in V1_OPERATIONS:
        raise MethodNotAllowed("Method Not Allowed", headers={"Allow": "POST"})
    raise RouteNotFound(f"no operation {op[:40]!r}; the operations are {', '.join(V1_OPERATIONS)} "
                        "(POST /v1/models/{name}[/versions/{version}]/{op})", operations=list(V1_OPERATIONS))


#: Mounted after every other route: what no route took.
FALLBACK = [Route(path, unknown_operation, include_in_schema=False,
                  methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
            for path in ("/v1/models/{name}/{op}", "/v1/models/{name}/versions/{version}/{op}")]

#: Routes that change what is served: mounted only when an admin key is set (service.http.access).
ADMIN_TABLE: list[Row] = [
    Row("/v2/repository/models/{model_name}/load", v2s.RepositoryLoadRequest, v2.load, None, tag="v2",
        optional_body=True),
    Row("/v2/repository/models/{model_name}/unload", v2s.RepositoryLoadRequest, v2.unload, None, tag="v2",
        optional_body=True),
]
