"""Building blocks that several torchvision families share, with torchvision's module names.

- `conv_norm_act`: torchvision's `Conv2dNormActivation`, a Sequential (0 conv, 1 norm, 2 activation)
  whose indices are part of every MobileNet / EfficientNet / RegNet / ConvNeXt state_dict key
- `SqueezeExcitation`: x * sigma(fc2(delta(fc1(mean_hw x)))), fc1 / fc2 1x1 convs (torchvision.ops)
- `StochasticDepth`: drops whole residual branches per sample in training, the identity in eval
- `init_conv_bn_linear`: torchvision's random init of the MobileNets and EfficientNet
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def conv_norm_act(c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, *, groups: int = 1,
                  padding: int | None = None, norm: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
                  activation: Callable[..., nn.Module] | None = nn.ReLU, bias: bool | None = None) -> nn.Sequential:
    """Conv2d (padding (k-1)//2 unless given, bias only without a norm unless given) [+ norm(c_out)]
    [+ activation(inplace=True)], as Sequential 0, 1, 2 so the keys read "<name>.0.weight", "<name>.1.*".

    (N, c_in, H, W) -> (N, c_out, ceil(H / stride), ceil(W / stride)) for odd k and default padding.
    """
    padding = (kernel_size - 1) // 2 if padding is None else padding
    bias = norm is None if bias is None else bias
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size, stride, padding, groups=groups, bias=bias)]
    if norm is not None:
        layers.append(norm(c_out))
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gating: x * scale_activation(fc2(activation(fc1(avgpool(x))))), fc1 c -> squeeze -> fc2 c.

    (N, c, H, W) -> (N, c, H, W). fc1 and fc2 are 1x1 convs with bias (keys fc1.weight (s, c, 1, 1),
    fc1.bias, fc2.weight (c, s, 1, 1), fc2.bias). MobileNetV3 gates with Hardsigmoid, the others Sigmoid.
    """

    def __init__(self, c: int, squeeze: int, activation: Callable[[], nn.Module] = nn.ReLU,
                 scale_activation: Callable[[], nn.Module] = nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class StochasticDepth(nn.Module):
    """In training, each sample's residual branch is zeroed with probability p and the survivors scaled
    by 1 / (1 - p) (torchvision's "row" mode); in eval mode, and for p = 0, the identity. No parameters."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask.div_(keep) if keep > 0.0 else x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def init_conv_bn_linear(model: nn.Module, linear_init: Callable[[torch.Tensor], object]) -> None:
    """torchvision's init of the MobileNets and EfficientNet: convs Kaiming-normal (fan_out) with zero bias,
    BatchNorm weight 1 and bias 0, Linear weights by `linear_init(weight)` (the families differ there) with
    zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            linear_init(m.weight)
            nn.init.zeros_(m.bias)
