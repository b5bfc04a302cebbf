"""Contractive autoencoder: penalise the Frobenius norm of the code's Jacobian wrt the input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from training.models.ae import AEConfig, AutoEncoder
from training.models.base import ModelOutput, check_fields


@dataclass(frozen=True)
class ContractiveConfig(AEConfig):
    no_fcn: ClassVar[str | None] = (
        "the exact penalty takes one backward pass per code unit, and a spatial code has C_z * H * W / 4**k "
        "of them (512 for a 64x64 crop at depth 3 with 8 channels)")
    contractive: float = 0.01  # lambda in ||x - D(E(x))||^2 + lambda * ||dh/dx||_F^2 (per image)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, non_negative=("contractive",))


class ContractiveAE(AutoEncoder):
    """||x - D(E(x))||^2 + lambda * ||dh/dx||_F^2: the code is made insensitive to small input changes."""

    variant: ClassVar[str] = "contractive"
    cfg: ContractiveConfig

    def jacobian_norm2(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(code h (B, d), ||dh/dx||_F^2 per image (B,)), differentiable (create_graph) for training.

        One backward pass per code unit (d is small). Row j of each image's Jacobian is the gradient of
        sum_b h_bj wrt x_b, exact because images do not interact (with BatchNorm in train mode they do
        slightly, through the batch statistics; the penalty is then an approximation).
        """
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            h = self.code(x)  # (B, d)
            norm2 = torch.zeros(len(x), device=x.device, dtype=h.dtype)
            for j in range(h.shape[1]):
                (g,) = torch.autograd.grad(h[:, j].sum(), x, retain_graph=True, create_graph=self.training)
                norm2 = norm2 + g.pow(2).flatten(1).sum(dim=1)
        return h, norm2

    def forward(self, x: Tensor, phase: str = "main") -> ModelOutput:
        z, norm2 = self.jacobian_norm2(x)
        x_hat = self.reconstruct(z)
        return self.output(x, x_hat, z, {"contractive": self.cfg.contractive * norm2.mean()})

    def validation_loss(self, x: Tensor) -> Tensor:
        # the base class runs under no_grad, but the penalty needs input gradients
        with torch.enable_grad():
            return self.forward(x, "main").loss.detach()
