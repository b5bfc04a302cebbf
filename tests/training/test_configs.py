"""Every example config in configs/ resolves: trainer fields and model fields are known and well typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import model_config, resolve

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


def test_there_are_example_configs() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_resolves(path: Path) -> None:
    spec = resolve(path)
    shape = (1, 28, 28) if "mnist" in str(spec.train.data) else (1, 8, 8)
    if spec.train.crop is not None:  # trained on random crops: the model is built for the crop
        shape = (1, spec.train.crop, spec.train.crop)
    cfg = model_config(spec.train.model, spec.model, input_shape=shape)
    for key in spec.model:
        assert hasattr(cfg, key), key
