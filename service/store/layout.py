"""Where things live in the models store, and how files are checked. Shared by the writer and the reader.

    models_store/<model>/<version>/manifest.json      version = 1, 2, 3 ...
    models_store/<model>/.staging-*/                   a publish in progress (never read)
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from service.store.manifest import is_valid_model_name

MANIFEST_NAME = "manifest.json"
STAGING_PREFIX = ".staging-"
#: How a version is written, in a folder name, a URL or a header: ASCII digits without a leading zero, at
#: most 9 (so it fits any int). `str.isdigit` is not the rule: it takes "²" and "١", which `int` refuses.
VERSION_RE = re.compile(r"[1-9][0-9]{0,8}")


def parse_version(text: str) -> int | None:
    """The version number `text` spells under VERSION_RE, else None ("01", "１", "²", "1.0", "-1", "0")."""
    return int(text) if VERSION_RE.fullmatch(text) else None


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
        v = parse_version(p.name)
        if v is not None and p.is_dir():
            out.append(v)
    return sorted(out)


def version_dir(root: Path, name: str, version: int) -> Path:
    return root / name / str(version)
