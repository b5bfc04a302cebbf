"""Export the models store as a Triton Inference Server model repository.

    python -m training export-triton --store models_store --out triton_repo

writes, for every graph of every model (each graph is one V2 model named `<model>.<graph>`, as our /v2 API
names it, so a tritonclient script works against either server unchanged):

    triton_repo/<model>.<graph>/config.pbtxt
    triton_repo/<model>.<graph>/<version>/model.onnx

Triton needs one I/O signature per model, so `config.pbtxt` follows the latest version and an older version is
exported beside it only when its graph has the same signature (otherwise it is skipped, with a warning).
It reads the store through `service.store` only (no torch), verifies every sha256 before copying, and swaps
each `<model>.<graph>` folder into place with a rename, so a Triton polling the repository never sees half
a model.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.store import MANIFEST_NAME, GraphSpec, Manifest, sha256_file, version_dir, version_numbers
from service.store.layout import model_names

log = logging.getLogger(__name__)

#: manifest dtype -> Triton data_type enum name (model_config.proto)
TRITON_DTYPES = {"float32": "TYPE_FP32"}


class ExportError(RuntimeError):
    """The store cannot be exported as asked; the message names the model and what is wrong."""


@dataclass(frozen=True)
class TritonOptions:
    """Knobs of the generated config.pbtxt (Triton's names, so operators recognise them)."""

    # the largest batch Triton may form (our graphs have a dynamic batch dim 0); 0: Triton does not batch,
    # dims then include the batch dim (-1) and there is no dynamic_batching block
    max_batch_size: int = 64
    max_queue_delay_us: int = 1000  # dynamic_batching: how long Triton waits to fill a batch
    all_versions: bool = True  # version_policy all (like our /versions/{v}); False: latest only

    def __post_init__(self) -> None:
        if self.max_batch_size < 0 or self.max_queue_delay_us < 0:
            raise ExportError(f"max_batch_size and max_queue_delay_us must be >= 0, got "
                              f"{self.max_batch_size} and {self.max_queue_delay_us}")


@dataclass(frozen=True)
class Exported:
    """One Triton model written: its name and the versions it holds."""

    name: str
    versions: tuple[int, ...]
    path: Path


def _signature(g: GraphSpec) -> tuple:
    return (tuple((t.name, t.dtype, tuple(t.shape[1:])) for t in g.inputs),
            tuple((t.name, t.dtype, tuple(t.shape[1:])) for t in g.outputs))


def _dims(shape: list[int], batching: bool) -> str:
    # Triton's dims exclude the batch dim when max_batch_size > 0, and are the whole shape when it is 0
    return ", ".join(str(d) for d in (shape[1:] if batching else shape))


def config_pbtxt(name: str, graph: GraphSpec, opts: TritonOptions) -> str:
    """The Triton ModelConfig, in protobuf text format, for one ONNX graph of the store."""
    def tensors(kind: str, specs: list) -> str:
        rows = [
            f'  {{\n    name: "{t.name}"\n    data_type: {TRITON_DTYPES[t.dtype]}\n'
            f"    dims: [ {_dims(t.shape, opts.max_batch_size > 0)} ]\n  }}"
            for t in specs
        ]
        return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"

    policy = "all: {}" if opts.all_versions else "latest: { num_versions: 1 }"
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {opts.max_batch_size}\n"
        + f"version_policy: {{ {policy} }}\n"
        + tensors("input", graph.inputs)
        + tensors("output", graph.outputs)
        + (f"dynamic_batching {{\n  max_queue_delay_microseconds: {opts.max_queue_delay_us}\n}}\n"
           if opts.max_batch_size > 0 else "")
    )


def _load(root: Path, name: str, version: int) -> Manifest:
    path = version_dir(root, name, version) / MANIFEST_NAME
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{name} v{version}: cannot read {path}: {exc}") from exc


def _check_graph(where: str, g: GraphSpec, m: Manifest, opts: TritonOptions) -> None:
    """Refuse what Triton would refuse at load, naming the model/version/graph (`where`)."""
    for t in (*g.inputs, *g.outputs):
        if t.dtype not in TRITON_DTYPES:
            raise ExportError(f"{where}: dtype {t.dtype!r} has no Triton type")
        if opts.max_batch_size > 0 and (not t.shape or t.shape[0] != -1):
            raise ExportError(f"{where}: tensor {t.name!r} needs a dynamic batch dim 0, got shape {t.shape}")
    if g.file not in m.files:
        raise ExportError(f"{where}: {g.file} has no sha256 in the manifest")


#: ONNX TensorProto elem_type -> manifest dtype
_ONNX_DTYPES = {1: "float32"}


