"""Images in and out: JSON arrays, base64 PNG/JPEG strings, uploaded files, and PNG grids out.

In: nested arrays (N, C, H, W), (N, H, W) or one (H, W) image with values in the model's range; or PNG/JPEG
images as base64 strings (a `data:` URL prefix is allowed) or raw bytes (multipart uploads). Other sizes and
channel counts are converted to the model's and each conversion is reported; `strict` refuses them instead.
NaN/inf, values out of range and undecodable images are refused with a domain error.

Images are read in two passes, so that no request can stall the server or take memory beyond a budget:
1. headers: every image's declared size is read (lazily, nothing decoded) and checked against the per-image
   limit and the per-request budget of decoded pixels (`max_request_pixels`); animations and modes that
   cannot be read faithfully are refused;
2. pixels: decoded (or JSON arrays read), on the event loop when the request is tiny, else in a worker
   thread (at most DECODERS at once). An image much larger than a fixed-size model is reduced while it is
   decoded (JPEG: the decoder's DCT scaling, `draft`; PNG: `reduce` on the 8-bit image), so it is never
   materialised at full size as float32. Uploads are turned upright by their EXIF orientation.
3. fit: an image of another size enters a fixed-size model letterboxed (default) or centre-cropped, never
   squashed, and `Fit` records where it went so a map can come back to its size; a fully convolutional
   model (`native`) takes each image at its own size.

Out: JSON arrays, base64 PNG strings, or one PNG grid.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.to_thread
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidInput, PayloadTooLarge
from service.store.manifest import DataSpec

_MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}
_RANGE_TOL = 1e-6  # float noise from clients that computed their pixels
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Requests with at most this many declared pixels in all are decoded on the event loop: a worker thread's
#: hand-off costs more than decoding a few digits.
INLINE_PIXELS = 64 * 64 * 16
#: Image decodes running at once, over all requests: bounds the memory that full-size decodes take.
DECODERS = max(1, min(4, os.cpu_count() or 1))
_decoders: anyio.CapacityLimiter | None = None


FitMode = Literal["letterbox", "crop"]


@dataclass(frozen=True)
class Fit:
    """Where an image of another size went in the model's (H, W) frame, so a map at the model's size can be
    brought back to the image's own: `box` (x0, y0, x1, y1) is the part of the model frame the image covers
    (letterbox: the frame minus its bars), `window` the part of the image the frame shows (crop: the
    centre)."""

    mode: FitMode
    size: tuple[int, int]  # the image's own (H, W)
    box: tuple[int, int, int, int]
    window: tuple[int, int, int, int]


@dataclass
class ParsedImages:
    """Checked images: float32 in the model's value range. For a fixed-size model every item is the model's
    (C, H, W), and `array` stacks them; a fully convolutional model keeps each image's own size."""

    items: list[np.ndarray]  # (C, H, W) each
    converted: list[dict[str, Any]] = field(default_factory=list)  # one entry per converted item
    fits: list[Fit | None] = field(default_factory=list)  # per item: how it was fitted (None: not resized)

    @property
    def array(self) -> np.ndarray:
        """(N, C, H, W): all items, when they share one size."""
        if len({a.shape for a in self.items}) > 1:
            raise InvalidInput("these images have different sizes; send images of one size, or one at a time")
        return np.stack(self.items) if self.items else np.empty((0, 1, 1, 1), np.float32)


@dataclass(frozen=True)
class ImageLimits:
    max_items: int
    max_pixels: int  # per image, as declared in its header
    strict: bool = False
    max_request_pixels: int = 0  # all images of a request together; 0: max_items * max_pixels
    fit: FitMode = "letterbox"  # how an image of another size or aspect enters a fixed-size model
    native: bool = False  # a fully convolutional model: keep each image's own size (channels still convert)


@dataclass
class _Encoded:
    """One PNG/JPEG whose header has been read, not its pixels."""

    index: int
    image: Image.Image


# --- in -----------------------------------------------------------------------------------------
async def read_images(value: Any, data: DataSpec, limits: ImageLimits, what: str = "images") -> ParsedImages:
    """`parse_images`, with the pixels of all but tiny requests decoded in a worker thread."""
    global _decoders
    encoded = _headers(value, limits, what)
    size = _array_size(value) if encoded is None else sum(e.image.width * e.image.height for e in encoded)
    if size <= INLINE_PIXELS:
        return _pixels(value, encoded, data, limits, what)
    if _decoders is None:
        _decoders = anyio.CapacityLimiter(DECODERS)
    return await anyio.to_thread.run_sync(_pixels, value, encoded, data, limits, what, limiter=_decoders)


