"""Random crops from images of any size (training.data.crops): what a crop holds, the seeded sampler, windows,
image folders read lazily and decoded in DataLoader workers, and a folder several times larger than the
memory the training process may use, streamed through an epoch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import DataError, ImageSet, load_channels
from training.data.crops import (
    ArrayImages,
    CropDataset,
    CropSampler,
    CropStream,
    FileImages,
    open_images,
    split_crops,
    windows,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")
ROOT = Path(__file__).resolve().parents[2]


def varied(n: int = 6, channels: int = 1, seed: int = 0) -> ArrayImages:
    """n images of different sizes (C, 20..60, 24..70), values encoding their index and position."""
    rng = np.random.default_rng(seed)
    arrays = []
    for _ in range(n):
        h, w = int(rng.integers(20, 61)), int(rng.integers(24, 71))
        arrays.append(rng.random((channels, h, w), dtype=np.float32))
    return ArrayImages("varied", tuple(arrays), np.arange(n) % 2)


def write_folder(root: Path, sizes: list[tuple[int, int]], rgb: bool = False, classes: int = 0) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate(sizes):
        folder = root / f"class{i % classes}" if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        a = rng.integers(0, 256, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
        paths.append(folder / f"img{i:03d}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


# --- crops and the sampler ----------------------------------------------------------------------------------


def test_a_crop_is_a_window_of_its_image_at_the_seeded_place() -> None:
    images = varied()
    ds = CropDataset(images, crop=16, per_image=5)
    for i in range(len(images)):
        crops = ds[(i, 123)].numpy()
        assert crops.shape == (5, 1, 16, 16)
        img = images.read(i)
        rng = np.random.default_rng(123)
        tops = rng.integers(0, img.shape[1] - 15, 5)
        lefts = rng.integers(0, img.shape[2] - 15, 5)
        for c, t, s in zip(crops, tops, lefts, strict=True):
            np.testing.assert_array_equal(c, img[:, t:t + 16, s:s + 16])
    np.testing.assert_array_equal(ds[(0, 7)].numpy(), ds[(0, 7)].numpy())  # the seed decides


def test_scale_jitter_zooms_each_crop_within_its_range() -> None:
    """A crop of a linear ramp zoomed by s spans s times the ramp's step across it: the range bounds s."""
    ramp = np.tile(np.linspace(0, 1, 200, dtype=np.float32), (1, 120, 1))  # (1, 120, 200): 1/199 per pixel
    images = ArrayImages("ramp", (ramp,), np.zeros(1, np.int64))
    ds = CropDataset(images, crop=32, per_image=64, scale_jitter=0.3)
    crops = ds[(0, 1)].numpy()
    assert crops.shape == (64, 1, 32, 32) and 0 <= crops.min() and crops.max() <= 1
    np.testing.assert_array_equal(crops, ds[(0, 1)].numpy())
    zoom = (crops[:, 0, 16, -2] - crops[:, 0, 16, 1]) / (29 / 199)  # the source pixels per output pixel
    assert zoom.min() > 1 / 1.3 - 0.03 and zoom.max() < 1.3 + 0.03
    assert zoom.min() < 0.9 and zoom.max() > 1.1  # both ways


def test_the_sampler_is_seeded_balanced_and_sharded() -> None:
    s = CropSampler(n_images=5, items=12, seed=3)
    s.set_epoch(0)
    a = list(s)
    assert list(s) == a and len(a) == 12 == len(s)
    assert sorted(i for i, _ in a[:5]) == list(range(5))  # shuffled passes over the images
    s.set_epoch(1)
    assert list(s) != a
    ranks = [CropSampler(5, 12, seed=3, rank=r, world=3) for r in range(3)]
    shards = [list(r) for r in ranks]
    assert all(len(sh) == 4 for sh in shards)
    assert sorted(x for sh in shards for x in sh) == sorted(a)  # disjoint, and together the whole epoch


