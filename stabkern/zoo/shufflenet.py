"""torchvision's ShuffleNetV2 x1.0 defined with torch alone, same module names and state_dict keys.

torchvision does not import everywhere, so `zoo.build` falls back to this. Names follow
`torchvision.models.shufflenetv2`: conv1 (3x3/2 conv, BN, ReLU), maxpool, stage2..4 of blocks with
branch1 (strided blocks only) and branch2, conv5 (1x1 conv, BN, ReLU), fc. A torchvision weights file
loads here strictly and gives the same logits.
"""

from __future__ import annotations

import torch
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H, W) with channel g * (C / groups) + j moved to j * groups + g: interleaves
    the groups so that the next block's split mixes both branches."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def depthwise(c: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(c, c, kernel_size=3, stride=stride, padding=1, groups=c, bias=False)


class InvertedResidual(nn.Module):
    """ShuffleNetV2 unit. Stride 1: split the channels in half, keep one half, run branch2 on the other.
    Stride 2: branch1 (depthwise 3x3/2, 1x1) and branch2 both on the whole input. Then concatenate and
    shuffle. (N, c_in, H, W) -> (N, c_out, H/stride, W/stride); each branch gives c_out / 2 channels.
    """

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        half = c_out // 2
        if stride == 1 and c_in != 2 * half:
            raise ValueError(f"a stride-1 ShuffleNetV2 unit keeps its width: c_in={c_in} needs c_out={c_in}")
        self.stride = stride
        # An empty Sequential at stride 1, as torchvision has: it holds no keys but keeps the names equal.
        self.branch1 = nn.Sequential()
        if stride > 1:
            self.branch1 = nn.Sequential(
                depthwise(c_in, stride), nn.BatchNorm2d(c_in),
                nn.Conv2d(c_in, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            nn.Conv2d(c_in if stride > 1 else half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            depthwise(half, stride), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, x2 = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """torchvision's ShuffleNetV2: 3x3/2 conv + 3x3/2 max-pool, three stages (the first unit of each
    strided), 1x1 conv, global mean, Linear. Input (N, 3, H, W), H, W >= 32 -> logits (N, num_classes)."""

    def __init__(self, repeats: tuple[int, int, int], widths: tuple[int, ...], num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                   nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        c = widths[0]
        for stage, (count, width) in enumerate(zip(repeats, widths[1:4]), start=2):
            units = [InvertedResidual(c, width, 2)] + [InvertedResidual(width, width, 1) for _ in range(count - 1)]
            setattr(self, f"stage{stage}", nn.Sequential(*units))
            c = width
        self.conv5 = nn.Sequential(nn.Conv2d(c, widths[-1], 1, bias=False), nn.BatchNorm2d(widths[-1]),
                                   nn.ReLU(inplace=True))
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


# name -> (units per stage 2..4, widths of conv1, stage2..4, conv5), as torchvision defines them.
CONFIGS = {
    "shufflenet_v2_x1_0": ((4, 8, 4), (24, 116, 232, 464, 1024)),
}
NAMES = tuple(CONFIGS)


def shufflenet(name: str, num_classes: int = 1000) -> ShuffleNetV2:
    """ShuffleNetV2 `name` ("shufflenet_v2_x1_0") with random weights, torchvision's layout (and its
    initialization, PyTorch's defaults)."""
    repeats, widths = CONFIGS[name]
    return ShuffleNetV2(repeats, widths, num_classes=num_classes)
