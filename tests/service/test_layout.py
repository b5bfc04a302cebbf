"""The architecture, as the imports show it (issue 14): the store contract depends on nothing above it, the
domain never imports the HTTP boundary or a web framework, and the service uses no private name of the
libraries it is built on."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
#: The domain: runtime, batching, operations, images, errors, metrics, settings. The boundary is service.http,
#: the protocol adapters service.api, service.v2 and service.grpc; the contract service.store.
DOMAIN = ["errors.py", "ops.py", "runtime.py", "batching.py", "images.py", "metrics.py", "settings.py",
          "anomaly.py", "spatial.py"]
WEB = ("fastapi", "starlette", "uvicorn", "grpc", "service.http", "service.api", "service.v2", "service.grpc",
       "service.app")


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (lazy imports inside functions too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", sorted((SERVICE / "store").glob("*.py")), ids=lambda p: p.name)
def test_the_store_contract_imports_nothing_outside_itself(path: Path) -> None:
    ours = {m for m in imports(path) if _under(m, ("service", "training"))}
    assert all(_under(m, ("service.store",)) for m in ours), sorted(ours)
    third_party = {m.split(".")[0] for m in imports(path)} - set(sys.stdlib_module_names)
    assert third_party <= {"numpy", "pydantic", "service"}, third_party


@pytest.mark.parametrize("name", DOMAIN)
def test_the_domain_never_imports_the_boundary(name: str) -> None:
    bad = sorted(m for m in imports(SERVICE / name) if _under(m, WEB))
    assert not bad, f"service/{name} imports {bad}"


def test_the_store_loads_with_pydantic_and_numpy_alone() -> None:
    code = ("import sys\n"
            "for m in ('fastapi', 'starlette', 'onnxruntime', 'PIL', 'torch'): sys.modules[m] = None\n"
            "import service.store.repository, service.store.scores, service.store.schema\n"
            "import service.errors\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_no_private_names_of_fastapi_or_onnxruntime() -> None:
    pattern = re.compile(r"noqa: SLF001|fastapi\.dependencies|fastapi\._|_embed_body_fields|\._sess\b|"
                         r"[\"']_sess[\"']|\._body\b")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in SERVICE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)


def test_service_never_imports_training_or_torch_eagerly() -> None:
    for path in SERVICE.rglob("*.py"):
        top = ast.parse(path.read_text()).body  # module level only: the TorchScript backend imports lazily
        names = {m for node in top for m in imports_of(node)}
        assert not {m for m in names if _under(m, ("training", "torch"))}, path


def imports_of(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return {node.module}
    return set()


def test_a_v1_body_is_parsed_in_one_place() -> None:
    """Only the operations table validates request JSON (forms: their JSON fields); only the V2 codec reads
    the V2 request (through its pydantic model). Nothing else in the service parses JSON, but the store's
    manifests."""
    parsers = re.compile(r"validate_json|json\.loads|orjson\.loads|from_json\(")
    where = sorted({str(p.relative_to(ROOT)) for p in SERVICE.rglob("*.py")
                    if parsers.search(p.read_text())})
    assert where == ["service/http/forms.py", "service/http/table.py", "service/store/manifest.py",
                     "service/store/repository.py", "service/v2/codec.py"], where
