"""torchvision's ResNet family (resnet18 ... resnet152) defined with torch alone, same names and keys.

torchvision does not import everywhere, so `zoo.build` falls back to these. Module names, parameter
shapes and the forward equal `torchvision.models.resnet` (conv1, bn1, relu, maxpool, layer1..4 of
BasicBlock/Bottleneck with downsample.0/.1, avgpool, fc; the stride sits on the 3x3 conv of a
bottleneck, "ResNet v1.5"), so a torchvision weights file loads here strictly and gives the same
logits. Groups, width_per_group and dilation (ResNeXt, wide ResNets) are not offered. What this is
not: the small CIFAR ResNets of `zoo.cifar`.

"resnet18_gn" is torchvision's resnet18 with norm_layer=lambda c: nn.GroupNorm(32, c) (torchvision has no
constructor of that name, so it is always built here): the same keys minus BatchNorm's running_mean,
running_var and num_batches_tracked. Its normalization does not depend on batch statistics, so its
eval forward equals its train forward.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Norm = Callable[[int], nn.Module]  # channels -> normalization module (BatchNorm2d, or GroupNorm(32, c))


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with norm (BatchNorm); skip = x or downsample(x) (1x1 conv + norm)."""

    expansion = 1

    def __init__(self, c_in: int, c: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm: Norm = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = conv3x3(c_in, c, stride)
        self.bn1 = norm(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(c, c)
        self.bn2 = norm(c)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 (c), 3x3 (c, strided), 1x1 (4c) convs with norm (BatchNorm); skip as in BasicBlock."""

    expansion = 4

    def __init__(self, c_in: int, c: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm: Norm = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = conv1x1(c_in, c)
        self.bn1 = norm(c)
        self.conv2 = conv3x3(c, c, stride)
        self.bn2 = norm(c)
        self.conv3 = conv1x1(c, c * self.expansion)
        self.bn3 = norm(c * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages (64..512 wide), pool, fc.

    Input (N, 3, H, W) -> logits (N, num_classes); works from 32x32 up (layer4 is 1x1 there).
    norm: the normalization after every conv (torchvision's norm_layer), BatchNorm2d by default.
    """

    def __init__(self, block, blocks, num_classes: int = 1000, norm: Norm = nn.BatchNorm2d):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, blocks[0], 1, norm)
        self.layer2 = self._make_layer(block, 128, blocks[1], 2, norm)
        self.layer3 = self._make_layer(block, 256, blocks[2], 2, norm)
        self.layer4 = self._make_layer(block, 512, blocks[3], 2, norm)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, c: int, count: int, stride: int, norm: Norm) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != c * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, c * block.expansion, stride),
                                       norm(c * block.expansion))
        layers = [block(self.inplanes, c, stride, downsample, norm)]
        self.inplanes = c * block.expansion
        layers += [block(self.inplanes, c, norm=norm) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def group_norm_32(c: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (of c / 32 channels each), the choice of Wu & He (2018) for ResNets."""
    return nn.GroupNorm(32, c)


# name -> (block, blocks per stage, norm), as torchvision defines them (resnet18_gn: see the top).
CONFIGS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), nn.BatchNorm2d),
    "resnet34": (BasicBlock, (3, 4, 6, 3), nn.BatchNorm2d),
    "resnet50": (Bottleneck, (3, 4, 6, 3), nn.BatchNorm2d),
    "resnet101": (Bottleneck, (3, 4, 23, 3), nn.BatchNorm2d),
    "resnet152": (Bottleneck, (3, 8, 36, 3), nn.BatchNorm2d),
    "resnet18_gn": (BasicBlock, (2, 2, 2, 2), group_norm_32),
}
NAMES = tuple(CONFIGS)
NOT_IN_TORCHVISION = ("resnet18_gn",)  # built here even when torchvision imports


def resnet(name: str, num_classes: int = 1000) -> ResNet:
    """ResNet `name` ("resnet18" ... "resnet152", "resnet18_gn") with random weights, torchvision's layout."""
    block, blocks, norm = CONFIGS[name]
    return ResNet(block, blocks, num_classes=num_classes, norm=norm)
