"""End to end: `python -m service` as a real process on a free port, called over TCP with service.client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.client import ApiError, LatentClient
from tests.service.storebuilder import build_store

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    store = build_store(tmp_path_factory.mktemp("e2e") / "models_store")
    port = _free_port()
    env = {
        **os.environ,
        "LATENTSERVE_STORE": str(store),
        "LATENTSERVE_PORT": str(port),
        "LATENTSERVE_HOST": "127.0.0.1",
        "LATENTSERVE_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"server exited with {proc.returncode}:\n{out}")
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server not ready within 60 s")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_every_operation_over_tcp(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, _ = server
    with LatentClient(url) as c:
        assert {m["name"] for m in c.models()} == {"tiny-ae", "tiny-vae", "tiny-gan", "tiny-gen", "tiny-rgb"}
        images = c.sample("tiny-vae", 4, seed=1)
        assert images.shape == (4, 1, 8, 8)
        np.testing.assert_array_equal(images, c.sample("tiny-vae", 4, seed=1))
        enc = c.encode("tiny-vae", images)
        assert enc.mean.shape == (4, 4) and enc.logvar is not None
        assert c.decode("tiny-vae", enc.mean).shape == (4, 1, 8, 8)
        assert c.interpolate("tiny-ae", images[0, 0], images[1, 0], steps=6).shape == (6, 1, 8, 8)
        assert c.reconstruct("tiny-ae", images).mse.shape == (4,)
        assert c.denoise("tiny-ae", images, noise={"kind": "masking", "level": 0.3}).noisy is not None
        scores = c.anomaly_score("tiny-gan", images, heatmap=True)
        assert np.all((scores.normalised > 0) & (scores.normalised < 1))
        with pytest.raises(ApiError) as exc:
            c.encode("tiny-gen", images)
        assert exc.value.status == 409
        assert httpx.get(f"{url}/docs").status_code == 200


def test_sigterm_stops_the_server_cleanly(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = server
    assert httpx.get(f"{url}/health/live").status_code == 200
    proc.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal it caught once it has shut down, so the exit reads as "terminated"
    assert proc.wait(20) in (0, -signal.SIGTERM)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert "Traceback" not in out, out


@pytest.mark.parametrize(("env", "expected"), [
    ({"LATENTSERVE_PORT": "abc"},
     ["bad settings:", "LATENTSERVE_PORT='abc': Input should be a valid integer"]),
    ({"LATENTSERVE_MAX_BATCH_SIZE": "0", "LATENTSERVE_BATCHING": "maybe"},
     ["LATENTSERVE_MAX_BATCH_SIZE='0'", "LATENTSERVE_BATCHING='maybe'"]),
    ({"LATENTSERVE_STORE": "/nonexistent/store"},
     ["LATENTSERVE_STORE='/nonexistent/store': the models store is not a directory"]),
    # every problem at once: a bad value, a missing store and a backend that cannot load, three lines
    ({"LATENTSERVE_PORT": "abc", "LATENTSERVE_STORE": "/nonexistent/store",
      "LATENTSERVE_BACKEND": "torchscript", "PYTHONPATH": "NOTORCH"},
     ["LATENTSERVE_PORT='abc'", "LATENTSERVE_STORE='/nonexistent/store'",
      "LATENTSERVE_BACKEND='torchscript': needs torch"]),
])
def test_bad_settings_are_one_clear_error_and_exit_2(env: dict[str, str], expected: list[str],
                                                     tmp_path: Path) -> None:
    """Operators get every bad LATENTSERVE_* variable named, not a traceback, before anything binds."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LATENTSERVE_")}
    if env.get("PYTHONPATH") == "NOTORCH":  # a torch that cannot import, ahead of the real one
        fake = tmp_path / "torch"
        fake.mkdir()
        (fake / "__init__.py").write_text("raise ImportError('no torch in this environment')\n")
        env = {**env, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr


@pytest.mark.parametrize("access_log", [None, "true"])
def test_access_lines_only_when_asked(tmp_path: Path, access_log: str | None) -> None:
    """As shipped (LOG_LEVEL=info) no line per request; ACCESS_LOG=true writes uvicorn's access lines."""
    store = build_store(tmp_path / "models_store")
    port = _free_port()
    env = {**os.environ, "LATENTSERVE_STORE": str(store), "LATENTSERVE_PORT": str(port),
           "LATENTSERVE_HOST": "127.0.0.1", "LATENTSERVE_GRPC_PORT": "0"}
    env.pop("LATENTSERVE_LOG_LEVEL", None)
    env.pop("LATENTSERVE_ACCESS_LOG", None)
    if access_log:
        env["LATENTSERVE_ACCESS_LOG"] = access_log
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready within 60 s"
            time.sleep(0.1)
        for seed in range(3):
            r = httpx.post(f"{url}/v1/models/tiny-vae/sample", json={"n": 1, "seed": seed})
            assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert "Uvicorn running on" in out or "Application startup complete" in out, out  # info lines still come
    lines = [ln for ln in out.splitlines() if "POST /v1/models/tiny-vae/sample" in ln]
    assert len(lines) == (3 if access_log else 0), out
