"""Our inference.proto against the protocol as tritonclient ships it (Triton's grpc_service.proto and
model_config.proto, a superset of KServe's grpc_predict_v2.proto): every message, field number, type and
method of ours must be theirs, and their messages must round-trip through ours unchanged. Also: the committed
inference_pb.py is what the .proto compiles to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor as d

from service.grpc import messages

triton = pytest.importorskip("tritonclient.grpc.service_pb2",
                             reason="tritonclient[grpc] (dev extra) ships the protocol's messages")
from tritonclient.grpc import model_config_pb2  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OURS = messages.FILE


def _theirs(full_name: str) -> d.Descriptor:
    for f in (triton.DESCRIPTOR, model_config_pb2.DESCRIPTOR):
        try:
            return f.pool.FindMessageTypeByName(full_name)
        except KeyError:
            continue
    raise AssertionError(f"{full_name} is not a message of the protocol")


def _all_messages(desc: d.FileDescriptor) -> list[d.Descriptor]:
    out: list[d.Descriptor] = []

    def walk(m: d.Descriptor) -> None:
        out.append(m)
        for n in m.nested_types:
            walk(n)

    for m in desc.message_types_by_name.values():
        walk(m)
    return out


def _kind(f: d.FieldDescriptor) -> tuple[Any, ...]:
    """What decides a field's wire format and meaning: number, type, repeated or not, the named type."""
    named = f.message_type.full_name if f.message_type else f.enum_type.full_name if f.enum_type else ""
    oneof = f.containing_oneof.name if f.containing_oneof else ""
    return f.number, f.type, f.label == f.LABEL_REPEATED, named, oneof


MESSAGES = _all_messages(OURS)


def test_the_package_and_service_are_the_protocols() -> None:
    assert OURS.package == "inference" and messages.SERVICE == "inference.GRPCInferenceService"
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = OURS.services_by_name["GRPCInferenceService"]
    assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"} <= \
        set(ours.methods_by_name), "every method KServe's protocol requires"
    for m in ours.methods:
        t = theirs.methods_by_name[m.name]
        assert (m.input_type.full_name, m.output_type.full_name) == \
            (t.input_type.full_name, t.output_type.full_name), m.name
        assert not m.server_streaming and not m.client_streaming


@pytest.mark.parametrize("ours", MESSAGES, ids=lambda m: m.full_name)
def test_every_field_has_the_protocols_number_and_type(ours: d.Descriptor) -> None:
    theirs = _theirs(ours.full_name)
    for f in ours.fields:
        assert f.name in theirs.fields_by_name, f"{ours.full_name}.{f.name} is not in the protocol"
        assert _kind(f) == _kind(theirs.fields_by_name[f.name]), f"{ours.full_name}.{f.name}"
    if ours.GetOptions().map_entry:
        assert theirs.GetOptions().map_entry


def test_enum_values_are_the_protocols() -> None:
    ours = OURS.enum_types_by_name["DataType"]
    theirs = model_config_pb2.DESCRIPTOR.enum_types_by_name["DataType"]
    assert [(v.name, v.number) for v in ours.values] == [(v.name, v.number) for v in theirs.values]


def _full_request() -> Any:
    """A tritonclient ModelInferRequest using every field we read: typed contents of every kind, raw bytes,
    parameters of every kind, requested outputs with parameters."""
    r = triton.ModelInferRequest(model_name="vae-digits.decoder", model_version="3", id="req-7")
    r.parameters["priority"].uint64_param = 2**40
    r.parameters["timeout"].int64_param = -5
    r.parameters["flag"].bool_param = True
    r.parameters["s"].string_param = "text"
    r.parameters["x"].double_param = 0.25
    t = r.inputs.add(name="z", datatype="FP32", shape=[2, 3])
    t.parameters["binary_data_size"].int64_param = 24
    c = t.contents
    c.bool_contents.extend([True, False])
    c.int_contents.extend([-(2**31), 7])
    c.int64_contents.extend([2**62, -1])
    c.uint_contents.extend([2**32 - 1])
    c.uint64_contents.extend([2**64 - 1])
    c.fp32_contents.extend([1.5, -2.0])
    c.fp64_contents.extend([1e300])
    c.bytes_contents.extend([b"\x00\xff"])
    o = r.outputs.add(name="x_hat")
    o.parameters["binary_data"].bool_param = True
    r.raw_input_contents.extend([b"\x01\x02\x03", b""])
    return r