def test_batches_are_the_same_with_or_without_workers() -> None:
    splits = split_crops(varied(), crop=16, seed=0, fractions=(0.5, 0.5, 0.0))
    got = []
    for workers in (0, 2):
        stream = CropStream(splits, batch_size=8, seed=0, crops_per_image=4, epoch_crops=40, workers=workers)
        got.append([x.clone() for x in stream.epoch(key=5)])
    assert [x.shape for x in got[0]] == [(8, 1, 16, 16)] * 5
    for a, b in zip(*got, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(list(stream.epoch(key=5, limit=2))) == 2


def test_windows_are_a_capped_grid() -> None:
    images = varied(3)
    w = windows(images, crop=16, stride=4, limit=10_000, seed=0)
    expect = sum(((h - 16) // 4 + 1) * ((ww - 16) // 4 + 1) for h, ww in (images.size(i) for i in range(3)))
    assert w.x.shape == (expect, 1, 16, 16)
    np.testing.assert_array_equal(w.x[1], images.read(0)[:, 0:16, 4:20])
    capped = windows(images, crop=16, stride=4, limit=7, seed=0)
    assert capped.x.shape == (7, 1, 16, 16)
    assert set(capped.y.tolist()) <= set(images.labels.tolist())


def test_split_by_image_then_windows_of_the_held_out_ones() -> None:
    images = varied(10)
    s = split_crops(images, crop=16, seed=0, fractions=(0.6, 0.2, 0.2), normal_classes=(0,))
    assert s.images[0] == len(s.train) and s.images[1] >= 1 and s.images[2] == 2  # test keeps every class
    assert set(s.train.labels.tolist()) == {0}
    assert set(s.val.y.tolist()) == {0} and len(s.test) > 0
    assert s.shape == (1, 16, 16) and s.describe()["crop"] == 16
    assert s.fixed().train.x.shape[1:] == (1, 16, 16)


def test_an_image_smaller_than_the_crop_is_named(tmp_path: Path) -> None:
    files = write_folder(tmp_path, [(40, 40), (40, 12), (50, 50)])
    with pytest.raises(DataError, match=r"img001.png: image is 12x40 \(WxH\), smaller than the 16x16 crop"):
        split_crops(open_images(tmp_path), crop=16)
    assert files


# --- sources ------------------------------------------------------------------------------------------------


def test_a_folder_is_opened_without_decoding_and_split_reads_only_held_out_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nested class folders of any size; opening reads no pixel, and the split decodes only the validation and
    test images (for their windows): the training images are left to the DataLoader."""
    from training.data import crops

    write_folder(tmp_path, [(30 + 3 * i, 40 + 5 * i) for i in range(10)], rgb=True, classes=2)
    decoded: list[Path] = []
    real = crops.read_image
    monkeypatch.setattr(crops, "read_image", lambda p, *a: decoded.append(p) or real(p, *a))
    images = open_images(tmp_path, channels=3)
    assert isinstance(images, FileImages) and decoded == []
    assert images.classes == ("class0", "class1") and images.labels.tolist() == [0] * 5 + [1] * 5
    s = split_crops(images, crop=24, seed=0, fractions=(0.6, 0.2, 0.2))
    held_out = {images.files[i] for i in range(10)} - set(s.train.files)  # type: ignore[attr-defined]
    assert set(decoded) == held_out and len(decoded) == 4
    assert s.val.x.shape[1:] == (3, 24, 24)
    batch = next(CropStream(s, batch_size=4, seed=0, crops_per_image=2).epoch(0))
    assert batch.shape == (4, 3, 24, 24) and batch.dtype == torch.float32


class _SpyImages(FileImages):
    """FileImages that note which process decoded each image."""

    def read(self, i: int) -> np.ndarray:
        with open(self.files[0].parent / "pids.txt", "a") as f:
            f.write(f"{os.getpid()}\n")
        return super().read(i)


def test_folder_images_are_decoded_in_dataloader_workers(tmp_path: Path) -> None:
    write_folder(tmp_path, [(32, 48)] * 6)
    base = open_images(tmp_path)
    assert isinstance(base, FileImages)
    spy = _SpyImages(base.name, base.files, base.labels, base.classes, base.channels)
    s = split_crops(spy, crop=16, seed=0, fractions=(0.5, 0.5, 0.0))
    (tmp_path / "pids.txt").unlink()  # the split's own reads (validation windows) happen here, of course
    stream = CropStream(s, batch_size=8, seed=0, crops_per_image=4, epoch_crops=24, workers=2)
    assert sum(len(x) for x in stream.epoch(0)) == 24
    pids = set((tmp_path / "pids.txt").read_text().split())
    assert pids and str(os.getpid()) not in pids


def test_npz_of_any_size_and_channels_either_way(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "big.npz", x=rng.integers(0, 256, (3, 90, 130, 3), dtype=np.uint8))
    images = open_images(tmp_path / "big.npz")
    assert isinstance(images, ArrayImages) and images.channels == 3 and images.size(0) == (90, 130)
    grey = open_images(tmp_path / "big.npz", channels=1)
    rgb = images.read(1)
    np.testing.assert_allclose(grey.read(1)[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], atol=1e-6)
    back = load_channels("synthetic", 3)
    assert back.shape == (3, 8, 8) and np.array_equal(back.x[:, 0], back.x[:, 2])


def test_exif_orientation_is_in_the_size(tmp_path: Path) -> None:
    im = Image.fromarray(np.zeros((20, 50), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: read_image turns it upright, 50 high and 20 wide
    im.save(tmp_path / "turned.jpg", exif=exif)
    images = open_images(tmp_path)
    assert images.size(0) == (50, 20) == images.read(0).shape[1:]


def test_array_images_share_memory_with_the_set() -> None:
    data = ImageSet("s", np.zeros((3, 1, 8, 8), np.float32), np.zeros(3, np.int64))
    assert np.shares_memory(ArrayImages.of(data).read(1), data.x)


# --- a folder larger than memory ----------------------------------------------------------------------------

STREAM_SCRIPT = textwrap.dedent("""
    import gc, json, resource, sys, time
    import torch
    from training.config import TrainConfig
    from training.data.crops import CropStream, open_images, split_crops
    from training.models import build
    from training.trainer import Trainer

    def rss_mb(field):  # VmRSS (now) or VmHWM (peak) of this process, MB
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) / 1024

    torch.set_num_threads(1)
    model = build("ae", backbone="fcn", input_shape=(3, 64, 64), channels=(8, 16), latent_dim=4)
    images = open_images(sys.argv[1], channels=3)
    splits = split_crops(images, crop=64, seed=0, fractions=(0.9, 0.1, 0.0))
    cfg = TrainConfig(data=sys.argv[1], crop=64, epochs=1, batch_size=32, crops_per_image=4, workers=2,
                      device="cpu", progress=False, threads=1)
    trainer = Trainer(model, cfg)
    trainer.validation_loss(torch.from_numpy(splits.val.x))  # the model's own working memory, once
    rss, baseline = rss_mb("VmRSS"), rss_mb("VmHWM")  # torch, the model, the capped validation windows
    t = time.perf_counter()
    fit = trainer.fit(splits)  # one epoch: every training image decoded once, in the workers
    del trainer
    gc.collect()  # the DataLoader's workers are joined: their peaks count in RUSAGE_CHILDREN
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest worker's peak
    print(json.dumps({"rss_mb": rss, "baseline_mb": baseline, "peak_mb": rss_mb("VmHWM"),
                      "worker_peak_mb": children, "train_images": len(splits.train),
                      "seconds": time.perf_counter() - t, "epochs": fit.epochs_run}))
""")


@pytest.mark.slow
def test_a_folder_larger_than_memory_streams_from_disk(tmp_path: Path) -> None:
    """256 RGB photos of 1024x1024: 3 GiB as float32 once decoded (what load_folder would hold). One epoch
    of crop training over them, decoded in 2 DataLoader workers, raises the training process's peak RSS by
    less than 100 MiB over its peak before the epoch (torch, the model's working memory on a validation
    batch), each worker stays within 100 MiB of the process it forked from, and no process reaches a quarter
    of the data (768 MiB, of which torch and the validation windows take 400 to 520 MiB before training
    starts): it is never held."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1024, 0:1024].astype(np.float32)
    for i in range(8):  # smooth content plus noise: small PNGs, fast to write, real work to decode
        base = 127 + 60 * np.sin(xx / (20 + i) + i)[..., None] * np.cos(yy / 37)[..., None] * [1, 0.8, 0.6]
        noise = rng.integers(-8, 9, (1024, 1024, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"p{i:03d}.png",
                                                                             compress_level=1)
    for i in range(8, 256):  # copies: each file is still read and decoded on its own
        shutil.copyfile(folder / f"p{i % 8:03d}.png", folder / f"p{i:03d}.png")
    decoded_mb = 256 * 3 * 1024 * 1024 * 4 / 2**20
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", STREAM_SCRIPT, str(folder)], capture_output=True, text=True,
                         env=env, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"decoded float32 {decoded_mb:.0f} MiB; RSS {r}")  # noqa: T201 - the numbers, with -s
    assert r["epochs"] == 1 and r["train_images"] == 230
    assert r["peak_mb"] - r["baseline_mb"] < 100, r
    assert r["worker_peak_mb"] - r["baseline_mb"] < 100, r
    assert max(r["peak_mb"], r["worker_peak_mb"]) < decoded_mb / 4, r
