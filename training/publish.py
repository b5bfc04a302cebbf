"""Atomic publish into the models store.

    with Staging(store, "vae-digits") as stage:      # models_store/vae-digits/.staging-<uuid>/
        ... write files into stage.path ...
        version_dir = stage.commit(make_manifest)    # sha256 every file, write manifest.json last,
                                                     # fsync, rename to models_store/vae-digits/<N>/

A reader never sees a partial version: everything is written beside the target and renamed into place in
one step, and `service.store.layout.version_numbers` ignores staging folders. The version number is
allocated under an fcntl lock on `<model>/.lock` (max existing + 1), and if a folder of that number
appears anyway (a writer that does not take the lock) the next number is tried. Any exception before the
rename removes the staging folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from service.store.layout import MANIFEST_NAME, STAGING_PREFIX, sha256_file, version_numbers
from service.store.manifest import Manifest, is_valid_model_name

log = logging.getLogger(__name__)

#: (version, {file: sha256}) -> the manifest to write for that version.
ManifestFactory = Callable[[int, dict[str, str]], Manifest]
LOCK_NAME = ".lock"
MAX_ATTEMPTS = 100


class PublishError(RuntimeError):
    """Publishing failed; nothing was published."""


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _model_lock(model_dir: Path) -> Iterator[None]:
    with open(model_dir / LOCK_NAME, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Staging:
    """A staging folder for one new version of `name` in the store at `root`."""

    def __init__(self, root: Path | str, name: str) -> None:
        if not is_valid_model_name(name):
            raise PublishError(f"invalid model name {name!r}")
        self.root = Path(root)
        self.name = name
        self.model_dir = self.root / name
        self.path = self.model_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        self.published: Path | None = None

    def __enter__(self) -> Staging:
        self.path.mkdir(parents=True)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.path.exists():  # not committed, or failed midway: leave nothing behind
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, make_manifest: ManifestFactory) -> Path:
        """Hash the staged files, write manifest.json last, fsync, rename into the next version folder."""
        files = sorted(p for p in self.path.iterdir() if p.name != MANIFEST_NAME)
        for p in files:
            if not p.is_file() or p.name.startswith("."):
                raise PublishError(f"staging folder holds something that is not a plain file: {p.name}")
            _fsync_path(p)
        hashes = {p.name: sha256_file(p) for p in files}
        with _model_lock(self.model_dir):
            version = (version_numbers(self.model_dir) or [0])[-1] + 1
            for _ in range(MAX_ATTEMPTS):
                target = self.model_dir / str(version)
                manifest = make_manifest(version, hashes)
                if manifest.version != version or manifest.files != hashes or manifest.name != self.name:
                    raise PublishError("manifest name, version or files do not match what is published")
                self._write_manifest(manifest)
                if target.exists():
                    version += 1
                    continue
                try:
                    os.rename(self.path, target)
                except OSError as exc:
                    if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        version += 1
                        continue
                    raise
                _fsync_path(self.model_dir)
                self.published = target
                log.info("published %s version %d at %s", self.name, version, target)
                return target
        raise PublishError(f"could not allocate a version for {self.name} after {MAX_ATTEMPTS} attempts")

    def _write_manifest(self, manifest: Manifest) -> None:
        path = self.path / MANIFEST_NAME
        text = manifest.model_dump_json(indent=2)
        Manifest.model_validate_json(text)  # what the service will do; fail here, not there
        tmp = self.path / f".{MANIFEST_NAME}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_path(self.path)


def remove_versions(root: Path | str, name: str) -> int:
    """Delete every published version (and stale staging folders) of one model; returns how many versions."""
    model_dir = Path(root) / name
    if not model_dir.is_dir():
        return 0
    with _model_lock(model_dir):
        versions = version_numbers(model_dir)
        for v in versions:
            shutil.rmtree(model_dir / str(v))
        for p in model_dir.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(p, ignore_errors=True)
    return len(versions)
