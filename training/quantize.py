"""Reduced-precision twins of a model's ONNX graphs for CPU serving: int8 (and fp16), beside the FP32 files.

    graphs, metrics = make_twins(folder, graphs, ("int8",), TwinData(train_x, val_x, ...))

Each twin is `<graph>.<precision>.onnx` in the same version folder, with the FP32 graph's inputs and outputs
(float32 at the boundary), listed in the manifest as `GraphSpec.twins[precision]` with its check. A
precision is published for all of a model's twinnable graphs (encoder, decoder, critic) or none: each graph's
output must stay within MIN_SNR_DB of FP32's, and an encoder + decoder's reconstruction within
MAX_PSNR_LOSS_DB of FP32's, on held-out images; a miss is logged and that precision is left out.

int8 is onnxruntime's static quantization in the QDQ format: weights int8 per output channel, activations
uint8 with MinMax ranges over a calibration set drawn from the TRAINING images only (what the VNNI u8s8
kernels take; the decoder is calibrated on the FP32 encoder's codes of those images). What the CPU execution
provider then runs in int8 was measured, not assumed (bench/results/quantized.md): QLinearConv, QGemm,
QLinearLeakyRelu, QLinearAdd and QLinearSigmoid do; three things do not, and a pass each makes them:

    ConvTranspose   has no int8 kernel on the CPU EP: DQ -> ConvTranspose -> Q runs in float, with the
                    dequantizing around it (slower than FP32). Before quantizing, a ConvTranspose whose kernel
                    is stride + 2 * pad (the usual k4 s2 p1 upsampler) becomes stride**2 phase Convs, then
                    a depth-to-space written as Transpose/Reshape in NHWC, which onnxruntime's layout pass
                    cancels against QLinearConv's own NHWC transposes: the same function (to float
                    rounding), and its Convs quantize. One with fewer than MIN_PHASE_CHANNELS output channels
                    stays a float ConvTranspose (excluded from quantization): a phase Conv that narrow is
                    slower in int8 than the float ConvTranspose (1-channel image heads).
    Pad             onnxruntime keeps DQ -> Pad -> Q in float; an edge/reflect Pad's output has its input's
                    scale, so the pass pads the uint8 tensor itself.
    Resize          the nearest x2 upsample runs on uint8 NHWC in a slow generic kernel (a quarter of a
                    decoder's time); the pass makes it Unsqueeze -> Expand -> Reshape on uint8 NHWC.

A Conv or Gemm with dot products shorter than MIN_REDUCTION (a first conv on one channel) stays float too:
measured slower in int8 (the conv VAE's encoder: 2.0x with it in int8, 2.3x without).

fp16: every float tensor inside the graph in float16 (onnxruntime.transformers.float16, inputs and outputs
kept float32). On an x86 CPU without AVX512-FP16, onnxruntime runs few fp16 kernels and inserts casts, so it
is slower than FP32 there (bench/results/quantized.md); it is offered for CPUs (and EPs) that gain.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from service.store import scores
from service.store.manifest import AnomalySpec, GraphSpec, TwinCheck, TwinPrecision, TwinSpec
from training.export import Exported

log = logging.getLogger(__name__)

#: Graphs a twin is made of: what each is calibrated and checked on follows from images (see `_feeds`).
TWINNABLE = ("encoder", "decoder", "critic")
#: Calibration images, at most (a seeded sample of the training images): MinMax ranges settle well before.
CALIBRATION_MAX = 256
BATCH = 32
#: A twin's first output against FP32's, on the check images: error power at most 1% of the signal's.
MIN_SNR_DB = 20.0
#: An encoder + decoder twin pair's reconstruction PSNR on the check images, at most this below FP32's.
MAX_PSNR_LOSS_DB = 0.5
#: A ConvTranspose with fewer output channels stays float (see the module docstring).
MIN_PHASE_CHANNELS = 8
#: A Conv or Gemm whose dot products are shorter than this stays float: int8 is slower there (an encoder's
#: first conv on a 1-channel image, 1 x 4 x 4; the conv decoder's Gemm from its 16 latents).
MIN_REDUCTION = 32


class QuantizeError(RuntimeError):
    """A twin could not be made (the graph, not the check: a check that misses leaves the twin out)."""


@dataclass(frozen=True)
class TwinData:
    """The images twins are made and checked with: calibration from the TRAINING split only, the check on
    held-out images (the validation split), both in the model's value range, (N, C, H, W) float32."""

    calibration: np.ndarray
    check: np.ndarray
    calibration_what: str  # in words, for the twin's `method`: e.g. "256 training crops of brick-upper"
    check_what: str  # e.g. "50 validation windows of brick-upper (held out)"
    value_range: tuple[float, float] = (0.0, 1.0)
    anomaly: AnomalySpec | None = None  # with it, the score's agreement with FP32's goes into the metrics


