"""service.grpc.codec without a server: raw and typed tensors in, raw and typed tensors out, and every
refusal (no silent casts, counts, both forms at once, extensions we do not serve)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from service.grpc import codec, messages
from service.v2.codec import CodecError, RequestedOutput


def _request(*inputs: tuple[str, str, list[int]], raw: list[bytes] | None = None) -> Any:
    r = messages.ModelInferRequest(model_name="m.g", id="q")
    for name, dt, shape in inputs:
        r.inputs.add(name=name, datatype=dt, shape=shape)
    if raw is not None:
        r.raw_input_contents.extend(raw)
    return r


def test_raw_inputs_are_read_without_a_copy_and_answered_raw() -> None:
    z = np.arange(6, dtype="<f4").reshape(2, 3)
    req = codec.decode_request(_request(("z", "FP32", [2, 3]), raw=[z.tobytes()]))
    np.testing.assert_array_equal(req.inputs["z"], z)
    assert req.id == "q" and req.binary_output and req.outputs is None
    resp = codec.encode_response("m.g", "1", {"x": z * 2}, req)
    assert resp.model_name == "m.g" and resp.model_version == "1" and resp.id == "q"
    assert [(o.name, o.datatype, list(o.shape)) for o in resp.outputs] == [("x", "FP32", [2, 3])]
    assert not resp.outputs[0].HasField("contents")
    np.testing.assert_array_equal(np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(2, 3), z * 2)


@pytest.mark.parametrize("dt, field, values", [
    ("FP32", "fp32_contents", [0.5, -1.25]),
    ("FP64", "fp64_contents", [1e300, -2.0]),
    ("INT8", "int_contents", [-128, 127]),
    ("INT16", "int_contents", [-32768, 5]),
    ("INT32", "int_contents", [-(2**31), 2**31 - 1]),
    ("INT64", "int64_contents", [-(2**63), 2**63 - 1]),
    ("UINT8", "uint_contents", [0, 255]),
    ("UINT16", "uint_contents", [65535, 1]),
    ("UINT32", "uint_contents", [2**32 - 1, 0]),
    ("UINT64", "uint64_contents", [2**64 - 1, 0]),
    ("BOOL", "bool_contents", [True, False]),
])
def test_typed_contents_of_every_datatype_and_a_typed_answer(dt: str, field: str, values: list[Any]) -> None:
    r = _request(("t", dt, [2]))
    getattr(r.inputs[0].contents, field).extend(values)
    req = codec.decode_request(r)
    arr = req.inputs["t"]
    assert arr.dtype.name == {"FP32": "float32", "FP64": "float64", "BOOL": "bool"}.get(dt, dt.lower())
    assert arr.tolist() == values and not req.binary_output
    resp = codec.encode_response("m.g", "1", {"out": arr}, req)  # typed in, typed out
    assert not resp.raw_output_contents and list(getattr(resp.outputs[0].contents, field)) == values


def test_fp16_travels_raw_only() -> None:
    with pytest.raises(CodecError, match="no typed contents field"):
        codec.decode_request(_request(("h", "FP16", [1])))
    h = np.array([1.5], "<f2")
    req = codec.decode_request(_request(("h", "FP16", [1]), raw=[h.tobytes()]))
    assert req.inputs["h"].dtype == np.float16 and req.inputs["h"].tolist() == [1.5]


def test_refusals() -> None:
    cases: list[tuple[Any, str]] = []
    r = _request(("z", "FP32", [2]))
    r.inputs[0].contents.fp64_contents.extend([1.0, 2.0])
    cases.append((r, "not contents.fp64_contents"))  # no silent casts
    r = _request(("z", "FP32", [2]))
    r.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    r.inputs[0].contents.int_contents.extend([1, 2])
    cases.append((r, "not contents.int_contents"))
    r = _request(("z", "FP32", [3]))
    r.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    cases.append((r, "do not fit its shape"))
    cases.append((_request(("z", "FP32", [3])), "do not fit its shape"))  # no values at all
    r = _request(("z", "INT8", [1]))
    r.inputs[0].contents.int_contents.append(128)
    cases.append((r, "out of range for INT8"))
    r = _request(("z", "UINT16", [1]))
    r.inputs[0].contents.uint_contents.append(70000)
    cases.append((r, "out of range for UINT16"))
    cases.append((_request(("z", "FP32", [2]), raw=[b"\x00" * 4]), "do not match shape"))
    cases.append((_request(("z", "FP32", [1]), ("y", "FP32", [1]), raw=[b"\x00" * 4]), "2 inputs"))
    r = _request(("z", "FP32", [1]), raw=[b"\x00" * 4])
    r.inputs[0].contents.fp32_contents.append(1.0)
    cases.append((r, "both contents and raw_input_contents"))
    cases.append((_request(("z", "FP32", [1]), ("z", "FP32", [1]), raw=[b"\0" * 4] * 2), "given twice"))
    cases.append((_request(("z", "BYTES", [1]), raw=[b"\0" * 4]), "unsupported datatype"))
    cases.append((_request(("z", "BF16", [1]), raw=[b"\0" * 2]), "unsupported datatype"))
    cases.append((_request(("z", "FP32", [-1]), raw=[b""]), "non-negative"))
    cases.append((_request(("z", "FP32", [2**31]), raw=[b""]), "below 2**31"))
    cases.append((_request(("z", "FP32", [1] * 33), raw=[b"\0" * 4]), "at most 32"))
    cases.append((_request(("z", "FP32", [0, 2**30, 2**30]), raw=[b""]), "too large"))
    cases.append((messages.ModelInferRequest(model_name="m.g"), "no inputs"))
    r = _request(("z", "FP32", [1]), raw=[b"\0" * 4])
    r.inputs[0].parameters["shared_memory_region"].string_param = "shm0"
    cases.append((r, "shared-memory"))
    r = _request(("z", "FP32", [1]), raw=[b"\0" * 4])
    r.outputs.add(name="x").parameters["classification"].int64_param = 3
    cases.append((r, "classification"))
    for msg, why in cases:
        with pytest.raises(CodecError, match=re.escape(why)):
            codec.decode_request(msg)


def test_requested_outputs_select_and_order_the_answer() -> None:
    r = _request(("z", "FP32", [1]), raw=[b"\0" * 4])
    r.outputs.add(name="b")
    r.outputs.add(name="a")
    req = codec.decode_request(r)
    assert req.outputs == [RequestedOutput("b"), RequestedOutput("a")]
    out = {"a": np.zeros(1, np.float32), "b": np.ones(2, np.float32)}
    resp = codec.encode_response("m.g", "1", out, req)
    assert [o.name for o in resp.outputs] == ["b", "a"] and len(resp.raw_output_contents) == 2
    assert resp.raw_output_contents[0] == np.ones(2, "<f4").tobytes()


def test_a_typed_request_gets_raw_outputs_when_one_has_no_typed_field() -> None:
    r = _request(("z", "FP32", [1]))
    r.inputs[0].contents.fp32_contents.append(0.0)
    req = codec.decode_request(r)
    out = {"a": np.zeros(1, np.float32), "h": np.zeros(1, np.float16)}
    resp = codec.encode_response("m.g", "1", out, req)
    assert len(resp.raw_output_contents) == 2 and not any(o.HasField("contents") for o in resp.outputs)


def test_parameters_as_plain_values() -> None:
    r = messages.ModelInferRequest()
    r.parameters["a"].bool_param = True
    r.parameters["b"].int64_param = -3
    r.parameters["c"].string_param = "s"
    r.parameters["d"].double_param = 0.5
    r.parameters["e"].uint64_param = 2**63
    r.parameters["f"].CopyFrom(messages.message("InferParameter")())
    assert codec.parameters(r.parameters) == {"a": True, "b": -3, "c": "s", "d": 0.5, "e": 2**63, "f": None}
