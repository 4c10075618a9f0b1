"""Read a user's image data from local files into one normalized (N, C, H, W) float32 tensor; no downloads.

Formats (`load_data(spec)`): a CIFAR-10/100 folder (binary batches; python pickle batches only with
trust_pickle), an MNIST / Fashion-MNIST folder of idx files (plain or .gz), an ImageFolder tree (one
subfolder of images per class), an .npz (x/y, images/labels or data/labels) or .npy (inputs only), and
"digits" (scikit-learn's 8x8 digits, the test split of `stabkern.zoo.digits`). Pixels are scaled to
[0, 1], resized and converted to the asked channel count, then normalized: x = (x - mean) / std per
channel. What this is not: a DataLoader or an augmentation pipeline; everything is held in memory.
Every problem with the input is an `InputError` whose message names the fix.
"""

from __future__ import annotations

import functools
import gzip
import math
import pickle
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import check_int, check_positive_int, check_seed
from .errors import InputError, first_line as _first_line

FORMATS = ("cifar10", "cifar100", "mnist", "imagefolder", "npz", "npy", "digits")
# Per-channel (mean, std) of the training sets on the [0, 1] scale, as commonly published. CIFAR-10's are the
# mean and std over every pixel of the 50,000 training images (numpy's data.mean/std over axes (0, 1, 2) / 255;
# kuangliu/pytorch-cifar issue #19, MadryLab/robustness issue #70: the often-copied std (0.2023, 0.1994, 0.2010)
# is the mean of the per-image stds, not the data set's std).
DEFAULT_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
NPZ_KEYS = (("x", "y"), ("images", "labels"), ("data", "labels"))


@dataclass
class LoadedData:
    """x: (N, C, H, W) float32, normalized; y: (N,) int64 labels in [0, classes) or None.

    normalization: the (mean, std) applied to x (C floats each), None when x is left unnormalized;
    published: the format's published statistics (CIFAR, MNIST, Fashion-MNIST, digits), else None."""

    x: torch.Tensor
    y: torch.Tensor | None
    name: str
    format: str
    classes: int | None
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    published: tuple[tuple[float, ...], tuple[float, ...]] | None = None


def load_data(spec: str, *, limit: int | None = None, trust_pickle: bool = False, normalization=None,
              size: tuple[int, int] | None = None, channels: int | None = None, seed: int = 0) -> LoadedData:
    """The data named by `spec` (a folder, an .npz/.npy file, or "digits") as a LoadedData.

    limit: keep the first `limit` samples in file order (CIFAR: test batch, else data batches in order;
      MNIST: t10k, else train). An ImageFolder lists its files class by class, so there `limit` keeps a
      random subset of that many files drawn with `seed` (in file order), to keep the classes mixed.
    size: (H, W) to resize to (bilinear, antialiased). channels: 1 or 3 to convert to (1 -> 3 repeats
      the gray channel; 3 -> 1 takes the luma 0.299 R + 0.587 G + 0.114 B).
    normalization: (mean, std), each a sequence of 1 or C floats on the [0, 1] pixel scale; "none"
      leaves the data unnormalized; None takes the format's published statistics (CIFAR, MNIST,
      Fashion-MNIST, digits) and leaves ImageFolder, npz and npy data on the [0, 1] scale (uint8 arrays
      are divided by 255; float arrays taken as is).
    """
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"spec must be a path or 'digits', got {type(spec).__name__}")
    limit = None if limit is None else _user_int("limit", limit, check_positive_int)
    seed = check_seed(seed)
    size = _check_size(size)
    channels = None if channels is None else _user_int("channels", channels, lambda n, v: check_int(n, v, 1, 4))
    if channels == 2:
        raise InputError("channels must be 1 or 3, got 2")
    trust_pickle = bool(trust_pickle)

    if str(spec) == "digits":
        pixels, y, name, fmt, classes, default = _digits(limit)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise InputError(f"data not found: {spec} (give a CIFAR or MNIST folder, an ImageFolder tree, "
                             f"an .npz/.npy file, or 'digits')")
        if path.is_dir():
            pixels, y, name, fmt, classes, default = _folder(path, limit, trust_pickle, seed, size)
        elif path.suffix.lower() == ".npz":
            pixels, y, name, fmt, classes, default = _npz(path, limit)
        elif path.suffix.lower() == ".npy":
            pixels, y, name, fmt, classes, default = _npy(path, limit)
        else:
            raise InputError(f"cannot read data from {path.name}: expected a folder, an .npz or an .npy file")
    x = _to_float(pixels, name)
    if len(x) == 0:
        raise InputError(f"{name} holds no samples")
    if size is not None and tuple(x.shape[-2:]) != size:
        x = _interpolate(x, size)
    if channels is not None:
        x = _convert_channels(x, channels, name)
    if normalization is None and default is not None and len(default[0]) not in (1, x.shape[1]):
        raise InputError(f"{name} was converted to {x.shape[1]} channel(s), so its {len(default[0])}-channel "
                         f"statistics do not apply: give the normalization the model expects")
    if isinstance(normalization, str) and normalization != "none":
        raise InputError(f"normalization must be (mean, std), two sequences of numbers, 'none' (no normalization) "
                         f"or None (the format's published statistics), got {normalization!r}")
    chosen = None if normalization == "none" else normalization if normalization is not None else default
    x, applied = normalize(x, chosen)
    return LoadedData(x.contiguous(), y, name, fmt, classes, applied, default)


