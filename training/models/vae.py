"""Variational autoencoder and beta-VAE: Bernoulli or Gaussian likelihood, the reparameterisation trick and
the closed-form KL.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.ae import _Decode
from training.models.backbones import make_decoder, make_encoder
from training.models.base import GenerativeModel, GraphExport, ModelConfig, ModelOutput, check_fields

Likelihood = Literal["bernoulli", "gaussian"]
#: What `sample` draws codes from. "normal": N(0, I), the prior of the ELBO. "gaussian" / "gmm": a density
#: fitted on the posterior means of the training images after training (two-stage / ex-post density
#: estimation: Dai & Wipf 2019, Ghosh et al. 2020); it avoids the "holes" of N(0, I) that the aggregate
#: posterior does not cover, where the decoder was never trained.
VAEPrior = Literal["normal", "gaussian", "gmm"]
VAE_PRIORS: tuple[str, ...] = typing.get_args(VAEPrior)


@dataclass(frozen=True)
class VAEConfig(ModelConfig):
    no_fcn: ClassVar[str | None] = (
        "its ELBO score, IWAE bound and sampling prior are over a flat code (service.store.scores.vae_elbo "
        "sums the KL over one axis); use ae or ae-denoising for maps")
    # gaussian: N(x; sigmoid(logits), sigma^2), a density on grey-level pixels. bernoulli: BCE with logits,
    # the binarised-MNIST convention; on grey 8x8 digits its signal is weak and the KL term wins (posterior
    # collapse: ~3 nats of KL for the VAE and none at all for beta=4), so gaussian is the default.
    likelihood: Likelihood = "gaussian"
    sigma: float = 0.1  # decoder std of the gaussian likelihood (fixed, not learned)
    beta: float = 1.0  # weight of the KL term; 1 is the true ELBO
    prior: VAEPrior = "normal"  # the published sampling prior; the fitted ones use [train] prior_components

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, positive=("sigma",), non_negative=("beta",))
        if self.prior not in VAE_PRIORS:  # the TOML/CLI path checks the Literal; direct construction too
            raise ValueError(f"unknown VAE prior {self.prior!r}; choose one of {', '.join(VAE_PRIORS)}")


@dataclass(frozen=True)
class BetaVAEConfig(VAEConfig):
    beta: float = 4.0  # Higgins et al.: beta > 1 trades reconstruction for a more factorised code


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per row, in closed form. (B, d) -> (B,)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


class VAE(GenerativeModel):
    """loss = E_q[-log p(x|z)] + beta * KL(q(z|x) || N(0, I)), one reparameterised sample per image."""

    family: ClassVar[str] = "vae"
    variant: ClassVar[str] = "plain"
    prior_kind = "normal"
    cfg: VAEConfig

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__(cfg)
        self.encoder = make_encoder(cfg, 2 * cfg.latent_dim)  # -> [mu, logvar]
        self.decoder = make_decoder(cfg, cfg.latent_dim)  # -> pixel logits

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar), each (B, d). logvar is clamped so exp() cannot overflow early in training."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def log_likelihood(self, x: Tensor, logits: Tensor) -> Tensor:
        """log p(x|z) per image (B,), summed over pixels; the decoder mean is sigmoid(logits)."""
        logits = logits.float()  # under bf16 autocast: the squared error / sigma^2 needs float32
        if self.cfg.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            s2 = self.cfg.sigma**2
            nll = 0.5 * (x - torch.sigmoid(logits)).pow(2) / s2 + 0.5 * math.log(2 * math.pi * s2)
        return -nll.flatten(1).sum(dim=1)

    def forward(self, x: Tensor, phase: str = "main") -> ModelOutput:
        return self.elbo(x, *self.posterior(x), self.decoder)

    def elbo(self, x: Tensor, mu: Tensor, logvar: Tensor, logits_of: Callable[[Tensor], Tensor]
             ) -> ModelOutput:
        """The loss from the posterior (mu, logvar), each (B, d), and the decoder's map z -> pixel logits."""
        # the reparameterisation trick: the noise is an input, so gradients flow to mu and logvar
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        logits = logits_of(z)  # (B, C, H, W)
        rec = -self.log_likelihood(x, logits).mean()
        kl = gaussian_kl(mu, logvar).mean()
        loss = rec + self.cfg.beta * kl
        terms = {"rec": rec.detach(), "kl": kl.detach()}
        return ModelOutput(loss=loss, terms=terms, recon=torch.sigmoid(logits), code=mu)

    def encode(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(z))

    @torch.no_grad()
    def importance_sampled_nll(self, x: Tensor, k: int) -> Tensor:
        """-log p(x) per image (B,), in nats: -log mean_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x).

        Burda et al.'s IWAE bound; it tightens towards the true NLL as k grows (k=1 is the negative ELBO).
        """
        was_training = self.training
        self.eval()  # BatchNorm running statistics, as served
        nll = self.iwae(x, *self.posterior(x), self.decoder, k)
        self.train(was_training)
        return nll

    def iwae(self, x: Tensor, mu: Tensor, logvar: Tensor, logits_of: Callable[[Tensor], Tensor], k: int
             ) -> Tensor:
        """The IWAE estimate of -log p(x) per image (B,) from the posterior and the decoder's z -> logits."""
        std = (0.5 * logvar).exp()
        log_2pi = math.log(2 * math.pi)
        log_w = []
        for _ in range(k):  # one decoder pass per sample keeps memory at O(B) for big images
            eps = torch.randn_like(mu)
            z = mu + eps * std
            log_q = -0.5 * (eps.pow(2) + logvar + log_2pi).sum(dim=1)
            log_p = -0.5 * (z.pow(2) + log_2pi).sum(dim=1)
            log_w.append(self.log_likelihood(x, logits_of(z)) + log_p - log_q)
        return -(torch.logsumexp(torch.stack(log_w), dim=0) - math.log(k))

    def latent_prior_kind(self, fitted: str) -> str:
        return self.cfg.prior  # the VAE's own config decides; the trainer's `prior` is for deterministic AEs

    def anomaly_score(self) -> tuple[str, dict[str, float | str]]:
        return "vae_elbo", {"likelihood": self.cfg.likelihood, "sigma": float(self.cfg.sigma)}

    def export_graphs(self) -> dict[str, GraphExport]:
        self.eval()  # BatchNorm must export with its running statistics
        return {
            "encoder": GraphExport(
                _Posterior(self).eval(), ["x"], ["z_mean", "z_logvar"], self.example_images()
            ),
            "decoder": GraphExport(_Decode(self).eval(), ["z"], ["x_hat"], self.example_codes()),
        }


class BetaVAE(VAE):
    variant: ClassVar[str] = "beta"


class _Posterior(nn.Module):
    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.posterior(x)
