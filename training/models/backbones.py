"""Shared building blocks: MLP and conv/transposed-conv encoder and decoder backbones.

Encoders map (B, C, H, W) -> (B, out_dim); decoders map (B, in_dim) -> (B, C, H, W) *logits*
(or raw values with `activation=None`); the family decides the output nonlinearity.
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
                 linear: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), _act(linear)]
            width = h
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)
        self.features_dim = width

    def features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, features_dim): all but the head
        return self.net[:-1](x)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, out_dim)
        return self.net(x)


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
                 linear: bool = False) -> None:
        super().__init__()
        c, h, w = input_shape
        factor = 2 ** len(channels)
        if h % factor or w % factor:
            raise ValueError(f"conv backbone needs H and W divisible by {factor}, got {h}x{w}")
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

    def features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, features_dim): all but the head
        return self.conv(x)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, out_dim)
        return self.head(self.conv(x))


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


def make_encoder(cfg: ModelConfig, out_dim: int, linear: bool = False) -> MLPEncoder | ConvEncoder:
    if cfg.backbone == "conv":
        return ConvEncoder(cfg.input_shape, cfg.channels, out_dim, linear=linear)
    return MLPEncoder(cfg.input_shape, cfg.hidden, out_dim, linear=linear)


def make_decoder(cfg: ModelConfig, in_dim: int, linear: bool = False) -> nn.Module:
    if cfg.backbone == "conv":
        return ConvDecoder(in_dim, cfg.channels, cfg.input_shape, linear=linear)
    return MLPDecoder(in_dim, cfg.hidden, cfg.input_shape, linear=linear)
