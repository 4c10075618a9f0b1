"""torchvision's MobileNetV2 and MobileNetV3-Large defined with torch alone, same names and state_dict keys.

torchvision does not import everywhere, so `zoo.build` falls back to these. Names follow
`torchvision.models.mobilenetv2` / `mobilenetv3`: features.0 (stem), features.1..n inverted residual
blocks (`conv` in V2, `block` in V3, each a Sequential of conv-norm-activation units), the last 1x1
conv-norm-activation, classifier.N. Only width multiplier 1.0 is offered (the published nets), so the
channel tables below are written out rather than derived. A torchvision weights file loads here
strictly and gives the same logits.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import SqueezeExcitation, conv_norm_act, init_conv_bn_linear


def make_divisible(v: float, divisor: int = 8) -> int:
    """v rounded to the nearest multiple of `divisor` (at least `divisor`), rounded up one step if that
    lost more than 10% (the TensorFlow MobileNet rule torchvision copies; sizes MobileNetV3's SE)."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


# ----------------------------------------------------------------------------------------- V2

# (expansion t, output channels c, repeats n, first stride s), the table of the MobileNetV2 paper.
V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))


class InvertedResidualV2(nn.Module):
    """[1x1 expand to t*c_in, ReLU6] -> 3x3 depthwise (stride), ReLU6 -> 1x1 project to c_out, BN (no
    activation: the "linear bottleneck"); + x when stride 1 and c_in == c_out.

    (N, c_in, H, W) -> (N, c_out, H/stride, W/stride). Keys: conv.0.* .. conv.3.* (conv.0 / conv.1 are
    conv-norm-activation units; without expansion the depthwise unit is conv.0 and the projection conv.1).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_norm_act(c_in, hidden, 1, activation=nn.ReLU6))
        layers += [conv_norm_act(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
                   nn.Conv2d(hidden, c_out, 1, bias=False),
                   nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0): 3x3/2 stem (32), 17 inverted residual blocks, 1x1 conv to
    1280, global average pool, Dropout(0.2), Linear. Input (N, 3, H, W), H, W >= 32 -> (N, num_classes)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        c = 32
        features: list[nn.Module] = [conv_norm_act(3, c, 3, 2, activation=nn.ReLU6)]
        for t, c_out, n, s in V2_SETTING:
            for i in range(n):
                features.append(InvertedResidualV2(c, c_out, s if i == 0 else 1, t))
                c = c_out
        features.append(conv_norm_act(c, 1280, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(1280, num_classes))
        _init_mobilenet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# ----------------------------------------------------------------------------------------- V3

# MobileNetV3-Large bottlenecks: (c_in, kernel, expanded, c_out, squeeze-excite, activation, stride),
# Table 1 of the paper ("HS" = Hardswish, "RE" = ReLU).
V3_LARGE_SETTING = (
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1),
)
V3_LARGE_LAST = 1280  # the hidden width of the classifier

# V3 trains its BatchNorms with eps 1e-3 (TensorFlow's default); eps is not in the state_dict but changes
# the eval forward, so it must be this for torchvision's weights to give torchvision's logits.
_v3_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class InvertedResidualV3(nn.Module):
    """[1x1 expand] -> kxk depthwise (stride) -> [squeeze-excite, Hardsigmoid gate] -> 1x1 project (no
    activation); activations ReLU or Hardswish; + x when stride 1 and c_in == c_out.

    (N, c_in, H, W) -> (N, c_out, H/stride, W/stride). Keys block.0.* .. block.3.* in that order.
    """

    def __init__(self, c_in: int, kernel: int, expanded: int, c_out: int, use_se: bool, activation: str,
                 stride: int):
        super().__init__()
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(conv_norm_act(c_in, expanded, 1, norm=_v3_norm, activation=act))
        layers.append(conv_norm_act(expanded, expanded, kernel, stride, groups=expanded, norm=_v3_norm,
                                    activation=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4), scale_activation=nn.Hardsigmoid))
        layers.append(conv_norm_act(expanded, c_out, 1, norm=_v3_norm, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(nn.Module):
    """torchvision's MobileNetV3-Large: 3x3/2 stem (16, Hardswish), 15 bottlenecks, 1x1 conv to 6 * 160,
    global average pool, classifier Linear(960, 1280), Hardswish, Dropout(0.2), Linear.
    Input (N, 3, H, W), H, W >= 32 -> logits (N, num_classes)."""

    def __init__(self, setting=V3_LARGE_SETTING, last_channel: int = V3_LARGE_LAST, num_classes: int = 1000,
                 dropout: float = 0.2):
        super().__init__()
        features: list[nn.Module] = [conv_norm_act(3, setting[0][0], 3, 2, norm=_v3_norm, activation=nn.Hardswish)]
        features += [InvertedResidualV3(*row) for row in setting]
        c_last_conv = 6 * setting[-1][3]
        features.append(conv_norm_act(setting[-1][3], c_last_conv, 1, norm=_v3_norm, activation=nn.Hardswish))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(c_last_conv, last_channel), nn.Hardswish(inplace=True), nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        _init_mobilenet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _init_mobilenet(model: nn.Module) -> None:
    """torchvision's init for both versions: Linear N(0, 0.01), the rest init_conv_bn_linear's."""
    init_conv_bn_linear(model, lambda w: nn.init.normal_(w, 0, 0.01))


NAMES = ("mobilenet_v2", "mobilenet_v3_large")


def mobilenet(name: str, num_classes: int = 1000) -> nn.Module:
    """MobileNet `name` ("mobilenet_v2", "mobilenet_v3_large") with random weights, torchvision's layout."""
    return MobileNetV2(num_classes) if name == "mobilenet_v2" else MobileNetV3(num_classes=num_classes)
