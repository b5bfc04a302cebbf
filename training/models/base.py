"""What every model family provides, so that one trainer, one exporter and one calibrator serve them all.

A family is an `nn.Module` subclass of `GenerativeModel` with a frozen config dataclass beside it.

Training is a list of `Stage`s; each stage runs epochs over the data, and for every batch it takes one
optimiser step per *phase* in `stage.phases`, in order. A phase is a name: the trainer calls
`model(x, phase=name)` (through DDP when distributed), backpropagates `ModelOutput.loss`, and steps the
optimiser that holds `model.phase_parameters(name)`. Plain families have one stage with one phase
("main"); AAE has ("recon", "disc", "gen"); a GAN has ("disc",) * k + ("gen",) and then a second stage
that trains its f-AnoGAN encoder.

Conditional families (`conditional = True`: training.models.cvae, cgan, saae) also take the class label:
the trainer calls `model(x, phase=name, y=labels)` with the batch's int64 labels (B,), and their graphs take
the one-hot label as a second input (`GraphExport.num_classes`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

#: "mlp" and "conv" end in a flat latent (B, latent_dim) and run at input_shape only; "fcn" is fully
#: convolutional: a spatial latent (B, latent_dim, H / 2**k, W / 2**k), at any H and W that are multiples
#: of 2**k (k = len(channels)).
Backbone = Literal["mlp", "conv", "fcn"]
#: Normalisation inside the fcn backbone. "batch" (the default) is a fixed per-channel affine map in eval
#: mode, so a pixel's output depends on its neighbourhood only: a crop, a tile and a whole photo agree
#: away from their borders. "group" and "instance" normalise each image by its own statistics, so an output
#: depends on the whole input (its size, and any defect in it): offered for experiments, not for maps.
Norm = Literal["batch", "group", "instance", "none"]


@dataclass(frozen=True)
class ModelConfig:
    """Fields every family shares. Families subclass it and add their own knobs.

    Fully convolutional backbone ("fcn"): ae, ae-denoising, ae-sparse-l1 and ae-sparse-kl have one (their
    losses are sums over code units and pixels, which a spatial code keeps). The others say why not in
    `no_fcn`: a VAE's ELBO score and IWAE bound, and the AAE/WAE/GAN priors, are over a flat code that a
    spatial model does not have (and a fully convolutional model serves no samples); the contractive
    penalty takes one backward pass per code unit, which a spatial code has thousands of; the linear AE's
    point is the PCA subspace of whole images.
    """

    #: Why a family has no fully convolutional form; None: it has one.
    no_fcn: ClassVar[str | None] = None

    input_shape: tuple[int, int, int] = (1, 8, 8)  # (C, H, W); for "fcn", the training crop
    latent_dim: int = 8  # the code size; for "fcn", the latent channels C_z
    backbone: Backbone = "mlp"
    hidden: tuple[int, ...] = (256, 128)  # MLP widths, input side first
    channels: tuple[int, ...] = (32, 64)  # conv and fcn widths, input side first; each level halves H and W
    res_blocks: int = 1  # fcn: residual blocks (two 3x3 convs) after each down- and before each up-sampling
    norm: Norm = "batch"  # fcn: see Norm
    lr: float = 1e-3
    weight_decay: float = 0.0
    # σ (pixels) of a gaussian blur on the residual before squaring, in the reconstruction anomaly score
    # (service.store.scores.reconstruction): 0 is the plain MSE; about 1 suits 28x28 digits
    anomaly_blur: float = 0.0

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be three sizes >= 1 (C, H, W), got {self.input_shape}")
        check_fields(self, at_least_one=("latent_dim",), positive=("lr",),
                     non_negative=("weight_decay", "anomaly_blur", "res_blocks"),
                     widths=("hidden", "channels"))
        if self.backbone == "fcn":
            if self.no_fcn is not None:
                raise ValueError(f"backbone 'fcn' is not available for this family: {self.no_fcn}")
            _, h, w = self.input_shape
            if not self.channels or h % self.multiple or w % self.multiple:
                raise ValueError(f"backbone 'fcn' with {len(self.channels)} levels (channels "
                                 f"{self.channels}) needs H and W multiples of {self.multiple}, got {h}x{w}")

    @property
    def spatial(self) -> bool:
        """True for the fully convolutional backbone: a spatial latent, any size that is a multiple."""
        return self.backbone == "fcn"

    @property
    def multiple(self) -> int:
        """H and W of an fcn model's input must be multiples of this: 2 ** depth."""
        return 2 ** len(self.channels)


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
    code: Tensor | None = None  # (B, latent_dim), or (B, latent_dim, H / 2**k, W / 2**k) for "fcn"


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
    spatial: bool = False  # H and W (dims 2 and 3) of every input and output are dynamic too
    #: > 0: the graph takes a second input, the one-hot label (B, num_classes) float32, named input_names[1]
    num_classes: int = 0

    def examples(self) -> tuple[Tensor, ...]:
        """The example inputs: `example`, and for a labelled graph one-hot labels cycling over the classes."""
        if not self.num_classes:
            return (self.example,)
        idx = torch.arange(len(self.example)) % self.num_classes
        return self.example, torch.nn.functional.one_hot(idx, self.num_classes).float()


class GenerativeModel(nn.Module):
    """Base class of every family. Subclasses set the class variables and implement the abstract methods."""

    family: ClassVar[str]  # one of service.store.manifest.Family
    variant: ClassVar[str]  # e.g. "plain", "sparse-l1", "beta"
    #: The prior the family is trained against. "normal": N(0, I), which `sample` draws from unless the
    #: family's config asks for more (see `latent_prior_kind`); "fitted": a Gaussian/GMM is fitted on the
    #: training codes after training.
    prior_kind: ClassVar[Literal["normal", "fitted"]] = "fitted"
    #: True for the families that take a class label beside the image and the code (see the module doc).
    conditional: ClassVar[bool] = False

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

    @property
    def num_classes(self) -> int:
        """K, the classes of a conditional family's label; 0 for the unconditional ones."""
        return int(getattr(self.cfg, "num_classes", 0)) if self.conditional else 0

    def class_prior_kind(self) -> str | None:
        """A conditional family's per-class sampling prior ("gaussian", "gmm": fitted on each class's
        training codes), or None: the latent prior serves every class."""
        return None

    # --- helpers for subclasses ---------------------------------------------------------------
    def example_images(self, batch: int = 2) -> Tensor:
        return torch.rand(batch, *self.cfg.input_shape)

    def example_codes(self, batch: int = 2) -> Tensor:
        if self.cfg.spatial:
            _, h, w = self.cfg.input_shape
            m = self.cfg.multiple
            return torch.randn(batch, self.cfg.latent_dim, h // m, w // m)  # (B, C_z, h, w)
        return torch.randn(batch, self.cfg.latent_dim)
