"""Ours against the servers users know (issue 19): the same ONNX decoder behind each, one core each.

    .venv/bin/python bench/peers.py [--quick] [--rounds 3] [--seconds 5] [--concs 1 16 64] [--build]

Each peer runs from its own cached virtual environment (runs/bench/peers-venvs/<peer>, built once with its
version pinned and onnxruntime pinned to ours, rebuilt when the pins change), as its users run it:

    MLServer   `mlserver start <folder>` over a custom MLModel (bench/peers/mlserver_peer.py); V2 JSON
    KServe     `python kserve_peer.py` (kserve.ModelServer over a kserve.Model); V2 JSON
    LitServe   `python litserve_peer.py` (LitServer(...).run()); its JSON API, POST /predict
    BentoML    `bentoml serve bentoml_peer:Decoder`; its JSON API, POST /decode

Their settings are their defaults but for the port (and loopback) and one onnxruntime intra-op thread; a
default that costs a lot (MLServer's parallel_workers=1) runs as the headline row and the better setting
as an extra row, labelled; so does LitServe's fast_queue, which its docs advise above 100 req/s. (The peer
files are named <peer>_peer.py: a bench/peers/mlserver.py would shadow the package it imports.)

Ours is `python -m service` as shipped (log level info, no access line per request: LATENTSERVE_ACCESS_LOG
is off by default) on a store holding vae-digits: /v1 sample n=1, V2 infer batch 1 JSON, and binary as an
extra row; ACCESS_LOG=true (uvicorn's line per request) is an extra server. The ceiling is a bare FastAPI
app (bench/peers/ceiling.py) whose POST route parses the same V2 JSON body, under uvicorn with
--no-access-log, to pair with ours as shipped (and with uvicorn's defaults, an access line per request, as
an extra row that pairs with ours at ACCESS_LOG=true).

Every server's answer is checked against in-process onnxruntime on the same latent (max abs diff <= 1e-5)
before anything is timed. Every server (all its processes and threads) is pinned to CPU 0 with taskset and
wrk to CPU 1; all servers stay up through the run, and each round runs every row once per concurrency
(1, 16, 64) in an order that rotates from round to round; ratios are taken within a round and reported as
medians. The server's CPU time per request comes from /proc over its whole process tree. py-spy profiles
ours on V2 JSON at c=16. Writes bench/results/peers.md, peers.json and peers.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import serving  # noqa: E402  (bench/ is a folder of scripts)

log = logging.getLogger("bench.peers")

PEER_CODE = BENCH / "peers"
VENVS = ROOT / "runs" / "bench" / "peers-venvs"  # git-ignored (runs/)
# Anything that pulls torch gets the CPU wheel our machines use, never a CUDA build.
CONSTRAINTS = ("torch==2.13.0",)


# --- the peers' environments ----------------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    key: str  # venv folder and results key
    name: str  # the project, as its users call it
    requirement: str  # its pinned distribution (the reference run used these versions)
    pins: tuple[str, ...] = ()  # more pins it needs to run at all here (each with its reason, below)

    @property
    def venv(self) -> Path:
        return VENVS / self.key

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


PEERS = {
    p.key: p
    for p in (
        # uvloop 0.22+ raises from asyncio.get_event_loop() outside a running loop, which MLServer 1.7.1's
        # inference worker process calls at start (mlserver/parallel/worker.py, _ignore_signals): with the
        # newest uvloop the default parallel_workers=1 never becomes ready. 0.21.0 is the last before that.
        Peer("mlserver", "MLServer", "mlserver==1.7.1", ("uvloop==0.21.0",)),
        Peer("kserve", "KServe ModelServer", "kserve==0.21.0"),
        Peer("litserve", "LitServe", "litserve==0.2.19"),
        Peer("bentoml", "BentoML", "bentoml==1.4.40"),
    )
}


def requirements(peer: Peer) -> list[str]:
    """The peer and onnxruntime at the main venv's version: the same kernels behind every server."""
    import onnxruntime

    return [peer.requirement, *peer.pins, f"onnxruntime=={onnxruntime.__version__}"]


