"""Soak benchmark: many mixed requests at high concurrency against one real server process.

    python bench/soak.py                       # 100,000 requests at concurrency 64 over models_store/
    python bench/soak.py --requests 2000       # a short run
    make bench-soak

It starts `python -m service` (with an API key and an admin key set, so the access guard is on the path),
then drives every endpoint and every model with an async httpx generator: health, metrics, model listing and
detail, every /v1 operation each model declares, V2 metadata, readiness, index and JSON inference on every
graph, plus deliberate client errors (no key, unknown model, invalid input, too many items) whose exact status
is expected. An "unexpected error" is any other status or a transport error. VmRSS of the server is sampled
from /proc while it runs; growth is measured from the end of the warm-up (the first 10% of requests) to the
end. It writes bench/results/soak.md and a PNG of RSS over time.

This is a benchmark, not a test: it reports numbers; tests only check that it runs (tests/reliability).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEY, ADMIN = "soak-key", "soak-admin"
log = logging.getLogger("soak")


@dataclass(frozen=True)
class Call:
    """One kind of request: what to send and which status it must get."""

    kind: str
    method: str
    path: str
    body: Any = None
    expect: int = 200
    auth: bool = True
    weight: float = 1.0


@dataclass
class Tally:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    unexpected: list[str] = field(default_factory=list)
    done: int = 0


# ---- the request mix -------------------------------------------------------------------------------------

def _rand(shape: tuple[int, ...], rng: np.random.Generator) -> list[Any]:
    return np.round(rng.random(shape, dtype=np.float32), 4).tolist()  # type: ignore[no-any-return]


def build_calls(client: httpx.Client, max_items: int) -> list[Call]:
    """Every endpoint for every model, from what the server says it serves."""
    rng = np.random.default_rng(0)
    models = client.get("/v1/models").raise_for_status().json()["models"]
    if not models:
        raise SystemExit("the store serves no models; run `make models` first or pass --store")
    calls = [
        Call("health", "GET", "/health/ready"), Call("health", "GET", "/health/live"),
        Call("health", "GET", "/v2/health/ready"), Call("metrics", "GET", "/metrics", weight=0.2),
        Call("models", "GET", "/v1/models"), Call("v2-meta", "GET", "/v2"),
        Call("v2-index", "POST", "/v2/repository/index", {}, weight=0.3),
        Call("err-401", "GET", "/v1/models", auth=False, expect=401),
        Call("err-404", "POST", "/v1/models/no-such-model/sample", {"n": 1}, expect=404),
        Call("err-401", "POST", "/v2/models/x.decoder/infer", {}, auth=False, expect=401),
    ]
    for m in models:
        name, (c, h, w), dim, caps = m["name"], m["shape"], m["latent_dim"], set(m["capabilities"])
        base = f"/v1/models/{name}"
        images = _rand((2, c, h, w), rng)
        latents = (rng.standard_normal((2, dim)).astype(np.float32).round(4)).tolist()
        calls.append(Call("model", "GET", base))
        ops = {
            "encode": {"images": images},
            "decode": {"latents": latents},
            "sample": {"n": 2, "seed": 1},
            "interpolate": {"start": latents[0], "end": latents[1], "steps": 4},
            "reconstruct": {"images": images},
            "denoise": {"images": images, "noise": {"kind": "gaussian", "level": 0.1, "seed": 3}},
            "anomaly-score": {"images": images},
        }
        for op, body in ops.items():
            if op in caps:
                calls.append(Call(op, "POST", f"{base}/{op}", body))
        if "decode" in caps:
            wrong_dim = {"latents": [[0.0] * (dim + 1)]}
            too_many = {"latents": [[0.0] * dim] * (max_items + 1)}
            calls.append(Call("err-422", "POST", f"{base}/decode", wrong_dim, expect=422, weight=0.3))
            calls.append(Call("err-413", "POST", f"{base}/decode", too_many, expect=413, weight=0.3))
        for graph in m.get("graphs") or _graphs(client, name):
            v2 = f"{name}.{graph}"
            meta = client.get(f"/v2/models/{v2}").raise_for_status().json()
            inputs = []
            for t in meta["inputs"]:
                shape = [2 if d == -1 else d for d in t["shape"]]
                inputs.append({"name": t["name"], "shape": shape, "datatype": "FP32",
                               "data": rng.random(int(np.prod(shape)), dtype=np.float32).round(4).tolist()})
            calls.append(Call("v2-infer", "POST", f"/v2/models/{v2}/infer", {"inputs": inputs}))
            calls.append(Call("v2-meta", "GET", f"/v2/models/{v2}", weight=0.3))
            calls.append(Call("v2-ready", "GET", f"/v2/models/{v2}/ready", weight=0.3))
    return calls


def _graphs(client: httpx.Client, name: str) -> list[str]:
    detail = client.get(f"/v1/models/{name}").raise_for_status().json()
    return sorted(detail["graphs"])


# ---- the load --------------------------------------------------------------------------------------------

async def drive(base: str, calls: list[Call], total: int, concurrency: int, tally: Tally, seed: int) -> float:
    """Send `total` requests drawn (weighted) from `calls` with `concurrency` workers; returns the seconds."""
    rng = random.Random(seed)
    weights = [c.weight for c in calls]
    plan = rng.choices(range(len(calls)), weights=weights, k=total)
    cursor = iter(plan)
    # Idle connections expire on the client before uvicorn's 5 s keep-alive closes them on the server: a
    # request must never be written into a connection the server is closing at that instant.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency,
                          keepalive_expiry=2.0)
    headers = {"Authorization": f"Bearer {KEY}"}

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        async def worker() -> None:
            for i in cursor:
                call = calls[i]
                t0 = time.perf_counter()
                try:
                    r = await client.request(call.method, call.path, json=call.body,
                                             headers=headers if call.auth else None)
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = -1
                    tally.unexpected.append(f"{call.kind} {call.path}: {type(exc).__name__}: {exc}")
                tally.latencies[call.kind].append(time.perf_counter() - t0)
                tally.statuses[(call.kind, status)] += 1
                if status != call.expect and status != -1:
                    tally.unexpected.append(f"{call.kind} {call.method} {call.path}: {status} "
                                            f"(expected {call.expect}) {r.text[:200]}")
                tally.done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


class RssSampler(threading.Thread):
    """Samples the server's VmRSS (kB) against the number of completed requests."""

    def __init__(self, pid: int, tally: Tally, total: int, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.tally, self.total, self.every_s = pid, tally, total, every_s
        self.samples: list[tuple[float, int, int]] = []  # (seconds, requests done, rss kB)
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        next_report = 0.1
        while not self.stop.is_set():
            rss = vm_rss_kb(self.pid)
            done = self.tally.done
            if rss is not None:
                self.samples.append((time.monotonic() - t0, done, rss))
                if done >= next_report * self.total:
                    log.info("%3.0f%%: %d requests in %.0f s, RSS %.1f MiB, unexpected errors %d",
                             100 * done / self.total, done, time.monotonic() - t0, rss / 1024,
                             len(self.tally.unexpected))
                    next_report += 0.1
            self.stop.wait(self.every_s)


def vm_rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# ---- the server ------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    store: Path, port: int, env_extra: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTSERVE_STORE": str(store),
           "LATENTSERVE_PORT": str(port), "LATENTSERVE_HOST": "127.0.0.1", "LATENTSERVE_LOG_LEVEL": "warning",
           "LATENTSERVE_API_KEYS": KEY, "LATENTSERVE_ADMIN_KEY": ADMIN, **env_extra}
    out = open(log_path, "wb")  # noqa: SIM115 - owned by the process for its lifetime
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready")


