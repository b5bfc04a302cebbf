"""Wasserstein autoencoder with the MMD penalty (WAE-MMD, Tolstikhin et al. 2018) and the IMQ kernel."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from training.models.ae import AEConfig, AutoEncoder
from training.models.base import check_fields


@dataclass(frozen=True)
class WAEConfig(AEConfig):
    no_fcn: ClassVar[str | None] = (
        "its MMD matches a flat code to a prior to sample from, and a fully convolutional model serves no "
        "samples")
    mmd_weight: float = 10.0  # lambda in ||x - D(E(x))||^2 + lambda * MMD(q(z), N(0, I))
    prior_var: float = 1.0  # sigma^2 of the N(0, sigma^2 I) prior, which sets the kernel's scale
    scales: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # the paper's sum over kernel widths

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, non_negative=("mmd_weight",), positive=("prior_var",))
        if not self.scales or any(not (math.isfinite(s) and s > 0) for s in self.scales):
            raise ValueError(f"scales must be finite numbers > 0, got {self.scales}")


def _sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise squared distances (n, m), smooth at 0 (cdist's sqrt has no gradient there)."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2.0 * a @ b.T).clamp_min(0.0)


def imq_mmd(x: Tensor, y: Tensor, prior_var: float = 1.0,
            scales: tuple[float, ...] = WAEConfig.scales) -> Tensor:
    """Unbiased MMD^2 estimate between samples x (n, d) and y (m, d) with the inverse multiquadratics kernel.

    k(a, b) = sum_s C_s / (C_s + ||a - b||^2), C_s = 2 d sigma^2 s. The IMQ's heavy tails keep gradients
    alive for codes far from the prior, where an RBF kernel would vanish.
    """
    if torch.is_autocast_enabled(x.device.type):  # distances of nearby codes need float32, not bf16
        with torch.autocast(x.device.type, enabled=False):
            return imq_mmd(x.float(), y.float(), prior_var, scales)
    n, m, d = len(x), len(y), x.shape[1]
    dxx, dyy, dxy = _sq_dist(x, x), _sq_dist(y, y), _sq_dist(x, y)
    total = x.new_zeros(())
    for s in scales:
        c = 2.0 * d * prior_var * s
        kxx, kyy, kxy = c / (c + dxx), c / (c + dyy), c / (c + dxy)
        # the diagonals (k(a, a) = 1) are left out of the within-sample means: that makes it unbiased
        total = total + (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        total = total + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        total = total - 2.0 * kxy.mean()
    return total


class WAE(AutoEncoder):
    """||x - D(E(x))||^2 + lambda * MMD(E(x), z ~ N(0, I)).

    The aggregate posterior is matched to the prior, not each q(z|x): codes of different images stay apart.
    """

    family: ClassVar[str] = "wae"
    variant: ClassVar[str] = "mmd"
    prior_kind = "normal"
    cfg: WAEConfig

    def penalties(self, x: Tensor, z: Tensor) -> dict[str, Tensor]:
        prior = torch.randn_like(z) * self.cfg.prior_var**0.5
        return {"mmd": self.cfg.mmd_weight * imq_mmd(z, prior, self.cfg.prior_var, self.cfg.scales)}
