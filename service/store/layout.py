"""Where things live in the models store, and how files are checked. Shared by the writer and the reader.

    models_store/<model>/<version>/manifest.json      version = 1, 2, 3 ...
    models_store/<model>/.staging-*/                   a publish in progress (never read)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from service.store.manifest import is_valid_model_name

MANIFEST_NAME = "manifest.json"
STAGING_PREFIX = ".staging-"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_names(root: Path) -> list[str]:
    """Model folders under the store root whose names are valid (others are ignored)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and is_valid_model_name(p.name))


def version_numbers(model_dir: Path) -> list[int]:
    """Published version numbers of one model, ascending. Staging folders and junk are ignored."""
    if not model_dir.is_dir():
        return []
    out = []
    for p in model_dir.iterdir():
        if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"):
            out.append(int(p.name))
    return sorted(out)


def version_dir(root: Path, name: str, version: int) -> Path:
    return root / name / str(version)
