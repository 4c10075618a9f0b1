"""torchvision's SqueezeNet 1.1 defined with torch alone, same module names and state_dict keys.

torchvision does not import everywhere, so `zoo.build` falls back to this. Names follow
`torchvision.models.squeezenet`: features.N (convs, max-pools and Fire modules with squeeze,
expand1x1, expand3x3), classifier.1 the 1x1 conv to the classes. There is no Linear: the class scores
are a 1x1 conv, a ReLU (so they are >= 0) and a global average pool. A torchvision weights file loads
here strictly and gives the same logits.
"""

from __future__ import annotations

import torch
from torch import nn


class Fire(nn.Module):
    """1x1 squeeze conv, ReLU, then 1x1 and 3x3 expand convs (each ReLU) concatenated:
    (N, c_in, H, W) -> (N, e1 + e3, H, W)."""

    def __init__(self, c_in: int, squeeze: int, e1: int, e3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(c_in, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


def _pool() -> nn.MaxPool2d:
    # ceil_mode: the last partial window counts, as in the original Caffe net (and torchvision).
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


class SqueezeNet(nn.Module):
    """torchvision's SqueezeNet 1.1: 3x3/2 conv (64), ReLU, then Fire modules with 3x3/2 max-pools, and a
    classifier of Dropout, 1x1 conv (512 -> classes), ReLU, global average pool.

    Input (N, 3, H, W), H, W >= 32 -> scores (N, num_classes), all >= 0.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(inplace=True), _pool(),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), _pool(),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), _pool(),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
        )
        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), final_conv, nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


NAMES = ("squeezenet1_1",)


def squeezenet(name: str, num_classes: int = 1000) -> SqueezeNet:
    """SqueezeNet `name` ("squeezenet1_1") with random weights, torchvision's layout."""
    return SqueezeNet(num_classes)