def normalize(x: torch.Tensor, normalization):
    """(x - mean) / std per channel of x (N, C, H, W), a new tensor, and the (mean, std) applied as C floats
    each; normalization None: (x, None), x itself."""
    mean, std = _check_normalization(normalization, x.shape[1])
    if mean is None:
        return x, None
    applied = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1), applied


# --------------------------------------------------------------------------- argument checks


def _user_int(name, value, check):
    """check(name, value) with an out-of-range value reported as InputError (still a ValueError)."""
    try:
        return check(name, value)
    except ValueError as err:
        raise InputError(str(err)) from None


def _check_size(size):
    if size is None:
        return None
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 2:
        raise TypeError(f"size must be (height, width), got {size!r}")
    return tuple(_user_int("size", v, check_positive_int) for v in size)


def _check_normalization(normalization, c: int):
    """(mean, std) as float32 tensors of length c (1 value is repeated), or (None, None) for none."""
    if normalization is None:
        return None, None
    try:
        mean, std = normalization
        mean = [float(v) for v in np.atleast_1d(np.asarray(mean, dtype=np.float64))]
        std = [float(v) for v in np.atleast_1d(np.asarray(std, dtype=np.float64))]
    except (TypeError, ValueError):
        raise InputError(f"normalization must be (mean, std), two sequences of numbers, "
                         f"got {normalization!r}") from None
    if len(mean) != len(std) or len(mean) not in (1, c):
        raise InputError(f"normalization has {len(mean)} means and {len(std)} stds for {c}-channel data: "
                         f"give 1 or {c} of each")
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise InputError(f"normalization std must be positive and all values finite, got {normalization!r}")
    return (torch.tensor(mean, dtype=torch.float32).expand(c).clone(),
            torch.tensor(std, dtype=torch.float32).expand(c).clone())


# --------------------------------------------------------------------------- shared steps


def _to_float(pixels: np.ndarray, name: str) -> torch.Tensor:
    """(N, C, H, W) uint8 -> float32 / 255; float arrays as float32; NaN/Inf refused."""
    pixels = np.array(pixels)  # a writable copy: the file's buffer may be read-only
    if pixels.dtype == np.uint8:
        return torch.from_numpy(pixels).float().div_(255.0)
    x = torch.from_numpy(pixels.astype(np.float32, copy=False))
    if not torch.isfinite(x).all():
        raise InputError(f"{name} holds NaN or Inf values: clean the data first")
    return x


