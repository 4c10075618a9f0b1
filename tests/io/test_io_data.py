"""load_data: each format written small into tmp_path and read back, values checked; every bad input an InputError.

Pixel values are compared with (u / 255 - mean) / std in float64. In float32, u / 255, the stored mean
and the subtraction each round by at most eps/2 of a value <= 1, so (x - mean) is off by <= 1.5 eps
before the division by std >= STD_MIN; the division and the stored std add eps relative.
"""

import gzip
import pickle

import numpy as np
import pytest
import torch

from stabkern.io import FORMATS, InputError, LoadedData, load_data
from stabkern.io.data import DEFAULT_NORMALIZATION

EPS = float(np.finfo(np.float32).eps)
STD_MIN = 0.2  # the smallest std in the statistics used here
RNG = np.random.default_rng(0)


def expected(pixels, mean, std):
    """(pixels / 255 - mean) / std in float64, per channel, as (N, C, H, W)."""
    x = pixels.astype(np.float64) / 255.0
    c = x.shape[1]
    mean = np.broadcast_to(np.asarray(mean, np.float64), (c,)).reshape(1, c, 1, 1)
    std = np.broadcast_to(np.asarray(std, np.float64), (c,)).reshape(1, c, 1, 1)
    return torch.from_numpy((x - mean) / std)


def assert_pixels(x, ref):
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.double(), ref, rtol=2 * EPS, atol=2 * EPS / STD_MIN)


# --------------------------------------------------------------------------- CIFAR


def write_cifar10_bin(folder, n_per_batch=(5, 4), n_test=6, labels_offset=0):
    folder.mkdir(parents=True)
    batches = {}
    for i, n in enumerate(n_per_batch, start=1):
        batches[f"data_batch_{i}.bin"] = n
    batches["test_batch.bin"] = n_test
    content = {}
    for name, n in batches.items():
        labels = (RNG.integers(0, 10, n) + labels_offset).astype(np.uint8)
        pixels = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], 1).tobytes())
        content[name] = (pixels.reshape(n, 3, 32, 32), labels)
    return content


def test_cifar10_binary_reads_the_test_batch(tmp_path):
    content = write_cifar10_bin(tmp_path / "cifar-10-batches-bin")
    data = load_data(tmp_path / "cifar-10-batches-bin")
    pixels, labels = content["test_batch.bin"]
    assert isinstance(data, LoadedData) and data.format == "cifar10" and data.classes == 10
    assert data.x.shape == (6, 3, 32, 32) and data.y.dtype == torch.int64
    assert data.y.tolist() == labels.tolist()
    assert_pixels(data.x, expected(pixels, *DEFAULT_NORMALIZATION["cifar10"]))


def test_cifar10_binary_train_batches_in_order_with_limit(tmp_path):
    content = write_cifar10_bin(tmp_path / "c", n_per_batch=(5, 4), n_test=0)
    (tmp_path / "c" / "test_batch.bin").unlink()
    data = load_data(tmp_path / "c", limit=7)  # all of batch 1, then 2 of batch 2
    want = np.concatenate([content["data_batch_1.bin"][1], content["data_batch_2.bin"][1][:2]])
    assert data.y.tolist() == want.tolist()


def test_cifar_to_gray_needs_the_model_statistics(tmp_path):
    content = write_cifar10_bin(tmp_path / "c")
    with pytest.raises(InputError, match="statistics do not apply: give the normalization"):
        load_data(tmp_path / "c", channels=1)
    data = load_data(tmp_path / "c", channels=1, normalization=((0.5,), (0.5,)))
    assert data.x.shape == (6, 1, 32, 32) and data.y.tolist() == content["test_batch.bin"][1].tolist()


def test_cifar_folder_found_one_level_down(tmp_path):
    write_cifar10_bin(tmp_path / "downloads" / "cifar-10-batches-bin")
    assert load_data(tmp_path / "downloads").format == "cifar10"


