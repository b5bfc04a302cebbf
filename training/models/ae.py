"""Plain autoencoder: min ||x - D(E(x))||^2. The base class of the deterministic AE variants."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.backbones import make_decoder, make_encoder
from training.models.base import GenerativeModel, GraphExport, ModelConfig, ModelOutput


@dataclass(frozen=True)
class AEConfig(ModelConfig):
    pass


class _Sigmoid(nn.Module):
    """Decoder wrapper for export: logits -> image in [0, 1]."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(z))


def sum_sq_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """Squared error summed over pixels, averaged over the batch: the penalty weights are per image."""
    return F.mse_loss(x_hat, x, reduction="sum") / len(x)


class AutoEncoder(GenerativeModel):
    family: ClassVar[str] = "ae"
    variant: ClassVar[str] = "plain"
    linear: ClassVar[bool] = False

    def __init__(self, cfg: AEConfig) -> None:
        super().__init__(cfg)
        self.encoder = make_encoder(cfg, cfg.latent_dim, linear=self.linear)
        self.decoder = make_decoder(cfg, cfg.latent_dim, linear=self.linear)

    def code(self, x: Tensor) -> Tensor:
        """The code the loss sees (subclasses may squash it, e.g. sparse-KL's sigmoid)."""
        return self.encoder(x)

    def reconstruct(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(z))

    def penalties(self, x: Tensor, z: Tensor) -> dict[str, Tensor]:
        """Regularisers added to the reconstruction loss, by name (already weighted). Plain AE: none."""
        return {}

    def forward(self, x: Tensor, phase: str = "main") -> ModelOutput:
        z = self.code(x)  # (B, d)
        x_hat = self.reconstruct(z)  # (B, C, H, W)
        return self.output(x, x_hat, z, self.penalties(x, z))

    def output(self, target: Tensor, x_hat: Tensor, z: Tensor, penalties: dict[str, Tensor]) -> ModelOutput:
        """Reconstruction loss against `target` plus the penalties, packed as a ModelOutput."""
        rec = sum_sq_error(x_hat, target)
        loss = rec + sum(penalties.values(), torch.zeros((), device=x_hat.device))
        terms = {"rec": rec.detach(), **{k: v.detach() for k, v in penalties.items()}}
        return ModelOutput(loss=loss, terms=terms, recon=x_hat.clamp(0, 1), code=z)

    def encode(self, x: Tensor) -> Tensor:
        return self.code(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.reconstruct(z)

    def export_graphs(self) -> dict[str, GraphExport]:
        self.eval()  # BatchNorm must export with its running statistics
        spatial = self.cfg.spatial  # fcn: H and W are dynamic as well as the batch
        return {
            "encoder": GraphExport(_Encode(self).eval(), ["x"], ["z_mean"], self.example_images(), spatial),
            "decoder": GraphExport(_Decode(self).eval(), ["z"], ["x_hat"], self.example_codes(), spatial),
        }


class _Encode(nn.Module):
    def __init__(self, model: GenerativeModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.encode(x)


class _Decode(nn.Module):
    def __init__(self, model: GenerativeModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: Tensor) -> Tensor:
        return self.model.decode(z)
