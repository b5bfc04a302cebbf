"""Shared building blocks: MLP, conv/transposed-conv and fully convolutional encoder and decoder backbones.

Flat backbones ("mlp", "conv"): encoders map (B, C, H, W) -> (B, out_dim); decoders map (B, in_dim) ->
(B, C, H, W) *logits* (or raw values with `activation=None`); the family decides the output nonlinearity.
The fully convolutional one ("fcn") keeps the layout: (B, C, H, W) -> (B, out_dim, H / 2**k, W / 2**k) and
back, at any H and W that are multiples of 2**k.

A conditional encoder (`label_dim` > 0) also takes the one-hot label y (B, K) and sees it at its input:
concatenated to the flattened pixels (MLP), or as K constant channels beside the image's (conv), as in
Sohn et al.'s CVAE. A conditional decoder needs nothing special: it is built for in_dim = d + K and eats
cat(z, y).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from training.models.base import ModelConfig


def _act(linear: bool) -> nn.Module:
    return nn.Identity() if linear else nn.LeakyReLU(0.2)


class MLPEncoder(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], hidden: tuple[int, ...], out_dim: int,
                 linear: bool = False, label_dim: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape) + label_dim
        for h in hidden:
            layers += [nn.Linear(width, h), _act(linear)]
            width = h
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)
        self.features_dim = width

    @property
    def head(self) -> nn.Module:  # the last linear layer: features -> out_dim
        return self.net[-1]

    def features(self, x: Tensor, y: Tensor | None = None) -> Tensor:  # -> (B, features_dim): not the head
        if y is None:
            return self.net[:-1](x)  # net[0] flattens
        return self.net[1:-1](torch.cat([x.flatten(1), y.to(x.dtype)], dim=1))  # from (B, C*H*W + K)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:  # (B, C, H, W) [, (B, K)] -> (B, out)
        if y is None:
            return self.net(x)
        return self.head(self.features(x, y))


class Unflatten(nn.Module):
    """(B, C*H*W) -> (B, C, H, W), exported to ONNX as one Reshape with a constant (-1, C, H, W).

    `nn.Unflatten` exports as Shape, Slice, Concat and Reshape, computing the target shape on every run:
    four extra onnxruntime nodes, ~20% of a digits decoder's run at batch 1. No parameters, so checkpoints
    of either form load into the other."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            return x.reshape(-1, *self.shape)  # onnxruntime infers -1 even for an empty batch
        return x.unflatten(1, self.shape)  # eager and TorchScript: also right for an empty batch


