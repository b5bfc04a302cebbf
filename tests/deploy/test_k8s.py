"""The Kubernetes example parses, and its probes, ports, env, user and volumes agree with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from deploykit import REPO, app_get_paths

from service.http.access import classify
from service.settings import Settings

yaml = pytest.importorskip("yaml", reason="pyyaml (dev extra) parses the manifests")
K8S = REPO / "deploy" / "k8s"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def _one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def container(docs: list[dict]) -> dict:
    [c] = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def _env(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c["env"]}


def _port(c: dict, ref: int | str) -> int:
    for p in c["ports"]:
        if ref in (p.get("name"), p["containerPort"]):
            return int(p["containerPort"])
    raise AssertionError(f"port {ref!r} is not a container port")


def test_every_manifest_has_api_version_kind_and_name(docs: list[dict]) -> None:
    assert {d["kind"] for d in docs} >= {"Deployment", "Service"}
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]


def test_deployment_replicas_and_selector(docs: list[dict]) -> None:
    dep = _one(docs, "Deployment")
    assert dep["apiVersion"] == "apps/v1"
    assert dep["spec"]["replicas"] >= 2
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_probes_hit_real_open_routes_on_the_served_port(container: dict, tmp_path: Path) -> None:
    routes = app_get_paths(tmp_path)
    env = _env(container)
    served = int(env["LATENTSERVE_PORT"]["value"])
    assert env["LATENTSERVE_HOST"]["value"] == "0.0.0.0"
    probes = {k: container[k] for k in ("readinessProbe", "livenessProbe", "startupProbe") if k in container}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health/live"
    for name, probe in probes.items():
        path = probe["httpGet"]["path"]
        assert path in routes, f"{name}: {path} is not a GET route of the app"
        assert classify(path) == "open", f"{name}: {path} must not need an API key"
        assert _port(container, probe["httpGet"]["port"]) == served


def test_service_targets_the_container_ports(docs: list[dict], container: dict) -> None:
    svc, dep = _one(docs, "Service"), _one(docs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(ports) == {"http", "grpc"}
    env = _env(container)
    assert _port(container, ports["http"]["targetPort"]) == int(env["LATENTSERVE_PORT"]["value"])
    assert _port(container, ports["grpc"]["targetPort"]) == int(env["LATENTSERVE_GRPC_PORT"]["value"])


def test_grpc_is_served_and_exposed(docs: list[dict], container: dict) -> None:
    """The gRPC Open Inference Protocol: a container port of its own, the setting that serves it there (a
    valid one, apart from HTTP's), and a Service port that says it speaks HTTP/2 cleartext."""
    env = _env(container)
    grpc_port = int(env["LATENTSERVE_GRPC_PORT"]["value"])
    assert _port(container, "grpc") == grpc_port != int(env["LATENTSERVE_PORT"]["value"])
    Settings(port=int(env["LATENTSERVE_PORT"]["value"]), grpc_port=grpc_port)
    [svc_port] = [p for p in _one(docs, "Service")["spec"]["ports"] if p["name"] == "grpc"]
    assert svc_port["protocol"] == "TCP" and svc_port["appProtocol"] == "kubernetes.io/h2c"


def test_resources_and_non_root(docs: list[dict], container: dict) -> None:
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    sc = pod["securityContext"]
    uid = re.search(r"--uid (\d+)", (REPO / "Dockerfile").read_text())
    assert sc["runAsNonRoot"] is True and uid and sc["runAsUser"] == int(uid.group(1)) != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["terminationGracePeriodSeconds"] >= 10  # time for the drain on SIGTERM


def test_store_is_mounted_read_only_where_the_service_reads(docs: list[dict], container: dict) -> None:
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    env = _env(container)
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert mount["readOnly"] is True and mount["mountPath"] == env["LATENTSERVE_STORE"]["value"]
    [vol] = [v for v in pod["volumes"] if v["name"] == "models"]
    claim = vol["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claim["claimName"] in pvcs
    assert float(env["LATENTSERVE_RELOAD_INTERVAL_S"]["value"]) > 0


def test_env_names_are_real_settings(container: dict) -> None:
    known = {f"LATENTSERVE_{n.upper()}" for n in Settings.model_fields}
    assert set(_env(container)) <= known
