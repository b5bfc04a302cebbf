"""Image parsing and rendering without HTTP."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from storebuilder import png_b64

from service.errors import InvalidInput, PayloadTooLarge
from service.images import ImageLimits, encode_png, grid_png, parse_images, to_base64_pngs
from service.store.manifest import DataSpec

GRAY = DataSpec(dataset="t", shape=(1, 8, 8), preprocessing="none")
RGB = DataSpec(dataset="t", shape=(3, 8, 8), preprocessing="none")
LIMITS = ImageLimits(max_items=4, max_pixels=100_000)


def test_array_layouts() -> None:
    one = np.full((8, 8), 0.25)
    assert parse_images(one.tolist(), GRAY, LIMITS).array.shape == (1, 1, 8, 8)
    assert parse_images([one.tolist()] * 3, GRAY, LIMITS).array.shape == (3, 1, 8, 8)
    assert parse_images([[one.tolist()]] * 2, GRAY, LIMITS).array.shape == (2, 1, 8, 8)


def test_resize_and_channel_conversion_of_arrays() -> None:
    big = np.full((1, 1, 28, 28), 0.5).tolist()
    out = parse_images(big, GRAY, LIMITS)
    np.testing.assert_allclose(out.array, 0.5, atol=1e-6)
    assert out.converted == [{"index": 0, "from": [1, 28, 28], "to": [1, 8, 8], "fit": "letterbox"}]
    rgb = np.zeros((1, 3, 8, 8))
    rgb[0, 1] = 1.0  # pure green
    out = parse_images(rgb.tolist(), GRAY, LIMITS)
    np.testing.assert_allclose(out.array, 0.587, atol=1e-6)
    out = parse_images(np.full((1, 1, 8, 8), 0.3).tolist(), RGB, LIMITS)
    assert out.array.shape == (1, 3, 8, 8) and np.allclose(out.array, 0.3)
    with pytest.raises(InvalidInput, match="2 channels"):
        parse_images(np.zeros((1, 2, 8, 8)).tolist(), GRAY, LIMITS)


def test_png_and_jpeg_decoding() -> None:
    img = np.linspace(0, 1, 64).reshape(8, 8)
    out = parse_images([png_b64(img)], GRAY, LIMITS)
    np.testing.assert_allclose(out.array[0, 0], np.rint(img * 255) / 255, atol=1e-6)
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(buf, format="JPEG")
    out = parse_images([base64.b64encode(buf.getvalue()).decode()], GRAY, LIMITS)
    assert out.converted[0]["from"] == "JPEG 16x16 RGB"
    np.testing.assert_allclose(out.array, 200 / 255, atol=0.02)


def test_refusals() -> None:
    with pytest.raises(PayloadTooLarge):
        parse_images([np.zeros((8, 8)).tolist()] * 5, GRAY, LIMITS)
    with pytest.raises(InvalidInput, match="base64 data URLs"):
        parse_images(["data:image/png,rawbytes"], GRAY, LIMITS)
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    with pytest.raises(InvalidInput, match="not a decodable PNG or JPEG"):
        parse_images([base64.b64encode(gif.getvalue()).decode()], GRAY, LIMITS)
    truncated = base64.b64decode(png_b64(np.zeros((8, 8))))[:40]
    with pytest.raises(InvalidInput, match="not a decodable"):
        parse_images([base64.b64encode(truncated).decode()], GRAY, LIMITS)
    with pytest.raises(InvalidInput, match="strict"):
        parse_images(np.zeros((1, 1, 9, 9)).tolist(), GRAY, ImageLimits(4, 100_000, strict=True))


def test_outputs_round_trip_and_grid_layout() -> None:
    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    pngs = to_base64_pngs(x)
    back = parse_images(pngs, GRAY, ImageLimits(8, 100_000)).array
    np.testing.assert_allclose(back, x, atol=0.5 / 255 + 1e-6)
    grid = Image.open(io.BytesIO(grid_png(x, columns=2, scale=3)))
    assert grid.size == (3 * (1 + 2 * 9), 3 * (1 + 3 * 9))  # 2 columns, 3 rows
    rgb = Image.open(io.BytesIO(grid_png(np.ones((2, 3, 4, 4)))))
    assert rgb.mode == "RGB" and rgb.size == (11, 6)


@pytest.mark.parametrize("shape", [(1, 1), (8, 8), (3, 17), (64, 5), (28, 28, 3), (1, 9, 3), (300, 200)])
def test_encode_png_is_a_png_pillow_reads_back_exactly(shape: tuple[int, ...]) -> None:
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(pixels)
    im = Image.open(io.BytesIO(data))
    im.load()  # decodes every row and checks the zlib stream
    assert im.format == "PNG" and im.mode == ("RGB" if len(shape) == 3 else "L")
    np.testing.assert_array_equal(np.asarray(im), pixels)
    # every chunk's CRC is right (Pillow checks IHDR/IDAT on load, not necessarily IEND): walk them here
    pos, tags = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(tag + body), tag
        tags.append(tag)
        pos += 12 + n
    assert tags == [b"IHDR", b"IDAT", b"IEND"] and pos == len(data)


@pytest.mark.parametrize("shape", [(8,), (2, 2, 2), (2, 2, 4), (0, 4), (1, 2, 2, 1)])
def test_encode_png_refuses_what_is_not_grey_or_rgb(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="encode_png takes"):
        encode_png(np.zeros(shape, np.uint8))


def test_grid_scale_is_pillows_nearest_upscale() -> None:
    for channels in (1, 3):
        x = np.random.default_rng(channels).random((5, channels, 7, 6)).astype(np.float32)
        one = Image.open(io.BytesIO(grid_png(x, columns=3)))
        big = Image.open(io.BytesIO(grid_png(x, columns=3, scale=4)))
        want = one.resize((one.width * 4, one.height * 4), Image.Resampling.NEAREST)
        assert big.mode == want.mode and big.size == want.size
        np.testing.assert_array_equal(np.asarray(big), np.asarray(want))
