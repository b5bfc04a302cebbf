"""The fully convolutional backbone: a spatial latent at any size that is a multiple of 2**k, grey and RGB,
each normalisation; which families have it; and its export with dynamic H and W (ONNX and TorchScript
against torch at several sizes)."""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.config import ConfigError, model_config
from training.export import export_model
from training.models import REGISTRY, build
from training.models.base import GenerativeModel, Norm

pytestmark = pytest.mark.usefixtures("torch_single_thread")

#: Families with a fully convolutional form; the others say why not (ModelConfig.no_fcn).
FCN_NAMES = sorted(n for n, e in REGISTRY.items() if e.config.no_fcn is None)
NORMS = typing.get_args(Norm)


def tiny(name: str = "ae", shape: tuple[int, int, int] = (1, 16, 16), seed: int = 0,
         **kw: object) -> GenerativeModel:
    torch.manual_seed(seed)
    kw = {"channels": (4, 8), "latent_dim": 3, **kw}
    return build(name, backbone="fcn", input_shape=shape, **kw)


def test_which_families_have_it() -> None:
    assert FCN_NAMES == ["ae", "ae-denoising", "ae-sparse-kl", "ae-sparse-l1", "draem"]
    for name in set(REGISTRY) - set(FCN_NAMES):
        reason = REGISTRY[name].config.no_fcn
        assert reason, name
        with pytest.raises(ConfigError, match="backbone 'fcn' is not available for this family"):
            model_config(name, {"backbone": "fcn"}, input_shape=(1, 16, 16))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("norm", NORMS)
