"""Linear autoencoder: no nonlinearity anywhere, so with squared error it spans the top-d PCA subspace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from training.models.ae import AEConfig, AutoEncoder


@dataclass(frozen=True)
class LinearAEConfig(AEConfig):
    no_fcn: ClassVar[str | None] = "its point is the PCA subspace of whole images, which a conv code is not"
    hidden: tuple[int, ...] = ()  # one affine map each way: the decoder weight's columns span the subspace
    lr: float = 1e-2  # an affine model tolerates it, and the slow directions of the subspace need it


class LinearAE(AutoEncoder):
    """x_hat = W_d (W_e x + b_e) + b_d, trained with the identity output (a sigmoid would break the PCA link).

    The minimiser of the squared error over rank-d affine maps is the projection on the top-d principal
    subspace of the centred data (Baldi & Hornik, 1989); the biases absorb the mean. The decoder that is
    exported clamps to [0, 1] so that served images stay in range.
    """

    variant: ClassVar[str] = "linear"
    linear: ClassVar[bool] = True

    def reconstruct(self, z: Tensor) -> Tensor:
        return self.decoder(z)  # identity output while training

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).clamp(0, 1)
