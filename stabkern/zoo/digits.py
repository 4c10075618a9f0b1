"""A small VGG-style conv net trained on real handwritten digits, for examples, tests and the demo.

The data are scikit-learn's bundled 8x8 digits (1,797 images, shipped inside the package:
nothing is downloaded). Training is seeded (about a minute on two busy CPU cores); the trained
weights are cached on disk in the user's cache directory (`cache_dir()`: $STABKERN_CACHE, else
$XDG_CACHE_HOME/stabkern, else ~/.cache/stabkern; never inside the repository) and retrained
when absent or unreadable. `labels="shuffled"` trains the same architecture on a fixed random
permutation of the labels of the first `SHUFFLED_SAMPLES` training digits (the random-label
net of Arora et al. 2018's contrast).
"""

from __future__ import annotations

import functools
import os
import pathlib
import tempfile

import torch
from torch import nn


def digits_split(n: int, seed: int = 0, test_fraction: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices of n digits: a fixed permutation drawn from `seed`, its first test_fraction
    the test split."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    return perm[n_test:], perm[:n_test]


def load_digits_tensors(seed: int = 0, test_fraction: float = 0.25):
    """((x_train, y_train), (x_test, y_test)): x (N, 1, 8, 8) float32 standardized, y (N,) int64.

    The split is a fixed permutation drawn from `seed`. Needs scikit-learn (`pip install scikit-learn`).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - exercised only without scikit-learn
        raise ImportError("the digits data come from scikit-learn: `pip install scikit-learn`") from err
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    x = (x - x.mean()) / x.std()
    train, test = digits_split(len(x), seed, test_fraction)
    return (x[train], y[train]), (x[test], y[test])


class DigitsNet(nn.Sequential):
    """VGG-style: three 3x3 convs (16, 32, 64 channels) with ReLU and two max-pools, then two Linear.

    Input (N, 1, 8, 8) -> logits (N, 10). Module names follow torchvision's VGG: `features.*`,
    `classifier.*`.
    """

    def __init__(self, width: int = 16):
        w = width
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * w * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10),
        )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    """Fraction of samples whose argmax logit equals the label (model put in eval mode)."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(x)


SHUFFLED_SAMPLES = 256  # few enough that the shuffled labels are memorized in SHUFFLED_EPOCHS
SHUFFLED_EPOCHS = 40


def cache_dir() -> pathlib.Path:
    """Where trained weights are kept: $STABKERN_CACHE, else $XDG_CACHE_HOME/stabkern, else ~/.cache/stabkern."""
    if os.environ.get("STABKERN_CACHE"):
        return pathlib.Path(os.environ["STABKERN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "stabkern"


LABELS = ("true", "control", "shuffled")


def _check_labels(labels: str) -> str:
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {', '.join(map(repr, LABELS))}, got {labels!r}")
    return labels


def training_set(labels: str = "true", seed: int = 0):
    """(x, y) a digits net with these `labels` ("true", "control" or "shuffled") is trained on.

    "true": every training digit (1348) with its label. "shuffled": the first SHUFFLED_SAMPLES training digits
    with their labels permuted by `seed`. "control": the same SHUFFLED_SAMPLES digits with their true labels,
    the shuffled net's matched control (same data size and epochs: only the labels differ).
    """
    (x, y), _ = load_digits_tensors(seed=0)
    if _check_labels(labels) == "true":
        return x, y
    x, y = x[:SHUFFLED_SAMPLES], y[:SHUFFLED_SAMPLES]
    if labels == "control":
        return x, y
    return x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1000 + seed))]


def cached_state(path: pathlib.Path, build) -> dict:
    """The state_dict saved at `path` (weights_only), else build() saved there atomically and returned.

    An absent or unreadable file (e.g. an interrupted write elsewhere) is rebuilt; a read-only cache leaves
    the weights in this process only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - absent or unreadable: build it again
        pass
    state = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
    except OSError:
        pass
    return state


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, batch: int = 64) -> None:
    """One epoch of cross-entropy training in train mode: x (N, ...) and y (N,) in a random order drawn from
    `generator`, `batch` samples per step."""
    model.train()
    for idx in torch.randperm(len(x), generator=generator).split(batch):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


@functools.lru_cache(maxsize=4)
def _trained_state(seed: int, epochs: int, width: int, labels: str = "true"):
    path = cache_dir() / f"digits-net-{labels}-seed{seed}-epochs{epochs}-width{width}-torch{torch.__version__}.pt"
    return cached_state(path, lambda: _train(seed, epochs, width, labels))


def _train(seed: int, epochs: int, width: int, labels: str):
    x, y = training_set(labels, seed)
    torch.manual_seed(seed)
    model = DigitsNet(width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        train_epoch(model, opt, x, y, gen)
    model.eval()
    return {name: t.clone() for name, t in model.state_dict().items()}


def trained_digits_net(seed: int = 0, epochs: int | None = None, width: int = 16, labels: str = "true") -> DigitsNet:
    """A DigitsNet trained on `training_set(labels, seed)` (Adam, batch 64), in eval mode.

    epochs: None takes 30 for true labels, SHUFFLED_EPOCHS for shuffled ones and their control. Deterministic
    for a given seed on a given machine; cached on disk (`cache_dir()`) and per process (a fresh copy each call).
    """
    if epochs is None:
        epochs = 30 if _check_labels(labels) == "true" else SHUFFLED_EPOCHS
    _check_labels(labels)
    model = DigitsNet(width)
    model.load_state_dict(_trained_state(seed, epochs, width, labels))
    return model.eval()
