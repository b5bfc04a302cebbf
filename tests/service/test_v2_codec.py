"""The V2 tensor codec, checked against the bodies tritonclient itself writes and parses (no server)."""

from __future__ import annotations

import gzip
import json
import warnings
import zlib

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from service.v2.codec import (
    CodecError,
    InferRequest,
    RequestedOutput,
    compress,
    decode_request,
    decompress,
    encode_response,
)

Client = httpclient.InferenceServerClient


def _input(name: str, arr: np.ndarray, binary: bool) -> httpclient.InferInput:
    dt = {np.float32: "FP32", np.int64: "INT64", np.float64: "FP64", np.uint8: "UINT8"}[arr.dtype.type]
    i = httpclient.InferInput(name, list(arr.shape), dt)
    i.set_data_from_numpy(arr, binary_data=binary)
    return i


@pytest.mark.parametrize("binary", [True, False])
def test_decodes_tritonclient_requests(binary: bool) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 4)).astype(np.float32)
    k = np.arange(6, dtype=np.int64).reshape(2, 3)
    body, header_len = Client.generate_request_body(
        [_input("z", z, binary), _input("k", k, binary)],
        outputs=[httpclient.InferRequestedOutput("x", binary_data=False)], request_id="req-7",
    )
    assert (header_len is not None) == binary
    req = decode_request(body, header_len)
    assert req.id == "req-7"
    np.testing.assert_array_equal(req.inputs["z"], z)
    np.testing.assert_array_equal(req.inputs["k"], k)
    assert req.inputs["k"].dtype == np.int64
    assert req.outputs == [RequestedOutput("x", False)]
    assert req.binary_output is False


def test_no_outputs_means_all_outputs_in_binary() -> None:
    body, n = Client.generate_request_body([_input("z", np.zeros((1, 2), np.float32), True)])
    req = decode_request(body, n)
    assert req.outputs is None and req.binary_output is True


