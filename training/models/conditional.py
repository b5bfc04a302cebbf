"""What the conditional families (cvae, cgan, saae) share: the label's two forms, the per-class prior knob,
and the export wrapper of a graph that takes the label.

The contract (service.store.manifest.LabelSet): a graph that takes the label has it as its SECOND input,
named "y", one-hot float32 (N, K), so a soft label (a mix of classes) is a valid input too. The trainer hands
the models int64 class indices (B,) instead; `one_hot` turns either form into (B, K).
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from training.models.base import GenerativeModel

#: The name of the label input of every graph that takes one.
LABEL_INPUT = "y"
#: What `sample` draws a class's code from. "none": the latent prior (manifest `latent.prior`) for every
#: class. "gaussian" / "gmm": a density fitted on that class's training codes (manifest
#: `labels.class_priors`), for families whose code distribution may differ by class.
ClassPrior = Literal["none", "gaussian", "gmm"]
CLASS_PRIORS: tuple[str, ...] = typing.get_args(ClassPrior)


def one_hot(y: Tensor | None, k: int) -> Tensor:
    """(B,) class indices or an already one-hot / soft (B, K) float label -> (B, K) float."""
    if y is None:
        raise ValueError("a conditional model needs the label y: class indices (B,) or one-hot (B, K)")
    if y.is_floating_point():
        if y.ndim != 2 or y.shape[1] != k:
            raise ValueError(f"a float label must be (B, {k}), got {tuple(y.shape)}")
        return y
    return F.one_hot(y.long(), k).float()


def check_label_fields(cfg: Any) -> None:
    """ValueError when a conditional config's label fields are out of range (called from __post_init__)."""
    if cfg.num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {cfg.num_classes}")
    prior = getattr(cfg, "class_prior", "none")
    if prior not in CLASS_PRIORS:
        raise ValueError(f"unknown class_prior {prior!r}; choose one of {', '.join(CLASS_PRIORS)}")


class Labelled(nn.Module):
    """Export wrapper of a graph with two inputs: (x or z, y one-hot) -> model.<method>(a, y)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, a: Tensor, y: Tensor) -> Any:
        return getattr(self.model, self.method)(a, y)


def encode(model: GenerativeModel, x: Tensor, y: Tensor | None) -> Tensor:
    """model.encode(x), given the label y when the model is conditional (its encoder may ignore it)."""
    return model.encode(x, y) if model.conditional else model.encode(x)  # type: ignore[call-arg]


def decode(model: GenerativeModel, z: Tensor, y: Tensor | None) -> Tensor:
    """model.decode(z), given the label y when the model is conditional."""
    return model.decode(z, y) if model.conditional else model.decode(z)  # type: ignore[call-arg]