class MLPDecoder(nn.Module):
    def __init__(self, in_dim: int, hidden: tuple[int, ...], output_shape: tuple[int, int, int],
                 linear: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in reversed(hidden):
            layers += [nn.Linear(width, h), _act(linear)]
            width = h
        layers += [nn.Linear(width, math.prod(output_shape)), Unflatten(output_shape)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:  # (B, in_dim) -> (B, C, H, W)
        return self.net(z)


class ConvEncoder(nn.Module):
    """Stride-2 convs (each halves H, W), then a linear head. For 28x28 and 32x32, 1 or 3 channels."""

    def __init__(self, input_shape: tuple[int, int, int], channels: tuple[int, ...], out_dim: int,
                 linear: bool = False, label_dim: int = 0) -> None:
        super().__init__()
        c, h, w = input_shape
        factor = 2 ** len(channels)
        if h % factor or w % factor:
            raise ValueError(f"conv backbone needs H and W divisible by {factor}, got {h}x{w}")
        self.size = (h, w)
        c += label_dim  # a label's K constant channels
        layers: list[nn.Module] = []
        for ch in channels:
            layers.append(nn.Conv2d(c, ch, 4, stride=2, padding=1))
            if not linear:  # BatchNorm is affine only in eval mode: a linear model has none
                layers += [nn.BatchNorm2d(ch), nn.LeakyReLU(0.2)]
            c = ch
        layers.append(nn.Flatten())
        self.conv = nn.Sequential(*layers)
        self.features_dim = c * (h // factor) * (w // factor)
        self.head = nn.Linear(self.features_dim, out_dim)

    def _input(self, x: Tensor, y: Tensor | None) -> Tensor:  # (B, C [+ K], H, W)
        if y is None:
            return x
        # a broadcasting product, not expand(): one Mul in ONNX whatever the batch
        planes = y.to(x.dtype)[:, :, None, None] * x.new_ones(1, 1, *self.size)
        return torch.cat([x, planes], dim=1)

    def features(self, x: Tensor, y: Tensor | None = None) -> Tensor:  # -> (B, features_dim): not the head
        return self.conv(self._input(x, y))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:  # (B, C, H, W) [, (B, K)] -> (B, out)
        return self.head(self.conv(self._input(x, y)))


class ConvDecoder(nn.Module):
    """A linear layer to a small feature map, then stride-2 transposed convs back to (C, H, W)."""

    def __init__(self, in_dim: int, channels: tuple[int, ...], output_shape: tuple[int, int, int],
                 linear: bool = False) -> None:
        super().__init__()
        c_out, h, w = output_shape
        factor = 2 ** len(channels)
        if h % factor or w % factor:
            raise ValueError(f"conv backbone needs H and W divisible by {factor}, got {h}x{w}")
        chans = list(reversed(channels))
        self.start = (chans[0], h // factor, w // factor)
        self.fc = nn.Sequential(nn.Linear(in_dim, chans[0] * self.start[1] * self.start[2]), _act(linear))
        layers: list[nn.Module] = []
        for i, ch in enumerate(chans):
            nxt = chans[i + 1] if i + 1 < len(chans) else c_out
            layers.append(nn.ConvTranspose2d(ch, nxt, 4, stride=2, padding=1))
            if i + 1 < len(chans) and not linear:
                layers += [nn.BatchNorm2d(nxt), nn.LeakyReLU(0.2)]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:  # (B, in_dim) -> (B, C, H, W)
        return self.deconv(self.fc(z).view(-1, *self.start))


def _norm(kind: str, ch: int) -> nn.Module:
    """One normalisation layer of ModelConfig.norm (see training.models.base.Norm for the choice)."""
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "group":
        return nn.GroupNorm(next(g for g in (8, 4, 2, 1) if ch % g == 0), ch)
    if kind == "instance":
        return nn.InstanceNorm2d(ch, affine=True)
    return nn.Identity()


def _conv3(c_in: int, c_out: int) -> nn.Conv2d:
    # Replicated borders: zero padding darkens every border of a reconstruction, which an anomaly map would
    # show along each image and tile edge. ("reflect" fails on the 1-pixel latent of the smallest inputs.)
    return nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="replicate")


class ResBlock(nn.Module):
    """act(x + norm(conv(act(norm(conv(x)))))): two 3x3 convs at one resolution and width."""

    def __init__(self, ch: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv3(ch, ch), _norm(norm, ch), nn.LeakyReLU(0.2), _conv3(ch, ch),
                                  _norm(norm, ch))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:  # (B, ch, H, W) -> (B, ch, H, W)
        return self.act(x + self.body(x))


class FCNEncoder(nn.Module):
    """Per level a stride-2 4x4 conv (halves H and W), then `res_blocks` residual blocks; a 1x1 conv to the
    latent channels last, with no activation (a linear code, like the flat backbones' heads).

    No layer looks at the size of its input, so one graph runs on a crop or a whole photo."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], out_channels: int, res_blocks: int = 1,
                 norm: str = "batch") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for ch in channels:
            layers += [nn.Conv2d(c, ch, 4, stride=2, padding=1, padding_mode="replicate"), _norm(norm, ch),
                       nn.LeakyReLU(0.2)]
            layers += [ResBlock(ch, norm) for _ in range(res_blocks)]
            c = ch
        self.net = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, out_channels, 1)
        self.multiple = 2 ** len(channels)

    def features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, channels[-1], H / 2**k, W / 2**k)
        return self.net(x)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, out_channels, H / 2**k, W / 2**k)
        return self.head(self.net(x))


class FCNDecoder(nn.Module):
    """A 3x3 conv from the code, then per level (deepest first) `res_blocks` residual blocks, a nearest 2x
    upsampling and a 3x3 conv. Upsample-then-conv leaves no checkerboard, which a stride-2 transposed conv
    does and which an anomaly map would show as a grid. The last conv gives the image channels' logits."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], out_channels: int, res_blocks: int = 1,
                 norm: str = "batch") -> None:
        super().__init__()
        chans = list(reversed(channels))
        layers: list[nn.Module] = [_conv3(in_channels, chans[0]), _norm(norm, chans[0]), nn.LeakyReLU(0.2)]
        for i, ch in enumerate(chans):
            layers += [ResBlock(ch, norm) for _ in range(res_blocks)]
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            if i + 1 < len(chans):
                layers += [_conv3(ch, chans[i + 1]), _norm(norm, chans[i + 1]), nn.LeakyReLU(0.2)]
            else:
                layers.append(_conv3(ch, out_channels))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:  # (B, in_channels, h, w) -> (B, C, h * 2**k, w * 2**k)
        return self.net(z)


def make_encoder(cfg: ModelConfig, out_dim: int, linear: bool = False, label_dim: int = 0
                 ) -> MLPEncoder | ConvEncoder | FCNEncoder:
    """The encoder of `cfg.backbone`; `out_dim` is the code size, or the latent channels for "fcn";
    `label_dim` > 0: it also takes a one-hot label of that size (flat backbones only)."""
    if cfg.backbone == "fcn":
        if label_dim:
            raise ValueError("the fcn backbone takes no label")
        return FCNEncoder(cfg.input_shape[0], cfg.channels, out_dim, cfg.res_blocks, cfg.norm)
    if cfg.backbone == "conv":
        return ConvEncoder(cfg.input_shape, cfg.channels, out_dim, linear=linear, label_dim=label_dim)
    return MLPEncoder(cfg.input_shape, cfg.hidden, out_dim, linear=linear, label_dim=label_dim)


def make_decoder(cfg: ModelConfig, in_dim: int, linear: bool = False) -> nn.Module:
    """The decoder of `cfg.backbone` (to logits); `in_dim` is the code size, or the latent channels."""
    if cfg.backbone == "fcn":
        return FCNDecoder(in_dim, cfg.channels, cfg.input_shape[0], cfg.res_blocks, cfg.norm)
    if cfg.backbone == "conv":
        return ConvDecoder(in_dim, cfg.channels, cfg.input_shape, linear=linear)
    return MLPDecoder(in_dim, cfg.hidden, cfg.input_shape, linear=linear)
