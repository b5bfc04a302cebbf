"""Data loaders: IDX (raw and gz), .npz, image folders, the real MNIST t10k when present, and seeded splits.

Every bad-file case asserts a DataError whose message names the offending file, because that is what a user
needs to fix their data.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import DataError, ImageSet, digits, load, split, synthetic
from training.data.folder import load_folder
from training.data.idx import IMAGES_MAGIC, LABELS_MAGIC, load_idx, read_idx
from training.data.npz import load_npz

MNIST_DIR = Path(os.environ.get("LATENTSERVE_MNIST_DIR")
                 or Path(__file__).resolve().parents[3] / "shared/datasets/mnist-t10k")


# --------------------------------------------------------------------------------------------------- helpers
def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """Serialise a uint8 array as IDX (optionally forcing the magic number)."""
    magic = (0x08 << 8 | arr.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(">u1").tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx(folder: Path, prefix: str, n: int, hw: tuple[int, int] = (5, 4), gz: bool = False,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *hw), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.uint8)
    ext = ".gz" if gz else ""
    write(folder / f"{prefix}-images-idx3-ubyte{ext}", idx_bytes(x), gz)
    write(folder / f"{prefix}-labels-idx1-ubyte{ext}", idx_bytes(y), gz)
    return x, y


def check_error(exc: pytest.ExceptionInfo[DataError], path: Path, *fragments: str) -> None:
    """The message names the file and says what is wrong."""
    msg = str(exc.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg


# ------------------------------------------------------------------------------------------------------ IDX
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    x, y = make_idx(tmp_path, "train", 7, gz=gz)
    for source in (tmp_path, tmp_path / f"train-images-idx3-ubyte{'.gz' if gz else ''}"):
        d = load(source)
        assert d.x.shape == (7, 1, 5, 4) and d.x.dtype == np.float32
        np.testing.assert_array_equal(d.x[:, 0], x.astype(np.float32) / 255)
        np.testing.assert_array_equal(d.y, y.astype(np.int64))
        assert d.y.dtype == np.int64


def test_gzip_detected_by_content_not_extension(tmp_path: Path) -> None:
    x = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    gz_named_raw = write(tmp_path / "a-images-idx3-ubyte", idx_bytes(x), gz=True)  # gz data, no .gz suffix
    np.testing.assert_array_equal(read_idx(gz_named_raw, IMAGES_MAGIC), x)
    raw_named_gz = write(tmp_path / "b-images-idx3-ubyte.gz", idx_bytes(x))  # raw data, .gz suffix
    np.testing.assert_array_equal(read_idx(raw_named_gz, IMAGES_MAGIC), x)


def test_idx_folder_with_two_splits(tmp_path: Path) -> None:
    _, y_train = make_idx(tmp_path, "train", 6, seed=1)
    _, y_test = make_idx(tmp_path, "t10k", 4, gz=True, seed=2)
    assert len(load(tmp_path)) == 6  # train preferred
    t = load(tmp_path, split_name="t10k")
    assert len(t) == 4
    np.testing.assert_array_equal(t.y, y_test)
    with pytest.raises(DataError) as e:
        load_idx(tmp_path, split_name="val")
    check_error(e, tmp_path, "val", "t10k", "train")


def test_idx_images_without_labels_are_unlabelled(tmp_path: Path) -> None:
    write(tmp_path / "x-images-idx3-ubyte", idx_bytes(np.zeros((3, 2, 2), np.uint8)))
    d = load(tmp_path)
    assert len(d) == 3 and (d.y == -1).all()


def _bad_idx_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file that must be named, a fragment of the message)."""
    img = np.zeros((4, 3, 3), np.uint8)
    good_images = idx_bytes(img)
    cases: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, fragment: str, gz: bool = False) -> None:
        d = tmp_path / name
        d.mkdir()
        p = write(d / f"train-images-idx3-ubyte{'.gz' if gz else ''}", data, gz)
        cases[name] = (p, fragment)

    put("wrong_magic", idx_bytes(img, magic=LABELS_MAGIC), "wrong magic number 2049")
    put("not_idx", b"\x89PNG\r\n\x1a\n" + bytes(40), "wrong magic number")
    put("truncated", good_images[:-5], "truncated")
    put("truncated_gz", good_images[:-5], "truncated", gz=True)
    put("truncated_header", good_images[:6], "truncated")
    put("trailing", good_images + b"\x00", "trailing data")
    put("trailing_gz", good_images + b"\x00\x01", "trailing data", gz=True)
    two_dims = struct.pack(">I", 0x0802) + struct.pack(">2I", 4, 9) + bytes(36)  # (N, H*W): flattened images
    put("wrong_dims", two_dims, "wrong magic number 2050 (0x00000802: uint8, 2 dims)")
    put("zero_width", struct.pack(">I", IMAGES_MAGIC) + struct.pack(">3I", 4, 0, 3), "wrong shape")
    put("garbage_gz", b"\x1f\x8b" + b"not really gzip at all", "cannot read IDX")
    put("cut_gz", gzip.compress(good_images)[:-12], "IDX", gz=False)
    return cases


