"""torchvision's ConvNeXt-Tiny defined with torch alone, same module names and state_dict keys.

torchvision does not import everywhere, so `zoo.build` falls back to this. Names follow
`torchvision.models.convnext`: features.0 the 4x4/4 patchify stem (conv, LayerNorm), features.1/3/5/7 the
stages of CNBlocks (layer_scale, block.0 depthwise 7x7 conv, block.2 LayerNorm, block.3 / block.5 the
Linear MLP), features.2/4/6 the downsamplers (LayerNorm, 2x2/2 conv), classifier.0 LayerNorm,
classifier.2 Linear. A torchvision weights file loads here strictly and gives the same logits.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import StochasticDepth, conv_norm_act


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of (N, C, H, W) at each pixel -> (N, C, H, W) (weight, bias: (C,))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    """x.permute(dims); a module so that it holds its place (and index) in a Sequential."""

    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class CNBlock(nn.Module):
    """x + stochastic_depth(layer_scale * MLP(LayerNorm(depthwise7x7(x)))), the MLP dim -> 4 dim -> dim
    with GELU, applied per pixel in channels-last layout. (N, dim, H, W) -> (N, dim, H, W).

    layer_scale: (dim, 1, 1), initialized to 1e-6 so each block starts near the identity.
    """

    def __init__(self, dim: int, layer_scale: float, drop_prob: float):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim),
            Permute((0, 2, 3, 1)),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute((0, 3, 1, 2)),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.stochastic_depth = StochasticDepth(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stochastic_depth(self.layer_scale * self.block(x)) + x


# ConvNeXt's LayerNorms use eps 1e-6 (not nn.LayerNorm's 1e-5): not in the state_dict, but in the forward.
_norm = partial(LayerNorm2d, eps=1e-6)


class ConvNeXt(nn.Module):
    """torchvision's ConvNeXt: 4x4/4 conv + LayerNorm stem, four stages of CNBlocks with LayerNorm + 2x2/2
    conv between them, global average pool, LayerNorm, Linear.

    Input (N, 3, H, W), H, W >= 32 -> logits (N, num_classes). Stochastic depth grows linearly over the
    blocks, p_i = stochastic_depth_prob * i / (blocks - 1), training only, as in torchvision.
    """

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], num_classes: int = 1000,
                 stochastic_depth_prob: float = 0.1, layer_scale: float = 1e-6):
        super().__init__()
        features: list[nn.Module] = [conv_norm_act(3, widths[0], 4, 4, padding=0, norm=_norm, activation=None,
                                                   bias=True)]
        total = sum(depths)
        index = 0
        for stage, (dim, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for _ in range(depth):
                blocks.append(CNBlock(dim, layer_scale, stochastic_depth_prob * index / (total - 1.0)))
                index += 1
            features.append(nn.Sequential(*blocks))
            if stage + 1 < len(widths):
                features.append(nn.Sequential(_norm(dim), nn.Conv2d(dim, widths[stage + 1], kernel_size=2, stride=2)))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(_norm(widths[-1]), nn.Flatten(1), nn.Linear(widths[-1], num_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


# name -> (stage widths, blocks per stage), as torchvision defines them.
CONFIGS = {
    "convnext_tiny": ((96, 192, 384, 768), (3, 3, 9, 3)),
}
NAMES = tuple(CONFIGS)


def convnext(name: str, num_classes: int = 1000) -> ConvNeXt:
    """ConvNeXt `name` ("convnext_tiny") with random weights, torchvision's layout."""
    widths, depths = CONFIGS[name]
    return ConvNeXt(widths, depths, num_classes=num_classes)
