"""torchvision's EfficientNet-B0 defined with torch alone, same module names and state_dict keys.

torchvision does not import everywhere, so `zoo.build` falls back to this. Names follow
`torchvision.models.efficientnet`: features.0 (stem), features.1..7 the seven stages (each a Sequential
of MBConv blocks, `block` a Sequential of conv-norm-activation units and a squeeze-excite), features.8
the 1x1 head conv, classifier.1 the Linear. Only B0 (width and depth multipliers 1.0) is offered, so the
stage table is written out. A torchvision weights file loads here strictly and gives the same logits.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from ._blocks import SqueezeExcitation, StochasticDepth, conv_norm_act, init_conv_bn_linear

# B0 stages: (expansion, kernel, first stride, c_in, c_out, blocks), Table 1 of the EfficientNet paper.
B0_SETTING = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))


class MBConv(nn.Module):
    """[1x1 expand to e*c_in, SiLU] -> kxk depthwise (stride), SiLU -> squeeze-excite (to c_in / 4, SiLU,
    Sigmoid gate) -> 1x1 project, BN; + x (after stochastic depth, in training) when stride 1 and
    c_in == c_out.

    (N, c_in, H, W) -> (N, c_out, H/stride, W/stride). Keys block.0.* .. block.3.* (block.0..2 without
    expansion).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int, drop_prob: float):
        super().__init__()
        expanded = c_in * expansion
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(conv_norm_act(c_in, expanded, 1, activation=nn.SiLU))
        layers += [conv_norm_act(expanded, expanded, kernel, stride, groups=expanded, activation=nn.SiLU),
                   SqueezeExcitation(expanded, max(1, c_in // 4), activation=partial(nn.SiLU, inplace=True)),
                   conv_norm_act(expanded, c_out, 1, activation=None)]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return self.stochastic_depth(out) + x if self.use_res_connect else out


class EfficientNet(nn.Module):
    """torchvision's EfficientNet-B0: 3x3/2 stem (32, SiLU), 16 MBConv blocks in 7 stages, 1x1 conv to
    4 * 320, global average pool, Dropout, Linear. Input (N, 3, H, W), H, W >= 32 -> (N, num_classes).

    Stochastic depth grows linearly with the block index, p_i = stochastic_depth_prob * i / 16, as in
    torchvision; it and the dropout act in training only.
    """

    def __init__(self, setting=B0_SETTING, num_classes: int = 1000, dropout: float = 0.2,
                 stochastic_depth_prob: float = 0.2):
        super().__init__()
        features: list[nn.Module] = [conv_norm_act(3, setting[0][3], 3, 2, activation=nn.SiLU)]
        total = sum(row[5] for row in setting)
        index = 0
        for expansion, kernel, stride, c_in, c_out, count in setting:
            stage = []
            for i in range(count):
                stage.append(MBConv(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expansion,
                                    stochastic_depth_prob * index / total))
                index += 1
            features.append(nn.Sequential(*stage))
        c_head = 4 * setting[-1][4]
        features.append(conv_norm_act(setting[-1][4], c_head, 1, activation=nn.SiLU))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(c_head, num_classes))
        # Linear U(-1/sqrt(out), 1/sqrt(out)) (torchvision's EfficientNet), the rest as the MobileNets
        init_conv_bn_linear(self, lambda w: nn.init.uniform_(w, -1 / math.sqrt(w.shape[0]), 1 / math.sqrt(w.shape[0])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


NAMES = ("efficientnet_b0",)


def efficientnet(name: str, num_classes: int = 1000) -> EfficientNet:
    """EfficientNet `name` ("efficientnet_b0") with random weights, torchvision's layout."""
    return EfficientNet(num_classes=num_classes)
