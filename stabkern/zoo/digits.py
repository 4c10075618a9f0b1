"""A small VGG-style conv net trained on real handwritten digits, for examples, tests and the demo.

The data are scikit-learn's bundled 8x8 digits (1,797 images, shipped inside the package:
nothing is downloaded). Training is seeded and takes a few seconds on one CPU core.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


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
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(x) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
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


@functools.lru_cache(maxsize=4)
def _trained_state(seed: int, epochs: int, width: int):
    (x, y), _ = load_digits_tensors(seed=0)
    torch.manual_seed(seed)
    model = DigitsNet(width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return {name: t.clone() for name, t in model.state_dict().items()}


def trained_digits_net(seed: int = 0, epochs: int = 30, width: int = 16) -> DigitsNet:
    """A DigitsNet trained on the digits training split (Adam, batch 64), in eval mode.

    Deterministic for a given seed on a given machine; cached per process (a fresh copy each call).
    """
    model = DigitsNet(width)
    model.load_state_dict(_trained_state(seed, epochs, width))
    return model.eval()
