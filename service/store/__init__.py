"""The models store: its contract (manifest), layout and score definitions.

Owned by the consumer (`service`); `training` imports it to write what the service will read.
"""

from service.store.layout import MANIFEST_NAME, sha256_file, version_dir, version_numbers
from service.store.manifest import (
    ALL_CAPABILITIES,
    SCHEMA_VERSION,
    AnomalySpec,
    DataSpec,
    GaussianPrior,
    GMMPrior,
    GraphSpec,
    LatentSpec,
    Manifest,
    NormalPrior,
    TensorSpec,
    is_valid_model_name,
)

__all__ = [
    "ALL_CAPABILITIES", "MANIFEST_NAME", "SCHEMA_VERSION", "AnomalySpec", "DataSpec", "GMMPrior",
    "GaussianPrior", "GraphSpec", "LatentSpec", "Manifest", "NormalPrior", "TensorSpec",
    "is_valid_model_name", "sha256_file", "version_dir", "version_numbers",
]