def test_cifar100_binary_takes_the_fine_label(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    n = 5
    coarse, fine = RNG.integers(0, 20, n).astype(np.uint8), RNG.integers(0, 100, n).astype(np.uint8)
    pixels = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    (folder / "test.bin").write_bytes(np.concatenate([coarse[:, None], fine[:, None], pixels], 1).tobytes())
    data = load_data(folder)
    assert data.format == "cifar100" and data.classes == 100
    assert data.y.tolist() == fine.tolist()
    assert_pixels(data.x, expected(pixels.reshape(n, 3, 32, 32), *DEFAULT_NORMALIZATION["cifar100"]))


def test_cifar_binary_corrupt_and_out_of_range(tmp_path):
    folder = tmp_path / "c"
    write_cifar10_bin(folder)
    with open(folder / "test_batch.bin", "ab") as f:
        f.write(b"\x00" * 17)
    with pytest.raises(InputError, match="corrupt"):
        load_data(folder)
    write_cifar10_bin(tmp_path / "bad_labels", labels_offset=10)  # labels 10..19 in a CIFAR-10 file
    with pytest.raises(InputError, match=r"labels out of range \[0, 10\)"):
        load_data(tmp_path / "bad_labels")


def write_cifar_pickles(folder, n=4):
    folder.mkdir()
    pixels = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = RNG.integers(0, 10, n).tolist()
    for name in ("data_batch_1", "test_batch"):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": pixels, b"labels": labels, b"batch_label": b"x"}, f)
    return pixels.reshape(n, 3, 32, 32), labels


def test_cifar_python_pickles_need_trust(tmp_path):
    pixels, labels = write_cifar_pickles(tmp_path / "cifar-10-batches-py")
    with pytest.raises(InputError, match="--trust-pickle"):
        load_data(tmp_path / "cifar-10-batches-py")
    data = load_data(tmp_path / "cifar-10-batches-py", trust_pickle=True)
    assert data.format == "cifar10" and data.y.tolist() == labels
    assert_pixels(data.x, expected(pixels, *DEFAULT_NORMALIZATION["cifar10"]))


def test_cifar100_python_pickle(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    pixels = RNG.integers(0, 256, (3, 3072), dtype=np.uint8)
    with open(folder / "test", "wb") as f:
        pickle.dump({b"data": pixels, b"fine_labels": [99, 0, 42], b"coarse_labels": [1, 2, 3]}, f)
    data = load_data(folder, trust_pickle=True)
    assert data.format == "cifar100" and data.y.tolist() == [99, 0, 42]


def test_cifar_python_pickle_wrong_content(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(InputError, match=r"\(N, 3072\)"):
        load_data(folder, trust_pickle=True)
    (folder / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(InputError, match="not a readable"):
        load_data(folder, trust_pickle=True)


# --------------------------------------------------------------------------- MNIST idx


def idx_bytes(array):
    header = bytes((0, 0, 8, array.ndim)) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder, n=5, gz=False, prefix="t10k"):
    folder.mkdir(parents=True, exist_ok=True)
    images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, n).astype(np.uint8)
    suffix = ".gz" if gz else ""
    write = (lambda p, b: p.write_bytes(gzip.compress(b))) if gz else (lambda p, b: p.write_bytes(b))
    write(folder / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(images))
    write(folder / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels))
    return images, labels


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_mnist_idx(tmp_path, gz):
    images, labels = write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    write_mnist(tmp_path / "MNIST" / "raw", n=7, gz=gz, prefix="train")  # the test split is preferred
    data = load_data(tmp_path / "MNIST" / "raw")
    assert data.format == "mnist" and data.classes == 10 and data.x.shape == (5, 1, 28, 28)
    assert data.y.tolist() == labels.tolist()
    assert_pixels(data.x, expected(images[:, None], *DEFAULT_NORMALIZATION["mnist"]))


def test_fashion_mnist_statistics_from_the_folder_name(tmp_path):
    images, _ = write_mnist(tmp_path / "FashionMNIST", gz=True)
    data = load_data(tmp_path / "FashionMNIST")
    assert "fashion" in data.name
    assert_pixels(data.x, expected(images[:, None], *DEFAULT_NORMALIZATION["fashion-mnist"]))


def test_mnist_to_a_3x32x32_model(tmp_path):
    images, _ = write_mnist(tmp_path / "m", n=3)
    data = load_data(tmp_path / "m", size=(32, 32), channels=3, normalization=((0.5,), (0.25,)))
    assert data.x.shape == (3, 3, 32, 32)
    assert torch.equal(data.x[:, 0], data.x[:, 1]) and torch.equal(data.x[:, 0], data.x[:, 2])
    # antialiased bilinear resizing is an average of pixels: the range stays within the source's
    lo, hi = (images.min() / 255 - 0.5) / 0.25, (images.max() / 255 - 0.5) / 0.25
    assert data.x.min() >= lo - 1e-5 and data.x.max() <= hi + 1e-5


def test_mnist_corrupt_files(tmp_path):
    folder = tmp_path / "m"
    write_mnist(folder)
    raw = (folder / "t10k-images-idx3-ubyte").read_bytes()
    (folder / "t10k-images-idx3-ubyte").write_bytes(raw[:-10])
    with pytest.raises(InputError, match="truncated"):
        load_data(folder)
    (folder / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x09\x03" + raw[4:])
    with pytest.raises(InputError, match="magic"):
        load_data(folder)
    (folder / "t10k-images-idx3-ubyte").write_bytes(raw)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0, 1, 2, 3, 12])))
    with pytest.raises(InputError, match="labels out of range"):
        load_data(folder)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0, 1])))
    with pytest.raises(InputError, match=r"one per sample, shape \(5,\)"):
        load_data(folder)
    gz = tmp_path / "g"
    write_mnist(gz, gz=True)
    (gz / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b broken gzip")
    with pytest.raises(InputError, match="not a readable idx file"):
        load_data(gz)


# --------------------------------------------------------------------------- ImageFolder


def write_image_folder(root, per_class=3, size=(5, 4), mode="RGB", classes=("cat", "dog")):
    from PIL import Image

    arrays = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            shape = (size[0], size[1], 3) if mode == "RGB" else size
            a = RNG.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(a, mode=mode).save(root / c / f"img{i}.png")
            arrays[(c, i)] = a
    return arrays


def test_image_folder(tmp_path):
    arrays = write_image_folder(tmp_path / "imgs")
    data = load_data(tmp_path / "imgs")
    assert data.format == "imagefolder" and data.classes == 2
    assert data.x.shape == (6, 3, 5, 4) and data.y.tolist() == [0, 0, 0, 1, 1, 1]
    want = np.stack([arrays[(c, i)] for c in ("cat", "dog") for i in range(3)]).transpose(0, 3, 1, 2)
    assert_pixels(data.x, expected(want, 0.0, 1.0))  # no statistics known: [0, 1] pixels


def test_image_folder_gray_limit_and_sizes(tmp_path):
    write_image_folder(tmp_path / "g", per_class=4, mode="L", classes=("a", "b", "c"))
    data = load_data(tmp_path / "g", limit=5, seed=3)
    assert data.x.shape == (5, 1, 5, 4)
    assert data.y.tolist() == sorted(data.y.tolist())  # the subset stays in file order
    assert torch.equal(load_data(tmp_path / "g", limit=5, seed=3).x, data.x)  # deterministic
    from PIL import Image

    Image.fromarray(np.zeros((9, 9), np.uint8), mode="L").save(tmp_path / "g" / "a" / "big.png")
    with pytest.raises(InputError, match="different sizes.*--size"):
        load_data(tmp_path / "g")
    assert load_data(tmp_path / "g", size=(6, 6), channels=3).x.shape == (13, 3, 6, 6)


def test_image_folder_bad_files(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(InputError, match="not a data folder"):
        load_data(tmp_path / "empty")
    write_image_folder(tmp_path / "x", per_class=1)
    (tmp_path / "x" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png is not a readable image"):
        load_data(tmp_path / "x")


# --------------------------------------------------------------------------- npz / npy


@pytest.mark.parametrize("keys", [("x", "y"), ("images", "labels"), ("data", "labels")])
def test_npz_keys(tmp_path, keys):
    x = RNG.integers(0, 256, (4, 3, 6, 6), dtype=np.uint8)
    y = np.array([3, 0, 1, 1])
    np.savez(tmp_path / "d.npz", **{keys[0]: x, keys[1]: y})
    data = load_data(tmp_path / "d.npz")
    assert data.format == "npz" and data.classes == 4 and data.y.tolist() == [3, 0, 1, 1]
    assert_pixels(data.x, expected(x, 0.0, 1.0))


def test_npz_float_channels_last_and_normalization(tmp_path):
    x = RNG.random((3, 7, 5, 3)).astype(np.float64)  # (N, H, W, C), already on the [0, 1] scale
    np.savez(tmp_path / "d.npz", x=x)
    data = load_data(tmp_path / "d.npz", normalization=((0.1, 0.2, 0.3), (0.5, 0.5, 2.0)))
    assert data.y is None and data.classes is None and data.x.shape == (3, 3, 7, 5)
    ref = (x.transpose(0, 3, 1, 2) - np.array([0.1, 0.2, 0.3]).reshape(1, 3, 1, 1)) / np.array(
        [0.5, 0.5, 2.0]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(data.x.double(), torch.from_numpy(ref), rtol=4 * EPS, atol=8 * EPS)


def test_npy_inputs_only_with_limit(tmp_path):
    x = RNG.integers(0, 256, (10, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    data = load_data(tmp_path / "x.npy", limit=4)
    assert data.format == "npy" and data.y is None and data.x.shape == (4, 1, 8, 8)
    assert_pixels(data.x, expected(x[:4, None], 0.0, 1.0))


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((4, 10), np.uint8)}, r"must be \(N, C, H, W\)"),
    ({"x": np.zeros((2, 3, 4, 4), np.int32)}, "uint8 .* or floating point, got dtype int32"),
    ({"x": np.zeros((2, 3, 4, 4), bool)}, "got dtype bool"),
    ({"x": np.zeros((2, 1, 4, 4), np.uint8), "y": np.array([0, -1])}, "labels out of range"),
    ({"x": np.zeros((2, 1, 4, 4), np.uint8), "y": np.array([0.5, 1.0])}, "labels must be integers"),
    ({"x": np.zeros((2, 1, 4, 4), np.uint8), "y": np.array([0, 1, 1])}, "one per sample"),
    ({"x": np.zeros((0, 1, 4, 4), np.uint8)}, "no samples"),
    ({"x": np.full((2, 1, 4, 4), np.nan, np.float32)}, "NaN or Inf"),
    ({"inputs": np.zeros((2, 1, 4, 4), np.uint8)}, "expected inputs under 'x', 'images' or 'data'"),
    ({"x": np.array([{"a": 1}, None], dtype=object)}, "Python objects"),
])
def test_npz_bad_inputs(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=match):
        load_data(tmp_path / "bad.npz")


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "g.npz").write_bytes(b"PK\x03\x04 this is not really a zip")
    (tmp_path / "g.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "h.npy").write_bytes(b"something else entirely")
    for name in ("g.npz", "g.npy", "h.npy"):
        with pytest.raises(InputError, match="not a readable numpy file"):
            load_data(tmp_path / name)
    with pytest.raises(InputError, match="data not found"):
        load_data(tmp_path / "nothing_here")
    (tmp_path / "a.csv").write_text("1,2,3")
    with pytest.raises(InputError, match="expected a folder, an .npz or an .npy"):
        load_data(tmp_path / "a.csv")


# --------------------------------------------------------------------------- digits and arguments


def test_digits_equals_the_zoo_test_split():
    from stabkern.zoo.digits import load_digits_tensors

    data = load_data("digits")
    _, (x_test, y_test) = load_digits_tensors()
    assert data.format == "digits" and data.classes == 10
    assert torch.equal(data.y, y_test)
    # both standardize x/16 with the same mean and std; values are O(3), so a few ulps of 3
    torch.testing.assert_close(data.x, x_test, rtol=0, atol=16 * EPS)
    assert load_data("digits", limit=5).x.shape == (5, 1, 8, 8)


def test_arguments():
    with pytest.raises(InputError, match="limit"):
        load_data("digits", limit=0)
    with pytest.raises(TypeError, match="limit"):
        load_data("digits", limit=2.0)
    with pytest.raises(InputError, match="channels must be 1 or 3"):
        load_data("digits", channels=2)
    with pytest.raises(InputError, match="channels"):
        load_data("digits", channels=4)
    with pytest.raises(TypeError, match="size"):
        load_data("digits", size=8)
    with pytest.raises(InputError, match="give 1 or 3 of each"):
        load_data("digits", channels=3, normalization=((0.1, 0.2), (1.0, 1.0)))
    with pytest.raises(InputError, match="std must be positive"):
        load_data("digits", normalization=((0.1,), (0.0,)))
    with pytest.raises(InputError, match=r"two sequences"):
        load_data("digits", normalization="imagenet")
    assert set(FORMATS) == {"cifar10", "cifar100", "mnist", "imagefolder", "npz", "npy", "digits"}


def test_rgb_to_gray_is_luma(tmp_path):
    x = RNG.integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    data = load_data(tmp_path / "x.npy", channels=1)
    ref = np.tensordot(np.array([0.299, 0.587, 0.114]), x / 255.0, axes=([0], [1]))[:, None]
    torch.testing.assert_close(data.x.double(), torch.from_numpy(ref), rtol=8 * EPS, atol=8 * EPS)


def test_normalization_none_and_what_was_applied():
    """normalization="none" leaves [0, 1] pixels; the result says what was applied and what the format publishes."""
    from stabkern.io.data import digits_normalization

    raw = load_data("digits", limit=5, normalization="none")
    assert raw.normalization is None and raw.published == digits_normalization()
    assert float(raw.x.min()) >= 0 and float(raw.x.max()) <= 1
    default = load_data("digits", limit=5)
    assert default.normalization == digits_normalization()
    (mean,), (std,) = digits_normalization()
    assert torch.allclose(default.x, (raw.x - mean) / std)
