"""Export every graph of a family to ONNX (opset 17, dynamic batch) and TorchScript, then gate on parity.

The parity gate runs onnxruntime and torch on the same inputs -- random ones and real data, at batch 1 and
at a larger batch -- and refuses (ParityError) when any output differs by more than PARITY_ATOL. The
TorchScript twin is checked the same way. The measured maximum differences go into the manifest metrics.

A spatial graph (fully convolutional, `GraphExport.spatial`) has dynamic H and W as well as the batch, so
one graph runs on a crop or a whole photo; its parity is checked at the export size and at OTHER_SIZES
more (other shapes, not square), and its TensorSpecs carry -1 for H and W.

A labelled graph (a conditional family's, `GraphExport.num_classes` > 0) has a second input, the one-hot
label y (B, K), dynamic in its batch too; its parity cases pair random inputs with random one-hot labels,
real images (or their codes) with their real labels, and add a soft label (two classes half and half).

Exporter: torch 2.13's default ONNX exporter is the torch.export ("dynamo") one; it takes ~3 s per graph
here against ~0.1 s for the TorchScript-based one, which still works (deprecated). We use the fast one and
fall back to dynamo if it fails; either way the parity gate decides. torch.jit.trace works in 2.13
(deprecated but functional), so every graph gets a TorchScript twin.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.store.manifest import GraphSpec, TensorSpec
from training.models.base import GenerativeModel, GraphExport
from training.models.conditional import encode

log = logging.getLogger(__name__)

OPSET = 17
PARITY_ATOL = 1e-4
RANDOM_BATCHES = (1, 7)
REAL_BATCHES = (1, 32)
#: Spatial graphs: (H, W) of the extra random cases, in multiples of the graph's own size multiple added to
#: its export size: one taller, one wider and larger.
OTHER_SIZES = ((1, 0), (2, 5))


class ExportError(RuntimeError):
    """A graph could not be exported."""


class ParityError(ExportError):
    """onnxruntime (or TorchScript) disagrees with torch beyond the tolerance: publishing is refused."""


#: A graph's inputs, in order: (x or z,) or, for a labelled graph, (x or z, y).
Inputs = tuple[Tensor, ...]


@dataclass(frozen=True)
class Exported:
    graphs: dict[str, GraphSpec]
    metrics: dict[str, float | str]


def _outputs(module: nn.Module, xs: Inputs) -> list[Tensor]:
    with torch.no_grad():
        out = module(*xs)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _onnx_export(module: nn.Module, examples: Inputs, path: Path, g: GraphExport) -> str:
    """Write one ONNX file with a dynamic batch dimension (and H, W for a spatial graph); returns the
    exporter used."""
    labels = set(g.input_names[1:2]) if g.num_classes else set()  # (B, K): only the batch is dynamic
    names = [*g.input_names, *g.output_names]
    # H and W are named per tensor: an encoder's output is 2**k times smaller than its input
    axes = {n: {0: "batch", **({2: f"{n}_height", 3: f"{n}_width"} if g.spatial and n not in labels else {})}
            for n in names}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, examples, str(path), input_names=g.input_names,
                              output_names=g.output_names, opset_version=OPSET, dynamo=False,
                              dynamic_axes=axes)
        return "torchscript-onnx"
    except Exception as exc:  # noqa: BLE001 - any failure of the fast path falls back to dynamo
        log.warning("legacy ONNX export failed (%s); trying the dynamo exporter", exc)
    batch = torch.export.Dim("batch", min=1)
    shapes: dict[int, object] = {0: batch}
    if g.spatial:  # H and W are multiples of what the graph needs: the example's own size is one
        m = _multiple(module, examples[0])
        shapes[2] = m * torch.export.Dim("h", min=1)
        shapes[3] = m * torch.export.Dim("w", min=1)
    dynamic = (shapes, *({0: batch} for _ in examples[1:]))
    try:
        torch.onnx.export(module, examples, str(path), input_names=g.input_names,
                          output_names=g.output_names, opset_version=OPSET, dynamo=True, external_data=False,
                          dynamic_shapes=dynamic)
    except Exception as exc:
        raise ExportError(f"ONNX export of {path.name} failed: {exc}") from exc
    return "dynamo"


def _multiple(module: nn.Module, example: Tensor) -> int:
    """The size multiple of a spatial graph's input: the model's 2 ** depth for an image, 1 for a code."""
    model = getattr(module, "model", None)
    cfg = getattr(model, "cfg", None)
    if cfg is None or tuple(example.shape[1:]) != tuple(cfg.input_shape):
        return 1
    return int(cfg.multiple)


def _torchscript_export(module: nn.Module, examples: Inputs, path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, examples, check_trace=False)
            # Freezing inlines the weights the graph uses and drops the rest (an encoder wrapper holds the
            # whole model, decoder included).
            torch.jit.save(torch.jit.freeze(traced.eval()), str(path))
        return True
    except Exception as exc:  # noqa: BLE001 - TorchScript is an optional twin
        log.warning("TorchScript export of %s failed, publishing ONNX only: %s", path.name, exc)
        path.unlink(missing_ok=True)
        return False


def _session(path: Path):  # noqa: ANN202 - onnxruntime is imported lazily
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the CPU is shared; parity needs no speed
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity_inputs(name: str, g: GraphExport, model: GenerativeModel, real_images: np.ndarray | None,
                  seed: int = 0, real_labels: np.ndarray | None = None) -> list[tuple[str, Inputs]]:
    """Labelled input tuples for one graph: random at batch 1 and >1, and real data (images, or the codes of
    real images for a graph that eats codes) at batch 1 and >1; for a labelled graph each with a one-hot
    label (the real labels for real data, when given), and a soft label case."""
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(g.example.shape[1:])
    is_image = shape == tuple(model.cfg.input_shape)
    k = g.num_classes or model.num_classes

    def draw(*size: int) -> Tensor:
        return torch.rand(*size, generator=gen) if is_image else torch.randn(*size, generator=gen)

    def labels(n: int) -> Tensor:  # (n, K) one-hot of random classes
        return F.one_hot(torch.randint(k, (n,), generator=gen), k).float()

    cases = [(f"random[{b}]", draw(b, *shape)) for b in RANDOM_BATCHES]
    if g.spatial:  # the same graph at other sizes: H and W are dynamic
        c, h, w = shape
        m = model.cfg.multiple if is_image else 1
        for dh, dw in OTHER_SIZES:
            hh, ww = h + dh * m, w + dw * m
            cases.append((f"random[2, {hh}x{ww}]", draw(2, c, hh, ww)))
    real_y: Tensor | None = None  # (N, K) one-hot labels of the real images
    if real_images is not None and len(real_images):
        imgs = torch.from_numpy(np.ascontiguousarray(real_images[: max(REAL_BATCHES)]))
        if k:
            real_y = (F.one_hot(torch.from_numpy(real_labels[: len(imgs)]).long(), k).float()
                      if real_labels is not None else labels(len(imgs)))
        real: Tensor | None = None
        if is_image:
            real = imgs
        elif shape[0] == model.cfg.latent_dim and (len(shape) == 1 or g.spatial):
            with torch.no_grad():
                real = encode(model, imgs, real_y)
        if real is not None:
            cases += [(f"real[{min(b, len(real))}]", real[:b]) for b in REAL_BATCHES]
    if not g.num_classes:
        return [(label, (x,)) for label, x in cases]
    out = [(label, (x, real_y[:len(x)] if label.startswith("real") and real_y is not None
                    else labels(len(x)))) for label, x in cases]
    soft = 0.5 * labels(4) + 0.5 * labels(4)  # two classes half and half (or one, when both draws agree)
    return [*out, ("soft-label[4]", (draw(4, *shape), soft))]


def check_parity(name: str, module: nn.Module, onnx_path: Path, ts_path: Path | None,
                 cases: list[tuple[str, Inputs]], atol: float = PARITY_ATOL) -> tuple[float, float | None]:
    """Max abs difference of onnxruntime (and TorchScript) against torch over `cases`; raises ParityError."""
    sess = _session(onnx_path)
    feeds = [i.name for i in sess.get_inputs()]
    ts = torch.jit.load(str(ts_path)) if ts_path is not None else None
    onnx_max, ts_max = 0.0, (0.0 if ts is not None else None)
    for label, xs in cases:
        ref = [o.numpy() for o in _outputs(module, xs)]
        got = sess.run(None, {n: x.numpy() for n, x in zip(feeds, xs, strict=True)})
        if len(got) != len(ref):
            raise ParityError(f"{name}: onnx has {len(got)} outputs, torch {len(ref)}")
        for r, o in zip(ref, got, strict=True):
            if r.shape != o.shape:
                raise ParityError(f"{name} on {label}: onnx output shape {o.shape} != torch {r.shape}")
            diff = float(np.max(np.abs(r - o))) if r.size else 0.0
            onnx_max = max(onnx_max, diff)
            if not diff <= atol:
                raise ParityError(
                    f"{name} on {label}: onnxruntime differs from torch by {diff:.3g} > {atol:g}")
        if ts is not None:
            with torch.no_grad():
                out = ts(*xs)
            got_ts = [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]
            for r, o in zip(ref, got_ts, strict=True):
                diff = float(np.max(np.abs(r - o))) if r.size else 0.0
                ts_max = max(ts_max or 0.0, diff)
                if not diff <= atol:
                    raise ParityError(
                        f"{name} on {label}: TorchScript differs from torch by {diff:.3g} > {atol:g}")
    return onnx_max, ts_max


def _spec_shape(shape: torch.Size, spatial: bool) -> list[int]:
    """A TensorSpec shape: -1 for the batch, and for H and W of a spatial graph."""
    dims = [-1, *shape[1:]]
    if spatial:
        dims[2:4] = [-1, -1]
    return dims


def export_model(model: GenerativeModel, out_dir: Path, real_images: np.ndarray | None = None,
                 torchscript: bool = True, real_labels: np.ndarray | None = None) -> Exported:
    """Export every graph of `model` into `out_dir` (CPU, eval mode) and pass the parity gate; a conditional
    model's real parity cases take `real_labels` (int (N,), beside `real_images`)."""
    model.cpu().eval()
    graphs = model.export_graphs()
    specs: dict[str, GraphSpec] = {}
    onnx_max, ts_max = 0.0, 0.0
    exporters = set()
    for name, g in graphs.items():
        module = g.module.eval()
        examples = tuple(e.detach().cpu() for e in g.examples())
        onnx_path, ts_path = out_dir / f"{name}.onnx", out_dir / f"{name}.pt"
        exporters.add(_onnx_export(module, examples, onnx_path, g))
        has_ts = torchscript and _torchscript_export(module, examples, ts_path)
        cases = parity_inputs(name, g, model, real_images, real_labels=real_labels)
        o, t = check_parity(name, module, onnx_path, ts_path if has_ts else None, cases)
        onnx_max, ts_max = max(onnx_max, o), max(ts_max, t or 0.0)
        outs = _outputs(module, examples)
        specs[name] = GraphSpec(
            file=onnx_path.name, torchscript=ts_path.name if has_ts else None,
            inputs=[TensorSpec(name=n, shape=_spec_shape(e.shape, g.spatial and e.ndim == 4))
                    for n, e in zip(g.input_names, examples, strict=True)],
            outputs=[TensorSpec(name=n, shape=_spec_shape(o.shape, g.spatial))
                     for n, o in zip(g.output_names, outs, strict=True)],
        )
    metrics: dict[str, float | str] = {
        "parity_onnx_max_abs_diff": onnx_max, "parity_torchscript_max_abs_diff": ts_max,
        "parity_atol": PARITY_ATOL, "onnx_opset": OPSET, "onnx_exporter": ",".join(sorted(exporters)),
    }
    return Exported(specs, metrics)
