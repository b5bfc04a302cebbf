"""Response bodies of the V2 endpoints, for the OpenAPI page (handlers return plain dicts or raw bytes)."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
    ready: bool = Field(default=False, description="list only models that are ready")


ERRORS = {
    400: {"model": V2Error, "description": "bad request: the body or its tensors do not fit the model"},
    404: {"model": V2Error, "description": "unknown model or version"},
    500: {"model": V2Error, "description": "inference failed"},
    503: {"model": V2Error, "description": "not ready, unloaded, or overloaded (Retry-After)"},
}