def _array_size(value: Any) -> int:
    """Roughly how many numbers nested lists hold: the product of the lengths along the first path."""
    n = 1
    while isinstance(value, list) and value:
        n *= len(value)
        value = value[0]
    return n


def parse_images(value: Any, data: DataSpec, limits: ImageLimits, what: str = "images") -> ParsedImages:
    """Turn a request's `images` value into a checked (N, C, H, W) float32 array in the model's format."""
    return _pixels(value, _headers(value, limits, what), data, limits, what)


def _headers(value: Any, limits: ImageLimits, what: str) -> list[_Encoded] | None:
    """Pass 1: the encoded images of `value` with their headers checked; None when `value` holds arrays."""
    if isinstance(value, (str, bytes)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"{what} must be a non-empty array of pixel values or of base64 images")
    if not any(isinstance(v, (str, bytes)) for v in value):
        return None
    if not all(isinstance(v, (str, bytes)) for v in value):
        raise InvalidInput(f"{what} mixes base64 strings and arrays; send one kind per request")
    _check_count(len(value), limits, what)
    budget = limits.max_request_pixels or limits.max_items * limits.max_pixels
    out, total = [], 0
    for i, v in enumerate(value):
        e = _Encoded(i, _open(_b64(v, i), i, limits))
        total += e.image.width * e.image.height
        if total > budget:
            raise PayloadTooLarge(
                f"the images of this request declare {total}+ pixels in all; the limit is {budget} pixels "
                "per request (send fewer or smaller images)", limit=budget)
        out.append(e)
    return out


def _pixels(value: Any, encoded: list[_Encoded] | None, data: DataSpec, limits: ImageLimits,
            what: str) -> ParsedImages:
    """Pass 2: decode (or read the arrays) and convert to the model's format."""
    if encoded is not None:
        items = [_decode(e, data, limits.native) for e in encoded]
    else:
        items = _array_items(value, data, what)
        _check_count(len(items), limits, what)
    out = ParsedImages(items=[])
    for i, (img, source) in enumerate(items):
        size = _upright_size(source) if source != "array" else None
        img, note, fit = _to_model_format(img, data, i, limits, source, size)
        out.items.append(img)
        out.fits.append(fit)
        if note:
            out.converted.append(note)
    return out


def _check_count(n: int, limits: ImageLimits, what: str) -> None:
    if n > limits.max_items:
        raise PayloadTooLarge(
            f"{n} {what} in one request; the limit is {limits.max_items}", limit=limits.max_items
        )


