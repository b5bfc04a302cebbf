"""Conditional VAE (Sohn et al., 2015): the label enters the encoder and the decoder, so z carries what the
label does not say -- the style.

    q(z | x, y) = N(mu, diag(exp(logvar)))   encoder on (x, y)
    p(x | z, y)                              decoder on cat(z, y)
    loss = E_q[-log p(x | z, y)] + beta * KL(q(z | x, y) || N(0, I))

Everything else (likelihoods, closed-form KL, the IWAE bound, the fitted sampling prior) is the VAE's.
A separate family file rather than a `conditional` flag on VAE: every method that touches the encoder or
the decoder takes the label, so a flag would put an if in each of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from training.models.backbones import make_decoder, make_encoder
from training.models.base import GenerativeModel, GraphExport, ModelOutput
from training.models.conditional import LABEL_INPUT, ClassPrior, Labelled, check_label_fields, one_hot
from training.models.vae import VAE, VAEConfig


@dataclass(frozen=True)
class CVAEConfig(VAEConfig):
    # the decoder std, twice the VAE's: at 0.1 the reconstruction outweighs the KL enough that the code keeps
    # part of the class, and the decoder follows the code rather than the label (digits, training-split
    # proxy, 3 seeds: 86% of N(0, I) samples of the class asked for, 75% of images restyled into theirs);
    # 0.2: 98% and 98%; 0.3: 100% and 100%, blurrier. The reconstruction term grows with the pixel count:
    # grow sigma with its square root (28x28 MNIST: 0.7, 97% restyled; 0.3: 19%; bench/results/quality.md)
    sigma: float = 0.2
    num_classes: int = 10  # K, the label's classes; the pipeline sets it from the data
    # per-class sampling prior: a density fitted on each class's posterior means (see conditional.ClassPrior);
    # "none" samples every class from `prior` (N(0, I) by default)
    class_prior: ClassPrior = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_label_fields(self)


class CVAE(VAE):
    family: ClassVar[str] = "vae"
    variant: ClassVar[str] = "conditional"
    conditional: ClassVar[bool] = True
    cfg: CVAEConfig

    def __init__(self, cfg: CVAEConfig) -> None:
        GenerativeModel.__init__(self, cfg)  # the VAE's encoder and decoder take no label: build these
        k = cfg.num_classes
        self.encoder = make_encoder(cfg, 2 * cfg.latent_dim, label_dim=k)  # (x, y) -> [mu, logvar]
        self.decoder = make_decoder(cfg, cfg.latent_dim + k)  # cat(z, y) -> pixel logits

    def posterior(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(mu, logvar), each (B, d), of q(z | x, y)."""
        mu, logvar = self.encoder(x, one_hot(y, self.cfg.num_classes)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def _logits_given(self, y: Tensor | None) -> Callable[[Tensor], Tensor]:
        """z -> the pixel logits of p(x | z, y)."""
        y1 = one_hot(y, self.cfg.num_classes)
        return lambda z: self.decoder(torch.cat([z, y1.to(z.dtype)], dim=1))

    def forward(self, x: Tensor, phase: str = "main", y: Tensor | None = None) -> ModelOutput:
        return self.elbo(x, *self.posterior(x, y), self._logits_given(y))

    @torch.no_grad()
    def validation_loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.forward(x, "main", y).loss

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.posterior(x, y)[0]

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:  # (B, d), (B, K) -> (B, C, H, W)
        return torch.sigmoid(self._logits_given(y)(z))

    @torch.no_grad()
    def importance_sampled_nll(self, x: Tensor, k: int, y: Tensor | None = None) -> Tensor:
        """-log p(x | y) per image (B,), in nats: the IWAE bound given the label."""
        was_training = self.training
        self.eval()
        nll = self.iwae(x, *self.posterior(x, y), self._logits_given(y), k)
        self.train(was_training)
        return nll

    def class_prior_kind(self) -> str | None:
        return None if self.cfg.class_prior == "none" else self.cfg.class_prior

    def export_graphs(self) -> dict[str, GraphExport]:
        self.eval()  # BatchNorm must export with its running statistics
        k = self.cfg.num_classes
        return {
            "encoder": GraphExport(Labelled(self, "posterior").eval(), ["x", LABEL_INPUT],
                                   ["z_mean", "z_logvar"], self.example_images(), num_classes=k),
            "decoder": GraphExport(Labelled(self, "decode").eval(), ["z", LABEL_INPUT], ["x_hat"],
                                   self.example_codes(), num_classes=k),
        }
