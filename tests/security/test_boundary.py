"""The HTTP boundary against the inputs an attacker sends (issue 14): each case a 4xx with a clear message,
never a 5xx. JSON that is not UTF-8 JSON, nesting beyond any use, numbers beyond any range in every numeric
field, multipart fields beyond 64 bits, versions that are not ASCII digits, V2 shapes and data that do not
fit, a pixel budget judged before decoding, EXIF orientation, and store problems without absolute paths."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hardkit import copy_store, serve
from PIL import Image

from service.app import create_app
from service.images import ImageLimits, parse_images
from service.settings import Settings
from service.store.manifest import DataSpec

STORE = Path(__file__).resolve().parents[2] / "models_store"
VAE, AE = "vae-digits", "ae-digits"
V2 = f"/v2/models/{VAE}.decoder/infer"
Z8 = [0.0] * 8
BIG = b"9" * 400  # an integer of 400 digits: beyond float64, beyond any int type
OPS = ("encode", "decode", "sample", "interpolate", "reconstruct", "denoise", "anomaly-score")

pytestmark = pytest.mark.skipif(not (STORE / VAE).is_dir(), reason=f"no {VAE} in the shipped store")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store=STORE)), raise_server_exceptions=False) as c:
        yield c


def png(pixels: np.ndarray, mode: str = "L", **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format=save.pop("format", "PNG"), **save)
    return buf.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


DIGIT = b64(png(np.zeros((8, 8), np.uint8)))


def problem(r: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    doc = r.json()
    text = doc.get("detail", doc.get("error", ""))
    for n in needles:
        assert n.lower() in text.lower(), (n, text)
    return doc  # type: ignore[no-any-return]


# --- JSON that is not UTF-8 JSON, or nested beyond any use --------------------------------------------------
@pytest.mark.parametrize("body, needle", [
    (b'{"n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "recursion limit"),
    (b'{"n": 1, "x": ' + b"[" * 1500 + b"]" * 1500 + b"}", "recursion limit"),
    (b'{"n": "\xff\xfe"}', "not valid json"),
    (b'\xef\xbb\xbf{"n": 1}', "byte order mark"),
    ('{"n": 1}'.encode("utf-16"), "utf-16"),
    ('{"n": 1}'.encode("utf-16-le"), "utf-16"),
    (b'{"n": 1, "seed": "\\ud800"}', "not valid json"),
    (b'{"n": 1, "seed": "\xed\xa0\x80"}', "not valid json"),  # a surrogate encoded as UTF-8 bytes
])
def test_json_that_is_not_utf8_json_is_a_400(client: TestClient, body: bytes, needle: str) -> None:
    for path in (f"/v1/models/{VAE}/sample", f"/v1/models/{AE}/encode"):
        problem(client.post(path, content=body), 400, needle)
    r = client.post(V2, content=body)
    assert r.status_code == 400 and "error" in r.json(), r.text


def test_images_nested_1500_deep_is_a_400(client: TestClient) -> None:
    body = b'{"images": ' + b"[" * 1500 + b"0" + b"]" * 1500 + b"}"
    problem(client.post(f"/v1/models/{AE}/encode", content=body), 400, "recursion limit")


def test_a_lone_surrogate_as_an_image_is_a_4xx(client: TestClient) -> None:
    r = client.post(f"/v1/models/{AE}/encode", content=b'{"images": "\\ud800"}')
    assert 400 <= r.status_code < 500, r.text


# --- numbers beyond every range, in every numeric field -----------------------------------------------------
def _with_big(template: str) -> bytes:
    return template.replace("BIG", BIG.decode()).encode()


BIG_BODIES = [
    ("sample", '{"n": BIG}'), ("sample", '{"seed": BIG}'), ("sample", '{"temperature": BIG}'),
    ("sample", '{"temperature": -BIG}'), ("sample", '{"n": 1e999}'), ("sample", '{"temperature": 1e999}'),
    ("decode", '{"latents": [[BIG, 0, 0, 0, 0, 0, 0, 0]]}'),
    ("decode", '{"latents": [BIG, 0, 0, 0, 0, 0, 0, 0]}'),
    ("interpolate", '{"start": [BIG, 0, 0, 0, 0, 0, 0, 0], "end": [0, 0, 0, 0, 0, 0, 0, 0]}'),
    ("interpolate", '{"start": [0, 0, 0, 0, 0, 0, 0, 0], "end": [0, 0, 0, 0, 0, 0, 0, 0], "steps": BIG}'),
    ("encode", '{"images": [BIG]}'), ("encode", '{"images": [[BIG, 0], [0, 0]]}'),
    ("reconstruct", '{"images": [[[BIG]]]}'),
    ("denoise", '{"images": [[0.0]], "noise": {"kind": "gaussian", "level": BIG}}'),
    ("denoise", '{"images": [[0.0]], "noise": {"kind": "gaussian", "level": 0.1, "seed": BIG}}'),
    ("anomaly-score", '{"images": [[BIG]]}'),
]


@pytest.mark.parametrize("op, template", BIG_BODIES)
def test_numbers_beyond_range_are_4xx(client: TestClient, op: str, template: str) -> None:
    model = VAE if op in ("sample", "decode", "interpolate") else AE
    r = client.post(f"/v1/models/{model}/{op}", content=_with_big(template))
    assert r.status_code in (400, 413, 422), (op, template[:60], r.status_code, r.text[:200])
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("field, value", [
    ("strict", "999999999999999999999999999999"), ("strict", "-999999999999999999999"),
    ("format", "999999999999999999999999999999"), ("strict", BIG.decode()),
    ("noise", '{"kind": "masking", "level": 0.5, "seed": 999999999999999999999999999}'),
])
def test_multipart_fields_beyond_64_bits_are_422(client: TestClient, field: str, value: str) -> None:
    files = [("images", ("d.png", base64.b64decode(DIGIT), "image/png"))]
    r = client.post(f"/v1/models/{AE}/denoise", files=files, data={field: value})
    assert r.status_code == 422, r.text
    assert any(e["loc"][:2] == ["body", field] for e in r.json()["errors"]), r.json()


def test_multipart_maps_onto_the_json_request_model(client: TestClient) -> None:
    raw = base64.b64decode(DIGIT)
    form = client.post(f"/v1/models/{AE}/denoise", files=[("images", ("d.png", raw, "image/png"))] * 2,
                       data={"noise": '{"kind": "masking", "level": 0.5, "seed": 3}', "format": "png",
                             "strict": "true"})
    body = client.post(f"/v1/models/{AE}/denoise", json={
        "images": [DIGIT] * 2, "noise": {"kind": "masking", "level": 0.5, "seed": 3}, "format": "png",
        "strict": True})
    assert form.status_code == body.status_code == 200, (form.text, body.text)
    assert form.json() == body.json()
    one = client.post(f"/v1/models/{VAE}/interpolate", files={"start": ("s.png", raw, "image/png")},
                      data={"end": json.dumps(Z8), "steps": "3"})
    assert one.status_code == 200 and len(one.json()["t"]) == 3, one.text
    mixed = client.post(f"/v1/models/{AE}/encode", files=[("images", ("d.png", raw, "image/png"))],
                        data={"images": DIGIT})
    problem(mixed, 400, "mixes files and text")
    unknown = client.post(f"/v1/models/{AE}/encode", files=[("images", ("d.png", raw, "image/png"))],
                          data={"heatmap": "true"})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["loc"] == ["body", "heatmap"]


# --- versions: ASCII digits without a leading zero, or latest -----------------------------------------------
BAD_VERSIONS = ["01", "١", "１", "²", "0", "-1", "1.0", "1e0", "+1", " 1", "9" * 40, "latest2", "LATEST"]


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_versions_other_than_ascii_digits_are_404s_listing_the_versions(client: TestClient,
                                                                          version: str) -> None:
    bodies = {"encode": {"images": [DIGIT]}, "decode": {"latents": [Z8]}, "sample": {"n": 1},
              "interpolate": {"start": Z8, "end": Z8}, "reconstruct": {"images": [DIGIT]},
              "denoise": {"images": [DIGIT]}, "anomaly-score": {"images": [DIGIT]}}
    for op in OPS:
        model = VAE if op in ("decode", "sample", "interpolate") else AE
        doc = problem(client.post(f"/v1/models/{model}/versions/{version}/{op}", json=bodies[op]), 404,
                      "versions: [1]")
        assert doc["versions"] == [1]
    problem(client.get(f"/v1/models/{VAE}/versions/{version}"), 404, "versions: [1]")
    for path in (f"/v2/models/{VAE}.decoder/versions/{version}", f"{V2[:-6]}/versions/{version}/infer"):
        r = client.post(path, json={"inputs": []}) if path.endswith("infer") else client.get(path)
        assert r.status_code == 404 and "versions: [1]" in r.json()["error"], r.text
    assert client.post(f"/v1/models/{VAE}/versions/1/sample", json={"n": 1}).status_code == 200
    assert client.post(f"/v1/models/{VAE}/versions/latest/sample", json={"n": 1}).status_code == 200


@pytest.mark.parametrize("value", ["²".encode(), "١".encode(), b"1.5", b"-1", b"0x10", b" ", b"9" * 40])
def test_the_v2_header_length_is_ascii_digits(client: TestClient, value: bytes) -> None:
    head = json.dumps({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 8], "data": Z8}]}).encode()
    r = client.post(V2, content=head, headers={"Inference-Header-Content-Length": value})
    assert r.status_code == 400, r.text
    assert "Inference-Header-Content-Length" in r.json()["error"]


# --- V2 tensors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, data", [
    ([0, 4611686018427387904], []), ([0, 2**31], []), ([2**31 - 1, 2**31 - 1, 2**31 - 1], []),
    ([1, 0], []), ([1] * 40, [0.0]),
])
def test_v2_shapes_with_a_zero_dim_and_a_huge_one_are_400(client: TestClient, shape: list[int],
                                                          data: list[float]) -> None:
    r = client.post(V2, json={"inputs": [{"name": "z", "datatype": "FP32", "shape": shape, "data": data}]})
    assert r.status_code == 400, (shape, r.status_code, r.text)


@pytest.mark.parametrize("datatype, data, needle", [
    ("FP32", [True, False] * 4, "booleans"), ("FP32", [True] + [0.5] * 7, "numbers"),
    ("FP32", ["1.0"] * 8, "strings"), ("FP32", [None] * 8, "null"),
    ("INT32", [1.5] * 8, "numbers"), ("BOOL", [1] * 8, "numbers"),
])
def test_v2_data_is_never_cast_silently(client: TestClient, datatype: str, data: list[Any],
                                        needle: str) -> None:
    body = {"inputs": [{"name": "z", "datatype": datatype, "shape": [1, 8], "data": data}]}
    r = client.post(V2, json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"], r.json()


def test_binary_v2_with_a_zero_dim_shape_is_a_400_not_a_crash(client: TestClient) -> None:
    head = json.dumps({"inputs": [{"name": "z", "datatype": "FP32", "shape": [0, 2**31 - 1],
                                   "parameters": {"binary_data_size": 0}}]}).encode()
    r = client.post(V2, content=head, headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400, r.text


# --- images: a pixel budget judged from the headers, big images reduced while decoded, EXIF -----------------
def one_bit_png(side: int) -> bytes:
    im = Image.new("1", (side, side))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_the_48_image_bomb_is_refused_from_its_headers(client: TestClient) -> None:
    bomb = b64(one_bit_png(4096))
    assert len(bomb) < 8000  # 805 million pixels in ~136 KB of body
    t0 = time.perf_counter()
    r = client.post(f"/v1/models/{AE}/encode", json={"images": [bomb] * 48})
    doc = problem(r, 413, "per request")
    assert doc["limit"] == 2 * 4096 * 4096
    assert time.perf_counter() - t0 < 10  # nothing was decoded (the old path took 24 s)


def test_an_image_much_larger_than_the_model_is_reduced_while_decoded() -> None:
    data = DataSpec(dataset="t", shape=(1, 8, 8), preprocessing="none")
    limits = ImageLimits(max_items=4, max_pixels=4096 * 4096, max_request_pixels=2 * 4096 * 4096)
    big = np.zeros((2048, 2048), np.uint8)
    big[:1024] = 255  # top half white
    for raw in (png(big), png(big, "RGB", format="JPEG", quality=95)):
        out = parse_images([raw], data, limits)
        assert out.array.shape == (1, 1, 8, 8)
        np.testing.assert_allclose(out.array[0, 0, :3], 1.0, atol=0.02)
        np.testing.assert_allclose(out.array[0, 0, 5:], 0.0, atol=0.02)


def test_uploads_are_turned_upright_by_their_exif_orientation(client: TestClient) -> None:
    upright = np.zeros((8, 8), np.uint8)
    upright[0] = 255  # a white top row
    stored = np.rot90(upright, k=1).copy()  # as a camera held sideways stores it: the row is the left column
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    raw = png(stored, exif=exif.tobytes())
    data = DataSpec(dataset="t", shape=(1, 8, 8), preprocessing="none")
    got = parse_images([raw], data, ImageLimits(max_items=1, max_pixels=64)).array[0, 0]
    np.testing.assert_allclose(got, upright / 255.0, atol=1e-6)
    r = client.post(f"/v1/models/{AE}/reconstruct", files=[("images", ("p.png", raw, "image/png"))],
                    data={"format": "png"})
    assert r.status_code == 200, r.text


# --- store problems name files by store-relative path -------------------------------------------------------
def test_problems_never_show_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = copy_store(STORE, tmp_path / "store")
    locked = (store / "wae-digits" / "1" / "manifest.json").resolve()
    read_bytes = Path.read_bytes

    def unreadable(self: Path) -> bytes:  # as a file of another owner reads (the tests run as root)
        if self.resolve() == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    dec = store / "gan-digits" / "1" / "decoder.onnx"
    dec.write_bytes(dec.read_bytes()[:100])  # checksum fails first; make the manifest agree, so onnx fails
    manifest = json.loads((store / "gan-digits" / "1" / "manifest.json").read_text())
    import hashlib

    manifest["files"]["decoder.onnx"] = hashlib.sha256(dec.read_bytes()).hexdigest()
    (store / "gan-digits" / "1" / "manifest.json").write_text(json.dumps(manifest))
    with TestClient(create_app(Settings(store=store))) as c:
        text = c.get("/v1/models").text + c.get("/v2/repository/index").text
        reasons = {p["model"]: p["reason"] for p in c.get("/v1/models").json()["problems"]}
    assert set(reasons) == {"wae-digits", "gan-digits"}, reasons
    assert "onnxruntime" in reasons["gan-digits"] or "load" in reasons["gan-digits"], reasons
    for root in {str(store), str(store.resolve()), str(tmp_path)}:
        assert root not in text, text
    assert reasons["wae-digits"] == "Permission denied: wae-digits/1/manifest.json", reasons


# --- a real server: decoding off the loop, header limits at the protocol ------------------------------------
@pytest.mark.e2e
def test_the_loop_answers_while_a_big_request_decodes(tmp_path: Path) -> None:
    """Two 4096x4096 PNGs (within the pixel budget) decode in a worker thread: /health/live keeps answering
    meanwhile. (How fast is the benchmark's business: bench/boundary.py.)"""
    bomb = b64(one_bit_png(4096))
    with serve(STORE, tmp_path) as server:
        answered_during: list[float] = []
        done = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=server.base, timeout=30) as h:
                while not done.is_set():
                    assert h.get("/health/live").status_code == 200
                    answered_during.append(time.perf_counter())
                    time.sleep(0.005)

        big = {"images": [bomb, bomb, bomb, bomb]}  # 4 x 16.7 Mpx: over the budget, refused from headers
        assert httpx.post(f"{server.base}/v1/models/{AE}/encode", json=big, timeout=60).status_code == 413
        t = threading.Thread(target=probe)
        t0 = time.perf_counter()
        t.start()
        r = httpx.post(f"{server.base}/v1/models/{AE}/encode", json={"images": [bomb, bomb]}, timeout=60)
        t1 = time.perf_counter()
        done.set()
        t.join()
        assert r.status_code == 200, r.text
        during = [x for x in answered_during if t0 < x < t1]
        assert len(during) >= 3, (t1 - t0, len(during))


