"""Supervised adversarial autoencoder (Makhzani et al., 2016, section 5): the label enters the decoder, and
the encoder, which sees only the image, is pushed by a code discriminator to give codes that look like
N(0, I). The decoder is told the class, so the code should carry the rest: the style. Sampling a class is
decoding z ~ N(0, I) (or that class's fitted prior) with its label; restyling is decoding an image's code
with another label.

The encoder is the paper's "Gaussian posterior" kind rather than a deterministic one: in training the code
is z = E(x) + code_noise * eps, for the decoder and the discriminator alike (the prior is matched by the
noisy codes, which are what the decoder learns to read), and E(x) ends in a batch normalisation without
affine parameters, so its units have unit variance and the noise's share of the code cannot be shrunk by
scaling the code up. Why: a deterministic code is a channel of unlimited capacity, so the encoder keeps the
class in it (it is the largest part of an image's variance), the decoder reads the class from z and ignores
y: on digits (training-split proxy, 3 seeds) 35% of the samples drawn from N(0, I) for a label were of that
label, and 23% of restyled images of their new class (a discriminator that also saw the label, or more
adversarial weight, changed neither). Through a noisy channel what the label already says is not worth
sending. The noise alone was not enough on MNIST (12 epochs, conv: 58% and 14% at code_noise 1.0: the codes
grew); standardised codes with code_noise 1.0 give 99% and 95% there. The exported encoder gives the
standardised mean E(x).

Per batch, as the AAE: recon on encoder + decoder(cat(z, y)), then disc and gen on the codes. A family file
of its own (subclassing AdversarialAE), not a `conditional` flag: see training.models.cvae.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from training.models.aae import AAEConfig, AdversarialAE
from training.models.ae import _Encode, sum_sq_error
from training.models.backbones import make_decoder
from training.models.base import GraphExport, ModelOutput, check_fields
from training.models.conditional import LABEL_INPUT, ClassPrior, Labelled, check_label_fields, one_hot


@dataclass(frozen=True)
class SAAEConfig(AAEConfig):
    num_classes: int = 10  # K, the label's classes; the pipeline sets it from the data
    # std of the Gaussian posterior's noise on the code in training (0: a deterministic encoder, which keeps
    # the class in the code: see the module docstring)
    code_noise: float = 1.0
    # per-class sampling prior: a density fitted on each class's training codes (see conditional.ClassPrior);
    # "none" samples every class from N(0, I), the prior the codes were matched to
    class_prior: ClassPrior = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, non_negative=("code_noise",))
        check_label_fields(self)


class SupervisedAAE(AdversarialAE):
    family: ClassVar[str] = "aae"
    variant: ClassVar[str] = "supervised"
    conditional: ClassVar[bool] = True
    cfg: SAAEConfig

    def __init__(self, cfg: SAAEConfig) -> None:
        super().__init__(cfg)  # encoder and code discriminator; the AAE's label-free decoder is replaced here
        self.decoder = make_decoder(cfg, cfg.latent_dim + cfg.num_classes)  # cat(z, y) -> pixel logits
        # the code standardised per unit (zero mean, unit variance over a batch; running statistics once
        # trained), so the noise's share of it is fixed: see the module docstring
        self.code_norm = nn.BatchNorm1d(cfg.latent_dim, affine=False)

    def code(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, d), the posterior mean
        return self.code_norm(self.encoder(x))

    def forward(self, x: Tensor, phase: str = "main", y: Tensor | None = None) -> ModelOutput:
        z = self.code(x)  # (B, d): the posterior mean
        if self.training and self.cfg.code_noise > 0:  # a sample of the Gaussian posterior
            z = z + self.cfg.code_noise * torch.randn_like(z)
        if phase in ("recon", "main"):
            return self.output(x, self.decode(z, y), z, {})
        return self.adversarial(z, phase, self.discriminator)

    @torch.no_grad()
    def validation_loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The reconstruction loss given the label, from the mean code (the adversarial terms are a game)."""
        return sum_sq_error(self.decode(self.code(x), y), x)

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.code(x)  # the style: the encoder sees the image only

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:  # (B, d), (B, K) -> (B, C, H, W)
        y1 = one_hot(y, self.cfg.num_classes)
        return torch.sigmoid(self.decoder(torch.cat([z, y1.to(z.dtype)], dim=1)))

    def class_prior_kind(self) -> str | None:
        return None if self.cfg.class_prior == "none" else self.cfg.class_prior

    def export_graphs(self) -> dict[str, GraphExport]:
        self.eval()  # BatchNorm must export with its running statistics
        return {
            "encoder": GraphExport(_Encode(self).eval(), ["x"], ["z_mean"], self.example_images()),
            "decoder": GraphExport(Labelled(self, "decode").eval(), ["z", LABEL_INPUT], ["x_hat"],
                                   self.example_codes(), num_classes=self.cfg.num_classes),
        }
