"""The models store as the service sees it: validated, checksum-verified versions, with "latest" resolved.

`ModelStore.open(root)` scans the store once. A version that fails (bad manifest, name or version that does
not match its folder, missing file, wrong sha256, or a graph the runtime cannot load) is skipped with a logged
reason and recorded in `store.problems`; everything else serves. `reload()` rescans and swaps the whole
snapshot in one assignment, so a request sees either the old store or the new one, never a mix.

A version that served before a reload and now fails (its files damaged or rewritten on disk) keeps serving
the copy verified and loaded before, as Triton keeps a loaded model whose reload fails: its problem says so
(`serving: "previous"`). Removing its folder unpublishes it; a restart loads only what verifies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from service.store.layout import (
    MANIFEST_NAME,
    model_names,
    parse_version,
    sha256_file,
    version_dir,
    version_numbers,
)
from service.store.manifest import Manifest, is_valid_model_name

log = logging.getLogger(__name__)

class UnknownModel(LookupError):
    """No served model or version by this name (the service answers 404). `versions` lists what there is."""

    def __init__(self, detail: str, model: str, versions: list[int] | None = None) -> None:
        super().__init__(detail)
        self.detail, self.model, self.versions = detail, model, versions


#: Called for every version that passed manifest and checksum checks; raising rejects the version.
#: The runtime uses it to create its inference sessions at open time.
VersionCheck = Callable[["ModelVersion"], None]


@dataclass(frozen=True)
class ModelVersion:
    """One published, verified version of a model."""

    manifest: Manifest
    path: Path  # models_store/<name>/<version>

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    def file(self, name: str) -> Path:
        return self.path / name


@dataclass(frozen=True)
class StoreProblem:
    model: str
    version: int | None
    reason: str
    #: True when the version still serves the copy loaded before this scan (see the module docstring).
    serving_previous: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "version": self.version, "reason": self.reason,
                "serving": "previous" if self.serving_previous else None}


@dataclass(frozen=True)
class _Snapshot:
    models: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)
    problems: tuple[StoreProblem, ...] = ()


def _load_version(root: Path, name: str, version: int) -> ModelVersion:
    """Validate one version folder; raise ValueError with a human reason when it is not servable."""
    vdir = version_dir(root, name, version)
    mpath = vdir / MANIFEST_NAME
    if not mpath.is_file():
        raise ValueError(f"no {MANIFEST_NAME}")
    try:
        manifest = Manifest.model_validate_json(mpath.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ValueError(
            f"manifest does not validate ({exc.error_count()} errors; first: {loc}: {first['msg']})"
        ) from exc
    if manifest.name != name:
        raise ValueError(f"manifest name {manifest.name!r} does not match folder {name!r}")
    if manifest.version != version:
        raise ValueError(f"manifest version {manifest.version} does not match folder {version}")
    for fname, expected in manifest.files.items():
        fpath = vdir / fname
        if not fpath.is_file():
            raise ValueError(f"missing file {fname!r}")
        actual = sha256_file(fpath)
        if actual != expected:
            raise ValueError(
                f"sha256 mismatch for {fname!r}: manifest {expected[:12]}..., file {actual[:12]}..."
            )
    return ModelVersion(manifest=manifest, path=vdir)


def relative_reason(exc: BaseException, root: Path) -> str:
    """Why a version failed, naming files by their store-relative path: the reason is shown to API clients,
    who must not learn where the store lives (an OSError's message carries the absolute file name, and
    onnxruntime's messages carry the path of the graph it could not load)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        reason = f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    else:
        reason = str(exc) or type(exc).__name__
    for prefix in {str(root.resolve()), str(root.absolute()), str(root)}:
        if prefix not in (".", ""):
            reason = reason.replace(prefix.rstrip("/") + "/", "").replace(prefix, ".")
    return reason


def _scan(root: Path, check: VersionCheck | None, previous: _Snapshot | None = None) -> _Snapshot:
    models: dict[str, dict[int, ModelVersion]] = {}
    problems: list[StoreProblem] = []
    before = previous.models if previous is not None else {}
    for name in model_names(root):
        for v in version_numbers(root / name):
            try:
                mv = _load_version(root, name, v)
                if check is not None:
                    check(mv)
            except Exception as exc:  # any failure rejects this version only; the rest still serves
                reason = relative_reason(exc, root)
                kept = before.get(name, {}).get(v)
                if kept is not None:  # it served until now: keep the copy that was verified and loaded
                    log.error("store: %s/%s on disk now fails (%s); still serving the copy loaded before",
                              name, v, reason)
                    problems.append(StoreProblem(name, v, reason, serving_previous=True))
                    models.setdefault(name, {})[v] = kept
                    continue
                log.warning("store: skipping %s/%s: %s", name, v, reason)
                problems.append(StoreProblem(name, v, reason))
                continue
            models.setdefault(name, {})[v] = mv
    log.info(
        "store %s: %d models, %d versions, %d problems",
        root,
        len(models),
        sum(len(vs) for vs in models.values()),
        len(problems),
    )
    return _Snapshot(models=models, problems=tuple(problems))


class ModelStore:
    """Read-only view of a models store root. Thread-safe: readers take one snapshot reference."""

    def __init__(self, root: Path, check: VersionCheck | None = None) -> None:
        self.root = Path(root)
        self._check = check
        self._snap = _Snapshot()
        self._reload_lock = threading.Lock()

    @classmethod
    def open(cls, root: Path | str, check: VersionCheck | None = None) -> ModelStore:
        """Scan `root` now. FileNotFoundError if it is not a directory: a typo must not serve nothing."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"models store {root} is not a directory")
        store = cls(root, check)
        store.reload()
        return store

    def reload(self) -> ModelStore:
        """Rescan the root and swap the snapshot atomically; a served version that now fails keeps serving."""
        with self._reload_lock:
            self._snap = _scan(self.root, self._check, self._snap)
        return self

    # --- queries ------------------------------------------------------------------------------
    @property
    def problems(self) -> list[dict[str, object]]:
        return [p.as_dict() for p in self._snap.problems]

    def names(self) -> list[str]:
        return sorted(self._snap.models)

    def versions(self, name: str) -> list[int]:
        return sorted(self._versions_of(name))

    def all_versions(self) -> list[ModelVersion]:
        snap = self._snap
        return [snap.models[n][v] for n in sorted(snap.models) for v in sorted(snap.models[n])]

    def latest(self, name: str) -> ModelVersion:
        vs = self._versions_of(name)
        return vs[max(vs)]

    def get(self, name: str, version: int | str | None = None) -> ModelVersion:
        """A version by number (or its text under `layout.VERSION_RE`), or the latest when `version` is None
        or "latest". Anything else is unknown: "01", "１" and "²" are not versions."""
        vs = self._versions_of(name)
        if version is None or version == "latest":
            return vs[max(vs)]
        number = parse_version(version) if isinstance(version, str) else version
        if number not in vs:
            shown = repr(version)[:40]
            raise UnknownModel(f"model {name!r} has no version {shown}; versions: {sorted(vs)} or 'latest'",
                               model=name, versions=sorted(vs))
        return vs[number]

    def _versions_of(self, name: str) -> dict[int, ModelVersion]:
        # A served model's name was validated when its folder was scanned, so a hit needs no check. A miss is
        # validated before it is echoed, so a hostile name never reaches the logs or the answer unescaped.
        vs = self._snap.models.get(name)
        if vs:
            return vs
        if not is_valid_model_name(name):
            raise UnknownModel(
                f"{name[:80]!r} is not a valid model name (lowercase letters, digits and single hyphens)",
                model=name[:80],
            )
        raise UnknownModel(f"model {name!r} not found; see GET /v1/models", model=name)
