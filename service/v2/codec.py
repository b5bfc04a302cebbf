"""Open Inference Protocol (KServe V2) tensor codec: JSON tensors and Triton's binary tensor data extension.

Pure functions on bytes and numpy arrays, so they are testable without HTTP. The JSON part of a request is
validated by pydantic (service.v2.schemas.INFERENCE_REQUEST) on the bytes; nothing else parses it.

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
from pydantic import ValidationError

from service.errors import MalformedRequest
from service.v2 import schemas

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


class CodecError(MalformedRequest):
    """A request the codec cannot decode (400)."""


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


def header_length(value: str | None) -> int | None:
    """The `Inference-Header-Content-Length` header: ASCII digits (not "²", "١", "1.5"); None when absent."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise CodecError(f"{HEADER_LENGTH} must be a non-negative integer in ASCII digits, "
                         f"got {value[:40]!r}")
    return int(text)


def _why(exc: ValidationError) -> str:
    """The first of pydantic's complaints about a request, said in V2 terms."""
    e = exc.errors(include_url=False, include_context=False)[0]
    loc = [str(p) for p in e["loc"]]
    if loc == ["inputs"] or not loc:
        return "request must be a JSON object with a non-empty 'inputs' list"
    where = ".".join(loc)
    if "data" in loc and e.get("input", 0) is None:
        return f"{where}: data holds null, not a number"
    if "data" in loc:
        return f"{where}: data must be numbers (true/false for BOOL), flat or nested, one kind per array"
    if "shape" in loc:
        return f"{where}: shape must be a list of non-negative integers below 2**31: {e['msg']}"
    return f"{where}: {e['msg']}"


def input_dtype(name: str, datatype: str) -> np.dtype[Any]:
    """The numpy dtype of an input's V2 datatype; a CodecError names the ones served."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise CodecError(f"input {name!r}: unsupported datatype {datatype[:40]!r} (use one of "
                         f"{sorted(DATATYPES)})")
    return dtype


def element_count(name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> int:
    """The elements of an input of `shape` (dims already checked non-negative and below 2**31). A count
    above 0 is bounded by the body the data must fit in; for 0, numpy must still describe the shape, so the
    other dimensions are bounded here."""
    count = math.prod(shape)
    if not count and math.prod(d or 1 for d in shape) * dtype.itemsize >= 2**48:
        raise CodecError(f"input {name!r}: shape {list(shape)} is too large")
    return count


def _decode_input(t: schemas.InferInput, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor; returns (array, new offset into the binary section)."""
    name, shape, dt_name = t["name"], tuple(t["shape"]), t["datatype"]
    dtype = input_dtype(name, dt_name)
    count = element_count(name, shape, dtype)
    size = (t.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise CodecError(f"input {name!r}: binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise CodecError(f"input {name!r}: binary_data_size {size} does not match shape {list(shape)} "
                             f"of {dt_name} ({count * dtype.itemsize} bytes)")
        if offset + size > len(binary):
            raise CodecError(f"input {name!r}: body ends before its {size} binary bytes")
        return np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape), offset + size
    data = t.get("data")
    if data is None:
        raise CodecError(f"input {name!r}: needs 'data' or parameters.binary_data_size")
    arr = _from_json(name, data, dt_name, dtype)
    if arr.size != count:
        raise CodecError(f"input {name!r}: {arr.size} elements do not fit shape {list(shape)}")
    return arr.reshape(shape), offset


#: JSON kinds (numpy's dtype.kind of the data as written) each V2 datatype accepts. No silent casts: true is
#: not 1.0, 1.5 is not 1, a string is not a number.
_ACCEPTS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def _from_json(name: str, data: Any, dt_name: str, dtype: np.dtype[Any]) -> np.ndarray:
    try:
        written = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise CodecError(f"input {name!r}: data is not a rectangular array") from exc
    if written.dtype == object and written.size and all(isinstance(v, int) for v in written.flat):
        raise CodecError(f"input {name!r}: data out of range for {dt_name} (an integer beyond 64 bits)")
    if written.size and written.dtype.kind not in _ACCEPTS[dtype.kind]:
        kind = {"b": "booleans", "U": "strings", "O": "mixed values"}.get(written.dtype.kind, "numbers")
        raise CodecError(f"input {name!r}: data is not a numeric {dt_name} array: it holds {kind}")
    if dtype.kind in "iu" and written.size:
        info = np.iinfo(dtype)
        if written.min() < info.min or written.max() > info.max:
            raise CodecError(f"input {name!r}: data out of range for {dt_name} ({info.min} to {info.max})")
    with np.errstate(over="ignore"):  # a float beyond the type's range becomes inf, as in binary data
        return written.astype(dtype, copy=False)


def requested_outputs(raw: list[schemas.RequestedOutputIn] | None) -> list[RequestedOutput] | None:
    """The outputs a request selects (None: all of them); the classification and shared-memory extensions
    are refused."""
    if raw is None:
        return None
    out = []
    for o in raw:
        p = o.get("parameters") or {}
        if p.get("classification"):
            raise CodecError("the classification extension is not supported")
        if "shared_memory_region" in p:
            raise CodecError("the shared-memory extension is not supported")
        b = p.get("binary_data")
        if b is not None and not isinstance(b, bool):
            raise CodecError(f"output {o['name']!r}: parameters.binary_data must be true or false")
        out.append(RequestedOutput(o["name"], b))
    return out


def decode_request(body: bytes, header_len: int | None = None) -> InferRequest:
    """Decode an (already decompressed) infer request body: the JSON part validated by pydantic
    (`schemas.INFERENCE_REQUEST`), then each input's tensor from its JSON data or its binary bytes."""
    if header_len is not None and not 0 <= header_len <= len(body):
        raise CodecError(f"{HEADER_LENGTH} {header_len} is outside the body ({len(body)} bytes)")
    split = len(body) if header_len is None else header_len
    view = memoryview(body)
    head = body if header_len is None else bytes(view[:split])  # a copy of the (small) JSON header only
    try:
        doc = schemas.INFERENCE_REQUEST.validate_json(head)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        if errors and errors[0]["type"] == "json_invalid":
            raise CodecError(f"request header is not valid JSON: {errors[0]['msg']}") from None
        raise CodecError(_why(exc)) from None
    binary, offset, inputs = view[split:], 0, {}
    for t in doc["inputs"]:
        if t["name"] in inputs:
            raise CodecError(f"input {t['name']!r} is given twice")
        inputs[t["name"]], offset = _decode_input(t, binary, offset)
    if offset != len(binary):
        raise CodecError(f"{len(binary) - offset} trailing binary bytes match no input")
    params = doc.get("parameters") or {}
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise CodecError("parameters.binary_data_output must be true or false")
    return InferRequest(inputs=inputs, id=doc.get("id"), outputs=requested_outputs(doc.get("outputs")),
                        binary_output=binary_output, parameters=params)


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
