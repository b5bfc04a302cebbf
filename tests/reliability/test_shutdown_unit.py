"""GracefulServer on a toy app in a real subprocess: readiness drops at once on SIGTERM, in-flight requests
finish, new requests in the drain window are served, and the process exits within the grace period."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited early"
        try:
            if httpx.get(base + "/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError("server never became ready")


@pytest.mark.slow
def test_sigterm_drains_in_flight_and_exits_within_grace() -> None:
    port, grace, drain, handler_s = free_port(), 4.0, 0.6, 1.2
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/reliability/toy_server.py"), str(port), str(grace), str(drain),
         str(handler_s)], env=env, cwd=ROOT,
    )
    try:
        wait_ready(base, proc)
        with ThreadPoolExecutor(8) as pool:
            inflight = [pool.submit(httpx.get, base + "/work", timeout=10) for _ in range(8)]
            time.sleep(0.3)  # all eight are now inside the handler
            t_sig = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
            during = httpx.get(base + "/health/ready", timeout=2)  # a new connection, inside the drain window
            late = httpx.get(base + "/work", timeout=5)  # admitted in the drain window: served
            results = [f.result() for f in inflight]
        proc.wait(timeout=grace + 2)
        exited_after = time.monotonic() - t_sig
    finally:
        if proc.poll() is None:
            proc.kill()
    assert during.status_code == 503 and during.json() == {"ready": False}
    assert during.headers["connection"] == "close"
    assert [r.status_code for r in results] == [200] * 8
    assert late.status_code == 200
    assert exited_after < grace


@pytest.mark.slow
def test_a_stuck_request_does_not_hold_the_process_past_grace() -> None:
    port, grace = free_port(), 2.0
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/reliability/toy_server.py"), str(port), str(grace), "0", "60"],
        env=env, cwd=ROOT,
    )
    try:
        wait_ready(base, proc)
        with ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(httpx.get, base + "/work", timeout=10)
            time.sleep(0.3)
            t_sig = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace + 3)
            exited_after = time.monotonic() - t_sig
            try:  # cut off at the grace period: a 500 from uvicorn, or a dropped connection
                assert stuck.result().status_code == 500
            except httpx.HTTPError:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
    assert exited_after < grace + 0.3


@pytest.mark.slow
def test_server_freezes_its_startup_heap_and_counts_received_requests() -> None:
    """After startup the loaded objects sit outside the cyclic GC (gc.freeze); uvicorn's count of received
    requests is published for the batcher's "alone" test."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/reliability/toy_server.py"), str(port), "4", "0", "1.0"],
        env=env, cwd=ROOT,
    )
    try:
        wait_ready(base, proc)
        alone = httpx.get(base + "/introspect", timeout=5).json()
        assert alone["frozen"] > 10_000 and alone["received"] == 1
        with ThreadPoolExecutor(3) as pool:
            slow = [pool.submit(httpx.get, base + "/work", timeout=10) for _ in range(3)]
            time.sleep(0.3)  # three requests are inside the handler
            busy = httpx.get(base + "/introspect", timeout=5).json()
            assert [f.result().status_code for f in slow] == [200] * 3
        assert busy["received"] == 4
    finally:
        proc.kill()
        proc.wait(5)