def build_venv(peer: Peer) -> dict[str, object]:
    """The peer's virtual environment, built once (a stamp holds its pins; other pins rebuild it).

    Returns the stamp: pins, versions installed, and how long the build took; raises RuntimeError with pip's
    last lines when it cannot be built (no registry, no wheel for this Python)."""
    stamp_path = peer.venv / "peer-stamp.json"
    reqs = requirements(peer)
    if stamp_path.exists():
        stamp: dict[str, object] = json.loads(stamp_path.read_text())
        if stamp.get("requirements") == reqs and peer.python.exists():
            return stamp
    shutil.rmtree(peer.venv, ignore_errors=True)
    peer.venv.parent.mkdir(parents=True, exist_ok=True)
    logfile = peer.venv.parent / f"{peer.key}-build.log"
    log.info("building %s's venv at %s (%s): pip's log in %s", peer.name, peer.venv, " ".join(reqs), logfile)
    t0 = time.perf_counter()
    constraints = peer.venv.parent / "constraints.txt"
    constraints.write_text("\n".join(CONSTRAINTS) + "\n")
    with open(logfile, "w") as out:
        steps = [
            [sys.executable, "-m", "venv", str(peer.venv)],
            [
                str(peer.python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-c",
                str(constraints),
                *reqs,
            ],
        ]
        for cmd in steps:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
            if done.returncode != 0:
                tail = logfile.read_text().splitlines()[-8:]
                raise RuntimeError(
                    f"{peer.name}: `{' '.join(cmd[-len(reqs) :])}` failed: " + " | ".join(tail)
                )
    seconds = time.perf_counter() - t0
    stamp = {
        "requirements": reqs,
        "build_s": round(seconds, 1),
        "built_at": time.strftime("%Y-%m-%d %H:%M"),
        "versions": installed(peer),
    }
    stamp_path.write_text(json.dumps(stamp, indent=1))
    log.info("built %s's venv in %.0f s", peer.name, seconds)
    return stamp


def installed(peer: Peer) -> dict[str, str]:
    """Versions of what matters in the peer's venv (the peer, onnxruntime, the HTTP stack, torch if any)."""
    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        "for d in ('mlserver', 'kserve', 'litserve', 'bentoml', 'onnxruntime', 'numpy', 'fastapi',"
        " 'starlette', 'uvicorn', 'uvloop', 'httptools', 'torch', 'pydantic'):\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(peer.python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def build_all(keys: list[str]) -> tuple[dict[str, dict[str, object]], dict[str, str]]:
    """Every peer's venv: the stamps of those that exist, and why each other one does not."""
    stamps, problems = {}, {}
    for key in keys:
        try:
            stamps[key] = build_venv(PEERS[key])
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            problems[f"{key} venv"] = str(exc)
            log.error("%s", exc)
    return stamps, problems


# --- what every server answers --------------------------------------------------------------------
MODEL = "vae-digits"  # ours, from models_store/
PEER_MODEL = "decoder"  # the name the V2 peers serve it under
DIM = 8
TOLERANCE = 1e-5  # max abs difference from in-process onnxruntime
JSON_HEADERS = {"Content-Type": "application/json"}
Z = (
    np.random.default_rng(0).standard_normal((1, DIM)).astype(np.float32)
)  # (1, 8): the latent every row sends

# An answer's (latent, x_hat): the latent is the request's (Z) unless the answer names its own (/v1 sample).
Reader = Callable[[bytes, Mapping[str, str]], "tuple[np.ndarray | None, np.ndarray] | None"]


def v2_json_body(z: np.ndarray) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "z", "shape": list(z.shape), "datatype": "FP32", "data": z.ravel().tolist()}]}
    ).encode()


def read_v2_json(body: bytes, _: Mapping[str, str]) -> tuple[None, np.ndarray]:
    out = next(o for o in json.loads(body)["outputs"] if o["name"] == "x_hat")
    return None, np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def read_v2_binary(body: bytes, headers: Mapping[str, str]) -> tuple[None, np.ndarray]:
    """A V2 binary answer: a JSON head (length in Inference-Header-Content-Length), then the raw tensors."""
    n = int(headers["inference-header-content-length"])
    offset = n
    for out in json.loads(body[:n])["outputs"]:
        size = int(out["parameters"]["binary_data_size"])
        if out["name"] == "x_hat":
            return None, np.frombuffer(body[offset : offset + size], dtype="<f4").reshape(out["shape"])
        offset += size
    raise ValueError("no x_hat in the answer")


def read_sample(body: bytes, _: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """/v1 sample answers the latents it drew and the images decoded from them."""
    got = json.loads(body)
    return np.asarray(got["latents"], dtype=np.float32), np.asarray(got["images"], dtype=np.float32)


def read_litserve(body: bytes, _: Mapping[str, str]) -> tuple[None, np.ndarray]:
    return None, np.asarray(json.loads(body)["x_hat"], dtype=np.float32)


def read_bentoml(body: bytes, _: Mapping[str, str]) -> tuple[None, np.ndarray]:
    return None, np.asarray(json.loads(body), dtype=np.float32)


def read_ceiling(body: bytes, _: Mapping[str, str]) -> None:
    if json.loads(body) != {"outputs": DIM}:
        raise ValueError(f"unexpected answer {body[:80]!r}")
    return None  # no model behind it: nothing to compare


# --- servers and rows -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    cmd: list[str]
    env: dict[str, str]
    cwd: Path


@dataclass(frozen=True)
class Server:
    key: str
    label: str  # the table's server column
    peer: str | None  # its PEERS key (its venv); None: the main venv (ours, the ceiling)
    ready: str  # polled until 200 before anything else
    launch: Callable[[int, Path, Path], Launch]  # (port, decoder.onnx, workdir) -> how to start it
    extra: str = ""  # not the headline setting: why it is here


@dataclass(frozen=True)
class Row:
    key: str  # results key
    server: str  # Server.key
    route: str  # the table's route column
    sc: serving.Scenario
    read: Reader
    check: bytes | None = None  # the checked request's body when it differs (sample: with a seed)
    extra: str = ""


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without ours or another venv's settings: every server starts as shipped."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("LATENTSERVE_")}
    return {**env, **extra}


def launch_ours(access_log: bool) -> Callable[[int, Path, Path], Launch]:
    def launch(port: int, decoder: Path, work: Path) -> Launch:
        store = decoder.parents[2]  # <store>/vae-digits/<version>/decoder.onnx
        env = clean_env(
            LATENTSERVE_STORE=str(store),
            LATENTSERVE_HOST="127.0.0.1",
            LATENTSERVE_PORT=str(port),
            # Its gRPC port too (where the service has one; unknown settings are ignored), as for the peers:
            # two of ours run at once.
            LATENTSERVE_GRPC_PORT=str(serving.free_port()),
            **({"LATENTSERVE_ACCESS_LOG": "true"} if access_log else {}),
        )
        return Launch([sys.executable, "-m", "service"], env, ROOT)

    return launch


def launch_ceiling(access_log: bool) -> Callable[[int, Path, Path], Launch]:
    def launch(port: int, decoder: Path, work: Path) -> Launch:
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "ceiling:app",
            "--app-dir",
            str(PEER_CODE),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *([] if access_log else ["--no-access-log"]),
        ]
        return Launch(cmd, clean_env(), ROOT)

    return launch


