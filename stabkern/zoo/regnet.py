"""torchvision's RegNetY-400MF defined with torch alone, same module names and state_dict keys.

torchvision does not import everywhere, so `zoo.build` falls back to this. Names follow
`torchvision.models.regnet`: stem (3x3/2 conv-norm-ReLU), trunk_output.block1..4 (stages) of blocks
named "block<stage>-<i>" (proj: the strided 1x1 shortcut, f.a / f.b / f.se / f.c: 1x1, grouped 3x3,
squeeze-excite, 1x1), fc. A torchvision weights file loads here strictly and gives the same logits.

torchvision derives the stage table from the RegNet design-space parameters (depth 16, w_0 48,
w_a 27.89, w_m 2.09, group width 8, bottleneck ratio 1); the resulting table is written out below.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from ._blocks import SqueezeExcitation, conv_norm_act


class ResBottleneckBlock(nn.Module):
    """ReLU(shortcut(x) + f(x)), f = 1x1 -> 3x3 grouped (stride) -> squeeze-excite -> 1x1 (no activation);
    shortcut = x, or proj(x) (strided 1x1 conv + BN) when the width or the resolution changes.

    (N, c_in, H, W) -> (N, c_out, H/stride, W/stride). Groups = c_out / group_width; the squeeze-excite
    narrows to round(se_ratio * c_in) channels.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, group_width: int, se_ratio: float):
        super().__init__()
        self.proj = None
        if c_in != c_out or stride != 1:
            self.proj = conv_norm_act(c_in, c_out, 1, stride, activation=None)
        self.f = nn.Sequential(OrderedDict([
            ("a", conv_norm_act(c_in, c_out, 1)),
            ("b", conv_norm_act(c_out, c_out, 3, stride, groups=c_out // group_width)),
            ("se", SqueezeExcitation(c_out, int(round(se_ratio * c_in)))),
            ("c", conv_norm_act(c_out, c_out, 1, activation=None)),
        ]))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


class RegNet(nn.Module):
    """torchvision's RegNet (Y variant: with squeeze-excite): 3x3/2 stem, stages of residual bottleneck
    blocks (the first of each strided), global average pool, Linear.

    Input (N, 3, H, W), H, W >= 32 -> logits (N, num_classes).
    """

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], group_width: int, se_ratio: float,
                 c_stem: int = 32, num_classes: int = 1000):
        super().__init__()
        self.stem = conv_norm_act(3, c_stem, 3, 2)
        stages = []
        c = c_stem
        for s, (width, depth) in enumerate(zip(widths, depths), start=1):
            blocks = [(f"block{s}-{i}", ResBottleneckBlock(c if i == 0 else width, width, 2 if i == 0 else 1,
                                                           group_width, se_ratio)) for i in range(depth)]
            stages.append((f"block{s}", nn.Sequential(OrderedDict(blocks))))
            c = width
        self.trunk_output = nn.Sequential(OrderedDict(stages))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.trunk_output(self.stem(x)))
        return self.fc(x.flatten(1))


# name -> (stage widths, blocks per stage, group width, squeeze-excite ratio): torchvision's values after
# its width quantization (BlockParams.from_init_params).
CONFIGS = {
    "regnet_y_400mf": ((48, 104, 208, 440), (1, 3, 6, 6), 8, 0.25),
}
NAMES = tuple(CONFIGS)


def regnet(name: str, num_classes: int = 1000) -> RegNet:
    """RegNet `name` ("regnet_y_400mf") with random weights, torchvision's layout."""
    widths, depths, group_width, se_ratio = CONFIGS[name]
    return RegNet(widths, depths, group_width, se_ratio, num_classes=num_classes)