# ---- the report ------------------------------------------------------------------------------------------

@dataclass
class Result:
    requests: int
    concurrency: int
    seconds: float
    tally: Tally
    samples: list[tuple[float, int, int]]
    warmup_rss_kb: int
    final_rss_kb: int
    max_rss_kb: int
    calls: int
    models: int

    @property
    def growth(self) -> float:
        return (self.final_rss_kb - self.warmup_rss_kb) / max(1, self.warmup_rss_kb)


def summarise(
    requests: int, concurrency: int, seconds: float, tally: Tally, samples: list[tuple[float, int, int]],
    warmup_frac: float, calls: int, models: int,
) -> Result:
    warm = [s for s in samples if s[1] >= warmup_frac * requests] or samples
    return Result(
        requests, concurrency, seconds, tally, samples, warmup_rss_kb=warm[0][2], final_rss_kb=samples[-1][2],
        max_rss_kb=max(s[2] for s in samples), calls=calls, models=models,
    )


def write_report(res: Result, out: Path, png: Path | None, command: str) -> None:
    t = res.tally
    lines = [
        "# Soak benchmark",
        "",
        f"`{command}`",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; the CPU was shared with other work during the run",
        f"- {res.requests:,} requests at concurrency {res.concurrency} over {res.models} models "
        f"({res.calls} distinct request kinds), one uvicorn worker, API keys on",
        f"- wall time {res.seconds:.1f} s, throughput {res.requests / res.seconds:,.0f} req/s",
        f"- **unexpected errors: {len(t.unexpected)}** (a status other than the expected one, or a transport "
        "error; deliberate 401/404/413/422 requests count only when they get exactly that status)",
        f"- RSS after warm-up (first 10% of requests) {res.warmup_rss_kb / 1024:.1f} MiB, at the end "
        f"{res.final_rss_kb / 1024:.1f} MiB, peak {res.max_rss_kb / 1024:.1f} MiB: "
        f"**growth {100 * res.growth:+.1f}%** (target < 10%)",
        "",
        "| kind | requests | statuses | p50 ms | p99 ms |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for kind in sorted(t.latencies):
        lat = np.array(t.latencies[kind]) * 1000
        st = ", ".join(f"{s}: {n}" for (k, s), n in sorted(t.statuses.items()) if k == kind)
        lines.append(f"| {kind} | {len(lat):,} | {st} | {np.percentile(lat, 50):.1f} | "
                     f"{np.percentile(lat, 99):.1f} |")
    if t.unexpected:
        lines += ["", "First unexpected errors:", ""] + [f"- `{u}`" for u in t.unexpected[:10]]
    if png is not None:
        lines += ["", f"![RSS over the run]({png.name})"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def plot(res: Result, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = [s[0] for s in res.samples]
    rss = [s[2] / 1024 for s in res.samples]
    done = [s[1] for s in res.samples]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(done, rss, lw=1.2)
    ax.axhline(res.warmup_rss_kb / 1024 * 1.10, color="tab:red", ls="--", lw=1, label="warm-up RSS + 10%")
    ax.axvline(0.1 * res.requests, color="grey", ls=":", lw=1, label="end of warm-up")
    ax.set_xlabel("requests completed")
    ax.set_ylabel("server VmRSS (MiB)")
    ax.set_title(f"soak: {res.requests:,} requests, concurrency {res.concurrency}, {secs[-1]:.0f} s")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# ---- main ------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> Result:
    store = Path(args.store).resolve()
    port = free_port()
    log_path = Path(args.out).with_suffix(".server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env_extra = {"LATENTSERVE_BATCHING": "true"} if args.batching else {}
    proc = start_server(store, port, env_extra, log_path)
    base = f"http://127.0.0.1:{port}"
    tally = Tally()
    sampler = RssSampler(proc.pid, tally, args.requests)
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
            calls = build_calls(c, args.max_items)
            models = len(c.get("/v1/models").json()["models"])
        log.info("%d request kinds over %d models; sending %d requests at concurrency %d",
                 len(calls), models, args.requests, args.concurrency)
        sampler.start()
        seconds = asyncio.run(drive(base, calls, args.requests, args.concurrency, tally, args.seed))
        time.sleep(0.5)
    finally:
        sampler.stop.set()
        sampler.join(timeout=2)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    if log_path.exists() and not args.keep_log and "Traceback" not in log_path.read_text(errors="replace"):
        log_path.unlink()
    return summarise(
        args.requests, args.concurrency, seconds, tally, sampler.samples, 0.1, len(calls), models
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--store", default=str(ROOT / "models_store"))
    p.add_argument("--out", default=str(ROOT / "bench/results/soak.md"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--batching", action="store_true", help="serve with dynamic batching on")
    p.add_argument("--max-items", type=int, default=256, help="the server's max_items (for the 413 request)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-log", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would cost the client CPU
    res = run(args)
    out = Path(args.out)
    png = None if args.no_plot else out.with_suffix(".png")
    if png is not None:
        plot(res, png)
    command = "python bench/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(res, out, png, command.strip())
    log.info("%d requests in %.1f s (%.0f req/s); unexpected errors %d; RSS growth %+.1f%% -> %s",
             res.requests, res.seconds, res.requests / res.seconds, len(res.tally.unexpected),
             100 * res.growth, out)
    return 0 if not res.tally.unexpected and res.growth < 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
