"""Helpers for the deploy tests: a tiny, torch-free models store and real-process helpers.

The fixtures are re-exported by conftest.py; the test files import the helpers from here.

The store is built with `onnx.helper` (a linear encoder and a sigmoid decoder on 8x8 images) and a manifest
from `service.store`, so these tests depend on neither the trainer nor the shipped zoo. Versions are published
with the store's own rule: write into a `.staging-*` folder beside the target, fsync, rename into place.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from service.store import (
    MANIFEST_NAME,
    GaussianPrior,
    GraphSpec,
    LatentSpec,
    Manifest,
    TensorSpec,
    sha256_file,
)
from service.store.layout import STAGING_PREFIX

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
MODEL = "tiny-ae"
SHAPE = (1, 8, 8)


def _graph(name: str, nodes: list, inp: tuple[str, list], out: tuple[str, list], inits: list) -> bytes:
    from onnx import TensorProto, helper

    g = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, inp[1])],
        [helper.make_tensor_value_info(out[0], TensorProto.FLOAT, out[1])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests.deploy")
    m.ir_version = 8  # readable by every onnxruntime we support
    return m.SerializeToString()


def _graphs(latent: int, seed: int) -> dict[str, bytes]:
    """encoder: x (B,1,8,8) -> z_mean (B,latent); decoder: z (B,latent) -> x_hat (B,1,8,8)."""
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    w_enc = rng.normal(0, 0.1, (64, latent)).astype(np.float32)
    w_dec = rng.normal(0, 0.1, (latent, 64)).astype(np.float32)
    shape = np.array([-1, *SHAPE], dtype=np.int64)
    from onnx import helper

    enc = _graph(
        "encoder",
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["z_mean"]),
        ],
        ("x", ["batch", *SHAPE]), ("z_mean", ["batch", latent]),
        [numpy_helper.from_array(w_enc, "w")],
    )
    dec = _graph(
        "decoder",
        [
            helper.make_node("MatMul", ["z", "w"], ["h"]),
            helper.make_node("Sigmoid", ["h"], ["s"]),
            helper.make_node("Reshape", ["s", "shape"], ["x_hat"]),
        ],
        ("z", ["batch", latent]), ("x_hat", ["batch", *SHAPE]),
        [numpy_helper.from_array(w_dec, "w"), numpy_helper.from_array(shape, "shape")],
    )
    return {"encoder": enc, "decoder": dec}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(root: Path, name: str = MODEL, version: int | None = None, latent: int = 2) -> int:
    """Publish one version of the tiny model atomically (staging folder + rename). Returns the version."""
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        taken = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
        version = max(taken, default=0) + 1
    staging = model_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    staging.mkdir()
    graphs = _graphs(latent, seed=version)
    for g, blob in graphs.items():
        with open(staging / f"{g}.onnx", "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
    manifest = Manifest(
        name=name, version=version, family="ae", variant="plain", created_at=datetime.now(UTC),
        code_version="tests.deploy",
        data={"dataset": "synthetic", "shape": SHAPE, "preprocessing": "none (synthetic test graph)"},
        latent=LatentSpec(dim=latent, prior=GaussianPrior(
            mean=[0.0] * latent, cov=np.eye(latent).tolist())),
        graphs={
            "encoder": GraphSpec(file="encoder.onnx", inputs=[TensorSpec(name="x", shape=[-1, *SHAPE])],
                                 outputs=[TensorSpec(name="z_mean", shape=[-1, latent])]),
            "decoder": GraphSpec(file="decoder.onnx", inputs=[TensorSpec(name="z", shape=[-1, latent])],
                                 outputs=[TensorSpec(name="x_hat", shape=[-1, *SHAPE])]),
        },
        files={f"{g}.onnx": sha256_file(staging / f"{g}.onnx") for g in graphs},
        capabilities=["encode", "decode", "sample", "interpolate", "reconstruct"],
        metrics={"test_mse": 0.1},
        training={"seed": version},
    )
    with open(staging / MANIFEST_NAME, "w") as f:
        f.write(manifest.model_dump_json(indent=2))
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(staging)
    os.rename(staging, model_dir / str(version))  # the atomic step: readers see all of it or nothing
    _fsync_dir(model_dir)
    return version


@pytest.fixture
def onnx_store(tmp_path: Path) -> Path:
    """A fresh torch-free store with one model (`tiny-ae`, hand-built ONNX graphs) at version 1."""
    pytest.importorskip("onnx", reason="building the test graphs needs onnx (dev extra)")
    root = tmp_path / "models_store"
    publish(root, MODEL, 1)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; fail early (with the process output) if `proc` dies."""
    import httpx

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was up:\n{out[-4000:]}")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last!r})")


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate a child we started; kill it if it ignores SIGTERM."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class Replicas:
    """`python -m service` processes on free loopback ports, logging under `logdir`; `close()` stops them all.

    `launch` returns at once (so several replicas boot in parallel); `ready` waits for /health/ready.
    The log file is never read by the replica's environment: `LATENTSERVE_*` variables set the replica up.
    """

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen] = []

    def launch(self, store: Path, name: str, **env: str) -> tuple[subprocess.Popen, str]:
        port = free_port()
        full = {
            **os.environ,
            "LATENTSERVE_HOST": "127.0.0.1",
            "LATENTSERVE_PORT": str(port),
            "LATENTSERVE_STORE": str(store),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        with open(self.logdir / f"replica-{name}.log", "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([PYTHON, "-m", "service"], cwd=REPO, env=full, stdout=log,
                                    stderr=subprocess.STDOUT)
        proc.name = name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    def ready(self, proc: subprocess.Popen, url: str, timeout: float = 60.0) -> None:
        try:
            wait_http(f"{url}/health/ready", timeout=timeout, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            stop(proc)
            tail = (self.logdir / f"replica-{proc.name}.log").read_text()[-4000:]  # type: ignore[attr-defined]
            raise RuntimeError(f"{exc}\n{tail}") from exc

    def start(self, store: Path, name: str, **env: str) -> tuple[subprocess.Popen, str]:
        proc, url = self.launch(store, name, **env)
        self.ready(proc, url)
        return proc, url

    def log(self, name: str) -> str:
        return (self.logdir / f"replica-{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for p in self.procs:
            stop(p)


@pytest.fixture
def start_replica(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen, str]]]:
    """Start `python -m service` on a free loopback port and wait until ready; all are stopped afterwards."""
    replicas = Replicas(tmp_path)
    yield replicas.start
    replicas.close()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def nginx_render() -> ModuleType:
    """deploy/nginx/render.py (a script, not a package module), loaded by path."""
    name = "latentserve_deploy_nginx_render"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "deploy" / "nginx" / "render.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def app_get_paths(store: Path) -> set[str]:
    """GET paths of `service.app.create_app()`, from its OpenAPI document (the app is built, not started)."""
    from service.app import create_app
    from service.settings import Settings

    schema = create_app(Settings(store=store)).openapi()
    return {path for path, ops in schema["paths"].items() if "get" in ops}