def _full_response() -> Any:
    r = triton.ModelInferResponse(model_name="m.g", model_version="1", id="a")
    r.parameters["p"].string_param = "v"
    t = r.outputs.add(name="x_hat", datatype="FP32", shape=[-1, 1, 8, 8])
    t.contents.fp32_contents.extend([0.5, 1.0])
    r.raw_output_contents.append(b"\x00" * 8)
    return r


def _full_config() -> Any:
    cfg = model_config_pb2.ModelConfig(name="m.g", platform="onnxruntime_onnx", backend="onnxruntime",
                                       max_batch_size=64)
    cfg.input.add(name="z", data_type=model_config_pb2.TYPE_FP32, dims=[8])
    cfg.output.add(name="x_hat", data_type=model_config_pb2.TYPE_FP32, dims=[1, 8, 8])
    cfg.dynamic_batching.max_queue_delay_microseconds = 500
    cfg.dynamic_batching.default_queue_policy.max_queue_size = 1024
    return triton.ModelConfigResponse(config=cfg)


ROUND_TRIPS = {
    "ModelInferRequest": _full_request,
    "ModelInferResponse": _full_response,
    "ModelConfigResponse": _full_config,
    "ModelMetadataResponse": lambda: triton.ModelMetadataResponse(
        name="m.g", versions=["1", "2"], platform="onnxruntime_onnx",
        inputs=[{"name": "z", "datatype": "FP32", "shape": [-1, 8]}],
        outputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]),
    "ServerMetadataResponse": lambda: triton.ServerMetadataResponse(name="n", version="1", extensions=["a"]),
    "RepositoryIndexResponse": lambda: triton.RepositoryIndexResponse(models=[
        {"name": "m.g", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]),
    "RepositoryModelLoadRequest": lambda: triton.RepositoryModelLoadRequest(
        repository_name="r", model_name="m.g", parameters={"config": {"string_param": "{}"},
                                                           "file:1/model.onnx": {"bytes_param": b"\x00"}}),
    "RepositoryIndexRequest": lambda: triton.RepositoryIndexRequest(repository_name="r", ready=True),
    "ModelReadyRequest": lambda: triton.ModelReadyRequest(name="m.g", version="2"),
    "ModelReadyResponse": lambda: triton.ModelReadyResponse(ready=True),
    "ServerLiveResponse": lambda: triton.ServerLiveResponse(live=True),
    "ServerReadyResponse": lambda: triton.ServerReadyResponse(ready=True),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_their_messages_round_trip_through_ours(name: str) -> None:
    """Their bytes parse into ours, and ours, with whatever ours did not know dropped, serialize back to an
    equal message of theirs: every field we read and write means the same on the wire, and none is lost."""
    theirs = ROUND_TRIPS[name]()
    ours = getattr(messages, name).FromString(theirs.SerializeToString())
    ours.DiscardUnknownFields()
    assert type(theirs).FromString(ours.SerializeToString()) == theirs


def test_our_request_parses_in_theirs_field_by_field() -> None:
    ours = messages.ModelInferRequest.FromString(_full_request().SerializeToString())
    assert ours.parameters["priority"].uint64_param == 2**40
    assert ours.inputs[0].contents.uint64_contents[0] == 2**64 - 1
    assert list(ours.raw_input_contents) == [b"\x01\x02\x03", b""]
    assert ours.outputs[0].parameters["binary_data"].bool_param is True


def test_the_generated_module_is_up_to_date() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) compiles the .proto")
    r = subprocess.run([sys.executable, "-m", "service.grpc.generate", "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_serving_needs_neither_grpc_tools_nor_tritonclient() -> None:
    code = ("import sys\n"
            "for m in ('grpc_tools', 'tritonclient'): sys.modules[m] = None\n"
            "import service.grpc.server, service.grpc.messages as m\n"
            "assert m.ModelInferRequest(model_name='a').model_name == 'a'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