def _array_items(value: list[Any], data: DataSpec, what: str) -> list[tuple[np.ndarray, str]]:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except OverflowError as exc:  # an integer of hundreds of digits
        raise InvalidInput(f"{what} holds a number beyond the float range") from exc
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{what} is not a rectangular array of numbers") from exc
    if arr.ndim == 2:  # one (H, W) image
        arr = arr[None, None]
    elif arr.ndim == 3:  # (N, H, W) grayscale batch
        arr = arr[:, None]
    elif arr.ndim != 4:
        raise InvalidInput(f"{what} must be (N, C, H, W), (N, H, W) or (H, W); got shape {list(arr.shape)}")
    if 0 in arr.shape:
        raise InvalidInput(f"{what} has an empty dimension: shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise InvalidInput(f"{what} contains NaN or infinite values")
    lo, hi = data.value_range
    if arr.min() < lo - _RANGE_TOL or arr.max() > hi + _RANGE_TOL:
        raise InvalidInput(
            f"{what} values must lie in [{lo}, {hi}]; got min {arr.min():.4g}, max {arr.max():.4g}"
        )
    arr = np.clip(arr, lo, hi).astype(np.float32)
    return [(a, "array") for a in arr]


def _open(raw: bytes, index: int, limits: ImageLimits) -> Image.Image:
    """The image's header, read lazily (no pixels), with its declared size and kind checked."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(raw), formats=["PNG", "JPEG"])
            w, h = im.size
            if w * h > limits.max_pixels:
                raise PayloadTooLarge(
                    f"image {index} declares {w}x{h} pixels; the limit is {limits.max_pixels} pixels",
                    limit=limits.max_pixels,
                )
            _refuse_unusual(im, raw, index)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"image {index} is too large to decode: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise InvalidInput(f"image {index} is not a decodable PNG or JPEG ({type(exc).__name__})") from exc
    return im


def _decode(e: _Encoded, data: DataSpec, native: bool = False) -> tuple[np.ndarray, str]:
    """PNG/JPEG -> (C, H, W) float32 in the model's range, upright; reduced on the way when much larger than
    a fixed-size model (never for a `native` one, which scores the image at its own size)."""
    im, index = e.image, e.index
    channels, (_, th, tw) = data.shape[0], data.shape
    mode = _MODE_FOR_CHANNELS.get(channels)
    if mode is None:
        raise InvalidInput(f"model takes {channels}-channel input; send arrays, not PNG/JPEG")
    w, h = im.size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF turns it a quarter: upright, w and h swap
                w, h = h, w
            source = f"{im.format} {w}x{h} {im.mode}"  # the image upright, as the client sees it
            if not native and im.format == "JPEG" and min(w // tw, h // th) >= 4:
                im.draft(mode, (2 * tw, 2 * th))  # the decoder scales by 1/2, 1/4 or 1/8, staying >= 2x
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            pixels = im.convert(mode) if im.mode != mode else im
            factor = 0 if native else min(pixels.width // tw, pixels.height // th) // 2
            if factor >= 2:  # still much larger than the model: shrink the 8-bit pixels, not float32 ones
                pixels = pixels.reduce(factor)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"image {index} is too large to decode: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise InvalidInput(f"image {index} is not a decodable PNG or JPEG ({type(exc).__name__})") from exc
    arr = np.asarray(pixels, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
    lo, hi = data.value_range
    return (lo + arr * (hi - lo)).astype(np.float32), source


#: 8-bit modes that convert to L/RGB without losing meaning. 16-bit, 32-bit int/float and CMYK do not: Pillow
#: clips I;16 to 255 on the way to L (a silently wrong image), so they are refused instead (issue 8).
_ACCEPTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA"})


def _refuse_unusual(im: Image.Image, raw: bytes, index: int) -> None:
    """Refuse animations (only frame 0 would be used) and modes or bit depths we cannot read faithfully."""
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        raise InvalidInput(f"image {index} is animated ({frames} frames); send a single still image")
    png16 = raw[:8] == _PNG_SIGNATURE and raw[12:16] == b"IHDR" and len(raw) > 24 and raw[24] == 16
    if im.mode not in _ACCEPTED_MODES or png16:
        raise InvalidInput(
            f"image {index} is {im.format} {'16-bit ' if png16 else ''}mode {im.mode}; "
            "send an 8-bit grayscale, RGB(A) or palette PNG/JPEG"
        )


def _b64(s: str | bytes, index: int) -> bytes:
    if isinstance(s, bytes):
        return s
    if s.startswith("data:"):
        head, _, s = s.partition(",")
        if ";base64" not in head:
            raise InvalidInput(f"image {index}: only base64 data URLs are accepted")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"image {index} is not valid base64") from exc


def _upright_size(source: str) -> tuple[int, int]:
    """(H, W) of the image as sent, from its description: "PNG 640x480 RGB" -> (480, 640)."""
    w, h = source.split(" ")[1].split("x")
    return int(h), int(w)


def _to_model_format(
    img: np.ndarray, data: DataSpec, index: int, limits: ImageLimits, source: str,
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, dict[str, Any] | None, Fit | None]:
    """Convert one (C0, H0, W0) image to the model's channels, and to its (H, W) by letterbox or centre crop
    (never squashed; a native model keeps the size); report what changed, or refuse when strict. `size`:
    the image's own (H, W) when it was reduced while decoded, so its Fit maps back to that size."""
    c, h, w = data.shape
    c0, h0, w0 = img.shape
    if limits.native:
        h, w = h0, w0
    src_mode = source.rsplit(" ", 1)[-1] if source != "array" else None
    mode_changed = src_mode is not None and src_mode != _MODE_FOR_CHANNELS.get(c)
    if (c0, h0, w0) == (c, h, w) and not mode_changed:
        return img, None, None
    note: dict[str, Any] = {"index": index, "from": [c0, h0, w0] if src_mode is None else source,
                            "to": [c, h, w]}
    if limits.strict:
        raise InvalidInput(
            f"image {index} is {note['from']}, the model takes {[c, h, w]}; strict=true refuses to convert",
            converted=[note],
        )
    if c0 != c:
        if c0 == 1 and c == 3:
            img = np.repeat(img, 3, axis=0)
        elif c0 in (3, 4) and c == 1:  # ITU-R 601 luma, alpha dropped
            img = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), img[:3], axes=1)[None]
        elif c0 == 4 and c == 3:
            img = img[:3]
        else:
            raise InvalidInput(f"image {index} has {c0} channels; cannot convert to the model's {c}")
    fit = None
    if (h0, w0) != (h, w):
        img, fit = fit_image(img, (h, w), limits.fit, data.value_range)
        note["fit"] = fit.mode
        if size is not None and size != (h0, w0):  # reduced while decoding: the window, in the image's pixels
            sy, sx = size[0] / h0, size[1] / w0
            x0, y0, x1, y1 = fit.window
            fit = Fit(fit.mode, size, fit.box, (round(x0 * sx), round(y0 * sy),
                                                min(size[1], round(x1 * sx)), min(size[0], round(y1 * sy))))
    return img.astype(np.float32), note, fit


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H0, W0) float32 -> (C, H, W), bilinear (Pillow's, antialiased when shrinking), per channel."""
    h, w = size
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(ch, dtype=np.float32)).resize(
        (w, h), Image.Resampling.BILINEAR)) for ch in img])


