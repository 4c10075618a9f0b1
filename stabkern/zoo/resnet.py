"""torchvision's ResNet family (resnet18 ... resnet152) defined with torch alone, same names and keys.

torchvision does not import everywhere, so `zoo.build` falls back to these. Module names, parameter
shapes and the forward equal `torchvision.models.resnet` (conv1, bn1, relu, maxpool, layer1..4 of
BasicBlock/Bottleneck with downsample.0/.1, avgpool, fc; the stride sits on the 3x3 conv of a
bottleneck, "ResNet v1.5"), so a torchvision weights file loads here strictly and gives the same
logits. Groups, width_per_group and dilation (ResNeXt, wide ResNets) are not offered. What this is
not: the small CIFAR ResNets of `zoo.cifar`.
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; skip = x or downsample(x) (1x1 conv + BatchNorm)."""

    expansion = 1

    def __init__(self, c_in: int, c: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(c_in, c, stride)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(c, c)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 (c), 3x3 (c, strided), 1x1 (4c) convs with BatchNorm; skip as in BasicBlock."""

    expansion = 4

    def __init__(self, c_in: int, c: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(c_in, c)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = conv3x3(c, c, stride)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = conv1x1(c, c * self.expansion)
        self.bn3 = nn.BatchNorm2d(c * self.expansion)
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
    """

    def __init__(self, block, blocks, num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, blocks[0])
        self.layer2 = self._make_layer(block, 128, blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, c: int, count: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != c * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, c * block.expansion, stride),
                                       nn.BatchNorm2d(c * block.expansion))
        layers = [block(self.inplanes, c, stride, downsample)]
        self.inplanes = c * block.expansion
        layers += [block(self.inplanes, c) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# name -> (block, blocks per stage), as torchvision defines them.
CONFIGS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}
NAMES = tuple(CONFIGS)


def resnet(name: str, num_classes: int = 1000) -> ResNet:
    """ResNet `name` ("resnet18" ... "resnet152") with random weights, torchvision's layout."""
    block, blocks = CONFIGS[name]
    return ResNet(block, blocks, num_classes=num_classes)
