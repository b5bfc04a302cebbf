"""Tiny models stores for tests, built with onnx.helper and numpy weights (no torch).

Graphs are linear maps with a sigmoid on the decoder, so they run in microseconds and their outputs are easy
to recompute in numpy. `build_store(root)` writes the standard fixture set; `build_model` writes one version.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.store.layout import sha256_file, version_dir
from service.store.manifest import (
    ALL_CAPABILITIES,
    AnomalySpec,
    DataSpec,
    GaussianPrior,
    GMMPrior,
    GraphSpec,
    LatentSpec,
    Manifest,
    NormalPrior,
    TensorSpec,
)

OPSET = 17
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one async operation to completion (ops are async; tests stay sync)."""
    return asyncio.run(coro)


@dataclass(frozen=True)
class Weights:
    enc_w: np.ndarray  # (P, D)
    enc_b: np.ndarray  # (D,)
    logvar_w: np.ndarray  # (P, D)
    dec_w: np.ndarray  # (D, P)
    dec_b: np.ndarray  # (P,)
    critic_w: np.ndarray  # (P, F)


def make_weights(shape: tuple[int, int, int], dim: int, seed: int, features: int = 6) -> Weights:
    rng = np.random.default_rng(seed)
    p = int(np.prod(shape))
    f32 = np.float32
    enc_w = (rng.standard_normal((p, dim)) / np.sqrt(p)).astype(f32)
    return Weights(
        enc_w=enc_w,
        enc_b=(0.1 * rng.standard_normal(dim)).astype(f32),
        logvar_w=(0.1 * rng.standard_normal((p, dim)) / np.sqrt(p)).astype(f32),
        dec_w=(rng.standard_normal((dim, p)) / np.sqrt(dim)).astype(f32),
        dec_b=(0.1 * rng.standard_normal(p)).astype(f32),
        critic_w=(rng.standard_normal((p, features)) / np.sqrt(p)).astype(f32),
    )


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _image_input(name: str, shape: tuple[int, int, int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *shape])


def encoder_graph(w: Weights, shape: tuple[int, int, int], vae: bool) -> tuple[onnx.GraphProto, list[str]]:
    outs = ["z_mean", "z_logvar"] if vae else ["z"]
    dim = w.enc_w.shape[1]
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], [outs[0]]),
    ]
    inits = [numpy_helper.from_array(w.enc_w, "W"), numpy_helper.from_array(w.enc_b, "b")]
    if vae:
        nodes.append(helper.make_node("MatMul", ["flat", "Wv"], ["lv"]))
        nodes.append(helper.make_node("Tanh", ["lv"], [outs[1]]))  # log-variance in (-1, 1)
        inits.append(numpy_helper.from_array(w.logvar_w, "Wv"))
    g = helper.make_graph(
        nodes,
        "encoder",
        [_image_input("x", shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", dim]) for o in outs],
        inits,
    )
    return g, outs


def decoder_graph(w: Weights, shape: tuple[int, int, int]) -> onnx.GraphProto:
    dim = w.dec_w.shape[0]
    nodes = [
        helper.make_node("Gemm", ["z", "W", "b"], ["pre"]),
        helper.make_node("Sigmoid", ["pre"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["x_hat"]),
    ]
    inits = [
        numpy_helper.from_array(w.dec_w, "W"),
        numpy_helper.from_array(w.dec_b, "b"),
        numpy_helper.from_array(np.array([-1, *shape], dtype=np.int64), "shape"),
    ]
    return helper.make_graph(
        nodes,
        "decoder",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("x_hat", TensorProto.FLOAT, ["batch", *shape])],
        inits,
    )


def critic_graph(w: Weights, shape: tuple[int, int, int]) -> onnx.GraphProto:
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["h"]),
        helper.make_node("Tanh", ["h"], ["features"]),
    ]
    return helper.make_graph(
        nodes,
        "critic",
        [_image_input("x", shape)],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", w.critic_w.shape[1]])],
        [numpy_helper.from_array(w.critic_w, "W")],
    )


def _prior(kind: str, dim: int, seed: int) -> NormalPrior | GaussianPrior | GMMPrior:
    rng = np.random.default_rng(seed + 1)
    if kind == "gaussian":
        a = rng.standard_normal((dim, dim)) * 0.5
        return GaussianPrior(
            mean=rng.standard_normal(dim).tolist(), cov=(a @ a.T + 0.1 * np.eye(dim)).tolist()
        )
    if kind == "gmm":
        return GMMPrior(
            weights=[0.3, 0.7],
            means=[[-2.0] * dim, [2.0] * dim],
            covs=[(0.1 * np.eye(dim)).tolist(), (0.2 * np.eye(dim)).tolist()],
        )
    return NormalPrior()


