"""torchvision's DenseNet-121 defined with torch alone, same module names and state_dict keys.

torchvision does not import everywhere, so `zoo.build` falls back to this. Names follow
`torchvision.models.densenet`: features.{conv0, norm0, relu0, pool0}, features.denseblock1..4 of
denselayer1..n (norm1, relu1, conv1, norm2, relu2, conv2), features.transition1..3 (norm, relu, conv,
pool), features.norm5, classifier. A torchvision weights file loads here strictly and gives the same
logits. Dropout between dense layers (torchvision's drop_rate, 0 for the published nets) and gradient
checkpointing (memory_efficient) are not offered; neither changes the eval forward.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bn_size * k channels), BN-ReLU-3x3 conv (k channels) on the concatenation of all
    earlier feature maps of the block: list of (N, c_i, H, W) with sum c_i = c_in -> (N, k, H, W)."""

    def __init__(self, c_in: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """`count` dense layers, layer i seeing c_in + i * growth channels; (N, c_in, H, W) ->
    (N, c_in + count * growth, H, W), the input and every layer's output concatenated in order.
    A ModuleDict (not a Sequential) because each layer takes all earlier outputs, as in torchvision."""

    def __init__(self, count: int, c_in: int, growth: int, bn_size: int):
        super().__init__()
        for i in range(count):
            self[f"denselayer{i + 1}"] = DenseLayer(c_in + i * growth, growth, bn_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


def transition(c_in: int, c_out: int) -> nn.Sequential:
    """BN-ReLU-1x1 conv (c_in -> c_out) then 2x2 average pool: (N, c_in, H, W) -> (N, c_out, H/2, W/2)."""
    return nn.Sequential(OrderedDict([
        ("norm", nn.BatchNorm2d(c_in)),
        ("relu", nn.ReLU(inplace=True)),
        ("conv", nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)),
        ("pool", nn.AvgPool2d(kernel_size=2, stride=2)),
    ]))


class DenseNet(nn.Module):
    """torchvision's DenseNet-BC: 7x7/2 stem + 3x3/2 max-pool, dense blocks with transitions that halve the
    channels and the resolution, a final BatchNorm, ReLU, global average pool, Linear.

    Input (N, 3, H, W), H, W >= 32 -> logits (N, num_classes).
    """

    def __init__(self, growth: int, blocks: tuple[int, ...], c_stem: int, bn_size: int = 4,
                 num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, c_stem, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(c_stem)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        c = c_stem
        for i, count in enumerate(blocks, start=1):
            self.features.add_module(f"denseblock{i}", DenseBlock(count, c, growth, bn_size))
            c += count * growth
            if i < len(blocks):
                self.features.add_module(f"transition{i}", transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x))  # norm5 has no ReLU of its own in `features`
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# name -> (growth rate k, dense layers per block, stem width), as torchvision defines them.
CONFIGS = {
    "densenet121": (32, (6, 12, 24, 16), 64),
}
NAMES = tuple(CONFIGS)


def densenet(name: str, num_classes: int = 1000) -> DenseNet:
    """DenseNet `name` ("densenet121") with random weights, torchvision's layout."""
    growth, blocks, c_stem = CONFIGS[name]
    return DenseNet(growth, blocks, c_stem, num_classes=num_classes)