def launch_mlserver(parallel_workers: int | None) -> Callable[[int, Path, Path], Launch]:
    """`mlserver start <folder>`: settings.json (ports, and parallel_workers for the extra row) and
    model-settings.json (bench/peers/mlserver_peer.Decoder over the decoder file) written to the folder."""

    def launch(port: int, decoder: Path, work: Path) -> Launch:
        folder = work / f"mlserver-{port}"
        folder.mkdir()
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "http_port": port,
            "grpc_port": serving.free_port(),
            "metrics_port": serving.free_port(),
        }
        if parallel_workers is not None:
            settings["parallel_workers"] = parallel_workers
        (folder / "settings.json").write_text(json.dumps(settings))
        (folder / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": PEER_MODEL,
                    "implementation": "mlserver_peer.Decoder",
                    "parameters": {"uri": str(decoder)},
                }
            )
        )
        bin_ = PEERS["mlserver"].venv / "bin"
        env = clean_env(PYTHONPATH=str(PEER_CODE), PATH=f"{bin_}{os.pathsep}{os.environ.get('PATH', '')}")
        return Launch([str(bin_ / "mlserver"), "start", str(folder)], env, folder)

    return launch


def launch_kserve(port: int, decoder: Path, work: Path) -> Launch:
    cmd = [
        str(PEERS["kserve"].python),
        str(PEER_CODE / "kserve_peer.py"),
        "--model_name",
        PEER_MODEL,
        "--model_path",
        str(decoder),
        "--http_port",
        str(port),
        "--grpc_port",
        str(serving.free_port()),
    ]
    return Launch(cmd, clean_env(), work)


def launch_litserve(fast_queue: bool) -> Callable[[int, Path, Path], Launch]:
    def launch(port: int, decoder: Path, work: Path) -> Launch:
        cwd = work / f"litserve-{port}"  # LitServer.run() writes a client.py where it runs
        cwd.mkdir()
        cmd = [
            str(PEERS["litserve"].python),
            str(PEER_CODE / "litserve_peer.py"),
            str(decoder),
            str(port),
            *(["fast_queue"] if fast_queue else []),
        ]
        return Launch(cmd, clean_env(), cwd)

    return launch