def test_bad_idx_files_name_the_file(tmp_path: Path) -> None:
    for name, (path, fragment) in _bad_idx_cases(tmp_path).items():
        for source in (path.parent, path):
            with pytest.raises(DataError) as e:
                load(source)
            check_error(e, path, fragment)
            assert name  # the case name shows in the assertion traceback


def test_idx_label_count_mismatch(tmp_path: Path) -> None:
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((5, 2, 2), np.uint8)))
    labels = write(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(4, np.uint8)), gz=True)
    with pytest.raises(DataError) as e:
        load(tmp_path)
    check_error(e, labels, "4 labels", "5 images")


def test_idx_labels_file_with_images_magic(tmp_path: Path) -> None:
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((2, 2, 2), np.uint8)))
    labels = write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros((2, 2, 2), np.uint8)))
    with pytest.raises(DataError) as e:
        load(tmp_path)
    check_error(e, labels, "wrong magic number 2051", "expected 2049")


def test_lying_header_does_not_allocate(tmp_path: Path) -> None:
    """A header claiming 2.8e14 pixels on a 20-byte file fails fast as truncated, not with MemoryError."""
    header = struct.pack(">I3I", IMAGES_MAGIC, 65535, 65535, 65535)
    p = write(tmp_path / "big-images-idx3-ubyte", header + bytes(4))
    with pytest.raises(DataError) as e:
        load(p)
    check_error(e, p, "truncated")


# --------------------------------------------------------------------------------------------- real MNIST
@pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason=f"MNIST t10k not found at {MNIST_DIR} (set LATENTSERVE_MNIST_DIR to its folder)")
def test_real_mnist_t10k() -> None:
    d = load(MNIST_DIR)
    assert len(d) == 10_000 and d.shape == (1, 28, 28)
    assert d.x.dtype == np.float32 and d.x.min() == 0.0 and d.x.max() == 1.0
    assert sorted(np.unique(d.y).tolist()) == list(range(10))
    assert d.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first test labels
    assert 0.1 < float(d.x.mean()) < 0.15  # MNIST's mean intensity is about 0.13
    assert len(load(MNIST_DIR / "t10k-images-idx3-ubyte.gz")) == 10_000
    s = split(d, seed=0, fractions=(0.8, 0.0, 0.2))  # the "mnist-10k" benchmark split
    assert (len(s.train), len(s.val), len(s.test)) == (8000, 0, 2000)


# ------------------------------------------------------------------------------------------------------ npz
@pytest.mark.parametrize("layout", ["nhw", "nchw", "nhwc"])
def test_npz_uint8_layouts(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (6, 3, 5, 4), dtype=np.uint8)  # (N, C, H, W)
    x = {"nhw": base[:, 0], "nchw": base, "nhwc": base.transpose(0, 2, 3, 1)}[layout]
    y = np.arange(6)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load(tmp_path / "d.npz")
    want = base[:, :1] if layout == "nhw" else base
    np.testing.assert_array_equal(d.x, want.astype(np.float32) / 255)
    np.testing.assert_array_equal(d.y, y)
    assert d.name == "d"


def test_npz_float_without_labels(tmp_path: Path) -> None:
    x = np.linspace(0, 1, 2 * 3 * 3, dtype=np.float64).reshape(2, 3, 3)
    np.savez_compressed(tmp_path / "f.npz", x=x)
    d = load_npz(tmp_path / "f.npz")
    assert d.x.dtype == np.float32 and d.shape == (1, 3, 3)
    assert d.y.tolist() == [-1, -1]


