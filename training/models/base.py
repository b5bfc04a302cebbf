"""What every model family provides, so that one trainer, one exporter and one calibrator serve them all.

A family is an `nn.Module` subclass of `GenerativeModel` with a frozen config dataclass beside it.

Training is a list of `Stage`s; each stage runs epochs over the data, and for every batch it takes one
optimiser step per *phase* in `stage.phases`, in order. A phase is a name: the trainer calls
`model(x, phase=name)` (through DDP when distributed), backpropagates `ModelOutput.loss`, and steps the
optimiser that holds `model.phase_parameters(name)`. Plain families have one stage with one phase
("main"); AAE has ("recon", "disc", "gen"); a GAN has ("disc",) * k + ("gen",) and then a second stage
that trains its f-AnoGAN encoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

Backbone = Literal["mlp", "conv"]


@dataclass(frozen=True)
class ModelConfig:
    """Fields every family shares. Families subclass it and add their own knobs."""

    input_shape: tuple[int, int, int] = (1, 8, 8)  # (C, H, W)
    latent_dim: int = 8
    backbone: Backbone = "mlp"
    hidden: tuple[int, ...] = (256, 128)  # MLP widths, input side first
    channels: tuple[int, ...] = (32, 64)  # conv widths; each conv halves H and W
    lr: float = 1e-3
    weight_decay: float = 0.0
    # σ (pixels) of a gaussian blur on the residual before squaring, in the reconstruction anomaly score
    # (service.store.scores.reconstruction): 0 is the plain MSE; about 1 suits 28x28 digits
    anomaly_blur: float = 0.0

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be three sizes >= 1 (C, H, W), got {self.input_shape}")
        check_fields(self, at_least_one=("latent_dim",), positive=("lr",),
                     non_negative=("weight_decay", "anomaly_blur"), widths=("hidden", "channels"))


def check_fields(cfg: Any, *, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
                 at_least_one: tuple[str, ...] = (), widths: tuple[str, ...] = ()) -> None:
    """Raise ValueError naming the first field of `cfg` out of its range (numbers must also be finite;
    `widths` are tuples of layer sizes, each >= 1). Families call it from their `__post_init__`, after the
    base class's checks."""
    for names, ok, what in ((positive, lambda v: v > 0, "> 0"), (non_negative, lambda v: v >= 0, ">= 0"),
                            (at_least_one, lambda v: v >= 1, ">= 1")):
        for name in names:
            value = getattr(cfg, name)
            if value is not None and not (math.isfinite(value) and ok(value)):
                raise ValueError(f"{name} must be a finite number {what}, got {value}")
    for name in widths:
        sizes = getattr(cfg, name)
        if any(w < 1 for w in sizes):
            raise ValueError(f"{name} widths must be >= 1, got {sizes}")


@dataclass
class ModelOutput:
    """The one output type of every family and phase."""

    loss: Tensor  # scalar to backpropagate for this phase
    terms: dict[str, Tensor] = field(default_factory=dict)  # named scalar loss terms, for logs
    recon: Tensor | None = None  # (B, C, H, W) in [0, 1]
    code: Tensor | None = None  # (B, latent_dim)


@dataclass(frozen=True)
class Stage:
    name: str
    phases: tuple[str, ...] = ("main",)
    epochs: int | None = None  # None: the trainer's epoch count
    early_stopping: bool = True  # adversarial stages have no meaningful validation loss


@dataclass(frozen=True)
class GraphExport:
    """A sub-module to export as one ONNX/TorchScript graph, with its tensor names and an example input."""

    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    example: Tensor  # (B, ...) example input for tracing


class GenerativeModel(nn.Module):
    """Base class of every family. Subclasses set the class variables and implement the abstract methods."""

    family: ClassVar[str]  # one of service.store.manifest.Family
    variant: ClassVar[str]  # e.g. "plain", "sparse-l1", "beta"
    #: The prior the family is trained against. "normal": N(0, I), which `sample` draws from unless the
    #: family's config asks for more (see `latent_prior_kind`); "fitted": a Gaussian/GMM is fitted on the
    #: training codes after training.
    prior_kind: ClassVar[Literal["normal", "fitted"]] = "fitted"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg

    # --- training -----------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        return [Stage("fit", ("main",))]

    def phase_parameters(self, phase: str) -> Iterable[nn.Parameter]:
        """Parameters stepped in `phase`. Default: all of them."""
        return self.parameters()

    def forward(self, x: Tensor, phase: str = "main") -> ModelOutput:  # x: (B, C, H, W) in [0, 1]
        raise NotImplementedError

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> Tensor:
        """Scalar loss on held-out data, for early stopping. Default: the main phase's loss."""
        return self.forward(x, "main").loss

    # --- inference ----------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Deterministic code (the posterior mean for VAEs). (B, C, H, W) -> (B, latent_dim)."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        """Image in [0, 1]. (B, latent_dim) -> (B, C, H, W)."""
        raise NotImplementedError

    def export_graphs(self) -> dict[str, GraphExport]:
        """Graphs to publish. Always "decoder"; "encoder" when the family can encode; extras as needed."""
        raise NotImplementedError

    def anomaly_score(self) -> tuple[str, dict[str, float | str]]:
        """(score kind, params) as defined in service.store.scores. Default: reconstruction error."""
        blur = float(self.cfg.anomaly_blur)
        return "reconstruction", ({"blur_sigma": blur} if blur > 0 else {})

    def latent_prior_kind(self, fitted: str) -> str:
        """The prior the published model samples from: "normal" (N(0, I)) or the kind of density fitted on
        the training codes ("gaussian", "gmm"). `fitted` is the trainer's choice for "fitted" families."""
        return "normal" if self.prior_kind == "normal" else fitted

    # --- helpers for subclasses ---------------------------------------------------------------
    def example_images(self, batch: int = 2) -> Tensor:
        return torch.rand(batch, *self.cfg.input_shape)

    def example_codes(self, batch: int = 2) -> Tensor:
        return torch.randn(batch, self.cfg.latent_dim)