def launch_bentoml(port: int, decoder: Path, work: Path) -> Launch:
    bin_ = PEERS["bentoml"].venv / "bin"
    cmd = [
        str(bin_ / "bentoml"),
        "serve",
        "bentoml_peer:Decoder",
        "--working-dir",
        str(PEER_CODE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # BENTOML_HOME: its model store and logs in the work folder, not ~/bentoml; no usage analytics (offline).
    env = clean_env(
        DECODER_ONNX=str(decoder),
        BENTOML_HOME=str(work / "bentoml-home"),
        BENTOML_DO_NOT_TRACK="true",
        PATH=f"{bin_}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return Launch(cmd, env, work)


def servers() -> list[Server]:
    v2 = f"/v2/models/{PEER_MODEL}/ready"
    return [
        Server("ours", "ours (python -m service, as shipped)", None, "/health/ready", launch_ours(False)),
        Server(
            "ours-accesslog",
            "ours, ACCESS_LOG=true",
            None,
            "/health/ready",
            launch_ours(True),
            extra="not the default: uvicorn's access line per request",
        ),
        Server("ceiling", "ceiling (bare FastAPI, uvicorn --no-access-log)", None, "/health",
               launch_ceiling(False)),
        Server(
            "ceiling-accesslog",
            "ceiling, uvicorn defaults (access log)",
            None,
            "/health",
            launch_ceiling(True),
            extra="an access line per request, to pair with ours at ACCESS_LOG=true",
        ),
        Server("mlserver", "MLServer (mlserver start)", "mlserver", v2, launch_mlserver(None)),
        Server(
            "mlserver-pw0",
            "MLServer, parallel_workers=0",
            "mlserver",
            v2,
            launch_mlserver(0),
            extra="not the default (1): inference in the HTTP process, no worker-process hop",
        ),
        Server("kserve", "KServe ModelServer (python model.py)", "kserve", v2, launch_kserve),
        Server("litserve", "LitServe (LitServer.run())", "litserve", "/health", launch_litserve(False)),
        Server(
            "litserve-fastq",
            "LitServe, fast_queue=True",
            "litserve",
            "/health",
            launch_litserve(True),
            extra="not the default: ZeroMQ between the HTTP and inference processes (its docs: for >100 RPS)",
        ),
        Server("bentoml", "BentoML (bentoml serve)", "bentoml", "/readyz", launch_bentoml),
    ]


def rows() -> list[Row]:
    v2 = f"/v2/models/{MODEL}.decoder/infer"
    peer_v2 = f"/v2/models/{PEER_MODEL}/infer"
    body = v2_json_body(Z)
    binary, bin_headers = serving.v2_binary_body(Z)
    own = json.dumps({"z": Z.tolist()}).encode()
    sample = serving.Scenario(
        "b", "/v1 sample n=1", f"/v1/models/{MODEL}/sample", "POST", b'{"n": 1}', JSON_HEADERS
    )
    v2json = serving.Scenario("d", "V2 infer JSON b=1", v2, "POST", body, JSON_HEADERS)
    out = []
    for srv in ("ours", "ours-accesslog"):
        out += [
            Row(f"{srv}|sample", srv, "/v1 sample n=1", sample, read_sample, b'{"n": 1, "seed": 7}'),
            Row(f"{srv}|v2json", srv, "V2 infer JSON b=1", v2json, read_v2_json),
        ]
    out.insert(
        2,
        Row(
            "ours|v2binary",
            "ours",
            "V2 infer binary b=1",
            serving.Scenario("d", "V2 infer binary b=1", v2, "POST", binary, bin_headers),
            read_v2_binary,
            extra="binary tensors: what a Triton-style client sends",
        ),
    )
    for srv in ("ceiling", "ceiling-accesslog"):
        out.append(
            Row(
                f"{srv}|json",
                srv,
                "POST JSON (V2 body parsed)",
                serving.Scenario("a", "POST JSON", "/infer", "POST", body, JSON_HEADERS),
                read_ceiling,
            )
        )
    for srv in ("mlserver", "mlserver-pw0", "kserve"):
        out.append(
            Row(
                f"{srv}|v2json",
                srv,
                "V2 infer JSON b=1",
                serving.Scenario("d", "V2 infer JSON b=1", peer_v2, "POST", body, JSON_HEADERS),
                read_v2_json,
            )
        )
    for srv in ("litserve", "litserve-fastq"):
        out.append(
            Row(
                f"{srv}|json",
                srv,
                "POST /predict JSON",
                serving.Scenario("d", "LitServe JSON", "/predict", "POST", own, JSON_HEADERS),
                read_litserve,
            )
        )
    out.append(
        Row(
            "bentoml|json",
            "bentoml",
            "POST /decode JSON",
            serving.Scenario("d", "BentoML JSON", "/decode", "POST", own, JSON_HEADERS),
            read_bentoml,
        )
    )
    return out


# --- running servers ------------------------------------------------------------------------------
@dataclass
class Running:
    server: Server
    url: str
    proc: subprocess.Popen[bytes]
    logfile: Path


def process_tree(pid: int) -> list[int]:
    """`pid` and every descendant (from /proc: the servers' worker processes, supervisors' children)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_cpu(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each process in the tree (all its threads)."""
    out = {}
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            out[p] = serving.cpu_seconds(p)
    return out


def pinning(pid: int) -> dict[str, Any]:
    """Which CPUs each thread of the tree may run on (taskset's mask is inherited by children and threads)."""
    cpus: dict[str, int] = {}
    procs = threads = 0
    for p in process_tree(pid):
        procs += 1
        for status in Path(f"/proc/{p}/task").glob("*/status"):
            with contextlib.suppress(OSError):
                line = next(x for x in status.read_text().splitlines() if x.startswith("Cpus_allowed_list"))
                threads += 1
                allowed = line.split(":", 1)[1].strip()
                cpus[allowed] = cpus.get(allowed, 0) + 1
    return {"processes": procs, "threads": threads, "cpus_allowed": cpus}


@contextlib.contextmanager
def start(srv: Server, decoder: Path, work: Path) -> Iterator[Running]:
    """The server pinned to CPU 0 (taskset: the whole tree), in its own session so that stopping it stops its
    workers too; waits until `srv.ready` answers 200."""
    port = serving.free_port()
    how = srv.launch(port, decoder, work)
    logfile = work / f"{srv.key}.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", "0", *how.cmd],
            cwd=how.cwd,
            env=how.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        serving.wait_ready(url + srv.ready, proc, f"{srv.label} did not become ready; see {logfile}", 180)
        log.info("%s ready in %.1f s at %s", srv.label, time.perf_counter() - t0, url)
        yield Running(srv, url, proc, logfile)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (it leads its own session), SIGKILL after 20 s; then SIGKILL to
    any process of its tree that left the group (a supervisor's worker in a session of its own)."""
    tree = {p: started(p) for p in process_tree(proc.pid)[1:]}
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    for pid, when in tree.items():
        if when is not None and started(pid) == when:  # the same process, not a reused pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def started(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), None once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


# --- checking answers -----------------------------------------------------------------------------
def reference(decoder: Path, z: np.ndarray) -> np.ndarray:
    """The decoder run in this process by onnxruntime, one intra-op thread: what every answer must match."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(decoder), opts, providers=["CPUExecutionProvider"])
    return sess.run(["x_hat"], {"z": z})[0]  # type: ignore[no-any-return]


def check(url: str, row: Row, decoder: Path) -> dict[str, Any]:
    """One request of the row (the seeded variant for /v1 sample); its answer against in-process onnxruntime.
    Raises RuntimeError when it does not match."""
    req = urllib.request.Request(
        url + row.sc.path, data=row.check or row.sc.body, method=row.sc.method, headers=row.sc.headers
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            body, headers = r.read(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{row.key}: HTTP {exc.code}: {exc.read()[:300]!r}") from exc
    got = row.read(body, headers)
    if got is None:
        return {"compared": False, "note": "no model: its small JSON answer checked"}
    z, x_hat = got
    z = Z if z is None else z
    want = reference(decoder, z)
    if x_hat.shape != want.shape:
        raise RuntimeError(f"{row.key}: x_hat shape {x_hat.shape}, in-process {want.shape}")
    diff = float(np.max(np.abs(x_hat - want)))
    if not diff <= TOLERANCE:
        raise RuntimeError(
            f"{row.key}: max abs diff {diff:.3g} from in-process onnxruntime (> {TOLERANCE:g})"
        )
    return {"compared": True, "max_abs_diff": diff, "shape": list(x_hat.shape)}


# --- measuring ------------------------------------------------------------------------------------
def measure(run: Running, row: Row, conc: int, seconds: float, work: Path) -> dict[str, Any]:
    """One wrk run (pinned to CPU 1) and the server tree's CPU time per request over it."""
    before = tree_cpu(run.proc.pid)
    r = serving.wrk(run.url, row.sc, conc, seconds, work, cpus="1")
    after = tree_cpu(run.proc.pid)
    cpu = sum(t - before.get(p, 0.0) for p, t in after.items())
    r["cpu_us"] = cpu / max(r["requests"], 1) * 1e6
    return {k: r[k] for k in ("rps", "p50_ms", "p99_ms", "cpu_us", "errors", "requests")}


def rounds_of(
    running: dict[str, Running], todo: list[Row], concs: list[int], n_rounds: int, seconds: float, work: Path
) -> tuple[dict[str, dict[int, list[dict[str, Any]]]], list[str]]:
    """`n_rounds` rounds; in each, every row once at each concurrency, the order rotating from round to round
    (no server always runs first or last). Returns per row and concurrency the runs in round order, and the
    load average after each round."""
    res: dict[str, dict[int, list[dict[str, Any]]]] = {row.key: {c: [] for c in concs} for row in todo}
    loads = []
    for r in range(n_rounds):
        k = r * max(1, len(todo) // max(n_rounds, 1)) % len(todo)
        order = todo[k:] + todo[:k]
        for c in concs:
            for row in order:
                got = measure(running[row.server], row, c, seconds, work)
                res[row.key][c].append(got)
                log.info(
                    "round %d c=%d %-22s %8.0f req/s  p50 %6.2f ms  p99 %7.2f ms  %6.0f us CPU/req%s",
                    r + 1,
                    c,
                    row.key,
                    got["rps"],
                    got["p50_ms"],
                    got["p99_ms"],
                    got["cpu_us"],
                    f"  ERRORS {got['errors']}" if got["errors"] else "",
                )
        loads.append(" ".join(f"{x:.2f}" for x in os.getloadavg()))
        log.info("round %d done; load average %s", r + 1, loads[-1])
    return res, loads


# --- the report -----------------------------------------------------------------------------------
Results = dict[str, dict[int, list[dict[str, Any]]]]  # row key -> concurrency -> runs, one per round


def median_of(res: Results, key: str, c: int, field: str) -> float:
    return statistics.median(r[field] for r in res[key][c])


def per_round(res: Results, num: str, den: str, c: int, field: str = "rps") -> list[float]:
    """num/den within each round (the two ran minutes apart at most, under the same load)."""
    if num not in res or den not in res or c not in res[num]:
        return []
    return [a[field] / b[field] for a, b in zip(res[num][c], res[den][c], strict=True) if b[field]]


@dataclass(frozen=True)
class Target:
    name: str
    num: str  # row keys
    den: str
    c: int
    goal: float
    field: str = "rps"  # "p99_ms": den's p99 over num's, so >= 1 means num's p99 is no worse


def targets(concs: list[int]) -> list[Target]:
    out = [
        Target("V2 infer JSON: ours / MLServer (default)", "ours|v2json", "mlserver|v2json", 16, 3.0),
        Target("V2 infer JSON: ours / KServe ModelServer", "ours|v2json", "kserve|v2json", 16, 4.0),
    ]
    for peer, name in (
        ("mlserver|v2json", "MLServer (default)"),
        ("kserve|v2json", "KServe"),
        ("litserve|json", "LitServe"),
        ("bentoml|json", "BentoML"),
    ):
        out.append(
            Target(
                f"p99: {name}'s / ours (V2 infer JSON); >= 1: ours no worse",
                "ours|v2json",
                peer,
                64,
                1.0,
                "p99_ms",
            )
        )
    for c in concs:
        out.append(Target("/v1 sample n=1: ours / ceiling POST JSON", "ours|sample", "ceiling|json", c, 0.8))
    for c in concs:
        out.append(Target("V2 infer JSON: ours / ceiling POST JSON", "ours|v2json", "ceiling|json", c, 0.7))
    return out


def target_lines(res: Results, concs: list[int]) -> tuple[list[str], list[dict[str, Any]]]:
    md = [
        "| target | c | median of per-round ratios | rounds' range | server CPU/request, theirs / ours | "
        "goal | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    found = []
    for t in targets(concs):
        if t.c not in concs:
            continue
        if t.field == "p99_ms":
            ratios = per_round(res, t.den, t.num, t.c, "p99_ms")
        else:
            ratios = per_round(res, t.num, t.den, t.c)
        if not ratios:
            md.append(f"| {t.name} | {t.c} | not run | | | >= {t.goal:g} | |")
            continue
        v = statistics.median(ratios)
        cpu = statistics.median(per_round(res, t.den, t.num, t.c, "cpu_us"))
        met = v >= t.goal
        md.append(
            f"| {t.name} | {t.c} | {v:.2f} | {min(ratios):.2f} to {max(ratios):.2f} | {cpu:.2f} | "
            f">= {t.goal:g} | {'yes' if met else 'NO'} |"
        )
        found.append({**t.__dict__, "median": v, "ratios": ratios, "cpu_ratio": cpu, "met": met})
    return md, found


def reference_lines(res: Results, concs: list[int], all_rows: list[Row]) -> list[str]:
    """Ours against every other row at each concurrency, no goal: req/s and CPU per request ratios."""
    md = [
        "| ours | against | c | req/s, ours / theirs (median of rounds) | CPU/request, theirs / ours |",
        "| --- | --- | --- | --- | --- |",
    ]
    pairs = [("ours|v2json", r.key) for r in all_rows if r.server not in ("ours", "ours-accesslog")]
    pairs += [
        ("ours|sample", "ceiling|json"),
        ("ours-accesslog|sample", "ceiling-accesslog|json"),
        ("ours-accesslog|v2json", "ceiling-accesslog|json"),
        ("ours|v2binary", "ceiling|json"),
    ]
    for num, den in pairs:
        for c in concs:
            ratios = per_round(res, num, den, c)
            if ratios:
                cpu = statistics.median(per_round(res, den, num, c, "cpu_us"))
                md.append(f"| {num} | {den} | {c} | {statistics.median(ratios):.2f} | {cpu:.2f} |")
    return md


#: Concerns on the event-loop thread, each the share of its busy samples with a matching frame (they overlap:
#: the batcher includes onnxruntime); `leaf`: only samples whose innermost frame matches (self time).
CONCERNS: list[tuple[str, tuple[str, ...], bool]] = [
    ("logging (at log level info: uvicorn's access line per request)", ("Logger._log (logging",), False),
    (
        "request: JSON parse and V2 validation (service/v2/codec.py decode_request)",
        ("decode_request (",),
        False,
    ),
    ("response: V2 encode (service/v2/codec.py encode_response)", ("encode_response (",), False),
    ("inference: Runtime.infer, the batcher, onnxruntime", ("Runtime.infer (",), False),
    ("onnxruntime Session.run alone", ("Session.run (onnxruntime",), False),
    ("prometheus_client (metrics)", ("prometheus_client",), False),
    ("socket write (uvicorn's RequestResponseCycle.send, self time)", ("RequestResponseCycle.send (",), True),
    (
        "uvloop outside the app: sockets, HTTP parsing, waiting (Runner.run, self time)",
        ("Runner.run (",),
        True,
    ),
]


def stacks(raw: Path) -> list[tuple[list[str], float]]:
    """py-spy's raw output as (frames outermost first, samples): the event-loop thread's busy samples only."""
    out = []
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, count = line.rpartition(" ")
        frames = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in stack.split(";")]
        idle = not frames or any(i in frames[-1] for i in serving.IDLE)
        if not idle and any("Server.run" in f for f in frames):  # not a worker thread either
            out.append((frames, float(count)))
    return out


def concerns(raw: Path) -> list[tuple[str, float]]:
    """The share of the event-loop thread's busy samples in each of CONCERNS."""
    samples = stacks(raw)
    total = sum(n for _, n in samples) or 1.0
    out = []
    for name, keys, leaf in CONCERNS:
        hit = sum(n for fr, n in samples if any(k in f for k in keys for f in (fr[-1:] if leaf else fr)))
        out.append((name, hit / total))
    return out


def inclusive(raw: Path, top: int = 30) -> list[tuple[str, float]]:
    """From py-spy's raw output: the share of the event-loop thread's busy samples that have each function
    on the stack (inclusive time), highest first; frames on every sample (the loop's scaffolding) left out."""
    counts: dict[str, float] = {}
    total = 0.0
    for frames, n in stacks(raw):
        total += n
        for f in set(frames):
            counts[f] = counts.get(f, 0.0) + n
    ranked = sorted(((f, c / total) for f, c in counts.items() if c < 0.99 * total), key=lambda kv: -kv[1])
    return ranked[:top]


def profile_lines(prof: dict[str, list[tuple[str, float]]] | None, seconds: float) -> list[str]:
    if prof is None:
        return ["Not profiled (--no-profile, or py-spy missing: `.venv/bin/pip install py-spy`).", ""]
    return [
        f"py-spy (250 Hz, {seconds:g} s) on ours as shipped while wrk sends V2 infer JSON at c=16 (wrk not "
        "pinned here). The event-loop thread's busy samples by where they were (first match, "
        "bench/serving.py's categories):",
        "",
        "| where | share |",
        "| --- | --- |",
        *[f"| {c} | {s:.1%} |" for c, s in prof["by_category"]],
        "",
        "By concern (the share of the event-loop thread's busy samples with a matching frame; they overlap):",
        "",
        "| concern | share |",
        "| --- | --- |",
        *[f"| {c} | {s:.1%} |" for c, s in prof["concerns"]],
        "",
        "Self time, all busy threads (a leaf in `Runner.run` is uvloop's C code: sockets, HTTP parsing, "
        "waiting):",
        "",
        "| function | share |",
        "| --- | --- |",
        *[f"| `{f}` | {s:.1%} |" for f, s in prof["self_time"]],
        "",
        "Inclusive time on the event-loop thread (the share of its busy samples with the function on the "
        "stack; the ASGI middleware come in the order they nest, so the drop from one to the next is that "
        "layer's own cost):",
        "",
        "| function | share |",
        "| --- | --- |",
        *[f"| `{f}` | {s:.1%} |" for f, s in prof["inclusive"]],
        "",
    ]


def plot(res: Results, concs: list[int], all_rows: list[Row], labels: dict[str, str], path: Path) -> None:
    """req/s per row at each concurrency, one panel each; extra rows (labelled so) hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in all_rows if r.key in res]
    fig, axes = plt.subplots(
        1, len(concs), figsize=(4 + 4 * len(concs), 0.45 * len(shown) + 1.8), sharey=True, squeeze=False
    )
    colour = {
        "ours": "tab:blue",
        "ours-accesslog": "tab:blue",
        "ceiling": "tab:gray",
        "ceiling-accesslog": "tab:gray",
    }
    ys = range(len(shown))
    for ax, c in zip(axes[0], concs, strict=True):
        vals = [median_of(res, r.key, c, "rps") for r in shown]
        bars = ax.barh(list(ys), vals, color=[colour.get(r.server, "tab:orange") for r in shown])
        for bar, r in zip(bars, shown, strict=True):
            if "(extra)" in labels[r.key]:
                bar.set_hatch("//")
                bar.set_alpha(0.6)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=7, padding=2)
        ax.set_title(f"c={c}")
        ax.set_xlabel("req/s (median of rounds)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(0, max(vals) * 1.2)
    axes[0][0].set_yticks(list(ys), [labels[r.key] for r in shown], fontsize=7)
    axes[0][0].invert_yaxis()
    fig.suptitle(
        "One core per server (taskset CPU 0), wrk on CPU 1; hatched: not a default setting or an extra route",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def row_label(row: Row, srv: Server) -> str:
    extra = row.extra or srv.extra
    return f"{srv.label}{' (extra)' if extra else ''}"


def write_report(path: Path, ctx: dict[str, Any]) -> None:
    a, res, concs = ctx["args"], ctx["results"], ctx["concs"]
    srvs: dict[str, Server] = {s.key: s for s in servers()}
    md = [
        "# Ours against the servers users know (issue 19)",
        "",
        f"`{ctx['command']}`: whole run {ctx['wall_s']:.0f} s.",
        "",
        "## Method",
        "",
        "- The same ONNX graph behind every server: models_store/vae-digits's decoder (z (N, 8) float32 -> "
        "x_hat (N, 1, 8, 8)), onnxruntime with one intra-op thread, the same onnxruntime version everywhere.",
        "- Each peer runs from its own virtual environment (runs/bench/peers-venvs/<peer>, its version "
        "pinned) as its users run it: its CLI or `run()` and its default settings, but port, loopback and "
        "one onnxruntime thread; its code is in bench/peers/. Extra rows (a non-default setting or another "
        "route) are labelled `(extra)`; the headline rows are the defaults.",
        "- Ours: `python -m service` as shipped (log level info: uvicorn writes an access line per request, "
        "to a file here) on a store holding vae-digits. The ceiling: bench/peers/ceiling.py, a bare FastAPI "
        "app whose POST route parses the same V2 JSON body and answers a small JSON object, under uvicorn's "
        "defaults (also log level info).",
        f"- Before anything is timed, one answer of every row is compared with in-process onnxruntime on the "
        f"same latent (max abs diff <= {TOLERANCE:g}; /v1 sample: its returned latents decoded here).",
        "- Every server, with all its processes and threads, is pinned to CPU 0 (`taskset -c 0`; checked in "
        "/proc after the warm-up) and wrk (one thread, bench/wrk_post.lua) to CPU 1. All servers stay up "
        "through the run; idle ones wait on their sockets.",
        f"- {a.rounds} round(s); in each, every row once at each concurrency ({', '.join(map(str, concs))}), "
        f"{a.seconds:g} s per point, the order of the rows rotating from round to round. The table gives "
        "medians over rounds; a target's ratio is taken within each round, and the median reported.",
        "- CPU us/request: user + system CPU of the server's whole process tree (from /proc) over the wrk "
        "run, divided by the requests wrk made; far less sensitive to a busy host than req/s.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in ctx["machine"].items()],
        f"- load average after each round: {'; '.join(ctx['loads']) or 'n/a'}",
        "",
        "## Peers",
        "",
        "| peer | installed (from its venv) | venv | first build |",
        "| --- | --- | --- | --- |",
    ]
    for key, st in ctx["stamps"].items():
        vers = ", ".join(f"{k} {v}" for k, v in st["versions"].items())
        md.append(
            f"| {PEERS[key].name} | {vers} | runs/bench/peers-venvs/{key} | {st['build_s']} s "
            f"({st['built_at']}) |"
        )
    md += [
        "",
        "## Answers checked, and pinning",
        "",
        "| server | route | answer vs in-process onnxruntime | processes / threads | CPUs allowed: threads |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, chk in ctx["checks"].items():
        srv_key, _ = key.split("|")
        row = next(r for r in rows() if r.key == key)
        pin = ctx["pinning"].get(srv_key, {})
        ans = f"max abs diff {chk['max_abs_diff']:.2g}" if chk.get("compared") else chk.get("note", "")
        cpus = ", ".join(f"{k}: {v}" for k, v in pin.get("cpus_allowed", {}).items())
        md.append(
            f"| {srvs[srv_key].label} | {row.route} | {ans} | {pin.get('processes', '')} / "
            f"{pin.get('threads', '')} | {cpus} |"
        )
    md += [
        "",
        f"## Results (median of {a.rounds} round(s))",
        "",
        "| server | route | c | req/s | req/s range | p50 ms | p99 ms | CPU us/req | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows():
        if row.key not in res:
            continue
        for c in concs:
            runs = res[row.key][c]
            rps = [r["rps"] for r in runs]
            md.append(
                f"| {row_label(row, srvs[row.server])} | {row.route} | {c} | {statistics.median(rps):,.0f} | "
                f"{min(rps):,.0f} to {max(rps):,.0f} | {median_of(res, row.key, c, 'p50_ms'):.2f} | "
                f"{median_of(res, row.key, c, 'p99_ms'):.2f} | {median_of(res, row.key, c, 'cpu_us'):,.0f} | "
                f"{sum(r['errors'] for r in runs)} |"
            )
    md += [
        "",
        f"![req/s per server]({a.out.with_suffix('.png').name})",
        "",
        "## Targets",
        "",
        *ctx["target_md"],
        "",
        "## Every ratio, no goal",
        "",
        *reference_lines(res, concs, rows()),
        "",
        "## Where our time goes",
        "",
        *profile_lines(ctx["profile"], ctx["profile_s"]),
    ]
    if ctx["problems"]:
        md += ["## Not run", "", *[f"- {k}: {v}" for k, v in ctx["problems"].items()], ""]
    path.write_text("\n".join(md))


def store_for(work: Path) -> Path:
    """A private store holding the shipped vae-digits; the decoder file every peer serves."""
    store = work / "store"
    shutil.copytree(ROOT / "models_store" / MODEL, store / MODEL, ignore=shutil.ignore_patterns(".staging-*"))
    m = serving.manifest(store, MODEL)
    return store / MODEL / str(m["version"]) / m["graphs"]["decoder"]["file"]


def start_all(
    stack: contextlib.ExitStack, wanted: list[Server], decoder: Path, work: Path, problems: dict[str, str]
) -> dict[str, Running]:
    running = {}
    for srv in wanted:
        try:
            running[srv.key] = stack.enter_context(start(srv, decoder, work))
        except (RuntimeError, OSError) as exc:
            problems[srv.key] = f"did not start: {exc}"
            log.error("%s", problems[srv.key])
    return running


def check_all(
    running: dict[str, Running], decoder: Path, work: Path, problems: dict[str, str]
) -> tuple[list[Row], dict[str, Any], dict[str, Any]]:
    """Each row's answer checked (rows that fail are dropped, with the reason), then a 1 s warm-up; then where
    each server's threads may run."""
    todo, checks = [], {}
    for row in rows():
        if row.server not in running:
            continue
        try:
            checks[row.key] = check(running[row.server].url, row, decoder)
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            problems[row.key] = f"answer check failed: {exc}"
            log.error("%s", problems[row.key])
            continue
        log.info("%s: %s", row.key, checks[row.key])
        serving.wrk(running[row.server].url, row.sc, 8, 1, work, cpus="1")
        todo.append(row)
    pins = {key: pinning(run.proc.pid) for key, run in running.items()}
    for key, pin in pins.items():
        if set(pin["cpus_allowed"]) != {"0"}:
            problems[f"{key} pinning"] = f"threads allowed on {pin['cpus_allowed']}, not CPU 0 alone"
    return todo, checks, pins


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 round of 1 s at c=16 only, a 3 s profile")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick 1)")
    p.add_argument("--seconds", type=float, default=None, help="seconds per point (default 5; quick 1)")
    p.add_argument(
        "--concs", type=int, nargs="*", default=None, help="concurrency (default 1 16 64; quick 16)"
    )
    p.add_argument("--only", nargs="*", default=None, help="server keys to run (default: all), for trials")
    p.add_argument("--build", action="store_true", help="only build the peers' venvs (exit 1 if one fails)")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of ours")
    p.add_argument("--out", type=Path, default=serving.RESULTS / "peers.md")
    a = p.parse_args(argv)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.seconds = a.seconds or (1.0 if a.quick else 5.0)
    concs = a.concs or ([16] if a.quick else [1, 16, 64])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    wanted = [s for s in servers() if a.only is None or s.key in a.only]
    stamps, problems = build_all(sorted({s.peer for s in wanted if s.peer}, key=list(PEERS).index))
    for key, st in stamps.items():
        log.info("%s venv: %s (first build took %s s)", PEERS[key].name, st["versions"], st["build_s"])
    if a.build:
        return 1 if problems else 0
    info = serving.machine()
    info["checkout"] = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    # The servers' logs, their folders and the store copy; one folder per run (two runs may overlap, e.g. the
    # test beside a full run), kept when something failed.
    (ROOT / "runs" / "bench").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="peers-work-", dir=ROOT / "runs" / "bench"))
    decoder = store_for(work)
    wanted = [s for s in wanted if s.peer is None or s.peer in stamps]
    profile_s = 3.0 if a.quick else 6.0
    prof: dict[str, list[tuple[str, float]]] | None = None
    with contextlib.ExitStack() as stack:
        running = start_all(stack, wanted, decoder, work, problems)
        todo, checks, pins = check_all(running, decoder, work, problems)
        res, loads = rounds_of(running, todo, concs, a.rounds, a.seconds, work) if todo else ({}, [])
        v2 = next((r for r in todo if r.key == "ours|v2json"), None)
        if v2 is not None and not a.no_profile and (BENCH.parent / ".venv/bin/py-spy").exists():
            run = running["ours"]
            by_cat, leaf = serving.profile(run.url, run.proc.pid, v2.sc, 16, profile_s, work)
            raw = work / "profile.txt"
            prof = {
                "by_category": by_cat,
                "concerns": concerns(raw),
                "self_time": leaf,
                "inclusive": inclusive(raw),
            }
    info["load_avg_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    target_md, found = target_lines(res, concs)
    srvs = {s.key: s for s in servers()}
    labels = {r.key: f"{row_label(r, srvs[r.server])}: {r.route}" for r in rows()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if res:
        plot(res, concs, rows(), labels, a.out.with_suffix(".png"))
    command = "python bench/peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    ctx = {
        "args": a,
        "results": res,
        "concs": concs,
        "machine": info,
        "loads": loads,
        "stamps": stamps,
        "checks": checks,
        "pinning": pins,
        "target_md": target_md,
        "profile": prof,
        "profile_s": profile_s,
        "problems": problems,
        "command": command.strip(),
        "wall_s": time.perf_counter() - t0,
    }
    write_report(a.out, ctx)
    a.out.with_suffix(".json").write_text(
        json.dumps(
            {
                "command": ctx["command"],
                "machine": info,
                "loads_after_rounds": loads,
                "peers": stamps,
                "checks": checks,
                "pinning": pins,
                "problems": problems,
                "targets": found,
                "profile": prof,
                "results": [
                    {"row": k, "server": k.split("|")[0], "label": labels[k], "c": c, "runs": runs}
                    for k, by_c in res.items()
                    for c, runs in by_c.items()
                ],
            },
            indent=1,
        )
    )
    log.info("wrote %s (%.0f s)", a.out, time.perf_counter() - t0)
    failed = any(not k.endswith(" venv") for k in problems)
    if failed:
        log.error("servers' logs kept in %s", work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    # A peer that cannot be installed here is reported and left out; anything else that failed is an error.
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