def test_shapes_at_any_multiple_of_two_to_the_depth(channels: int, norm: str) -> None:
    """Built for 16x16 crops (k = 2, multiple 4), the same weights run at 16x16, 20x36, 4x4 and 64x48
    (instance norm needs more than one latent pixel: 8x8 for it)."""
    model = tiny(shape=(channels, 16, 16), norm=norm).eval()
    assert model.cfg.multiple == 4
    smallest = (8, 8) if norm == "instance" else (4, 4)
    for h, w in [(16, 16), (20, 36), smallest, (64, 48)]:
        x = torch.rand(2, channels, h, w)
        with torch.no_grad():
            z = model.encode(x)
            x_hat = model.decode(z)
        assert z.shape == (2, 3, h // 4, w // 4)
        assert x_hat.shape == x.shape and 0 <= float(x_hat.min()) and float(x_hat.max()) <= 1


def test_depth_and_width_are_the_channels() -> None:
    model = tiny(shape=(3, 32, 32), channels=(4, 8, 8, 16), latent_dim=5).eval()
    assert model.cfg.multiple == 16
    with torch.no_grad():
        assert model.encode(torch.rand(1, 3, 48, 80)).shape == (1, 5, 3, 5)
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert [c.out_channels for c in convs] == [4, 8, 8, 16]


def test_residual_blocks_are_configurable() -> None:
    from training.models.backbones import ResBlock

    for blocks in (0, 1, 3):
        model = tiny(res_blocks=blocks)
        assert sum(isinstance(m, ResBlock) for m in model.modules()) == 2 * 2 * blocks  # 2 levels, enc + dec


def test_sizes_that_are_not_multiples_are_refused() -> None:
    with pytest.raises(ConfigError, match="multiples of 8"):
        model_config("ae", {"backbone": "fcn", "channels": (4, 4, 4)}, input_shape=(1, 20, 16))


@pytest.mark.parametrize("norm,local", [("batch", True), ("none", True), ("instance", False)])
def test_a_pixel_depends_on_its_neighbourhood_only_with_batch_or_no_norm(norm: str, local: bool) -> None:
    """What tiling relies on: with BatchNorm (a fixed affine map in eval mode) or none, the output inside a
    crop equals the whole image's output there, away from the crop's border. Instance norm uses each
    input's own statistics, so a crop and the whole photo disagree everywhere."""
    model = tiny(norm=norm, seed=1)
    model.train()
    with torch.no_grad():  # BatchNorm running statistics away from their initial (identity) values
        for _ in range(3):
            model(torch.rand(8, 1, 16, 16))
    model.eval()
    x = torch.rand(1, 1, 160, 160)
    with torch.no_grad():
        whole = model.decode(model.encode(x))[:, :, 32:128, 32:128]
        part = model.decode(model.encode(x[:, :, 32:128, 32:128]))  # at a multiple of 2**k
    inner = (slice(None), slice(None), slice(40, 56), slice(40, 56))  # beyond the receptive field's reach
    diff = float((whole[inner] - part[inner]).abs().max())
    assert (diff < 1e-5) == local, diff


@pytest.mark.parametrize("name", FCN_NAMES)
def test_every_fcn_family_trains_and_returns_a_spatial_code(name: str) -> None:
    model = tiny(name, shape=(3, 16, 16))
    x = torch.rand(16, 3, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()
    before = float(model.validation_loss(x))
    model.train()
    for _ in range(30):
        opt.zero_grad()
        out = model(x)
        out.loss.backward()
        opt.step()
    assert out.code is not None and out.code.shape == (16, 3, 4, 4)
    assert out.recon is not None and out.recon.shape == x.shape
    model.eval()
    assert float(model.validation_loss(x)) < before


def test_sparse_l1_penalty_sums_every_code_unit_per_image() -> None:
    model = tiny("ae-sparse-l1")
    x = torch.rand(4, 1, 16, 16)
    out = model(x)
    z = model.encoder(x).detach()
    torch.testing.assert_close(out.terms["l1"], model.cfg.l1 * z.abs().sum(dim=(1, 2, 3)).mean())


@pytest.mark.parametrize("name", FCN_NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_dynamic_export_parity_at_several_sizes(name: str, channels: int, tmp_path: Path) -> None:
    """One ONNX graph with dynamic batch, H and W, checked against torch at the export size and others; the
    TorchScript twin too."""
    model = tiny(name, shape=(channels, 16, 16)).eval()
    real = np.random.default_rng(0).random((6, channels, 16, 16), dtype=np.float32)
    out = export_model(model, tmp_path, real)
    assert float(out.metrics["parity_onnx_max_abs_diff"]) <= 1e-4
    enc, dec = out.graphs["encoder"], out.graphs["decoder"]
    assert enc.inputs[0].shape == [-1, channels, -1, -1] and enc.outputs[0].shape == [-1, 3, -1, -1]
    assert dec.inputs[0].shape == [-1, 3, -1, -1] and dec.outputs[0].shape == [-1, channels, -1, -1]
    proto = onnx.load(tmp_path / "encoder.onnx")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    encoder = ort.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(tmp_path / "decoder.onnx"), providers=["CPUExecutionProvider"])
    ts_enc = torch.jit.load(str(tmp_path / "encoder.pt"))
    ts_dec = torch.jit.load(str(tmp_path / "decoder.pt"))
    for h, w in [(16, 16), (24, 40), (64, 64)]:  # a crop, an odd photo, a bigger one
        x = np.random.default_rng(h).random((2, channels, h, w), dtype=np.float32)
        z = encoder.run(None, {"x": x})[0]
        x_hat = decoder.run(None, {"z": z})[0]
        with torch.no_grad():
            z_ref = model.encode(torch.from_numpy(x))
            ref = model.decode(z_ref).numpy()
            ts = ts_dec(ts_enc(torch.from_numpy(x))).numpy()
        assert z.shape == (2, 3, h // 4, w // 4) and x_hat.shape == x.shape
        np.testing.assert_allclose(z, z_ref.numpy(), atol=1e-4)
        np.testing.assert_allclose(x_hat, ref, atol=1e-4)
        np.testing.assert_allclose(ts, ref, atol=1e-4)


def test_the_parity_gate_covers_other_sizes() -> None:
    from training import export

    model = tiny()
    graphs = model.export_graphs()
    real = np.random.default_rng(0).random((3, 1, 16, 16), dtype=np.float32)
    enc = export.parity_inputs("encoder", graphs["encoder"], model, real)
    assert {tuple(x.shape[2:]) for _, (x,) in enc} == {(16, 16), (20, 16), (24, 36)}
    dec = export.parity_inputs("decoder", graphs["decoder"], model, real)
    assert {tuple(x.shape[2:]) for _, (x,) in dec} == {(4, 4), (5, 4), (6, 9)}
    assert [label for label, _ in dec][-2:] == ["real[1]", "real[3]"]  # codes of real images