def _resize(pixels: np.ndarray, size) -> np.ndarray:
    """(N, C, H, W) uint8 or [0, 1] floats -> (N, C, *size) float32 on the [0, 1] scale (bilinear, antialiased)."""
    return _interpolate(_to_float(pixels, "images"), size).numpy()


def _interpolate(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _convert_channels(x: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if c == 3 and channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * luma).sum(1, keepdim=True)
    raise InputError(f"{name} has {c} channels; converting to {channels} is not supported (only 1 <-> 3)")


def _check_labels(y: np.ndarray, n: int, classes: int | None, name: str):
    """y as an int64 tensor of length n in [0, classes); classes inferred as max + 1 when None."""
    if y.ndim != 1 or len(y) != n:
        raise InputError(f"{name}: labels must be one per sample, shape ({n},), got {tuple(y.shape)}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{name}: labels must be integers (class indices), got dtype {y.dtype}")
    # as Python ints: exact for every integer dtype (a uint64 2^64 - 1 is not the int64 -1 it casts to)
    low, high = (int(y.min()), int(y.max())) if n else (0, -1)
    limit = classes if classes is not None else 2 ** 63  # inferred classes: the labels must fit int64
    if n and (low < 0 or high >= limit):
        bound = classes if classes is not None else "2^63"
        raise InputError(f"{name}: labels out of range [0, {bound}): found {low}..{high}; "
                         f"the labels are corrupt or belong to other data")
    if classes is None and n:
        classes = high + 1
    return torch.from_numpy(y.astype(np.int64)), classes


def _as_nchw(x: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W) or (N, C, H, W) or channels-last (N, H, W, C) with C in {1, 3, 4} -> (N, C, H, W)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise InputError(f"{name}: inputs must be (N, C, H, W), (N, H, W, C) or (N, H, W) images, "
                         f"got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        return x.transpose(0, 3, 1, 2)
    return x


def _check_pixels(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{name}: inputs must be uint8 (0..255) or floating point, got dtype {x.dtype}")
    return _as_nchw(x, name)


# --------------------------------------------------------------------------- formats


def _digits(limit):
    """The test split of `stabkern.zoo.digits.load_digits_tensors`, before its standardization."""
    images, target = _digits_arrays()
    from ..zoo.digits import digits_split

    test = digits_split(len(images))[1].numpy()[:limit]
    y, _ = _check_labels(target[test], len(test), 10, "digits")
    return images[test], y, "digits (scikit-learn, test split)", "digits", 10, digits_normalization()


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    """scikit-learn's digits as ((N, 1, 8, 8) float32 on the [0, 1] scale, (N,) labels); read-only."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError("the digits data come from scikit-learn: pip install scikit-learn") from None
    data = load_digits()
    images = data.images.astype(np.float32)[:, None] / 16.0
    images.flags.writeable = False
    return images, data.target


def digits_normalization():
    """((mean,), (std,)) that `zoo.digits.load_digits_tensors` standardizes the [0, 1] digits with."""
    x = torch.from_numpy(np.array(_digits_arrays()[0]))
    return (x.mean().item(),), (x.std().item(),)


def _folder(path: Path, limit, trust_pickle, seed, size):
    for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        files = {p.name: p for p in folder.iterdir() if p.is_file()}
        if "test_batch.bin" in files or "data_batch_1.bin" in files or {"train.bin", "test.bin"} & set(files):
            return _cifar_binary(folder, files, limit)
        if "test_batch" in files or "data_batch_1" in files or "test" in files or "train" in files:
            return _cifar_pickle(folder, files, limit, trust_pickle)
        images = sorted(n for n in files if re.search(r"images[-.]idx3-ubyte(\.gz)?$", n))
        if images:
            return _mnist(folder, files, images, limit)
    return _image_folder(path, limit, seed, size)


CIFAR_PIXELS = 3 * 32 * 32


def _cifar_binary(folder, files, limit):
    if "test.bin" in files or "train.bin" in files:  # CIFAR-100: coarse and fine label bytes
        fmt, classes, label_bytes, names = "cifar100", 100, 2, ["test.bin"] if "test.bin" in files else ["train.bin"]
    else:
        fmt, classes, label_bytes = "cifar10", 10, 1
        names = ["test_batch.bin"] if "test_batch.bin" in files else sorted(
            (n for n in files if re.fullmatch(r"data_batch_\d+\.bin", n)), key=lambda n: int(n[11:-4]))
    record = label_bytes + CIFAR_PIXELS
    pixels, labels = [], []
    remaining = limit
    for n in names:
        raw = files[n].read_bytes()
        if len(raw) == 0 or len(raw) % record:
            raise InputError(f"{files[n]} is not a {fmt} binary batch ({len(raw)} bytes, not a multiple of "
                             f"{record}-byte records): the file is corrupt or not CIFAR")
        rows = np.frombuffer(raw, np.uint8).reshape(-1, record)[:remaining]
        labels.append(rows[:, label_bytes - 1])  # CIFAR-100: the fine label
        pixels.append(rows[:, label_bytes:].reshape(-1, 3, 32, 32))
        if remaining is not None:
            remaining -= len(rows)
            if remaining == 0:
                break
    x = np.concatenate(pixels)
    name = f"{fmt} {folder.name} ({', '.join(names)})"
    y, _ = _check_labels(np.concatenate(labels), len(x), classes, name)
    return x, y, name, fmt, classes, DEFAULT_NORMALIZATION[fmt]


def _cifar_pickle(folder, files, limit, trust_pickle):
    if not trust_pickle:
        raise InputError(f"{folder} holds CIFAR python pickle batches, which can run code when read: pass "
                         f"--trust-pickle (trust_pickle=True) if you trust them, or use the binary version")
    if "test" in files or "train" in files:
        fmt, classes, key, names = "cifar100", 100, b"fine_labels", ["test" if "test" in files else "train"]
    else:
        fmt, classes, key = "cifar10", 10, b"labels"
        names = ["test_batch"] if "test_batch" in files else sorted(
            (n for n in files if re.fullmatch(r"data_batch_\d+", n)), key=lambda n: int(n[11:]))
    pixels, labels = [], []
    for n in names:
        try:
            with open(files[n], "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data, lab = np.asarray(batch[b"data"]), np.asarray(batch[key])
        except Exception as err:  # noqa: BLE001 - anything a broken pickle raises
            raise InputError(f"{files[n]} is not a readable {fmt} python batch: {_first_line(err)}") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_PIXELS:
            raise InputError(f"{files[n]}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} "
                             f"{tuple(data.shape)}")
        pixels.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
        if limit is not None and sum(map(len, pixels)) >= limit:
            break
    x = np.concatenate(pixels)[:limit]
    name = f"{fmt} {folder.name} ({', '.join(names)}, python pickles)"
    y, _ = _check_labels(np.concatenate(labels)[:limit], len(x), classes, name)
    return x, y, name, fmt, classes, DEFAULT_NORMALIZATION[fmt]


def _read_idx(path: Path, ndim: int, limit):
    """An idx file of unsigned bytes (magic 0x0000 08 ndim, then ndim big-endian int32 sizes)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise InputError(f"{path} is not a readable idx file: {_first_line(err)}") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes((0, 0, 8, ndim)):
        raise InputError(f"{path} is not an idx file of {ndim}-D unsigned bytes (bad magic number): "
                         f"the file is corrupt or of another kind")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + math.prod(shape):
        raise InputError(f"{path} is truncated or corrupt: header says {shape}, "
                         f"{len(raw) - header} bytes of data follow")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)[:limit]


def _mnist(folder, files, images, limit):
    # prefer the test split (t10k-*), as for CIFAR
    image_name = next((n for n in images if n.startswith("t10k")), images[0])
    label_name = re.sub(r"images([-.])idx3", r"labels\1idx1", image_name)
    x = _read_idx(files[image_name], 3, limit)[:, None]
    kind = "fashion-mnist" if "fashion" in str(folder).lower() else "mnist"
    name = f"{kind} {folder.name} ({image_name})"
    y = classes = None
    if label_name in files:
        y, classes = _check_labels(_read_idx(files[label_name], 1, limit), len(x), 10, name)
    return x, y, name, "mnist", classes, DEFAULT_NORMALIZATION[kind]


def _image_folder(path: Path, limit, seed, size):
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    items = [(f, c) for c, d in enumerate(classes)
             for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if not items:
        raise InputError(f"{path} is not a data folder: no CIFAR batches, no MNIST idx files, and no class "
                         f"subfolders of images ({', '.join(IMAGE_SUFFIXES)})")
    if limit is not None and limit < len(items):
        keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:limit]
        items = [items[i] for i in sorted(keep.tolist())]
    from PIL import Image, UnidentifiedImageError

    opened = []
    for f, _ in items:
        try:
            with Image.open(f) as im:
                im.load()
                opened.append(im.copy())
        except (OSError, UnidentifiedImageError) as err:
            raise InputError(f"{f} is not a readable image: {_first_line(err)}") from None
    gray = all(im.mode in ("1", "L") for im in opened)
    arrays = [np.asarray(im.convert("L" if gray else "RGB")) for im in opened]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1 and size is None:
        raise InputError(f"the images in {path} have different sizes ({len(shapes)} sizes, e.g. "
                         f"{sorted(shapes)[:2]}): pass a size (--size H W) to resize them all")
    if len(shapes) > 1:  # resized one by one here, as load_data resizes a batch: on the [0, 1] scale
        arrays = [_resize(_as_nchw(a[None], str(path)), size)[0] for a in arrays]
    x = _as_nchw(np.stack(arrays), str(path))
    name = f"imagefolder {path.name} ({len(classes)} classes)"
    y, _ = _check_labels(np.array([c for _, c in items]), len(x), len(classes), name)
    return x, y, name, "imagefolder", len(classes), None


def _load_npy(path: Path, mmap_mode=None):
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        # numpy reads any file that is neither .npy nor .npz as a pickle, which allow_pickle=False refuses
        raise InputError(f"{path} is not a readable numpy file of plain arrays ({_first_line(err)}): the file "
                         f"is corrupt, of another kind, or holds pickled Python objects") from None


def _npz(path: Path, limit):
    with _load_npy(path) as archive:
        keys = set(archive.files)
        pair = next(((xk, yk) for xk, yk in NPZ_KEYS if xk in keys), None)
        if pair is None:
            raise InputError(f"{path} has arrays {sorted(keys)}; expected inputs under 'x', 'images' or "
                             f"'data' (labels under 'y' or 'labels')")
        x = _npz_member(archive, pair[0], path)
        labels = _npz_member(archive, pair[1], path) if pair[1] in keys else None
    x = _check_pixels(x, f"{path.name}[{pair[0]!r}]")[:limit]
    y = classes = None
    if labels is not None:
        labels = labels[:limit] if labels.ndim else labels
        y, classes = _check_labels(labels, len(x), None, f"{path.name}[{pair[1]!r}]")
    return x, y, f"npz {path.name}", "npz", classes, None


def _npz_member(archive, key: str, path: Path) -> np.ndarray:
    """archive[key]; a corrupt or pickled member surfaces only when read."""
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        # BadZipFile: a member whose CRC does not match (a flipped bit); zlib.error: a damaged compressed member
        raise InputError(f"{path}: array {key!r} is not readable ({_first_line(err)}): the file is corrupt "
                         f"or holds Python objects; save plain numeric arrays") from None


def _npy(path: Path, limit):
    x = _load_npy(path, mmap_mode="r")  # mapped: with a limit only the first samples are read
    if not isinstance(x, np.ndarray):
        raise InputError(f"{path} is an .npz archive with a .npy name: rename it to .npz")
    x = np.array(_check_pixels(x, path.name)[:limit])
    return x, None, f"npy {path.name}", "npy", None, None

