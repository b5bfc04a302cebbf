"""Bodies of the V2 endpoints: the infer request as pydantic validates it (service.v2.codec), and the
responses, for the OpenAPI page (handlers return plain dicts or raw bytes)."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter
from typing_extensions import TypeAliasType, TypedDict

# --- the infer request --------------------------------------------------------------------------------------
#: Tensor data as JSON carries it: a flat or nested array, each innermost array of one kind.
TensorData = TypeAliasType(  # type: ignore[misc]  # mypy does not follow a recursive TypeAliasType
    "TensorData",
    Union[list[StrictInt | StrictFloat], list[StrictBool], list[StrictStr], list["TensorData"]],  # type: ignore[misc]  # noqa: UP007,E501
)
Dim = Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)]


# TypedDicts, not BaseModels: pydantic validates them from JSON bytes alike, and a request of batch 1 takes
# 1.8 us instead of 3.0 (no model objects built). Members the protocol may add are ignored.
class InferInput(TypedDict):
    name: StrictStr
    shape: Annotated[list[Dim], Field(max_length=32)]
    datatype: StrictStr
    parameters: NotRequired[dict[str, Any] | None]
    data: NotRequired[TensorData | None]


class RequestedOutputIn(TypedDict):
    name: StrictStr
    parameters: NotRequired[dict[str, Any] | None]


class InferenceRequest(TypedDict):
    """An infer request: its whole body as JSON, or its JSON header before the binary tensors."""

    id: NotRequired[StrictStr | None]
    parameters: NotRequired[dict[str, Any] | None]
    inputs: Annotated[list[InferInput], Field(min_length=1)]
    outputs: NotRequired[list[RequestedOutputIn] | None]


INFERENCE_REQUEST: TypeAdapter[InferenceRequest] = TypeAdapter(InferenceRequest)


class RepositoryLoadRequest(BaseModel):
    """The body of load: models come from the store only, so `parameters` (a config, files) are refused."""

    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, Any] | None = None


# --- responses ----------------------------------------------------------------------------------------------


class V2Error(BaseModel):
    error: str


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(description="-1 marks a dynamic dimension (the batch is dimension 0)")


class ModelMetadataResponse(BaseModel):
    name: str = Field(examples=["vae-digits.decoder"])
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY or UNAVAILABLE")
    reason: str = ""


class RepositoryIndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ready: bool = Field(default=False, description="list only models that are ready")


ERRORS = {
    400: {"model": V2Error, "description": "bad request: the body or its tensors do not fit the model"},
    404: {"model": V2Error, "description": "unknown model or version"},
    500: {"model": V2Error, "description": "inference failed"},
    503: {"model": V2Error, "description": "not ready, unloaded, or overloaded (Retry-After)"},
}