def build_model(
    root: Path,
    name: str,
    version: int = 1,
    *,
    kind: str = "ae",
    prior: str = "gaussian",
    shape: tuple[int, int, int] = (1, 8, 8),
    dim: int = 4,
    seed: int = 0,
    capabilities: list[str] | None = None,
    threshold: float = 0.05,
    scale: float = 0.01,
) -> Path:
    """Write one version. kind: ae | vae | gan (decoder, encoder, critic) | generator (decoder only)."""
    vdir = version_dir(root, name, version)
    vdir.mkdir(parents=True)
    w = make_weights(shape, dim, seed)
    graphs: dict[str, GraphSpec] = {}

    def add(
        gname: str,
        graph: onnx.GraphProto,
        ins: list[tuple[str, list[int]]],
        outs: list[tuple[str, list[int]]],
    ):
        _save(graph, vdir / f"{gname}.onnx")
        graphs[gname] = GraphSpec(
            file=f"{gname}.onnx",
            inputs=[TensorSpec(name=n, shape=s) for n, s in ins],
            outputs=[TensorSpec(name=n, shape=s) for n, s in outs],
        )

    add("decoder", decoder_graph(w, shape), [("z", [-1, dim])], [("x_hat", [-1, *shape])])
    if kind in ("ae", "vae", "gan"):
        g, outs = encoder_graph(w, shape, vae=kind == "vae")
        add("encoder", g, [("x", [-1, *shape])], [(o, [-1, dim]) for o in outs])
    if kind == "gan":
        add(
            "critic", critic_graph(w, shape), [("x", [-1, *shape])], [("features", [-1, w.critic_w.shape[1]])]
        )
    family = {"ae": "ae", "vae": "vae", "gan": "gan", "generator": "gan"}[kind]
    score = {"ae": "reconstruction", "vae": "vae_elbo", "gan": "fanogan"}.get(kind)
    params: dict[str, float | str] = (
        {"likelihood": "bernoulli"} if kind == "vae" else ({"kappa": 0.5} if kind == "gan" else {})
    )
    if capabilities is None:
        capabilities = list(ALL_CAPABILITIES) if kind != "generator" else ["decode", "sample", "interpolate"]
    anomaly = None
    if score is not None and "anomaly-score" in capabilities:
        anomaly = AnomalySpec(score=score, params=params, threshold=threshold, rule="fixture", scale=scale)
    manifest = Manifest(
        name=name,
        version=version,
        family=family,
        variant="plain",
        created_at=datetime.now(UTC),
        code_version="test",
        data=DataSpec(dataset="synthetic", shape=shape, preprocessing="none"),
        latent=LatentSpec(dim=dim, prior=_prior("normal" if kind != "ae" else prior, dim, seed)),
        graphs=graphs,
        files={g.file: sha256_file(vdir / g.file) for g in graphs.values()},
        capabilities=capabilities,
        anomaly=anomaly,
        metrics={"val_loss": 0.1},
        training={"seed": seed},
    )
    (vdir / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return vdir


def corrupt_manifest(vdir: Path, **changes: Any) -> None:
    """Rewrite raw manifest JSON fields (bypassing validation) to make a broken version."""
    path = vdir / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def build_store(root: Path) -> Path:
    """The standard fixture store.

    tiny-ae      v1 gaussian prior, v2 gmm prior (latest), v3 broken manifest (skipped)
    tiny-vae     VAE (z_mean, z_logvar), vae_elbo score
    tiny-gan     GAN with encoder and critic, fanogan score
    tiny-gen     decoder only: decode, sample, interpolate
    tiny-rgb     3x6x6 AE, for channel conversions
    broken-sha   one version whose decoder does not match its sha256 (skipped)
    """
    root.mkdir(parents=True, exist_ok=True)
    build_model(root, "tiny-ae", 1, prior="gaussian", seed=1)
    build_model(root, "tiny-ae", 2, prior="gmm", seed=2)
    corrupt_manifest(build_model(root, "tiny-ae", 3, seed=3), family="not-a-family")
    build_model(root, "tiny-vae", 1, kind="vae", seed=4, threshold=40.0, scale=2.0)
    build_model(root, "tiny-gan", 1, kind="gan", seed=5)
    build_model(root, "tiny-gen", 1, kind="generator", seed=6)
    build_model(root, "tiny-rgb", 1, shape=(3, 6, 6), seed=7)
    bad = build_model(root, "broken-sha", 1, seed=8)
    (bad / "decoder.onnx").write_bytes((bad / "decoder.onnx").read_bytes() + b"\0")
    return root


# --- request helpers shared by the API tests ------------------------------------------------------
def png_b64(arr: np.ndarray, data_url: bool = False) -> str:
    """(H, W) or (H, W, 3) floats in [0, 1] -> base64 PNG."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.rint(np.asarray(arr) * 255).astype(np.uint8)).save(buf, format="PNG")
    s = base64.b64encode(buf.getvalue()).decode()
    return "data:image/png;base64," + s if data_url else s


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares a huge image (a decompression bomb as far as the header says)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def build_spatial_model(root: Path, name: str, version: int = 1, *, channels: int = 1, crop: int = 16,
                        tile: int = 32, overlap: int = 8, blur_sigma: float = 0.0,
                        pixel_threshold: float = 0.01, reduction: str = "top_mean") -> Path:
    """A fully convolutional AE that runs at any size (H, W even): the encoder averages 2x2 blocks, the
    decoder repeats each code pixel 2x2, so x_hat is the block-averaged image and the map is where the image
    varies within a block (edges, a pasted blob). Calibration quantiles are made up but consistent."""
    from service.store.manifest import Calibration, MapSpec, SpatialSpec

    vdir = version_dir(root, name, version)
    vdir.mkdir(parents=True)
    c = channels
    pool = np.zeros((c, c, 2, 2), np.float32)
    up = np.zeros((c, c, 2, 2), np.float32)
    for i in range(c):
        pool[i, i] = 0.25
        up[i, i] = 1.0
    dyn = ["batch", c, "h", "w"]
    enc = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["z"], strides=[2, 2])], "encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dyn)],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", c, "h2", "w2"])],
        [numpy_helper.from_array(pool, "W")])
    dec = helper.make_graph(
        [helper.make_node("ConvTranspose", ["z", "W"], ["x_hat"], strides=[2, 2])], "decoder",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", c, "h2", "w2"])],
        [helper.make_tensor_value_info("x_hat", TensorProto.FLOAT, dyn)],
        [numpy_helper.from_array(up, "W")])
    _save(enc, vdir / "encoder.onnx")
    _save(dec, vdir / "decoder.onnx")
    graphs = {
        "encoder": GraphSpec(file="encoder.onnx", inputs=[TensorSpec(name="x", shape=[-1, c, -1, -1])],
                             outputs=[TensorSpec(name="z", shape=[-1, c, -1, -1])]),
        "decoder": GraphSpec(file="decoder.onnx", inputs=[TensorSpec(name="z", shape=[-1, c, -1, -1])],
                             outputs=[TensorSpec(name="x_hat", shape=[-1, c, -1, -1])]),
    }
    probs = [0.5, 0.9, 0.99, 0.999]
    anomaly = AnomalySpec(
        score="reconstruction", params={"blur_sigma": blur_sigma}, threshold=0.002, rule="fixture",
        scale=0.001, map=MapSpec(reduction=reduction, top_fraction=0.01, pixel_threshold=pixel_threshold,
                                 pixel_rule="fixture", min_region_pixels=2),
        calibration=Calibration(probs=probs, image=[0.0005, 0.001, 0.002, 0.004],
                                pixel=[0.0, 0.002, 0.01, 0.02]),
    )
    manifest = Manifest(
        name=name, version=version, family="ae", variant="plain", created_at=datetime.now(UTC),
        code_version="test", data=DataSpec(dataset="synthetic", shape=(c, crop, crop), preprocessing="none"),
        latent=LatentSpec(dim=c, prior=NormalPrior()), graphs=graphs,
        files={g.file: sha256_file(vdir / g.file) for g in graphs.values()},
        capabilities=["reconstruct", "anomaly-score"], anomaly=anomaly,
        spatial=SpatialSpec(multiple=2, latent_channels=c, tile=tile, overlap=overlap),
        metrics={"val_loss": 0.1}, training={"seed": 0},
    )
    (vdir / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return vdir


@dataclass(frozen=True)
class CondWeights:
    """A conditional model's linear maps: x_hat = sigmoid(z @ dec_w + y @ dec_y + dec_b); the encoder's
    code enc = flat @ enc_w + y @ enc_y + enc_b (enc_y unused when the encoder takes no label)."""

    enc_w: np.ndarray  # (P, D)
    enc_y: np.ndarray  # (K, D)
    enc_b: np.ndarray  # (D,)
    dec_w: np.ndarray  # (D, P)
    dec_y: np.ndarray  # (K, P)
    dec_b: np.ndarray  # (P,)

    def decode(self, z: np.ndarray, y: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        pre = z.astype(np.float64) @ self.dec_w + y @ self.dec_y + self.dec_b
        return (1 / (1 + np.exp(-pre))).reshape(len(z), *shape)

    def encode(self, x: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        z = x.reshape(len(x), -1).astype(np.float64) @ self.enc_w + self.enc_b
        return z if y is None else z + y @ self.enc_y


def build_conditional_model(
    root: Path, name: str, version: int = 1, *, names: tuple[str, ...] = ("a", "b", "c", "7"),
    encoder_label: bool = True, class_priors: bool = False, shape: tuple[int, int, int] = (1, 8, 8),
    dim: int = 3, seed: int = 0,
) -> tuple[Path, CondWeights]:
    """A conditional model of linear maps (see CondWeights): with `encoder_label` the encoder takes the label
    too (a conditional VAE), else only the decoder does (a supervised AAE). `class_priors`: class k's prior
    is a Gaussian centred at (3k, ..., 3k), so a draw tells its class."""
    from service.store.manifest import LabelSet

    vdir = version_dir(root, name, version)
    vdir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    p, k = int(np.prod(shape)), len(names)
    f32 = np.float32
    w = CondWeights(
        enc_w=(rng.standard_normal((p, dim)) / np.sqrt(p)).astype(f32),
        enc_y=rng.standard_normal((k, dim)).astype(f32),
        enc_b=(0.1 * rng.standard_normal(dim)).astype(f32),
        dec_w=(rng.standard_normal((dim, p)) / np.sqrt(dim)).astype(f32),
        dec_y=(2.0 * rng.standard_normal((k, p))).astype(f32),
        dec_b=(0.1 * rng.standard_normal(p)).astype(f32),
    )
    enc_nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
                 helper.make_node("Gemm", ["flat", "W", "b"], ["zx"])]
    enc_inputs = [_image_input("x", shape)]
    enc_inits = [numpy_helper.from_array(w.enc_w, "W"), numpy_helper.from_array(w.enc_b, "b")]
    if encoder_label:
        enc_nodes += [helper.make_node("MatMul", ["y", "Wy"], ["zy"]),
                      helper.make_node("Add", ["zx", "zy"], ["z"])]
        enc_inputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", k]))
        enc_inits.append(numpy_helper.from_array(w.enc_y, "Wy"))
    else:
        enc_nodes.append(helper.make_node("Identity", ["zx"], ["z"]))
    z_out = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", dim])]
    enc = helper.make_graph(enc_nodes, "encoder", enc_inputs, z_out, enc_inits)
    dec = helper.make_graph(
        [helper.make_node("Gemm", ["z", "W", "b"], ["pz"]), helper.make_node("MatMul", ["y", "Wy"], ["py"]),
         helper.make_node("Add", ["pz", "py"], ["pre"]), helper.make_node("Sigmoid", ["pre"], ["flat"]),
         helper.make_node("Reshape", ["flat", "shape"], ["x_hat"])],
        "decoder",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", dim]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("x_hat", TensorProto.FLOAT, ["batch", *shape])],
        [numpy_helper.from_array(w.dec_w, "W"), numpy_helper.from_array(w.dec_b, "b"),
         numpy_helper.from_array(w.dec_y, "Wy"),
         numpy_helper.from_array(np.array([-1, *shape], dtype=np.int64), "shape")])
    _save(enc, vdir / "encoder.onnx")
    _save(dec, vdir / "decoder.onnx")
    label_in = [TensorSpec(name="y", shape=[-1, k])]
    graphs = {
        "encoder": GraphSpec(file="encoder.onnx", inputs=[TensorSpec(name="x", shape=[-1, *shape])]
                             + (label_in if encoder_label else []),
                             outputs=[TensorSpec(name="z", shape=[-1, dim])]),
        "decoder": GraphSpec(file="decoder.onnx", inputs=[TensorSpec(name="z", shape=[-1, dim]), *label_in],
                             outputs=[TensorSpec(name="x_hat", shape=[-1, *shape])]),
    }
    priors = None
    if class_priors:
        priors = [GaussianPrior(mean=[3.0 * c] * dim, cov=(0.01 * np.eye(dim)).tolist()) for c in range(k)]
    manifest = Manifest(
        name=name, version=version, family="vae" if encoder_label else "aae",
        variant="conditional" if encoder_label else "supervised", created_at=datetime.now(UTC),
        code_version="test", data=DataSpec(dataset="synthetic", shape=shape, preprocessing="none"),
        latent=LatentSpec(dim=dim, prior=NormalPrior()), graphs=graphs,
        files={g.file: sha256_file(vdir / g.file) for g in graphs.values()},
        capabilities=["encode", "decode", "sample", "interpolate", "reconstruct", "restyle"],
        labels=LabelSet(names=list(names), class_priors=priors,
                        inputs={"decoder": "y"} | ({"encoder": "y"} if encoder_label else {})),
        metrics={"val_loss": 0.1}, training={"seed": seed},
    )
    (vdir / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return vdir, w
