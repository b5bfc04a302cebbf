"""The model zoo: a registry from names to (model class, config class).

Parametrized tests iterate over REGISTRY, so a new family is tested as soon as it is registered here.
Zoo model names are `<registry-name>-<dataset>`, e.g. `vae-digits`. The conditional families (`cvae`,
`cgan`, `saae`: `Entry.model.conditional`) take a class label too; `UNCONDITIONAL` lists the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.models.aae import AAEConfig, AdversarialAE
from training.models.ae import AEConfig, AutoEncoder
from training.models.ae_contractive import ContractiveAE, ContractiveConfig
from training.models.ae_denoising import DenoisingAE, DenoisingConfig
from training.models.ae_linear import LinearAE, LinearAEConfig
from training.models.ae_sparse import SparseKLAE, SparseKLConfig, SparseL1AE, SparseL1Config
from training.models.base import GenerativeModel, GraphExport, ModelConfig, ModelOutput, Stage
from training.models.cgan import CGAN, CGANConfig
from training.models.cvae import CVAE, CVAEConfig
from training.models.draem import Draem, DraemConfig
from training.models.gan import GAN, GANConfig
from training.models.saae import SAAEConfig, SupervisedAAE
from training.models.vae import VAE, BetaVAE, BetaVAEConfig, VAEConfig
from training.models.wae import WAE, WAEConfig


@dataclass(frozen=True)
class Entry:
    model: type[GenerativeModel]
    config: type[ModelConfig]


REGISTRY: dict[str, Entry] = {
    "ae": Entry(AutoEncoder, AEConfig),
    "ae-sparse-l1": Entry(SparseL1AE, SparseL1Config),
    "ae-sparse-kl": Entry(SparseKLAE, SparseKLConfig),
    "ae-denoising": Entry(DenoisingAE, DenoisingConfig),
    "ae-contractive": Entry(ContractiveAE, ContractiveConfig),
    "ae-linear": Entry(LinearAE, LinearAEConfig),
    "draem": Entry(Draem, DraemConfig),
    "vae": Entry(VAE, VAEConfig),
    "beta-vae": Entry(BetaVAE, BetaVAEConfig),
    "aae": Entry(AdversarialAE, AAEConfig),
    "wae": Entry(WAE, WAEConfig),
    "gan": Entry(GAN, GANConfig),
    "cvae": Entry(CVAE, CVAEConfig),
    "cgan": Entry(CGAN, CGANConfig),
    "saae": Entry(SupervisedAAE, SAAEConfig),
}
#: The registry names of the families that take no label.
UNCONDITIONAL: tuple[str, ...] = tuple(n for n, e in REGISTRY.items() if not e.model.conditional)


def build(name: str, **overrides: object) -> GenerativeModel:
    """Build a registered model with its default config, overridden by keyword."""
    try:
        entry = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
    return entry.model(entry.config(**overrides))  # type: ignore[arg-type]


__all__ = [
    "REGISTRY", "UNCONDITIONAL", "Entry", "GenerativeModel", "GraphExport", "ModelConfig", "ModelOutput",
    "Stage", "build",
]