# --- sessions and feeds ------------------------------------------------------------------------------------
def session(path: Path, optimized: Path | None = None) -> Any:
    """An onnxruntime CPU session with the service's options (one thread, every graph optimisation); with
    `optimized`, the graph onnxruntime runs after its optimisations is written there."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run(sess: Any, x: np.ndarray, batch: int = BATCH) -> list[np.ndarray]:
    """Every output of a single-input session on x, in batches."""
    name = sess.get_inputs()[0].name
    parts = [sess.run(None, {name: np.ascontiguousarray(x[i:i + batch])}) for i in range(0, len(x), batch)]
    return [np.concatenate(p) for p in zip(*parts, strict=True)]


def _twinnable(graphs: dict[str, GraphSpec]) -> list[str]:
    """The graphs that get twins: single-input encoder, decoder (when there is an encoder to calibrate it
    with) and critic. A conditional graph (a label input) or another kind is left FP32, logged."""
    out = []
    for g, spec in graphs.items():
        if g not in TWINNABLE or len(spec.inputs) != 1 or (g == "decoder" and "encoder" not in graphs):
            log.info("twins: graph %r stays FP32 only (no calibration rule for it)", g)
            continue
        out.append(g)
    return out


def _feeds(folder: Path, graphs: dict[str, GraphSpec], images: np.ndarray) -> dict[str, np.ndarray]:
    """Each twinnable graph's input for `images`: the images, or for the decoder the FP32 encoder's code."""
    feeds = {g: images for g in _twinnable(graphs) if g != "decoder"}
    if "decoder" in _twinnable(graphs):
        feeds["decoder"] = run(session(folder / graphs["encoder"].file), images)[0]
    return feeds


# --- graph passes -------------------------------------------------------------------------------------------
def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in [*g.value_info, *g.input, *g.output]}


def _phase_kernel(w: np.ndarray, s: int, p: int, ry: int, rx: int) -> tuple[np.ndarray, list[int]]:
    """The Conv kernel (Cout, Cin, t, t) and pads of output phase (ry, rx) of a ConvTranspose with weight
    w (Cin, Cout, k, k), stride s, pad p, k = s + 2p, t = k / s. Output row s*q + r takes input rows
    q + off + i (i < t) with kernel rows (r + p) % s + s * (t - 1 - i), off = (r + p) // s - (t - 1)."""
    t = w.shape[2] // s
    offs, taps = [], []
    for r in (ry, rx):
        offs.append((r + p) // s - (t - 1))
        taps.append([(r + p) % s + s * (t - 1 - i) for i in range(t)])
    k = w[:, :, taps[0], :][:, :, :, taps[1]].transpose(1, 0, 2, 3)  # (Cout, Cin, t, t)
    pads = [-offs[0], -offs[1], t - 1 + offs[0], t - 1 + offs[1]]
    return np.ascontiguousarray(k), pads


def _depth_to_space_nhwc(x: str, out: str, name: str, s: int, c: int, h: int, w: int,
                         inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """DepthToSpace (DCR, block s) of x (N, s*s*c, h, w) as NHWC Transpose/Reshape/Transpose/Reshape, then
    back to NCHW: onnxruntime's layout pass cancels the outer transposes against an NHWC QLinearConv's."""
    inits += [numpy_helper.from_array(np.array([0, h, w, s, s, c], np.int64), f"{name}_shape6"),
              numpy_helper.from_array(np.array([-1, h * s, w * s, c], np.int64), f"{name}_shape4")]
    return [helper.make_node("Transpose", [x], [f"{name}_nhwc"], perm=[0, 2, 3, 1], name=f"{name}_t0"),
            helper.make_node("Reshape", [f"{name}_nhwc", f"{name}_shape6"], [f"{name}_6d"],
                             name=f"{name}_r6"),
            helper.make_node("Transpose", [f"{name}_6d"], [f"{name}_6t"], perm=[0, 1, 3, 2, 4, 5],
                             name=f"{name}_t6"),
            helper.make_node("Reshape", [f"{name}_6t", f"{name}_shape4"], [f"{name}_up"], name=f"{name}_r4"),
            helper.make_node("Transpose", [f"{name}_up"], [out], perm=[0, 3, 1, 2], name=f"{name}_t1")]


def phase_conv_transposes(model: onnx.ModelProto) -> tuple[int, list[str]]:
    """Rewrite each ConvTranspose that fits (kernel = stride + 2 * pad, square, one group, no dilation or
    output padding, >= MIN_PHASE_CHANNELS outputs, known input H and W) as phase Convs + NHWC
    depth-to-space. Returns (how many were rewritten, the names of the ConvTransposes left as they are)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    shapes = _static_shapes(model)
    nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    done, kept = 0, []
    for n in g.node:
        if n.op_type != "ConvTranspose":
            nodes.append(n)
            continue
        a = _attrs(n)
        w = numpy_helper.to_array(inits[n.input[1]]) if n.input[1] in inits else None
        shape = shapes.get(n.input[0], [])
        s, p = list(a.get("strides", [1, 1])), list(a.get("pads", [0, 0, 0, 0]))
        fits = (w is not None and w.ndim == 4 and w.shape[2] == w.shape[3] and len(shape) == 4
                and None not in shape[2:] and a.get("group", 1) == 1 and s[0] == s[1] > 1
                and set(p) == {p[0]} and w.shape[2] == s[0] + 2 * p[0] and w.shape[2] % s[0] == 0
                and not any(a.get("output_padding", [0])) and set(a.get("dilations", [1])) == {1}
                and "output_shape" not in a and w.shape[1] >= MIN_PHASE_CHANNELS)
        if not fits or w is None:
            nodes.append(n)
            kept.append(n.name)
            continue
        stride, pad, cout, name = s[0], p[0], w.shape[1], n.name or n.output[0]
        bias = (numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2]
                else np.zeros(cout, w.dtype))
        phases: list[str] = []
        for ry in range(stride):
            for rx in range(stride):
                k, pads = _phase_kernel(w, stride, pad, ry, rx)
                i = len(phases)
                new_inits += [numpy_helper.from_array(k, f"{name}_phase{i}_w"),
                              numpy_helper.from_array(bias, f"{name}_phase{i}_b")]
                phases.append(f"{name}_phase{i}")
                ins = [n.input[0], f"{name}_phase{i}_w", f"{name}_phase{i}_b"]
                nodes.append(helper.make_node("Conv", ins, [phases[-1]], kernel_shape=list(k.shape[2:]),
                                              pads=pads, name=f"{name}_phase{i}"))
        nodes.append(helper.make_node("Concat", phases, [f"{name}_phases"], axis=1, name=f"{name}_cat"))
        h, wd = shape[2], shape[3]
        assert h is not None and wd is not None
        nodes += _depth_to_space_nhwc(f"{name}_phases", n.output[0], f"{name}_d2s", stride, cout, h, wd,
                                      new_inits)
        done += 1
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    used = {i for node in g.node for i in node.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return done, kept


def short_products(model: onnx.ModelProto) -> list[str]:
    """Conv and Gemm nodes whose dot products (Cin / group * kh * kw, or K) are under MIN_REDUCTION."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        w = numpy_helper.to_array(inits[n.input[1]]) if len(n.input) > 1 and n.input[1] in inits else None
        if w is None or n.op_type not in ("Conv", "Gemm"):
            continue
        k = int(np.prod(w.shape[1:])) if n.op_type == "Conv" else w.shape[1 if _attrs(n).get("transB") else 0]
        if k < MIN_REDUCTION:
            out.append(n.name)
    return out


class _Graph:
    """Producers, consumers and constants of a graph, for the QDQ passes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def same_qparams(self, a: Sequence[str], b: Sequence[str]) -> bool:
        """Two (scale, zero point) pairs that are equal constants (per tensor)."""
        for x, y in zip(a, b, strict=True):
            cx, cy = self.const(x), self.const(y)
            if x != y and (cx is None or cy is None or cx.shape != cy.shape or not np.array_equal(cx, cy)):
                return False
        return True

    def qdq_around(self, n: onnx.NodeProto) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
        """(DQ, Q) when `n` reads a DequantizeLinear and only a QuantizeLinear with the same per-tensor scale
        and zero point reads `n`: then `n` may run on the quantized tensor itself."""
        dq = self.producer.get(n.input[0])
        after = self.consumers.get(n.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1 or n.output[0] in self.outputs:
            return None
        q = after[0]
        per_tensor = all(a.name != "axis" for a in [*dq.attribute, *q.attribute])
        if q.op_type != "QuantizeLinear" or not per_tensor or len(dq.input) < 3 or len(q.input) < 3:
            return None
        return (dq, q) if self.same_qparams(dq.input[1:3], q.input[1:3]) else None


def _rebuild(model: onnx.ModelProto, replace: dict[int, list[onnx.NodeProto]], drop: set[int]) -> None:
    nodes = []
    for n in model.graph.node:
        if id(n) not in drop:
            nodes.extend(replace.get(id(n), [n]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _unwrap(gr: _Graph, n: onnx.NodeProto, dq: onnx.NodeProto, q: onnx.NodeProto, drop: set[int]) -> str:
    """Drop the Q after `n` and, when nothing else reads it, the DQ before; returns the quantized input."""
    drop.add(id(q))
    readers = gr.consumers[dq.output[0]]
    if len(readers) == 1 and dq.output[0] not in gr.outputs:
        drop.add(id(dq))
    else:
        readers.remove(n)
    return str(dq.input[0])


def fold_pads(model: onnx.ModelProto) -> int:
    """DQ -> Pad(edge | reflect | wrap) -> Q with equal scales: the Pad runs on the uint8 tensor (its padding
    values come from the input, so the scale carries over). Returns how many were folded."""
    gr, drop, done = _Graph(model), set[int](), 0
    for n in model.graph.node:
        if n.op_type != "Pad" or _attrs(n).get("mode", b"constant") not in (b"edge", b"reflect", b"wrap"):
            continue
        around = gr.qdq_around(n)
        if around is None:
            continue
        dq, q = around
        n.input[0] = _unwrap(gr, n, dq, q, drop)
        n.output[0] = q.output[0]
        done += 1
    _rebuild(model, {}, drop)
    return done


def fold_upsamples(model: onnx.ModelProto) -> int:
    """DQ -> Resize(nearest, scales [1, 1, 2, 2]) -> Q with equal scales: uint8 NHWC Unsqueeze -> Expand ->
    Reshape between transposes (which onnxruntime's layout pass cancels), any H and W. Returns how many."""
    gr, drop, done = _Graph(model), set[int](), 0
    replace: dict[int, list[onnx.NodeProto]] = {}
    consts = [numpy_helper.from_array(np.array([2, 4], np.int64), "upsample2_axes"),
              numpy_helper.from_array(np.array([1, 1, 2, 1, 2, 1], np.int64), "upsample2_expand"),
              numpy_helper.from_array(np.array([1, 2, 2, 1], np.int64), "upsample2_factor")]
    for n in model.graph.node:
        a = _attrs(n)
        scales = gr.const(n.input[2]) if n.op_type == "Resize" and len(n.input) > 2 else None
        if scales is None or a.get("mode", b"nearest") != b"nearest" or list(scales) != [1, 1, 2, 2]:
            continue
        around = gr.qdq_around(n)
        if around is None:
            continue
        dq, q = around
        x, b = _unwrap(gr, n, dq, q, drop), n.name or n.output[0]
        replace[id(n)] = [
            helper.make_node("Transpose", [x], [f"{b}_nhwc"], perm=[0, 2, 3, 1], name=f"{b}_t0"),
            helper.make_node("Unsqueeze", [f"{b}_nhwc", "upsample2_axes"], [f"{b}_6d"], name=f"{b}_u"),
            helper.make_node("Expand", [f"{b}_6d", "upsample2_expand"], [f"{b}_6e"], name=f"{b}_e"),
            helper.make_node("Shape", [f"{b}_nhwc"], [f"{b}_shape"], name=f"{b}_s"),
            helper.make_node("Mul", [f"{b}_shape", "upsample2_factor"], [f"{b}_shape2"], name=f"{b}_m"),
            helper.make_node("Reshape", [f"{b}_6e", f"{b}_shape2"], [f"{b}_up"], name=f"{b}_r"),
            helper.make_node("Transpose", [f"{b}_up"], [q.output[0]], perm=[0, 3, 1, 2], name=f"{b}_t1")]
        done += 1
    if done:
        model.graph.initializer.extend(consts)
    _rebuild(model, replace, drop)
    return done


# --- making twins -------------------------------------------------------------------------------------------
class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over one input array, in batches."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(
            [{name: np.ascontiguousarray(x[i:i + BATCH])} for i in range(0, len(x), BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # one pass is all MinMax needs
        pass


def int8_twin(src: Path, dst: Path, calibration: np.ndarray, passes: bool = True) -> str:
    """Write the int8 twin of `src` at `dst`, calibrated on `calibration` (the graph's input); returns how it
    was made, in words (the passes that applied). `passes=False`: onnxruntime.quantization's output as it is
    (bench/quantized.py measures what the passes buy)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))  # shape inference; BatchNorm folded into the convs
        model = onnx.load(str(pre))
        phased, kept = phase_conv_transposes(model) if passes else (0, [])
        short = short_products(model) if passes else []
        onnx.save(model, str(pre))
        name = session(src).get_inputs()[0].name
        quantize_static(str(pre), str(dst), _Reader(name, calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=kept + short)
    model = onnx.load(str(dst))
    pads, ups = (fold_pads(model), fold_upsamples(model)) if passes else (0, 0)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    parts = [f"ConvTranspose as phase Convs: {phased}"] if phased else []
    parts += [f"float ConvTranspose kept: {len(kept)}"] if kept else []
    parts += [f"float Conv/Gemm with dot products under {MIN_REDUCTION}: {len(short)}"] if short else []
    parts += [f"Pad on uint8: {pads}"] if pads else []
    parts += [f"nearest x2 upsample on uint8: {ups}"] if ups else []
    return "; ".join(parts)


def fp16_twin(src: Path, dst: Path, calibration: np.ndarray) -> str:
    """Write the fp16 twin of `src` at `dst` (float32 inputs and outputs); `calibration` is not needed."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    return ""


MAKERS: dict[str, Callable[[Path, Path, np.ndarray], str]] = {"int8": int8_twin, "fp16": fp16_twin}
METHODS = {
    "int8": "static QDQ (onnxruntime.quantization): int8 weights per output channel, uint8 activations, "
            "MinMax ranges on {what}",
    "fp16": "float16 weights and activations inside (onnxruntime.transformers.float16), float32 at the "
            "inputs and outputs",
}


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """10 log10(signal power / error power); 200 when they are equal."""
    err = float(np.sum(np.square(got.astype(np.float64) - ref)))
    sig = float(np.sum(np.square(ref.astype(np.float64))))
    return 200.0 if err == 0 else 10 * float(np.log10(max(sig, 1e-30) / err))


def psnr_db(ref: np.ndarray, got: np.ndarray, span: float = 1.0) -> float:
    """PSNR of `got` against `ref` with peak `span` (the value range); 200 when they are equal."""
    mse = float(np.mean(np.square(got.astype(np.float64) - ref)))
    return 200.0 if mse == 0 else 10 * float(np.log10(span ** 2 / mse))


def make_twins(folder: Path, graphs: dict[str, GraphSpec], precisions: Sequence[TwinPrecision],
               data: TwinData) -> tuple[dict[str, GraphSpec], dict[str, float]]:
    """Make the `precisions` twins of `graphs` (their FP32 files in `folder`) into `folder`, check each
    against FP32 on `data.check`, and return the graphs with the twins that passed, and the whole-model
    numbers per precision for the manifest's metrics. A precision that misses its bound is left out (its
    files removed) and logged."""
    names = _twinnable(graphs)
    out, metrics = dict(graphs), dict[str, float]()
    if not names:
        return out, metrics
    rng = np.random.default_rng(0)
    calib = data.calibration
    if len(calib) > CALIBRATION_MAX:
        calib = calib[np.sort(rng.choice(len(calib), CALIBRATION_MAX, replace=False))]
    calib_feeds = _feeds(folder, graphs, calib)
    check_feeds = _feeds(folder, graphs, data.check)
    what = f"{len(calib)} {data.calibration_what}"
    for prec in precisions:
        twins: dict[str, TwinSpec] = {}
        for g in names:
            file = f"{g}.{prec}.onnx"
            passes = MAKERS[prec](folder / graphs[g].file, folder / file, calib_feeds[g])
            method = METHODS[prec].format(what=what) + (f"; {passes}" if passes else "")
            twins[g] = TwinSpec(file=file, precision=prec, method=method,
                                check=_check(folder, graphs[g], file, check_feeds[g], data.check_what))
        numbers, misses = _whole(folder, graphs, twins, prec, data)
        misses += [f"{g}: SNR {t.check.snr_db:.1f} dB < {MIN_SNR_DB:g}" for g, t in twins.items()
                   if t.check.snr_db < MIN_SNR_DB]
        if misses:
            log.warning("twins: %s not published: %s", prec, "; ".join(misses))
            for t in twins.values():
                (folder / t.file).unlink(missing_ok=True)
            continue
        metrics |= numbers
        for g, t in twins.items():
            out[g] = out[g].model_copy(update={"twins": {**(out[g].twins or {}), prec: t}})
        log.info("twins: %s for %s: %s", prec, ", ".join(twins), numbers)
    return out, metrics


def _check(folder: Path, spec: GraphSpec, file: str, x: np.ndarray, what: str) -> TwinCheck:
    ref, got = run(session(folder / spec.file), x), run(session(folder / file), x)
    return TwinCheck(measured_on=what, n=len(x),
                     max_abs_diff=max(float(np.max(np.abs(a - b))) for a, b in zip(ref, got, strict=True)),
                     snr_db=round(snr_db(ref[0], got[0]), 2), bound=BOUND)


BOUND = (f"SNR of every twinned graph's first output against FP32's >= {MIN_SNR_DB:g} dB, and an encoder + "
         f"decoder's reconstruction PSNR within {MAX_PSNR_LOSS_DB:g} dB of FP32's, on these inputs")


def _whole(folder: Path, graphs: dict[str, GraphSpec], twins: dict[str, TwinSpec], prec: str,
           data: TwinData) -> tuple[dict[str, float], list[str]]:
    """The model end to end at `prec` against FP32 on the check images: reconstruction PSNR (against the
    input, and against FP32's reconstruction) and, with an anomaly spec, the image scores' agreement."""
    if not {"encoder", "decoder"} <= set(twins):
        return {}, []
    span = data.value_range[1] - data.value_range[0]
    x = data.check
    fp32 = {g: session(folder / graphs[g].file) for g in twins}
    low = {g: session(folder / t.file) for g, t in twins.items()}

    def recon(s: dict[str, Any]) -> np.ndarray:
        return run(s["decoder"], run(s["encoder"], x)[0])[0]

    r32, rlow = recon(fp32), recon(low)
    p32, plow = psnr_db(x, r32, span), psnr_db(x, rlow, span)
    numbers = {f"{prec}_recon_psnr_db": round(plow, 3), f"{prec}_recon_psnr_fp32_db": round(p32, 3),
               f"{prec}_recon_psnr_loss_db": round(p32 - plow, 3),
               f"{prec}_recon_psnr_vs_fp32_db": round(psnr_db(r32, rlow, span), 2)}
    kind = None if data.anomaly is None else data.anomaly.score
    if data.anomaly is not None and SCORE_GRAPHS.get(str(kind), {"?"}) <= set(twins):
        s32, slow = _image_scores(data.anomaly, fp32, x), _image_scores(data.anomaly, low, x)
        numbers[f"{prec}_score_rank_corr"] = round(_spearman(s32, slow), 4)
        numbers[f"{prec}_flag_agreement"] = round(float(np.mean((s32 > data.anomaly.threshold)
                                                                == (slow > data.anomaly.threshold))), 4)
    misses = ([f"reconstruction PSNR {plow:.2f} dB is {p32 - plow:.2f} dB below FP32's {p32:.2f}"]
              if p32 - plow > MAX_PSNR_LOSS_DB else [])
    return numbers, misses


#: The graphs each score kind runs (all of them need a twin for the score to be compared at that precision).
SCORE_GRAPHS = {"reconstruction": {"encoder", "decoder"}, "vae_elbo": {"encoder", "decoder"},
                "fanogan": {"encoder", "decoder", "critic"}}


def _image_scores(spec: AnomalySpec, sessions: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Image scores as the service computes them (service.store.scores), on these sessions."""
    import asyncio

    async def graph(name: str, a: np.ndarray) -> dict[str, np.ndarray]:
        s = sessions[name]
        return dict(zip([o.name for o in s.get_outputs()], run(s, a), strict=True))

    raw, score_map = asyncio.run(scores.anomaly(spec.score, spec.params, x, graph))
    if spec.map is None:
        return raw
    return scores.reduce_map(scores.pixel_map(score_map), spec.map.reduction, spec.map.top_fraction)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 1 else 1.0


# --- from the pipeline, and for a published version ---------------------------------------------------------
def add_twins(exported: Exported, folder: Path, precisions: Sequence[TwinPrecision], data: TwinData
              ) -> Exported:
    """The pipeline's step after the export parity check: the exported graphs with their twins (made in the
    staging folder), and the twins' whole-model numbers added to the export metrics."""
    if not len(data.check) or not len(data.calibration):
        log.warning("twins: none made: no validation images to check them on (or no training images)")
        return exported
    graphs, numbers = make_twins(folder, exported.graphs, precisions, data)
    return Exported(graphs, {**exported.metrics, **numbers})


def twin_data(train_x: np.ndarray, val_x: np.ndarray, dataset: str, crops: bool,
              value_range: tuple[float, float], anomaly: AnomalySpec | None) -> TwinData:
    """TwinData from a model's splits: its training images (or training windows, for a model trained on
    crops) to calibrate, its validation images (held out from training) to check."""
    unit = "windows" if crops else "images"
    return TwinData(train_x, val_x, f"training {unit} of {dataset}",
                    f"{len(val_x)} validation {unit} of {dataset} (held out from training)", value_range,
                    anomaly)


def publish_twins(store: Path, name: str, precisions: Sequence[TwinPrecision], version: int | None = None
                  ) -> Path:
    """Publish a new version of `name` (from `version`, default the latest): the same files and manifest,
    plus twins at `precisions`, made and checked with the data its training config names (training split to
    calibrate, validation split to check). Atomic, through training.publish; returns the new folder."""
    import shutil
    from datetime import UTC, datetime

    from service.store.layout import MANIFEST_NAME, version_numbers
    from service.store.manifest import Manifest
    from training.config import ConfigError, TrainConfig, typed_fields
    from training.data.crops import CropSplits
    from training.pipeline import code_version, load_splits
    from training.publish import Staging

    versions = version_numbers(store / name)
    src_version = version if version is not None else (versions or [0])[-1]
    if src_version not in versions:
        raise ConfigError(f"{store / name}: no version {src_version} to add twins to (versions: {versions})")
    src = store / name / str(src_version)
    manifest = Manifest.model_validate_json((src / MANIFEST_NAME).read_text())
    config = dict(manifest.training.get("config", {}))
    cfg = TrainConfig(**typed_fields(TrainConfig, config, "train"))
    splits, source = load_splits(cfg, None)
    crops = isinstance(splits, CropSplits)
    fixed = splits.fixed() if isinstance(splits, CropSplits) else splits
    data = twin_data(fixed.train.x, fixed.val.x, source.name, crops, manifest.data.value_range,
                     manifest.anomaly)
    redo = set(precisions)
    graphs = {g: s.model_copy(update={"twins": {p: t for p, t in (s.twins or {}).items() if p not in redo}
                                      or None}) for g, s in manifest.graphs.items()}
    stale = {t.file for s in manifest.graphs.values() for p, t in (s.twins or {}).items() if p in redo}
    with Staging(store, name) as stage:
        for f in manifest.files:
            if f not in stale:
                shutil.copy2(src / f, stage.path / f)
        graphs, metrics = make_twins(stage.path, graphs, precisions, data)
        twins = sorted({p for s in graphs.values() for p in (s.twins or {})})
        training = {**manifest.training, "config": {**config, "twins": twins},
                    "twins_from_version": src_version}

        def make(v: int, files: dict[str, str]) -> Manifest:
            return manifest.model_copy(update={
                "version": v, "files": files, "graphs": graphs, "metrics": {**manifest.metrics, **metrics},
                "created_at": datetime.now(UTC), "code_version": code_version(), "training": training})

        return stage.commit(make)
