"""Sparse autoencoders: an L1 penalty on the code, or a KL penalty on the mean activation of a sigmoid code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from training.models.ae import AEConfig, AutoEncoder
from training.models.base import check_fields


@dataclass(frozen=True)
class SparseL1Config(AEConfig):
    l1: float = 0.05  # lambda in ||x - D(E(x))||^2 + lambda * sum_j |z_j| (per image)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, non_negative=("l1",))


class SparseL1AE(AutoEncoder):
    """||x - D(E(x))||^2 + lambda * sum_j |z_j|: the L1 pull drives unneeded code units to exactly zero."""

    variant: ClassVar[str] = "sparse-l1"
    cfg: SparseL1Config

    def penalties(self, x: Tensor, z: Tensor) -> dict[str, Tensor]:
        return {"l1": self.cfg.l1 * z.abs().flatten(1).sum(dim=1).mean()}  # every code unit, per image


@dataclass(frozen=True)
class SparseKLConfig(AEConfig):
    rho: float = 0.1  # target mean activation of each sigmoid code unit
    kl_weight: float = 0.5  # lambda in front of sum_j KL(rho || rho_hat_j)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, non_negative=("kl_weight",))
        if not 0 < self.rho < 1:
            raise ValueError(f"rho must be in (0, 1), got {self.rho}")


def bernoulli_kl(rho: float, rho_hat: Tensor, eps: float = 1e-6) -> Tensor:
    """KL(rho || rho_hat) between Bernoulli distributions, elementwise over rho_hat."""
    rho_hat = rho_hat.clamp(eps, 1 - eps)
    return rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))


class SparseKLAE(AutoEncoder):
    """Sigmoid code h, penalty lambda * sum_j KL(rho || rho_hat_j) with rho_hat_j the batch-mean of h_j.

    The penalty is a property of the batch, not of one image: each unit should fire rarely on average.
    With the fcn backbone a unit is one channel at one position, so the penalty grows with the area, as the
    reconstruction loss does.
    """

    variant: ClassVar[str] = "sparse-kl"
    cfg: SparseKLConfig

    def code(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.encoder(x))  # (B, d) in (0, 1)

    def penalties(self, x: Tensor, z: Tensor) -> dict[str, Tensor]:
        rho_hat = z.mean(dim=0)  # (d,)
        return {"kl": self.cfg.kl_weight * bernoulli_kl(self.cfg.rho, rho_hat).sum()}
