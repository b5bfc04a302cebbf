"""Open Inference Protocol (KServe V2) tensor codec: JSON tensors and Triton's binary tensor data extension.

Pure functions on bytes and numpy arrays, so they are testable without HTTP.

Request body (binary extension): a JSON header of `Inference-Header-Content-Length` bytes, then the raw
little-endian bytes of every input whose `parameters.binary_data_size` is set, in the order the inputs are
listed. Without the header the whole body is JSON and every input carries `data` (flat or nested).

Response: outputs that ask for binary (per output `parameters.binary_data`, else the request-level
`parameters.binary_data_output`) go after the JSON header, and the response carries the header length in
`Inference-Header-Content-Length`; the others carry `data` inline as a flat row-major list.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

HEADER_LENGTH = "Inference-Header-Content-Length"

#: V2 datatype name -> numpy dtype (little-endian, as the binary extension requires). BYTES and BF16 are not
#: served: every graph of the store is float32, and numeric types are cast to the graph's input type.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_NP_TO_V2 = {v.newbyteorder("="): k for k, v in DATATYPES.items()}

#: onnxruntime's type strings ("tensor(float)") -> V2 datatype names, for model metadata.
ORT_TO_V2 = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16", "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(string)": "BYTES", "tensor(bfloat16)": "BF16",
}


class CodecError(ValueError):
    """A request the codec cannot decode (the router answers 400)."""


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: follow the request-level binary_data_output


@dataclass(frozen=True)
class InferRequest:
    """A decoded V2 infer request."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None: every output of the model
    binary_output: bool = False  # request-level parameters.binary_data_output
    parameters: dict[str, Any] = field(default_factory=dict)


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """The V2 datatype name of a numpy dtype."""
    try:
        return _NP_TO_V2[np.dtype(dtype).newbyteorder("=")]
    except KeyError:
        raise CodecError(f"datatype {dtype} has no V2 name") from None


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a gzip or deflate (zlib) Content-Encoding, refusing output larger than `limit` bytes."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc == "gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == "deflate":
        d = zlib.decompressobj()  # tritonclient's "deflate" is the zlib format (RFC 1950)
    else:
        raise CodecError(f"unsupported Content-Encoding {encoding!r} (use gzip or deflate)")
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise CodecError(f"could not decompress the {enc} body: {exc}") from exc
    if len(out) > limit or d.unconsumed_tail:
        raise CodecError(f"decompressed body exceeds {limit} bytes")
    return out


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                             for d in raw):
        raise CodecError(f"input {name!r}: shape must be a list of non-negative integers")
    return tuple(raw)


