"""GAN with an f-AnoGAN encoder: a generator G (z -> image), a discriminator D on images, and then an
encoder E trained against the frozen G and D (Schlegl et al., 2019, the izi_f scheme), so that a GAN can
encode, interpolate real images and score anomalies like the autoencoders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.ae import _Decode, _Encode
from training.models.backbones import make_decoder, make_encoder
from training.models.base import GenerativeModel, GraphExport, ModelConfig, ModelOutput, Stage, check_fields


@dataclass(frozen=True)
class GANConfig(ModelConfig):
    no_fcn: ClassVar[str | None] = "its generator draws images from a flat code, its point is sampling"
    disc_steps: int = 1  # k: discriminator steps per generator step
    kappa: float = 1.0  # weight of the critic-feature term in the izi_f loss and score
    encoder_epochs: int | None = None  # epochs of the encoder stage; None: the trainer's epoch count
    # gamma of the R1 penalty (gamma/2) E||grad_x D(x)||^2 on real images (Mescheder et al., 2018): it keeps
    # a small D from winning outright, which with Adam's default betas otherwise ends in mode collapse
    r1: float = 10.0  # measured on digits: encoder recon MSE 0.148 (r1=0), 0.038 (r1=1), 0.030 (r1=10)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, at_least_one=("disc_steps", "encoder_epochs"), non_negative=("kappa", "r1"))


def generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss -log D(G(z)) = softplus(-logit), averaged.

    Unlike the minimax log(1 - D(G(z))), its gradient is large exactly when D confidently rejects the
    fakes, which is the situation early in training.
    """
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """BCE with targets 1 for real images and 0 for generated ones: -log D(x) - log(1 - D(G(z)))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


class GAN(GenerativeModel):
    family: ClassVar[str] = "gan"
    variant: ClassVar[str] = "plain"
    prior_kind = "normal"
    cfg: GANConfig

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__(cfg)
        self.generator = make_decoder(cfg, cfg.latent_dim)  # z -> pixel logits
        self.discriminator = make_encoder(cfg, 1)  # image -> one logit; .features() is f for izi_f
        self.encoder = make_encoder(cfg, cfg.latent_dim)  # image -> z, trained last

    # --- training -----------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        adversarial = Stage("gan", ("disc",) * self.cfg.disc_steps + ("gen",), early_stopping=False)
        return [adversarial, Stage("encoder", ("encoder",), epochs=self.cfg.encoder_epochs)]

    def phase_parameters(self, phase: str) -> Iterable[nn.Parameter]:
        modules = {
            "disc": self.discriminator, "gen": self.generator, "encoder": self.encoder, "main": self.encoder,
        }
        if phase not in modules:
            raise ValueError(f"unknown phase {phase!r} for gan")
        return modules[phase].parameters()

    def forward(self, x: Tensor, phase: str = "main") -> ModelOutput:
        if phase in ("encoder", "main"):
            return self.izi_f(x)
        return self.adversarial(x, phase, self.discriminator, self.decode)

    def adversarial(self, x: Tensor, phase: str, critic: Callable[[Tensor], Tensor],
                    generate: Callable[[Tensor], Tensor]) -> ModelOutput:
        """The loss of a "disc" or "gen" step, given the critic (image -> logit) and G (z -> image)."""
        # G and D may have been left in eval mode by the encoder stage or a validation pass
        self.generator.train(self.training)
        self.discriminator.train(self.training)
        z = torch.randn(len(x), self.cfg.latent_dim, device=x.device, dtype=x.dtype)
        fake = generate(z)  # (B, C, H, W)
        if phase == "disc":
            real = x.detach().requires_grad_(self.cfg.r1 > 0)
            real_logits = critic(real)
            # fakes detached: this phase must not leave gradients on G
            loss = discriminator_loss(real_logits, critic(fake.detach()))
            terms = {"disc": loss.detach()}
            if self.cfg.r1 > 0 and torch.is_grad_enabled():
                (g,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
                r1 = 0.5 * self.cfg.r1 * g.pow(2).flatten(1).sum(dim=1).mean()
                loss, terms["r1"] = loss + r1, r1.detach()
            return ModelOutput(loss=loss, terms=terms, code=z)
        if phase == "gen":
            loss = generator_loss(critic(fake))
            return ModelOutput(loss=loss, terms={"gen": loss.detach()}, code=z)
        raise ValueError(f"unknown phase {phase!r} for gan")

    def izi_f(self, x: Tensor, generate: Callable[[Tensor], Tensor] | None = None) -> ModelOutput:
        """||x - G(E(x))||^2 + kappa ||f(x) - f(G(E(x)))||^2, as MEANS over pixels and features (the same
        normalisation as service.store.scores.fanogan), with G and D frozen: only E is stepped. `generate`
        is G (z -> image); None: `decode`.
        """
        # Frozen also means no BatchNorm statistics updates: G and D always run in eval mode here.
        self.generator.eval()
        self.discriminator.eval()
        z = self.encoder(x)  # (B, d)
        x_hat = (generate or self.decode)(z)
        rec = F.mse_loss(x_hat, x)
        feat = F.mse_loss(self.discriminator.features(x_hat), self.discriminator.features(x).detach())
        loss = rec + self.cfg.kappa * feat
        return ModelOutput(loss=loss, terms={"rec": rec.detach(), "feat": feat.detach()}, recon=x_hat, code=z)

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> Tensor:
        """The izi_f loss: early stopping only applies to the encoder stage."""
        return self.izi_f(x).loss

    # --- inference ----------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.generator(z))

    def critic_features(self, x: Tensor) -> Tensor:
        return self.discriminator.features(x)

    def anomaly_score(self) -> tuple[str, dict[str, float | str]]:
        return "fanogan", {"kappa": float(self.cfg.kappa)}

    def export_graphs(self) -> dict[str, GraphExport]:
        self.eval()  # BatchNorm must export with its running statistics
        return {
            "encoder": GraphExport(_Encode(self).eval(), ["x"], ["z_mean"], self.example_images()),
            "decoder": GraphExport(_Decode(self).eval(), ["z"], ["x_hat"], self.example_codes()),
            "critic": GraphExport(_Critic(self).eval(), ["x"], ["features"], self.example_images()),
        }


class _Critic(nn.Module):
    def __init__(self, model: GAN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.critic_features(x)
