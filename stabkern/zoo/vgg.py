"""torchvision's VGG family (vgg11 ... vgg19_bn) defined with torch alone, same names and state_dict keys.

torchvision does not import everywhere (its wheels may be built for another torch), so `zoo.build`
falls back to these. Module names, parameter shapes and the forward equal torchvision's
`torchvision.models.vgg` (features.N, avgpool, classifier.N), so a torchvision weights file loads here
with `load_state_dict(..., strict=True)` and gives the same logits. The default init is torchvision's
too, but nothing depends on it. What this is not: the CIFAR-shaped VGG of the paper (`zoo.cifar.VGG`).
"""

from __future__ import annotations

import torch
from torch import nn

# torchvision's configurations: numbers are 3x3 conv widths, "M" a 2x2 max-pool.
CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}
NAMES = tuple(name + suffix for name in CONFIGS for suffix in ("", "_bn"))


def make_features(config, batch_norm: bool) -> nn.Sequential:
    """The conv trunk: Conv2d(3x3, padding 1) [+ BatchNorm2d] + ReLU per width, MaxPool2d(2) per "M"."""
    layers: list[nn.Module] = []
    c = 3
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(c, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        c = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision's VGG: features, AdaptiveAvgPool2d(7), classifier (25088 -> 4096 -> 4096 -> classes).

    Input (N, 3, H, W) with H, W >= 32 -> logits (N, num_classes). At 32x32 the 1x1 trunk output is
    replicated to 7x7 by the adaptive pool, as in torchvision.
    """

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg(name: str, num_classes: int = 1000) -> VGG:
    """VGG `name` ("vgg11" ... "vgg19_bn") with random weights, torchvision's layout."""
    base, _, bn = name.partition("_")
    return VGG(make_features(CONFIGS[base], batch_norm=bn == "bn"), num_classes=num_classes)