def _decode_input(t: Any, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    """One input tensor; returns (name, array, new offset into the binary section)."""
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise CodecError("each input must be an object with a string 'name'")
    name = t["name"]
    shape = _shape(t.get("shape"), name)
    dt_name = t.get("datatype")
    dtype = DATATYPES.get(dt_name) if isinstance(dt_name, str) else None
    if dtype is None:
        raise CodecError(f"input {name!r}: unsupported datatype {dt_name!r} (use one of {sorted(DATATYPES)})")
    count = math.prod(shape)
    params = t.get("parameters") or {}
    if not isinstance(params, dict):
        raise CodecError(f"input {name!r}: parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0:
            raise CodecError(f"input {name!r}: binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise CodecError(f"input {name!r}: binary_data_size {size} does not match shape {list(shape)} "
                             f"of {dt_name} ({count * dtype.itemsize} bytes)")
        if offset + size > len(binary):
            raise CodecError(f"input {name!r}: body ends before its {size} binary bytes")
        arr = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
        return name, arr, offset + size
    if "data" not in t:
        raise CodecError(f"input {name!r}: needs 'data' or parameters.binary_data_size")
    try:
        with np.errstate(over="ignore"):  # a float beyond the type's range becomes inf, as in binary data
            arr = np.asarray(t["data"], dtype=dtype)
    except OverflowError as exc:  # an integer the type cannot hold (300 as INT8)
        raise CodecError(f"input {name!r}: data out of range for {dt_name} ({exc})") from exc
    except (ValueError, TypeError) as exc:
        raise CodecError(f"input {name!r}: data is not a numeric {dt_name} array") from exc
    if arr.size != count:
        raise CodecError(f"input {name!r}: {arr.size} elements do not fit shape {list(shape)}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():  # JSON has no NaN: a null became one
        raise CodecError(f"input {name!r}: data holds null, not a number")
    return name, arr.reshape(shape), offset


def _decode_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise CodecError("'outputs' must be a list")
    out = []
    for o in raw:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise CodecError("each requested output must be an object with a string 'name'")
        p = o.get("parameters") or {}
        if not isinstance(p, dict):
            raise CodecError(f"output {o['name']!r}: parameters must be an object")
        if p.get("classification"):
            raise CodecError("the classification extension is not supported")
        if "shared_memory_region" in p:
            raise CodecError("the shared-memory extension is not supported")
        b = p.get("binary_data")
        out.append(RequestedOutput(o["name"], None if b is None else bool(b)))
    return out


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an (already decompressed) infer request body."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise CodecError(f"{HEADER_LENGTH} {header_length} is outside the body ({len(body)} bytes)")
    split = len(body) if header_length is None else header_length
    view = memoryview(body)
    try:
        doc = orjson.loads(view[:split])
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"request header is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise CodecError("request must be a JSON object with a non-empty 'inputs' list")
    binary, offset, inputs = view[split:], 0, {}
    for t in doc["inputs"]:
        name, arr, offset = _decode_input(t, binary, offset)
        if name in inputs:
            raise CodecError(f"input {name!r} is given twice")
        inputs[name] = arr
    if offset != len(binary):
        raise CodecError(f"{len(binary) - offset} trailing binary bytes match no input")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise CodecError("'parameters' must be an object")
    rid = doc.get("id")
    return InferRequest(
        inputs=inputs, id=None if rid is None else str(rid), outputs=_decode_outputs(doc.get("outputs")),
        binary_output=bool(params.get("binary_data_output", False)), parameters=params,
    )


def encode_response(
    model_name: str, model_version: str, outputs: dict[str, np.ndarray], request: InferRequest,
) -> tuple[bytes, int | None]:
    """Encode the selected outputs; returns (body, header length or None when the body is plain JSON)."""
    wanted = request.outputs or [RequestedOutput(n) for n in outputs]
    heads: list[dict[str, Any]] = []
    blobs: list[memoryview] = []  # joined once, below: one copy of each tensor, not two
    for o in wanted:
        if o.name not in outputs:
            raise CodecError(f"unknown output {o.name!r}; the model has {sorted(outputs)}")
        arr = outputs[o.name]
        head: dict[str, Any] = {"name": o.name, "datatype": v2_datatype(arr.dtype), "shape": list(arr.shape)}
        if request.binary_output if o.binary is None else o.binary:
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            head["parameters"] = {"binary_data_size": raw.nbytes}
            blobs.append(raw.reshape(-1).view(np.uint8).data)  # a buffer over the array, no copy
        else:
            flat = np.ascontiguousarray(arr).reshape(-1)
            if flat.dtype.kind == "f" and not np.isfinite(flat).all():  # JSON has no NaN or infinity
                raise CodecError(f"output {o.name!r} holds NaN or infinite values, which JSON cannot carry "
                                 f"(the inputs may be far outside what the model was trained on); ask for it "
                                 f"as binary data to receive them")
            head["data"] = flat
        heads.append(head)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": heads}
    if request.id is not None:
        doc["id"] = request.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def compress(body: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """Compress a response when the client asked for gzip or deflate (as Triton does); level 1 for speed."""
    if not accept_encoding:
        return body, None
    accepted = {p.split(";")[0].strip().lower() for p in accept_encoding.split(",")}
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=1), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 1), "deflate"
    return body, None
