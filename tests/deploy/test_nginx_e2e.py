"""The compose topology with real processes: two `python -m service` replicas behind real nginx, configured by
the repo's template (deploy/nginx/nginx.conf.template) rendered for loopback ports and a temp prefix."""

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from deploykit import MODEL, Replicas, free_port, nginx_render, publish, stop, wait_http

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
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
        booting = [pool.launch(store, rid) for rid in ("r1", "r2")]  # in parallel
        for proc, url in booting:
            pool.ready(proc, url)
        replicas = {_served_by(url): proc for proc, url in booting}
        assert len(replicas) == 2, "each replica names itself differently in X-Served-By"
        with _nginx(tmp / "lb", [url.removeprefix("http://") for _, url in booting]) as (url, prefix, conf):
            yield LB(url, replicas, prefix, conf)
    finally:
        pool.close()


@contextlib.contextmanager
def _nginx(prefix: Path, upstreams: list[str]) -> Iterator[tuple[str, Path, Path]]:
    """nginx in the foreground with the repo's template rendered for `upstreams`; `nginx -t` passes first."""
    (prefix / "logs").mkdir(parents=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_render().render({
        "LB_PORT": f"127.0.0.1:{port}", "API_ADDR": upstreams,
        "NGINX_STATE_DIR": str(prefix), "NGINX_LOG_DIR": str(prefix / "logs"),
    }))
    test = subprocess.run(_nginx_cmd(prefix, conf, "-t"), capture_output=True, text=True, timeout=30)
    assert test.returncode == 0, test.stderr
    assert "test is successful" in test.stderr

    proc = subprocess.Popen(_nginx_cmd(prefix, conf), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/lb/health", timeout=15, proc=proc)
        yield f"http://127.0.0.1:{port}", prefix, conf
    finally:
        stop(proc)


def test_rendered_config_has_both_replicas(lb: LB) -> None:
    conf = lb.conf.read_text()
    assert conf.count("max_fails=2 fail_timeout=10s;") == 2
    assert "${" not in "\n".join(line for line in conf.splitlines() if not line.lstrip().startswith("#"))


def test_requests_spread_over_both_replicas(lb: LB) -> None:
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=lb.url, timeout=10) as client:
        for _ in range(40):
            r = client.get(f"/v1/models/{MODEL}")
            assert r.status_code == 200, r.text
            assert r.json()["name"] == MODEL
            seen[r.headers["x-served-by"]] += 1
    assert set(seen) == set(lb.replicas)
    assert min(seen.values()) >= 10, f"round robin should split 40 requests evenly, got {dict(seen)}"


def test_killing_a_replica_mid_load_fails_no_idempotent_request(lb: LB) -> None:
    """SIGKILL one replica while 4 clients send GETs: every request still answers 200 (nginx retries those
    that hit the dead replica on the other one, then leaves it out); afterwards only the survivor serves.

    Runs last in this module: it kills a replica of the shared topology."""
    victim, survivor = list(lb.replicas)
    results: list[tuple[float, int, str]] = []
    errors: list[str] = []
    stop_at = time.monotonic() + 3.5
    lock = threading.Lock()

    def client(paths: list[str]) -> None:
        with httpx.Client(base_url=lb.url, timeout=10) as c:
            i = 0
            while time.monotonic() < stop_at:
                try:
                    r = c.get(paths[i % len(paths)])
                    with lock:
                        results.append((time.monotonic(), r.status_code, r.headers.get("x-served-by", "")))
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(repr(exc))
                i += 1

    paths = [f"/v1/models/{MODEL}", "/v1/models", f"/v1/models/{MODEL}/versions/1",
             f"/v2/models/{MODEL}.decoder"]
    threads = [threading.Thread(target=client, args=(paths[i:] + paths[:i],)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    lb.replicas[victim].send_signal(signal.SIGKILL)
    lb.replicas[victim].wait(10)
    for t in threads:
        t.join(30)

    assert not errors, errors[:5]
    bad = [(s, by) for _, s, by in results if s != 200]
    assert not bad, f"{len(bad)} of {len(results)} requests failed: {bad[:5]}"
    before = [by for at, _, by in results if at < killed_at]
    after = [by for at, _, by in results if at > killed_at + 0.2]
    assert {victim, survivor} <= set(before), "both replicas served before the kill"
    assert after and set(after) == {survivor}, "after the kill only the survivor serves"
    # nginx saw the failure and retried: an access-log line with two upstreams ("dead, alive")
    upstreams = [line.split("upstream=")[1].split(" upstream_status=")[0]
                 for line in lb.access_log.splitlines()]
    retried = [u for u in upstreams if ", " in u]
    assert retried, "no request was retried on the other replica"
    print(f"{len(results)} GETs, {len(after)} after the kill, {len(retried)} retried by nginx, 0 failed")