def fit_image(img: np.ndarray, size: tuple[int, int], mode: FitMode, value_range: tuple[float, float] = (0, 1)
              ) -> tuple[np.ndarray, Fit]:
    """(C, H0, W0) into (C, H, W), keeping the aspect ratio: `letterbox` scales the whole image to fit and
    pads the rest with the range's low end (the background of the models' data); `crop` scales to cover and
    keeps the centre."""
    lo, hi = value_range
    (h, w), (h0, w0) = size, img.shape[1:]
    if mode == "letterbox":
        s = min(w / w0, h / h0)
        nw, nh = max(1, min(w, round(w0 * s))), max(1, min(h, round(h0 * s)))
        x0, y0 = (w - nw) // 2, (h - nh) // 2
        out = np.full((img.shape[0], h, w), lo, dtype=np.float32)
        out[:, y0:y0 + nh, x0:x0 + nw] = _resize(img, (nh, nw))
        fit = Fit("letterbox", (h0, w0), (x0, y0, x0 + nw, y0 + nh), (0, 0, w0, h0))
    else:
        s = max(w / w0, h / h0)
        vw, vh = min(w0, max(1, round(w / s))), min(h0, max(1, round(h / s)))  # the kept part, in the image
        vx, vy = (w0 - vw) // 2, (h0 - vh) // 2
        out = _resize(img[:, vy:vy + vh, vx:vx + vw], (h, w))
        fit = Fit("crop", (h0, w0), (0, 0, w, h), (vx, vy, vx + vw, vy + vh))
    return np.clip(out, lo, hi), fit


def unfit_map(amap: np.ndarray, fit: Fit) -> np.ndarray:
    """A map in the model's frame (H, W) -> the image's own (H0, W0): the fitted part, resized back; pixels
    the model never saw (outside a crop's window) are 0."""
    x0, y0, x1, y1 = fit.box
    vx0, vy0, vx1, vy1 = fit.window
    part = _resize(amap[None, y0:y1, x0:x1].astype(np.float32), (vy1 - vy0, vx1 - vx0))[0]
    out = np.zeros(fit.size, dtype=np.float32)
    out[vy0:vy1, vx0:vx1] = part
    return out


