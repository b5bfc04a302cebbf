"""The compose topology with real processes: `python -m service` replicas behind real nginx, configured by the
repo's template (deploy/nginx/nginx.conf.template) rendered for loopback ports and a temp prefix. HTTP goes
through proxy_pass, gRPC (the Open Inference Protocol, tritonclient.grpc) through grpc_pass."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from deploykit import MODEL, Replicas, free_port, nginx_render, publish, stop, wait_http

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REPLICAS = 3  # one is stopped gracefully, one crashes, one survives
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not os.access(NGINX, os.X_OK),
                       reason=f"nginx not installed ({NGINX}); .ci/run installs Debian's nginx package"),
]


@dataclass
class LB:
    url: str
    replicas: dict[str, subprocess.Popen]  # X-Served-By value -> process
    prefix: Path
    conf: Path
    grpc: str = ""  # host:port of nginx's gRPC listener

    @property
    def access_log(self) -> str:
        return (self.prefix / "logs" / "access.log").read_text()


def _nginx_cmd(prefix: Path, conf: Path, *extra: str) -> list[str]:
    directives = "daemon off;"
    if os.geteuid() == 0:  # as root nginx would switch workers to `nobody`, who cannot enter pytest's tmp dir
        directives += f" user {pwd.getpwuid(0).pw_name};"
    return [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "logs" / "error.log"),
            "-g", directives, *extra]


def _served_by(replica_url: str) -> str:
    r = httpx.get(f"{replica_url}/health/live", timeout=5)
    return r.headers["x-served-by"]


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LB]:
    """One topology for the module (booting replicas is the slow part); the kill test runs last."""
    pytest.importorskip("onnx", reason="building the test graphs needs onnx (dev extra)")
    tmp = tmp_path_factory.mktemp("topology")
    store = tmp / "models_store"
    publish(store, MODEL, 1)
    pool = Replicas(tmp)
    try:
        grpc_ports = [free_port() for _ in range(REPLICAS)]
        booting = [pool.launch(store, f"r{i}", LATENTSERVE_GRPC_PORT=str(grpc_ports[i - 1]))
                   for i in range(1, REPLICAS + 1)]  # in parallel
        for proc, url in booting:
            pool.ready(proc, url)
        replicas = {_served_by(url): proc for proc, url in booting}
        assert len(replicas) == REPLICAS, "each replica names itself differently in X-Served-By"
        upstreams = [url.removeprefix("http://") for _, url in booting]
        grpc_upstreams = [f"127.0.0.1:{p}" for p in grpc_ports]
        with _nginx(tmp / "lb", upstreams, grpc_upstreams) as (url, grpc, prefix, conf):
            yield LB(url, replicas, prefix, conf, grpc)
    finally:
        pool.close()


@contextlib.contextmanager
def _nginx(prefix: Path, upstreams: list[str],
           grpc_upstreams: list[str]) -> Iterator[tuple[str, str, Path, Path]]:
    """nginx in the foreground with the repo's template rendered for `upstreams` (HTTP) and `grpc_upstreams`;
    `nginx -t` passes first."""
    (prefix / "logs").mkdir(parents=True)
    port, grpc_port = free_port(), free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_render().render({
        "LB_PORT": f"127.0.0.1:{port}", "API_ADDR": upstreams,
        "LB_GRPC_PORT": f"127.0.0.1:{grpc_port}", "API_GRPC_ADDR": grpc_upstreams,
        "NGINX_STATE_DIR": str(prefix), "NGINX_LOG_DIR": str(prefix / "logs"),
    }))
    test = subprocess.run(_nginx_cmd(prefix, conf, "-t"), capture_output=True, text=True, timeout=30)
    assert test.returncode == 0, test.stderr
    assert "test is successful" in test.stderr

    proc = subprocess.Popen(_nginx_cmd(prefix, conf), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/lb/health", timeout=15, proc=proc)
        yield f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", prefix, conf
    finally:
        stop(proc)


def test_rendered_config_lists_every_replica(lb: LB) -> None:
    conf = lb.conf.read_text()
    assert conf.count("max_fails=2 fail_timeout=10s;") == 2 * len(lb.replicas) == 2 * REPLICAS  # HTTP, gRPC
    assert "${" not in "\n".join(line for line in conf.splitlines() if not line.lstrip().startswith("#"))


def test_requests_spread_over_all_replicas(lb: LB) -> None:
    seen: Counter[str] = Counter()
    n = 20 * REPLICAS
    with httpx.Client(base_url=lb.url, timeout=10) as client:
        for _ in range(n):
            r = client.get(f"/v1/models/{MODEL}")
            assert r.status_code == 200, r.text
            assert r.json()["name"] == MODEL
            seen[r.headers["x-served-by"]] += 1
    assert set(seen) == set(lb.replicas)
    assert min(seen.values()) >= n // REPLICAS // 2, f"round robin splits {n} requests evenly: {dict(seen)}"


def test_grpc_calls_spread_over_all_replicas(lb: LB) -> None:
    """tritonclient.grpc through nginx's grpc_pass: one channel, calls balanced over every replica (the
    replica names itself in `x-served-by` trailing metadata, as in HTTP's X-Served-By)."""
    grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (dev extra)")
    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    client = grpcclient.InferenceServerClient(lb.grpc)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_model_metadata(f"{MODEL}.decoder").name == f"{MODEL}.decoder"
        i = grpcclient.InferInput("z", [2, 2], "FP32")
        i.set_data_from_numpy(np.zeros((2, 2), np.float32))
        assert client.infer(f"{MODEL}.decoder", [i]).as_numpy("x_hat").shape == (2, 1, 8, 8)
    finally:
        client.close()
    seen: Counter[str] = Counter()
    n = 10 * REPLICAS
    with grpc.insecure_channel(lb.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(n):
            request = service_pb2.ModelMetadataRequest(name=f"{MODEL}.decoder")
            _, call = stub.ModelMetadata.with_call(request, timeout=10)
            seen[dict(call.trailing_metadata())["x-served-by"]] += 1
    assert set(seen) == set(lb.replicas), dict(seen)


@dataclass
class Load:
    """What 4 looping GET clients saw: (time, status, replica) per answer, and transport errors."""

    results: list[tuple[float, int, str]]
    errors: list[str]
    event_at: float

    def served_after(self, delay: float) -> set[str]:
        return {by for at, _, by in self.results if at > self.event_at + delay}

    def served_before(self) -> set[str]:
        return {by for at, _, by in self.results if at < self.event_at}

    def bad_statuses(self) -> list[int]:
        return [s for _, s, _ in self.results if s != 200]


def _under_load(lb: LB, event: Callable[[], None], before_s: float = 1.0, after_s: float = 2.5) -> Load:
    """Run GET clients through the balancer; call `event` after `before_s`, stop `after_s` later."""
    results: list[tuple[float, int, str]] = []
    errors: list[str] = []
    done = threading.Event()
    lock = threading.Lock()
    paths = [f"/v1/models/{MODEL}", "/v1/models", f"/v1/models/{MODEL}/versions/1",
             f"/v2/models/{MODEL}.decoder"]

    def client(k: int) -> None:
        with httpx.Client(base_url=lb.url, timeout=10) as c:
            i = k
            while not done.is_set():
                try:
                    r = c.get(paths[i % len(paths)])
                    with lock:
                        results.append((time.monotonic(), r.status_code, r.headers.get("x-served-by", "")))
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(repr(exc))
                i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(before_s)
    event_at = time.monotonic()
    event()
    time.sleep(after_s)
    done.set()
    for t in threads:
        t.join(30)
    return Load(results, errors, event_at)


def _retried(lb: LB) -> list[str]:
    """Access-log upstream fields naming two replicas: nginx failed on one and retried on the next."""
    ups = [line.split("upstream=")[1].split(" upstream_status=")[0] for line in lb.access_log.splitlines()]
    return [u for u in ups if ", " in u]


def test_stopping_a_replica_mid_load_fails_no_request(lb: LB) -> None:
    """SIGTERM (docker stop, a scale-down, a rolling update) while 4 clients send GETs: not one fails.

    The replica drops readiness, drains and closes its connections; nginx retries what hit a closed one."""
    victim = list(lb.replicas)[0]
    proc = lb.replicas[victim]
    load = _under_load(lb, proc.terminate, after_s=3.0)
    # uvicorn re-raises the signal after its graceful shutdown, so "clean" is exit 0 or killed-by-SIGTERM
    assert proc.wait(10) in (0, -signal.SIGTERM), "a graceful stop exits within the grace period"
    assert not load.errors and not load.bad_statuses(), (load.errors[:3], load.bad_statuses()[:5])
    assert victim in load.served_before()
    assert victim not in load.served_after(2.0) and load.served_after(2.0)
    print(f"SIGTERM: {len(load.results)} GETs, 0 failed, {len(_retried(lb))} retried by nginx so far")


def test_killing_a_replica_mid_load_fails_no_request_it_had_not_started(lb: LB) -> None:
    """SIGKILL (a crash) while 4 clients send GETs: every request the dead replica had not started to answer
    is retried on a live one, so no client sees a 502 or a refused connection, and the dead replica is left
    out. A response the replica had begun to send when it died (headers out, body not) cannot be replayed by
    nginx or any proxy: at most one per in-flight request (4), counted and reported. Runs after the SIGTERM
    test (module order), on the replicas left."""
    alive = [rid for rid, p in lb.replicas.items() if p.poll() is None]
    assert len(alive) >= 2
    victim = alive[0]
    retried_before = len(_retried(lb))

    def kill() -> None:
        lb.replicas[victim].send_signal(signal.SIGKILL)
        lb.replicas[victim].wait(10)

    load = _under_load(lb, kill)
    assert not load.bad_statuses(), f"{len(load.bad_statuses())} non-200 answers: {load.bad_statuses()[:5]}"
    cut = "peer closed connection without sending complete message body"
    truncated = [e for e in load.errors if cut in e]
    assert load.errors == truncated, load.errors[:3]
    assert len(truncated) <= 4
    assert victim in load.served_before()
    assert load.served_after(0.2) and victim not in load.served_after(0.2)
    assert len(_retried(lb)) > retried_before, "no request was retried on another replica"
    print(f"SIGKILL: {len(load.results)} GETs, {len(_retried(lb)) - retried_before} retried by nginx, "
          f"{len(truncated)} cut mid-response by the crash")
