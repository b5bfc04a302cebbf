"""The protocol's message classes, built by protobuf from inference.proto's descriptor (inference_pb.py), in a
descriptor pool of our own.

A private pool, not protobuf's default one: `tritonclient.grpc` registers messages of the same full names
(`inference.ModelInferRequest`, ...) from its own files, and the default pool refuses a second definition of a
name. Ours and theirs then coexist in one process, and are wire-compatible (tests/service/test_grpc_wire.py).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool, message_factory

from service.grpc.inference_pb import FILE_DESCRIPTOR

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

POOL = descriptor_pool.DescriptorPool()
FILE = POOL.AddSerializedFile(FILE_DESCRIPTOR)


def message(name: str) -> Any:
    """The class of the message `inference.<name>` (a nested one as `Outer.Inner`)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ServerLiveRequest = message("ServerLiveRequest")
ServerLiveResponse = message("ServerLiveResponse")
ServerReadyRequest = message("ServerReadyRequest")
ServerReadyResponse = message("ServerReadyResponse")
ModelReadyRequest = message("ModelReadyRequest")
ModelReadyResponse = message("ModelReadyResponse")
ServerMetadataRequest = message("ServerMetadataRequest")
ServerMetadataResponse = message("ServerMetadataResponse")
ModelMetadataRequest = message("ModelMetadataRequest")
ModelMetadataResponse = message("ModelMetadataResponse")
ModelInferRequest = message("ModelInferRequest")
ModelInferResponse = message("ModelInferResponse")
InferTensorContents = message("InferTensorContents")
ModelConfigRequest = message("ModelConfigRequest")
ModelConfigResponse = message("ModelConfigResponse")
RepositoryIndexRequest = message("RepositoryIndexRequest")
RepositoryIndexResponse = message("RepositoryIndexResponse")
RepositoryModelLoadRequest = message("RepositoryModelLoadRequest")
RepositoryModelLoadResponse = message("RepositoryModelLoadResponse")
RepositoryModelUnloadRequest = message("RepositoryModelUnloadRequest")
RepositoryModelUnloadResponse = message("RepositoryModelUnloadResponse")


def methods() -> dict[str, tuple[Any, Any]]:
    """Every method of the service in the .proto: name -> (request class, response class)."""
    svc = POOL.FindServiceByName(SERVICE)
    return {m.name: (message_factory.GetMessageClass(m.input_type),
                     message_factory.GetMessageClass(m.output_type)) for m in svc.methods}