def check_onnx_signature(where: str, path: Path, spec: GraphSpec) -> None:
    """Refuse a graph whose names, dtypes or fixed dims differ from the manifest (what config.pbtxt states).

    A symbolic ONNX dim (the batch, or a size the exporter did not fold to a constant) matches any size, as
    in Triton's own config check; the manifest's concrete size then goes into config.pbtxt. Skipped, with a
    debug line, when `onnx` is not installed (it is in the train extra).
    """
    try:
        import onnx
    except ModuleNotFoundError:
        log.debug("onnx not installed: %s signature not checked against the graph", where)
        return
    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    for kind, specs, values in (("input", spec.inputs, [i for i in g.input if i.name not in inits]),
                                ("output", spec.outputs, list(g.output))):
        if [t.name for t in specs] != [v.name for v in values]:
            raise ExportError(f"{where}: {kind}s are {[v.name for v in values]} in the graph, "
                              f"{[t.name for t in specs]} in the manifest")
        for t, v in zip(specs, values, strict=True):
            tt = v.type.tensor_type
            if _ONNX_DTYPES.get(tt.elem_type) != t.dtype:
                raise ExportError(f"{where}: {t.name} has ONNX elem_type {tt.elem_type}, manifest {t.dtype}")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            fixed_differ = len(dims) != len(t.shape) or any(
                a != b for a, b in zip(dims, t.shape, strict=True) if a != -1
            )
            if fixed_differ:
                raise ExportError(f"{where}: {t.name} has shape {dims} in the graph, "
                                  f"{t.shape} in the manifest")


def export_model_graph(
    root: Path, out: Path, name: str, graph_name: str, versions: list[int], opts: TritonOptions
) -> Exported:
    """Write one `<model>.<graph>` Triton model from the given store versions (latest last)."""
    latest = _load(root, name, versions[-1])
    spec = latest.graphs[graph_name]
    _check_graph(f"{name} v{versions[-1]} {graph_name}", spec, latest, opts)
    chosen: list[tuple[int, Path, str]] = []
    for v in versions if opts.all_versions else versions[-1:]:
        m = latest if v == versions[-1] else _load(root, name, v)
        g = m.graphs.get(graph_name)
        if g is None or _signature(g) != _signature(spec):
            log.warning("%s.%s: version %d skipped: its signature differs from latest v%d",
                        name, graph_name, v, versions[-1])
            continue
        _check_graph(f"{name} v{v} {graph_name}", g, m, opts)
        chosen.append((v, version_dir(root, name, v) / g.file, m.files[g.file]))

    triton_name = f"{name}.{graph_name}"
    staging = out / f".staging-{triton_name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        for v, src, sha in chosen:
            if sha256_file(src) != sha:
                raise ExportError(f"{name} v{v}: {src.name} does not match its sha256 in the manifest")
            check_onnx_signature(f"{name} v{v} {graph_name}", src, spec)
            (staging / str(v)).mkdir()
            shutil.copyfile(src, staging / str(v) / "model.onnx")
        (staging / "config.pbtxt").write_text(config_pbtxt(triton_name, spec, opts))
        target = out / triton_name
        if target.exists():
            old = out / f".old-{triton_name}-{uuid.uuid4().hex[:8]}"
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s versions %s", triton_name, [v for v, _, _ in chosen])
    return Exported(triton_name, tuple(v for v, _, _ in chosen), out / triton_name)


def export_repository(
    store: Path, out: Path, opts: TritonOptions = TritonOptions(), models: list[str] | None = None
) -> list[Exported]:
    """Export every (or the named) model of the store into a Triton model repository at `out`."""
    names = model_names(store)
    if models:
        unknown = sorted(set(models) - set(names))
        if unknown:
            raise ExportError(f"not in the store {store}: {', '.join(unknown)}")
        names = [n for n in names if n in models]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write the repository at {out}: {exc.strerror or exc}") from exc
    done: list[Exported] = []
    for name in names:
        versions = version_numbers(store / name)
        if not versions:
            log.warning("%s: no published version, skipped", name)
            continue
        latest = _load(store, name, versions[-1])
        for graph_name in sorted(latest.graphs):
            done.append(export_model_graph(store, out, name, graph_name, versions, opts))
    if not done:
        raise ExportError(f"nothing to export: no published model in {store}")
    return done


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `export-triton` subcommand's flags."""
    d = TritonOptions()
    p.add_argument("--store", type=Path, default=Path("models_store"), help="models store to read")
    p.add_argument("--out", type=Path, required=True, help="Triton model repository to write")
    p.add_argument("--model", action="append", dest="models", help="export only this model (repeatable)")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    p.add_argument("--max-queue-delay-us", type=int, default=d.max_queue_delay_us)
    p.add_argument("--latest-only", action="store_true", help="one version per model (version_policy latest)")


def run(args: argparse.Namespace) -> int:
    """Entry point of `python -m training export-triton`."""
    try:
        opts = TritonOptions(max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
                             all_versions=not args.latest_only)
        done = export_repository(args.store, args.out, opts, args.models)
    except ExportError as exc:
        log.error("%s", exc)
        return 1
    for e in done:
        log.info("%s -> %s (versions %s)", e.name, e.path, ",".join(map(str, e.versions)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m training.triton`, for when the `training` CLI is not the entry point."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m training export-triton", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


def register_cli(cli: Any) -> None:
    """Add `export-triton` to `python -m training`: its CLI calls this on each plugin it loads (see PLUGINS
    there), whether or not this module was imported before (tests, scripts). Importing this module does not
    import the CLI."""
    cli.register("export-triton", cli.Command(
        "export the store as a Triton model repository (config.pbtxt + model.onnx per graph)",
        add_arguments, run))


if __name__ == "__main__":
    raise SystemExit(main())