# --- out ----------------------------------------------------------------------------------------
def to_uint8(images: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """(N, C, H, W) floats -> (N, H, W, C) uint8, clipped to the range first."""
    lo, hi = value_range
    x = (np.clip(images, lo, hi) - lo) / (hi - lo)
    return np.rint(x * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


def _plane(tile: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> what a PNG stores: (H, W, 3) for 3 channels, else the first channel (H, W)."""
    return tile if tile.shape[-1] == 3 else tile[..., 0]


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def encode_png(pixels: np.ndarray, level: int = 6) -> bytes:
    """A PNG of (H, W) grey or (H, W, 3) RGB uint8 pixels: 8-bit, not interlaced, no row filter, zlib `level`.

    Written here rather than through Pillow: for the small images this service returns, Pillow's plugin and
    encoder set-up is most of the cost (an 8x8 digit: 21 us against 6; a 64-digit grid: 360 against 175) and
    its adaptive row filters made these images no smaller. Pillow still decodes every uploaded image, and the
    tests decode what this writes with it."""
    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3) or 0 in a.shape:
        raise ValueError(f"encode_png takes (H, W) or (H, W, 3) pixels, got shape {a.shape}")
    h, w = a.shape[:2]
    raw = np.zeros((h, 1 + a[0].size), dtype=np.uint8)  # each row: filter type 0, then its bytes
    raw[:, 1:] = a.reshape(h, -1)
    header = struct.pack(">IIBBBBB", w, h, 8, 2 if a.ndim == 3 else 0, 0, 0, 0)
    return (_PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
            + _chunk(b"IEND", b""))


def to_base64_pngs(images: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)) -> list[str]:
    """One base64 PNG (no data: prefix) per image, at the model's size."""
    return [base64.b64encode(encode_png(_plane(t))).decode("ascii") for t in to_uint8(images, value_range)]


def grid_png(
    images: np.ndarray,
    columns: int | None = None,
    scale: int = 1,
    pad: int = 1,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> bytes:
    """All images in one PNG, row-major, `columns` wide (default: square-ish), each tile upscaled `scale`x."""
    tiles = to_uint8(images, value_range)  # (N, H, W, C)
    n, h, w, c = tiles.shape
    c = 3 if c == 3 else 1
    cols = max(1, min(columns or math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / cols)
    canvas = np.full((pad + rows * (h + pad), pad + cols * (w + pad), c), 128, dtype=np.uint8)  # grey gutters
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        canvas[y : y + h, x : x + w] = tiles[i][..., :c]
    if scale > 1:  # nearest neighbour: every pixel becomes a scale x scale block
        canvas = np.repeat(np.repeat(canvas, scale, axis=0), scale, axis=1)
    return encode_png(_plane(canvas))


#: Inferno (matplotlib), sampled at nine points and interpolated, as the playground draws it
#: (service/static/imaging.js): perceptually uniform, and readable in greyscale.
INFERNO = np.array([[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85], [227, 89, 51],
                    [249, 140, 10], [249, 201, 50], [252, 255, 164]], dtype=np.float32)


def inferno(t: np.ndarray) -> np.ndarray:
    """(...,) values in [0, 1] -> (..., 3) uint8 colours."""
    x = np.clip(t, 0, 1) * (len(INFERNO) - 1)
    grid = np.arange(len(INFERNO))
    return np.stack([np.interp(x, grid, INFERNO[:, c]) for c in range(3)], axis=-1).astype(np.uint8)


def overlay_png(image: np.ndarray, amap: np.ndarray, vmax: float,
                boxes: Sequence[tuple[int, int, int, int]] = (),
                value_range: tuple[float, float] = (0.0, 1.0)) -> bytes:
    """The image (C, H, W) in grey, the map (H, W) over it in inferno (0 to `vmax`; transparent where it is
    low), and each box (x0, y0, x1, y1) outlined in cyan: one RGB PNG at the image's size."""
    lo, hi = value_range
    grey = ((np.clip(image, lo, hi) - lo) / (hi - lo)).mean(axis=0)  # (H, W) in [0, 1]
    base = np.repeat((grey * 255.0)[..., None], 3, axis=-1)
    t = np.clip(amap / max(vmax, 1e-12), 0, 1)
    alpha = (0.15 + 0.7 * t)[..., None]
    rgb = (base * (1 - alpha) + inferno(t).astype(np.float32) * alpha).astype(np.uint8)
    h, w = amap.shape
    for x0, y0, x1, y1 in boxes:
        x1, y1 = min(x1, w) - 1, min(y1, h) - 1
        rgb[y0, x0:x1 + 1] = rgb[y1, x0:x1 + 1] = (0, 255, 255)
        rgb[y0:y1 + 1, x0] = rgb[y0:y1 + 1, x1] = (0, 255, 255)
    return encode_png(rgb)


def map_png(amap: np.ndarray, vmax: float) -> bytes:
    """A map (H, W) as a grey PNG: 0 to `vmax` over 0 to 255."""
    return encode_png(np.rint(np.clip(amap / max(vmax, 1e-12), 0, 1) * 255).astype(np.uint8))


def mask_png(mask: np.ndarray) -> bytes:
    """A mask (H, W) bool as a grey PNG: 255 anomalous, 0 not."""
    return encode_png(np.where(mask, 255, 0).astype(np.uint8))