def test_npz_explicit_layout_for_ambiguous_shape(tmp_path: Path) -> None:
    x = np.zeros((2, 3, 5, 3), np.uint8)
    np.savez(tmp_path / "a.npz", x=x)
    with pytest.raises(DataError) as e:
        load(tmp_path / "a.npz")
    check_error(e, tmp_path / "a.npz", "layout=")
    assert load(tmp_path / "a.npz", layout="nhwc").shape == (3, 3, 5)
    assert load(tmp_path / "a.npz", layout="nchw").shape == (3, 5, 3)


@pytest.mark.parametrize("arrays, fragment", [
    ({"images": np.zeros((2, 3, 3), np.uint8)}, "no 'x'"),
    ({"x": np.zeros((2, 3, 3), np.int64)}, "dtype int64"),
    ({"x": np.full((2, 3, 3), 255.0)}, "[0, 1]"),
    ({"x": np.full((2, 3, 3), np.nan, np.float32)}, "NaN"),
    ({"x": np.zeros((2, 9), np.uint8)}, "wrong shape"),
    ({"x": np.zeros((2, 3, 3, 3, 1), np.uint8)}, "wrong shape"),
    ({"x": np.zeros((2, 5, 4, 5), np.uint8)}, "channel axis"),
    ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros(3, np.int64)}, "3 labels"),
    ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros((2, 1), np.int64)}, "wrong shape"),
    ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros(2, np.float32)}, "integer labels"),
    ({"x": np.array([None, None], dtype=object)}, "cannot read"),
])
def test_bad_npz(tmp_path: Path, arrays: dict[str, np.ndarray], fragment: str) -> None:
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)  # type: ignore[arg-type]
    with pytest.raises(DataError) as e:
        load(p)
    check_error(e, p, fragment)


@pytest.mark.parametrize("content", [b"", b"hello, not a zip", b"PK\x03\x04broken"])
def test_garbage_npz(tmp_path: Path, content: bytes) -> None:
    p = write(tmp_path / "junk.npz", content)
    with pytest.raises(DataError) as e:
        load(p)
    check_error(e, p, "cannot read")


def test_plain_npy_renamed_npz(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 3), np.uint8))
    p = tmp_path / "a.npz"
    (tmp_path / "a.npy").rename(p)
    with pytest.raises(DataError) as e:
        load(p)
    check_error(e, p, "not an .npz")


