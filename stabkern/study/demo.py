"""The embedded default study: a grid of small conv nets trained on scikit-learn's digits.

24 nets: width {8, 16} x depth {2, 3} convolutions x label noise {0, 20%, 50%} of the training labels
replaced by uniform random ones x training-set size {256, 1024}, each trained with Adam for EPOCHS
epochs. Trained weights are cached outside the repository (`stabkern.zoo.digits.cache_dir()/study-demo`),
so a rerun only measures. The test set is the digits test split (450 images, true labels).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..zoo.digits import cache_dir, cached_state, load_digits_tensors, train_epoch
from .run import Net

WIDTHS = (8, 16)
DEPTHS = (2, 3)
LABEL_NOISE = (0.0, 0.2, 0.5)
SIZES = (256, 1024)
EPOCHS = 40


def grid_net(width: int, depth: int) -> nn.Sequential:
    """depth (2 or 3) 3x3 convolutions (width, 2 width, 4 width channels) with ReLU and max-pools, then two
    Linear layers. Input (N, 1, 8, 8) -> logits (N, 10)."""
    if depth not in (2, 3):
        raise ValueError(f"depth must be 2 or 3, got {depth}")
    layers = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
              nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    side, channels = 4, 2 * width
    if depth == 3:
        layers += [nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        side, channels = 2, 4 * width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * side * side, 64), nn.ReLU(), nn.Linear(64, 10))


def noisy_training_set(size: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `size` digits of the training split, a fraction `noise` of them (chosen with `seed`) given a
    uniform random label: x (size, 1, 8, 8) float32, y (size,) int64."""
    (x, y), _ = load_digits_tensors(seed=0)
    x, y = x[:size], y[:size].clone()
    g = torch.Generator().manual_seed(10_000 + seed)
    flip = torch.randperm(size, generator=g)[:round(noise * size)]
    y[flip] = torch.randint(0, 10, (len(flip),), generator=g)
    return x, y


def train(width: int, depth: int, noise: float, size: int, seed: int = 0, epochs: int = EPOCHS) -> nn.Sequential:
    """A grid_net trained on noisy_training_set(size, noise) (Adam 3e-3, batch 64), in eval mode; cached."""
    path = cache_dir() / "study-demo" / (f"w{width}-d{depth}-noise{noise}-n{size}-seed{seed}-e{epochs}-"
                                         f"torch{torch.__version__}.pt")

    def build() -> dict:
        x, y = noisy_training_set(size, noise, seed)
        torch.manual_seed(seed)
        model = grid_net(width, depth)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            train_epoch(model, opt, x, y, gen)
        return model.state_dict()

    model = grid_net(width, depth)
    model.load_state_dict(cached_state(path, build))
    return model.eval()


def demo_nets(seed: int = 0) -> list[Net]:
    """The 24 nets of the demo grid, each trained (or read from the cache) when the study reaches it. Each
    net's training set is its own noisy sample; the gap is measured against those labels."""
    _, test = load_digits_tensors(seed=0)
    nets = []
    for width, depth, noise, size in itertools.product(WIDTHS, DEPTHS, LABEL_NOISE, SIZES):
        hyper = {"width": width, "depth": depth, "label_noise": noise, "train_size": size}
        nets.append(Net(name=f"w{width}-d{depth}-noise{int(noise * 100)}-n{size}",
                        model=lambda w=width, d=depth, p=noise, n=size: train(w, d, p, n, seed),
                        train=noisy_training_set(size, noise, seed), test=test, hyperparameters=hyper))
    return nets


def monitored_training(folder, seed: int = 0, width: int = 16, depth: int = 3, size: int = 1024,
                       epochs: int = EPOCHS) -> dict:
    """Train grid_net(width, depth) twice, on true labels and on 50% label noise, with a StabilityMonitor at
    its defaults; write monitor-true.jsonl, monitor-noise50.jsonl and monitor.png (attenuation and held-out
    accuracy against the epoch, both runs) in `folder`. Returns {run: records}."""
    import pathlib

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .monitor import StabilityMonitor

    folder = pathlib.Path(folder)
    _, test = load_digits_tensors(seed=0)
    runs = {}
    for label, noise in (("true", 0.0), ("noise50", 0.5)):
        x, y = noisy_training_set(size, noise, seed)
        torch.manual_seed(seed)
        model = grid_net(width, depth)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(seed)
        path = folder / f"monitor-{label}.jsonl"
        path.unlink(missing_ok=True)
        monitor = StabilityMonitor(model, (x[:128], y[:128]), held_out=test, path=path, seed=seed)
        for epoch in range(epochs):
            train_epoch(model, opt, x, y, gen)
            monitor.step(epoch=epoch + 1, force=epoch + 1 == epochs)
        runs[label] = monitor.records
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for label, records in runs.items():
        epochs_seen = [r["epoch"] for r in records]
        axes[0].plot(epochs_seen, [r["attenuation_first_to_output"] for r in records], "o-", ms=3, label=label)
        axes[1].plot(epochs_seen, [r["held_out_accuracy"] for r in records], "o-", ms=3, label=label)
    axes[0].set_title("noise at the output from the first layer", fontsize=9)
    axes[1].set_title("held-out accuracy", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "monitor.png", dpi=110)
    plt.close(fig)
    return runs