def _raw_exchange(port: int, chunks: list[bytes], pause_s: float = 0.0, read_s: float = 5.0) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=read_s) as s:
        try:
            for c in chunks:
                s.sendall(c)
                if pause_s:
                    time.sleep(pause_s)
        except OSError:  # the server closed on us mid-send: read what it said
            pass
        out = b""
        try:
            while True:
                got = s.recv(65536)
                if not got:
                    return out
                out += got
        except (TimeoutError, OSError):
            return out


@pytest.mark.e2e
def test_headers_are_bounded_in_size_count_and_time(tmp_path: Path) -> None:
    with serve(STORE, tmp_path, header_timeout_s=1.0, max_header_bytes=16384, max_header_fields=32) as server:
        get = b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ok = _raw_exchange(server.port, [get])
        assert ok.startswith(b"HTTP/1.1 200"), ok[:100]
        # one header line of 48 MB, sent in pieces: refused after the limit, connection closed
        t0 = time.perf_counter()
        line = [b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: "] + [b"a" * 65536] * 768
        out = _raw_exchange(server.port, line)
        assert out.startswith(b"HTTP/1.1 431"), out[:200]
        assert b"application/problem+json" in out and b"16384" in out
        assert time.perf_counter() - t0 < 30
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(40))
        out = _raw_exchange(server.port, [b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"])
        assert out.startswith(b"HTTP/1.1 431") and b'{"error"' in out, out[:300]  # /v2: V2's error shape
        # slowloris: a header every 0.4 s, never ending; and a connection that sends nothing
        drip = [b"GET /health/live HTTP/1.1\r\n"] + [b"X-Drip: 1\r\n"] * 20
        out = _raw_exchange(server.port, drip, pause_s=0.4)
        assert out.startswith(b"HTTP/1.1 408"), out[:200]
        assert _raw_exchange(server.port, []).startswith(b"HTTP/1.1 408")
        # and the server still serves
        assert httpx.get(f"{server.base}/health/live").status_code == 200
