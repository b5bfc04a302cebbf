"""Shared helpers for the security and reliability tests: a tiny store, apps over it, a real server process,
and hostile images built by hand (Pillow refuses to write some of them, which is the point)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from storebuilder import build_model, build_store  # tests/service, put on sys.path by conftest

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["ROOT", "Server", "b64", "build_model", "build_store", "copy_store", "free_port", "png_chunk",
           "serve", "hostile_images"]


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serve(store: Path, log_dir: Path, **env: Any) -> Iterator[Server]:
    """`python -m service` on a free port over `store`; LATENTSERVE_<KEY> from **env; SIGTERM at exit."""
    port = free_port()
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LATENTSERVE_STORE": str(store),
        "LATENTSERVE_PORT": str(port),
        "LATENTSERVE_HOST": "127.0.0.1",
        "LATENTSERVE_LOG_LEVEL": "info",
        **{f"LATENTSERVE_{k.upper()}": str(v) for k, v in env.items()},
    }
    log = log_dir / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=full_env, stdout=out,
                                stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.logs()[-3000:]}")
            try:
                if httpx.get(server.base + "/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready:\n{server.logs()[-3000:]}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- images ------------------------------------------------------------------------------------------------

def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _pil_png(im: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_declaring(width: int, height: int, bit_depth: int = 8, color_type: int = 0) -> bytes:
    """A PNG whose header declares width x height, with a tiny (wrong-sized) image body: a decompression bomb
    as far as anything that trusts the header is concerned."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def png_raw(width: int, height: int, bit_depth: int, color_type: int, pixels: np.ndarray) -> bytes:
    """A valid PNG written byte by byte (Pillow cannot write every depth/colour combination)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    rows = pixels.reshape(height, -1).tobytes()
    stride = len(rows) // height
    raw = b"".join(b"\0" + rows[i * stride:(i + 1) * stride] for i in range(height))
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def good_png(size: int = 8, mode: str = "L") -> bytes:
    arr = (np.arange(size * size, dtype=np.uint8).reshape(size, size) * 3) % 255
    im = Image.fromarray(arr, "L")
    return _pil_png(im if mode == "L" else im.convert(mode))


def hostile_images() -> dict[str, bytes]:
    """name -> raw bytes of an image the service must refuse with a 4xx (and survive)."""
    arr16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8), "L") for v in (0, 128, 255)]
    apng = io.BytesIO()
    frames[0].save(apng, format="PNG", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    cmyk = io.BytesIO()
    Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(cmyk, format="JPEG")
    noise = _pil_png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))
    return {
        "truncated-png": noise[: len(noise) * 3 // 5],  # the header is whole, the pixel data stops midway
        "header-only-png": noise[:33],
        "declares-100000x100000": png_declaring(100_000, 100_000),
        "declares-65535x65535-16bit-rgba": png_declaring(65_535, 65_535, bit_depth=16, color_type=6),
        "16-bit-grayscale-png": _pil_png(Image.fromarray(arr16)),
        "16-bit-rgb-png": png_raw(8, 8, 16, 2, np.arange(8 * 8 * 3, dtype=">u2").reshape(8, 8, 3) * 300),
        "cmyk-jpeg": cmyk.getvalue(),
        "animated-png": apng.getvalue(),
        "animated-gif": gif.getvalue(),
        "text-named-png": b"this is not an image, whatever its name says\n",
        "empty": b"",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>',
    }
