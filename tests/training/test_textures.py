"""The skimage textures: a source names an upper half only, and no pixel of a lower half reaches training,
validation or calibration; the zoo's texture models are configs/fcn-texture.toml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.config import ConfigError, model_config, resolve
from training.data import DataError, load, split
from training.data import textures as tx
from training.data.crops import CropStream, open_images, split_crops

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("source", [
    "skimage:brick", "skimage:brick:lower", "skimage:brick:upper:lower", "skimage:brick:all",
    "skimage:brick+gravel:lower", "skimage:brick:UPPER",
])
def test_only_an_upper_half_can_be_named(source: str) -> None:
    with pytest.raises(DataError, match="upper half only"):
        load(source)


@pytest.mark.parametrize("source", ["skimage:camera:upper", "skimage::upper", "skimage:brick+brick:upper"])
def test_unknown_textures_are_refused(source: str) -> None:
    with pytest.raises(DataError, match="brick, grass, gravel"):
        load(source)


def test_the_upper_half_in_tiles() -> None:
    whole = tx.photo("brick")
    data = load("skimage:brick:upper")
    assert data.x.shape == (8, 1, 128, 128) and data.name == "brick-upper" and data.classes is None
    np.testing.assert_array_equal(data.x[0, 0], whole[:128, :128])
    np.testing.assert_array_equal(data.x[5, 0], whole[128:256, 128:256])  # row-major: second row, second tile
    np.testing.assert_array_equal(tx.lower_half("brick"), whole[256:])
    three = load("skimage:brick+grass+gravel:upper")
    assert len(three) == 24 and three.classes == ("brick", "grass", "gravel")
    assert three.y.tolist() == [0] * 8 + [1] * 8 + [2] * 8


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every texture with its lower half painted 1.0 and its upper half kept below 0.5: a lower-half pixel
    anywhere is then plain to see."""
    from skimage import data

    for name in tx.TEXTURES:
        real = getattr(data, name)

        def fake(real=real) -> np.ndarray:  # noqa: ANN001
            a = (np.asarray(real()) // 2).astype(np.uint8)  # at most 127 -> < 0.5
            a[tx.HALF:] = 255
            return a

        monkeypatch.setattr(data, name, fake)


def test_no_lower_half_pixel_reaches_training(poisoned: None) -> None:
    source = "skimage:brick+grass+gravel:upper"
    fixed = split(load(source), seed=0, fractions=(0.75, 0.25, 0.0))
    for part in (fixed.train, fixed.val, fixed.test):
        assert part.x.size == 0 or float(part.x.max()) < 0.5
    crops = split_crops(open_images(source), crop=64, seed=0, fractions=(0.75, 0.25, 0.0))
    assert float(crops.val.x.max()) < 0.5 and float(crops.fixed().train.x.max()) < 0.5
    stream = CropStream(crops, batch_size=64, seed=0, crops_per_image=8, epoch_crops=4096)
    seen = 0
    for x in stream.epoch(0):
        assert float(x.max()) < 0.5
        seen += len(x)
    assert seen == 4096
    assert float(tx.photo("brick")[tx.HALF:].min()) == 1.0  # the poison is there to be found


def test_the_zoo_texture_models_are_the_example_config() -> None:
    from training import zoo

    spec = resolve(ROOT / "configs" / "fcn-texture.toml")
    ours = zoo.texture_spec("brick", Path("models_store"))
    assert spec.train.model == ours.train.model == zoo.TEXTURE_MODEL
    assert spec.train.data == ours.train.data == "skimage:brick:upper"
    assert spec.train.name == ours.train.name == "ae-denoising-brick"
    for key, value in zoo.TEXTURE_TRAIN.items():
        assert getattr(spec.train, key) == value, key
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in spec.model.items()} == zoo.TEXTURE_MODEL_CFG
    cfg = model_config(spec.train.model, spec.model, input_shape=(1, spec.train.crop, spec.train.crop))
    assert cfg.spatial and spec.train.crop is not None and spec.train.crop % cfg.multiple == 0
    for t in tx.TEXTURES:
        assert zoo.texture_spec(t, Path("s")).train.data == f"skimage:{t}:upper"
    assert zoo.zoo_names()[-3:] == ["ae-denoising-brick", "ae-denoising-grass", "ae-denoising-gravel"]
    with pytest.raises(ConfigError, match="unknown zoo models"):
        zoo.build_zoo(Path("nowhere"), only=["ae-denoising-camera"])


def test_the_zoo_draem_models_are_the_example_config() -> None:
    """configs/draem-texture.toml and training.zoo's DRAEM settings are one thing, and its anomaly source
    holds none of the photographs the texture benchmark pastes as test defects."""
    import sys

    from training import zoo

    spec = resolve(ROOT / "configs" / "draem-texture.toml")
    ours = zoo.draem_spec("brick", Path("models_store"))
    assert spec.train.model == ours.train.model == zoo.SEGMENTATION_MODEL
    assert spec.train.name == ours.train.name == "draem-brick" and ours.train.seed == 0
    for key, value in zoo.DRAEM_TRAIN.items():
        assert getattr(spec.train, key) == value, key
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in spec.model.items()} == zoo.DRAEM_MODEL_CFG
    assert zoo.draem_spec("gravel", Path("s"), seed=2).train.seed == 2
    assert set(zoo.EXTRA_NAMES) == {"draem-brick", "draem-grass", "draem-gravel"}
    assert not set(zoo.EXTRA_NAMES) & set(zoo.zoo_names())  # make models leaves them out
    sys.path.insert(0, str(ROOT / "bench"))
    import texture_defects

    sources = set(zoo.DRAEM_SOURCE.split(":", 1)[1].split("+"))
    assert sources and not sources & set(texture_defects.PASTE_SOURCES)