# ---------------------------------------------------------------------------------------------- folders
def png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_class_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrs = {c: [rng.integers(0, 256, (6, 5), dtype=np.uint8) for _ in range(n)] for c, n in
            (("cat", 2), ("ant", 3), ("bee", 1))}
    for c, lst in arrs.items():
        for i, a in enumerate(lst):
            png(tmp_path / c / f"{i}.png", a)
    (tmp_path / "ant" / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    d = load(tmp_path)
    assert d.shape == (1, 6, 5) and len(d) == 6
    assert d.classes == ("ant", "bee", "cat")
    assert d.y.tolist() == [0, 0, 0, 1, 2, 2]
    np.testing.assert_array_equal(d.x[0, 0], arrs["ant"][0] / np.float32(255))  # PNG is lossless
    np.testing.assert_array_equal(d.x[5, 0], arrs["cat"][1] / np.float32(255))
    assert split(d, seed=0).train.classes == d.classes


def test_flat_folder_rgb_and_resize(tmp_path: Path) -> None:
    png(tmp_path / "a.png", np.full((4, 4, 3), [255, 0, 0], np.uint8))
    Image.fromarray(np.full((8, 6), 128, np.uint8)).save(tmp_path / "b.jpg", quality=95)
    with pytest.raises(DataError) as e:
        load(tmp_path)
    check_error(e, tmp_path / "b.jpg", "size=(H, W)")
    d = load_folder(tmp_path, channels=3, size=(4, 4))
    assert d.shape == (3, 4, 4) and d.y.tolist() == [-1, -1]
    np.testing.assert_allclose(d.x[0, :, 0, 0], [1, 0, 0])
    np.testing.assert_allclose(d.x[1], 128 / 255, atol=3 / 255)  # grey JPEG -> three equal channels
    g = load(tmp_path, size=(4, 4))  # default: grayscale
    assert g.shape == (1, 4, 4)
    assert abs(float(g.x[0, 0, 0, 0]) - 0.299) < 0.01  # ITU-R 601 luma of pure red


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    a = np.array([[0, 1000, 32768, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I;16")
    d = load(tmp_path)
    np.testing.assert_allclose(d.x[0, 0], a / 65535.0, atol=1e-6)
    assert load(tmp_path, channels=3, size=(2, 8)).shape == (3, 2, 8)


@pytest.mark.parametrize("kind", ["text_as_png", "truncated_png"])
def test_undecodable_image_is_named(tmp_path: Path, kind: str) -> None:
    png(tmp_path / "c0" / "ok.png", np.zeros((4, 4), np.uint8))
    bad = tmp_path / "c1" / "bad.png"
    png(bad, np.zeros((4, 4), np.uint8))
    if kind == "text_as_png":
        bad.write_text("this is not an image")
    else:
        bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(DataError) as e:
        load(tmp_path)
    check_error(e, bad)


def test_decompression_bomb_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = png(tmp_path / "big.png", np.zeros((32, 32), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # 1,024 px: past the warning limit, under 2x
    with pytest.raises(DataError) as e:
        load(tmp_path)
    check_error(e, p, "decompression bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # past 2x: Pillow's own error
    with pytest.raises(DataError) as e:
        load(tmp_path)
    check_error(e, p, "decompression bomb")


def test_bad_folder_layouts(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README").write_text("no images here")
    with pytest.raises(DataError) as e:
        load(empty)
    check_error(e, empty, "no image files")

    mixed = tmp_path / "mixed"
    png(mixed / "a" / "0.png", np.zeros((2, 2), np.uint8))
    png(mixed / "loose.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError) as e:
        load(mixed)
    check_error(e, mixed, "loose.png")

    hollow = tmp_path / "hollow"
    png(hollow / "a" / "0.png", np.zeros((2, 2), np.uint8))
    (hollow / "b").mkdir()
    with pytest.raises(DataError) as e:
        load(hollow)
    check_error(e, hollow / "b", "no image files")

    with pytest.raises(DataError) as e:
        load(hollow, channels=2)
    check_error(e, hollow, "channels")


# ------------------------------------------------------------------------------------------------- load()
def test_load_names_and_missing_paths(tmp_path: Path) -> None:
    assert load().name == "digits" and load("digits").shape == (1, 8, 8)
    assert len(load("synthetic", n=10)) == 10
    for missing in (tmp_path / "nope", "mnist"):
        with pytest.raises(DataError) as e:
            load(missing)
        assert str(missing) in str(e.value) and "nothing is downloaded" in str(e.value)
    with pytest.raises(DataError):
        load("digits", channels=3)
    single = png(tmp_path / "one.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError) as e:
        load(single)
    check_error(e, single, "single image")
    labels = write(tmp_path / "t-labels-idx1-ubyte", idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(DataError) as e:
        load(labels)
    check_error(e, labels, "labels file")


# ---------------------------------------------------------------------------------------------- splits
def test_split_seeded_disjoint_covering() -> None:
    d = synthetic(n=300, classes=5, seed=3)
    tagged = ImageSet(d.name, d.x, np.arange(len(d)))  # labels = row index, to track membership
    a, b, c = split(tagged, seed=1), split(tagged, seed=1), split(tagged, seed=2)
    ids = lambda s: [set(s.train.y.tolist()), set(s.val.y.tolist()), set(s.test.y.tolist())]  # noqa: E731
    assert ids(a) == ids(b)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert ids(a) != ids(c)
    tr, va, te = ids(a)
    assert not (tr & va or tr & te or va & te)
    assert tr | va | te == set(range(len(d)))
    assert (len(tr), len(va), len(te)) == (240, 30, 30)
    assert a.describe()["sizes"] == {"train": 240, "val": 30, "test": 30}
    np.testing.assert_array_equal(a.train.x, d.x[a.train.y])  # images travel with their labels


def test_split_one_class() -> None:
    d = digits()
    s = split(d, seed=0, normal_classes=(3, 7))
    assert set(s.train.y.tolist()) == {3, 7} and set(s.val.y.tolist()) <= {3, 7} and len(s.val) > 0
    assert set(s.test.y.tolist()) == set(range(10))
    full = split(d, seed=0)
    assert len(s.test) == len(full.test)  # test is untouched by the one-class filter
    np.testing.assert_array_equal(s.test.y, full.test.y)
    assert s.describe()["normal_classes"] == (3, 7)
    with pytest.raises(DataError, match="missing"):
        split(d, normal_classes=(11,))
    with pytest.raises(DataError, match="fractions"):
        split(d, fractions=(0.5, 0.2, 0.2))


def test_split_rounding_never_overruns() -> None:
    d = synthetic(n=3)
    s = split(d, fractions=(0.5, 0.5, 0.0))
    assert len(s.train) + len(s.val) + len(s.test) == 3
