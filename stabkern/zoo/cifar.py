"""Conv nets the meters and compressors are exercised on: VGG-19 (CIFAR shape) and small ResNets.

Defined here rather than taken from torchvision so nothing beyond torch is needed and module
names are stable (`features.N`, `classifier.N`, `layerL.B.convC`, `fc`). Weights are random
(no downloads); train them or load your own state_dict.
"""

from __future__ import annotations

from torch import nn

# torchvision's configuration "E": numbers are conv widths, "M" a 2x2 max-pool.
VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                512, 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG for 32x32 inputs: 3x3 convs with BatchNorm (optional) and ReLU, then a Linear head.

    Input (N, 3, 32, 32) -> logits (N, num_classes). VGG-19: 16 convs + 3 Linear = 19 layers.
    """

    def __init__(self, config=VGG19_CONFIG, num_classes: int = 10, batch_norm: bool = False,
                 in_channels: int = 3, hidden: int = 512):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True), nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def vgg19_cifar(num_classes: int = 10, batch_norm: bool = False) -> VGG:
    """VGG-19 as in Arora et al. (2018)'s CIFAR-10 experiments: 16 convs, 3 Linear, 32x32 input."""
    return VGG(VGG19_CONFIG, num_classes=num_classes, batch_norm=batch_norm)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BatchNorm, identity or 1x1-conv skip."""

    expansion = 1

    def __init__(self, c_in: int, c: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != c:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + skip)


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1x1, 3x3 (strided), 1x1 (x4 wide) convs with BatchNorm and a skip."""

    expansion = 4

    def __init__(self, c_in: int, c: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c * 4)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != c * 4:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c * 4, 1, stride, bias=False), nn.BatchNorm2d(c * 4))

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + skip)


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, stages of `blocks` (strides 1, 2, 2, ...), global pool, `fc`.

    Input (N, in_channels, H, W) -> logits (N, num_classes).
    """

    def __init__(self, block=BasicBlock, blocks=(2, 2, 2), widths=(16, 32, 64), num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        c = widths[0]
        for i, (count, width) in enumerate(zip(blocks, widths)):
            stage = []
            for b in range(count):
                stage.append(block(c, width, stride=2 if (i > 0 and b == 0) else 1))
                c = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.pool(x).flatten(1))


def resnet_cifar(depth_blocks=(2, 2, 2), bottleneck: bool = False, **kwargs) -> ResNet:
    """A small CIFAR ResNet; `bottleneck=True` uses Bottleneck blocks."""
    return ResNet(Bottleneck if bottleneck else BasicBlock, depth_blocks, **kwargs)
