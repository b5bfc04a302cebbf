"""Denoising autoencoder: reconstruct the CLEAN image from a corrupted copy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from training.models.ae import AEConfig, AutoEncoder
from training.models.base import ModelOutput, check_fields

Corruption = Literal["gaussian", "masking", "salt-and-pepper"]


@dataclass(frozen=True)
class DenoisingConfig(AEConfig):
    corruption: Corruption = "gaussian"
    # gaussian: noise std; masking: fraction of pixels set to 0; salt-and-pepper: fraction set to 0 or 1
    noise_level: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, non_negative=("noise_level",))
        if self.corruption != "gaussian" and self.noise_level > 1:
            raise ValueError(f"noise_level is a fraction of pixels for {self.corruption}: <= 1, got "
                             f"{self.noise_level}")


def corrupt(x: Tensor, kind: Corruption, level: float, generator: torch.Generator | None = None) -> Tensor:
    """A corrupted copy of x (B, C, H, W) in [0, 1], still in [0, 1]."""
    if kind == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + level * noise).clamp(0, 1)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if kind == "masking":
        return torch.where(u < level, torch.zeros_like(x), x)
    if kind == "salt-and-pepper":
        # u < level/2 -> pepper (0); level/2 <= u < level -> salt (1); else untouched
        salt = torch.where(u < level / 2, torch.zeros_like(x), torch.ones_like(x))
        return torch.where(u < level, salt, x)
    raise ValueError(f"unknown corruption {kind!r}")


class DenoisingAE(AutoEncoder):
    """min ||x - D(E(x~))||^2 with x~ = corrupt(x): the loss is against the clean x, never x~.

    The corruption is applied in every call of forward (training and validation alike), so the validation
    loss measures the same denoising objective the model is trained on.
    """

    variant: ClassVar[str] = "denoising"
    cfg: DenoisingConfig

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return corrupt(x, self.cfg.corruption, self.cfg.noise_level, generator)

    def forward(self, x: Tensor, phase: str = "main") -> ModelOutput:
        x_noisy = self.corrupt(x)
        z = self.code(x_noisy)  # (B, d)
        x_hat = self.reconstruct(z)  # (B, C, H, W): the clean estimate
        return self.output(x, x_hat, z, {})
