"""The model zoo: a registry from names to (model class, config class).

Parametrized tests iterate over REGISTRY, so a new family is tested as soon as it is registered here.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.models.ae import AEConfig, AutoEncoder
from training.models.base import GenerativeModel, GraphExport, ModelConfig, ModelOutput, Stage


@dataclass(frozen=True)
class Entry:
    model: type[GenerativeModel]
    config: type[ModelConfig]


REGISTRY: dict[str, Entry] = {
    "ae": Entry(AutoEncoder, AEConfig),
}


def build(name: str, **overrides: object) -> GenerativeModel:
    """Build a registered model with its default config, overridden by keyword."""
    try:
        entry = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
    return entry.model(entry.config(**overrides))  # type: ignore[arg-type]


__all__ = ["REGISTRY", "Entry", "GenerativeModel", "GraphExport", "ModelConfig", "ModelOutput", "Stage", "build"]