def test_nested_and_flat_json_data_agree() -> None:
    nested = {"inputs": [{"name": "z", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]}
    flat = {"inputs": [{"name": "z", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    a = decode_request(orjson.dumps(nested)).inputs["z"]
    b = decode_request(orjson.dumps(flat)).inputs["z"]
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (2, 2)


@pytest.mark.parametrize("doc, msg", [
    ({"inputs": []}, "non-empty"),
    ({"inputs": [{"name": "z", "shape": [2], "datatype": "FP32", "data": [1, 2, 3]}]}, "do not fit"),
    ({"inputs": [{"name": "z", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, "unsupported datatype"),
    ({"inputs": [{"name": "z", "shape": [1], "datatype": "FP32", "data": ["a"]}]}, "not a numeric"),
    ({"inputs": [{"name": "z", "shape": [1], "datatype": "INT8", "data": [300]}]}, "out of range for INT8"),
    ({"inputs": [{"name": "z", "shape": [1], "datatype": "UINT8", "data": [-1]}]}, "out of range for UINT8"),
    ({"inputs": [{"name": "z", "shape": [-1], "datatype": "FP32", "data": [1]}]}, "shape"),
    ({"inputs": [{"name": "z", "shape": [1], "datatype": "FP32"}]}, "needs 'data'"),
    ({"inputs": [{"name": "z", "shape": [1], "datatype": "FP32", "data": [1]}],
      "outputs": [{"name": "x", "parameters": {"classification": 3}}]}, "classification"),
])
def test_bad_requests_are_codec_errors(doc: dict, msg: str) -> None:
    with pytest.raises(CodecError, match=msg):
        decode_request(orjson.dumps(doc))


def test_binary_size_must_match_the_body() -> None:
    head = orjson.dumps({"inputs": [{"name": "z", "shape": [2], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 8}}]})
    with pytest.raises(CodecError, match="ends before"):
        decode_request(head + b"\0" * 4, len(head))
    with pytest.raises(CodecError, match="trailing"):
        decode_request(head + b"\0" * 12, len(head))
    with pytest.raises(CodecError, match="outside the body"):
        decode_request(head, len(head) + 1)
    with pytest.raises(CodecError, match="not valid JSON"):
        decode_request(b"{" + head, len(head))


@pytest.mark.parametrize("binary_output, per_output",
                         [(True, None), (False, None), (False, True), (True, False)])
def test_tritonclient_parses_our_responses(binary_output: bool, per_output: bool | None) -> None:
    out = {"x": np.random.default_rng(3).random((2, 1, 8, 8), dtype=np.float32),
           "s": np.arange(2, dtype=np.float64)}
    req = InferRequest(inputs={}, id="abc", binary_output=binary_output,
                       outputs=None if per_output is None else [RequestedOutput("x", per_output)])
    body, header_len = encode_response("m.decoder", "1", out, req)
    binary = binary_output if per_output is None else per_output
    assert (header_len is not None) == binary
    res = Client.parse_response_body(body, header_length=header_len)
    np.testing.assert_array_equal(res.as_numpy("x"), out["x"])
    resp = res.get_response()
    assert resp["id"] == "abc" and resp["model_name"] == "m.decoder" and resp["model_version"] == "1"
    names = [o["name"] for o in resp["outputs"]]
    assert names == (["x", "s"] if per_output is None else ["x"])
    if per_output is None:
        np.testing.assert_array_equal(res.as_numpy("s"), out["s"])
        assert res.get_output("s")["datatype"] == "FP64"


def test_unknown_requested_output() -> None:
    with pytest.raises(CodecError, match="unknown output"):
        encode_response("m", "1", {"x": np.zeros(1, np.float32)},
                        InferRequest({}, outputs=[RequestedOutput("y")]))


def test_compression_both_ways() -> None:
    raw = b"0123456789" * 100
    assert decompress(gzip.compress(raw), "gzip", 10_000) == raw
    assert decompress(zlib.compress(raw), "deflate", 10_000) == raw
    assert decompress(raw, None, 10_000) == raw
    with pytest.raises(CodecError, match="exceeds"):
        decompress(gzip.compress(raw), "gzip", 100)
    with pytest.raises(CodecError, match="unsupported"):
        decompress(raw, "br", 10_000)
    with pytest.raises(CodecError, match="could not decompress"):
        decompress(b"not gzip", "gzip", 10_000)
    body, enc = compress(raw, "br, gzip;q=0.5")
    assert enc == "gzip" and gzip.decompress(body) == raw
    assert compress(raw, None) == (raw, None)
    assert compress(raw, "br") == (raw, None)


def test_json_floats_beyond_fp32_become_infinity_as_in_binary_data() -> None:
    doc = {"inputs": [{"name": "z", "shape": [2], "datatype": "FP32", "data": [1e300, -1e300]}]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from the cast
        z = decode_request(orjson.dumps(doc)).inputs["z"]
    assert z.dtype == np.float32 and np.isposinf(z[0]) and np.isneginf(z[1])


def test_an_integer_beyond_64_bits_is_a_codec_error() -> None:
    doc = {"inputs": [{"name": "z", "shape": [1], "datatype": "INT64", "data": [2**70]}]}
    with pytest.raises(CodecError, match="out of range for INT64"):
        decode_request(json.dumps(doc).encode())  # orjson will not even write it; Python's json will


def test_json_null_data_is_refused_and_non_finite_outputs_go_binary_only() -> None:
    doc = {"inputs": [{"name": "z", "shape": [2], "datatype": "FP32", "data": [None, 1.0]}]}
    with pytest.raises(CodecError, match="null, not a number"):
        decode_request(json.dumps(doc).encode())
    ok = {"inputs": [{"name": "z", "shape": [2], "datatype": "FP32", "data": [0.0, 1.0]}]}
    outputs = {"x": np.array([np.nan, 1.0], np.float32)}
    with pytest.raises(CodecError, match="JSON cannot carry"):
        encode_response("m", "1", outputs, decode_request(orjson.dumps(ok)))
    ok["outputs"] = [{"name": "x", "parameters": {"binary_data": True}}]
    body, head_len = encode_response("m", "1", outputs, decode_request(orjson.dumps(ok)))
    assert head_len is not None
    got = np.frombuffer(body[head_len:], np.float32)
    assert np.isnan(got[0]) and got[1] == 1.0
