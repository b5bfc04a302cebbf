"""No pickle on any load path: ONNX and TorchScript only, and `weights_only=True` for torch checkpoints.

A static check over every module in service/ and training/: unpickling runs arbitrary code, so one stray
`torch.load(path)` would turn "load a model file" into "run whatever the file says".
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "training")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
UNSAFE_CALLS = {"read_pickle", "to_pickle"}  # pandas


def sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert files, "no sources found"
    return files


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def problems_in(source: str, filename: str = "<src>") -> list[str]:
    """Every unsafe-deserialisation site in one module's source."""
    out: list[str] = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [f"line {node.lineno}: import {a.name}" for a in node.names
                    if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in UNSAFE_MODULES:
            out.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            attr = node.func.attr
            if attr == "load" and owner_name == "torch" and not _is_true(_kw(node, "weights_only")):
                out.append(f"line {node.lineno}: torch.load without weights_only=True")
            if attr == "load" and owner_name in {"np", "numpy"} and _is_true(_kw(node, "allow_pickle")):
                out.append(f"line {node.lineno}: np.load(allow_pickle=True)")
            if attr in UNSAFE_CALLS:
                out.append(f"line {node.lineno}: {attr}")
    return out


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_has_no_unsafe_deserialisation(path: Path) -> None:
    assert problems_in(path.read_text(), str(path)) == []


def test_the_checker_catches_what_it_should() -> None:
    bad = (
        "import pickle\nfrom joblib import load\nimport torch, numpy as np\n"
        "torch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
        "import pandas as pd\npd.read_pickle(p)\n"
    )
    assert len(problems_in(bad)) == 6
    good = "import torch, numpy as np\ntorch.load(p, weights_only=True)\nnp.load(p)\ntorch.jit.load(p)\n"
    assert problems_in(good) == []
