"""Tensors of the gRPC Open Inference Protocol: `ModelInferRequest` -> `codec.InferRequest`, outputs ->
`ModelInferResponse`. Pure functions on messages and numpy arrays, testable without a server.

Inputs come one of two ways, never both:

    raw_input_contents   one bytes entry per input, in the order of `inputs`: the tensor's little-endian
                         bytes, row-major (what tritonclient.grpc sends). Read without a copy.
    contents             the typed field of the input's datatype (fp32_contents for FP32, int_contents for
                         INT8/16/32, ...). No silent casts: an FP32 input that carries fp64_contents or
                         int_contents is refused, and an INT8 value beyond INT8's range too. FP16 has no typed
                         field: it travels raw.

Outputs travel the way the inputs came, as KServe's server does: raw_output_contents after raw inputs
(tritonclient reads either), typed `contents` after typed inputs (for a client that never learnt raw bytes),
unless an output's datatype has no typed field, when all go raw (the protocol forbids mixing the two).

Shapes, datatypes, the element count and the requested outputs follow the HTTP codec's rules
(service.v2.codec: `input_dtype`, `element_count`, `requested_outputs`), so a request means the same on both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from service.grpc import messages
from service.v2 import codec
from service.v2.codec import CodecError, InferRequest, RequestedOutput

#: V2 datatype -> the InferTensorContents field that carries it typed.
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}
#: The type of the values each typed field holds.
_FIELD_DTYPE = {
    "bool_contents": np.dtype(np.bool_), "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64), "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64), "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64), "bytes_contents": np.dtype(object),
}
MAX_RANK = 32  # as the HTTP schema (service.v2.schemas.InferInput)
MAX_DIM = 2**31 - 1


def parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """A protobuf parameter map as plain values (bool, int, float or str; None when no value is set)."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(p, which)
    return out


def _shape(name: str, dims: Any) -> tuple[int, ...]:
    shape = tuple(dims)
    if len(shape) > MAX_RANK or any(d < 0 or d > MAX_DIM for d in shape):
        raise CodecError(f"input {name!r}: shape must be at most {MAX_RANK} non-negative integers below "
                         f"2**31, got {list(shape[:MAX_RANK + 1])}")
    return shape


def _typed(name: str, datatype: str, contents: Any, count: int, dtype: np.dtype[Any]) -> np.ndarray:
    """An input's values from its typed contents field: the datatype's own field, every value in range."""
    field = CONTENTS.get(datatype)
    if field is None:
        raise CodecError(f"input {name!r}: {datatype} has no typed contents field; send it in "
                         "raw_input_contents")
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise CodecError(f"input {name!r}: a {datatype} tensor carries its values in contents.{field}, not "
                         f"contents.{others[0]} (no casts)")
    values = getattr(contents, field)
    if len(values) != count:
        raise CodecError(f"input {name!r}: {len(values)} values in contents.{field} do not fit its shape "
                         f"({count} elements)")
    arr = np.fromiter(values, _FIELD_DTYPE[field], count)
    if dtype.kind in "iu" and dtype.itemsize < arr.dtype.itemsize and count:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise CodecError(f"input {name!r}: data out of range for {datatype} ({info.min} to {info.max})")
    return arr.astype(dtype, copy=False)


def _input(t: Any, raw: bytes | None) -> np.ndarray:
    name = t.name
    dtype = codec.input_dtype(name, t.datatype)
    shape = _shape(name, t.shape)
    count = codec.element_count(name, shape, dtype)
    if "shared_memory_region" in t.parameters:
        raise CodecError(f"input {name!r}: the shared-memory extension is not supported")
    if raw is None:
        return _typed(name, t.datatype, t.contents, count, dtype).reshape(shape)
    if t.HasField("contents"):
        raise CodecError(f"input {name!r}: carries both contents and raw_input_contents; send one")
    if len(raw) != count * dtype.itemsize:
        raise CodecError(f"input {name!r}: {len(raw)} bytes of raw_input_contents do not match shape "
                         f"{list(shape)} of {t.datatype} ({count * dtype.itemsize} bytes)")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def decode_request(msg: Any) -> InferRequest:
    """A `ModelInferRequest` as the V2 request both adapters hand to service.v2.dataplane. Its
    `binary_output` says the outputs go raw (the inputs came raw)."""
    raw = msg.raw_input_contents
    if not msg.inputs:
        raise CodecError("the request has no inputs")
    if raw and len(raw) != len(msg.inputs):
        raise CodecError(f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs: one per "
                         "input, in order")
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(msg.inputs):
        if t.name in inputs:
            raise CodecError(f"input {t.name!r} is given twice")
        inputs[t.name] = _input(t, raw[i] if raw else None)
    outputs = None
    if msg.outputs:
        outputs = codec.requested_outputs([{"name": o.name, "parameters": parameters(o.parameters)}
                                           for o in msg.outputs])
    return InferRequest(inputs=inputs, id=msg.id or None, outputs=outputs, binary_output=bool(raw),
                        parameters=parameters(msg.parameters))


def encode_response(
    model_name: str, model_version: str, outputs: dict[str, np.ndarray], request: InferRequest,
) -> Any:
    """The `ModelInferResponse` of the selected outputs, raw or typed (see the module docstring)."""
    wanted = request.outputs or [RequestedOutput(n) for n in outputs]
    for o in wanted:
        if o.name not in outputs:
            raise CodecError(f"unknown output {o.name!r}; the model has {sorted(outputs)}")
    arrays = [(o.name, outputs[o.name], codec.v2_datatype(outputs[o.name].dtype)) for o in wanted]
    typed = not request.binary_output and all(dt in CONTENTS for _, _, dt in arrays)
    resp = messages.ModelInferResponse(model_name=model_name, model_version=model_version,
                                       id=request.id or "")
    for name, arr, dt in arrays:
        t = resp.outputs.add(name=name, datatype=dt, shape=arr.shape)
        if typed:
            getattr(t.contents, CONTENTS[dt]).extend(arr.reshape(-1).tolist())
        else:
            resp.raw_output_contents.append(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
                                            .tobytes())
    return resp
