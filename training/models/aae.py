"""Adversarial autoencoder: a discriminator on codes pushes the aggregate posterior towards N(0, I)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.ae import AEConfig, AutoEncoder, sum_sq_error
from training.models.base import ModelOutput, Stage, check_fields


@dataclass(frozen=True)
class AAEConfig(AEConfig):
    no_fcn: ClassVar[str | None] = (
        "its discriminator shapes a flat code into a prior to sample from, and a fully convolutional model "
        "serves no samples")
    disc_hidden: tuple[int, ...] = (128, 128)  # widths of the code discriminator
    adv_weight: float = 1.0  # weight of the encoder's adversarial loss in the "gen" phase

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, non_negative=("adv_weight",), widths=("disc_hidden",))


def code_discriminator(latent_dim: int, hidden: tuple[int, ...]) -> nn.Module:
    """MLP from a code (B, d) to one logit (B, 1): "this code came from the prior"."""
    layers: list[nn.Module] = []
    width = latent_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class AdversarialAE(AutoEncoder):
    """Makhzani et al. (2016). Per batch, three optimiser steps:

    recon: ||x - D(E(x))||^2 on encoder + decoder;
    disc:  BCE(disc(z ~ N(0, I)) -> 1, disc(E(x)) -> 0) on the discriminator;
    gen:   the non-saturating -log disc(E(x)) on the encoder, so the codes look like prior samples.
    """

    family: ClassVar[str] = "aae"
    variant: ClassVar[str] = "plain"
    prior_kind = "normal"
    cfg: AAEConfig

    def __init__(self, cfg: AAEConfig) -> None:
        super().__init__(cfg)
        self.discriminator = code_discriminator(cfg.latent_dim, cfg.disc_hidden)

    def stages(self) -> list[Stage]:
        return [Stage("fit", ("recon", "disc", "gen"))]

    def phase_parameters(self, phase: str) -> Iterable[nn.Parameter]:
        if phase in ("recon", "main"):
            return [*self.encoder.parameters(), *self.decoder.parameters()]
        if phase == "disc":
            return self.discriminator.parameters()
        if phase == "gen":
            return self.encoder.parameters()
        raise ValueError(f"unknown phase {phase!r} for aae")

    def forward(self, x: Tensor, phase: str = "main") -> ModelOutput:
        z = self.code(x)  # (B, d)
        if phase in ("recon", "main"):
            x_hat = self.reconstruct(z)
            return self.output(x, x_hat, z, {})
        return self.adversarial(z, phase, self.discriminator)

    def adversarial(self, z: Tensor, phase: str, critic: Callable[[Tensor], Tensor]) -> ModelOutput:
        """The loss of a "disc" or "gen" step on the codes z (B, d); `critic`: codes -> "from the prior"
        logits (B, 1)."""
        if phase == "disc":
            prior = torch.randn_like(z)
            # codes are detached: this phase must not leave gradients on the encoder
            real, fake = critic(prior), critic(z.detach())
            loss = F.softplus(-real).mean() + F.softplus(fake).mean()  # BCE with targets 1 and 0
            return ModelOutput(loss=loss, terms={"disc": loss.detach()}, code=z)
        if phase == "gen":
            loss = self.cfg.adv_weight * F.softplus(-critic(z)).mean()  # -log sigma(disc(E(x)))
            return ModelOutput(loss=loss, terms={"gen": loss.detach()}, code=z)
        raise ValueError(f"unknown phase {phase!r} for aae")

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> Tensor:
        """The reconstruction loss: the adversarial terms are a game, not a quantity to minimise."""
        return sum_sq_error(self.reconstruct(self.code(x)), x)
