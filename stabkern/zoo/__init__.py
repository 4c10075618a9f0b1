"""Example nets and torchvision-compatible architectures; nothing here is downloaded.

- `build(name)`: torchvision's constructor when torchvision imports, else the same architecture defined
  here with torchvision's module names and state_dict keys, one file per family (`vgg`, `resnet`,
  `densenet`, `mobilenet`, `efficientnet`, `convnext`, `regnet`, `shufflenet`, `squeezenet`);
  "resnet18_gn" (ResNet-18 with GroupNorm) is always stabkern's
- `cifar`: VGG (VGG-19 in CIFAR shape) and small ResNets (basic and bottleneck blocks)
- `digits`: a small conv net on scikit-learn's 8x8 digits, trained deterministically and cached
"""

from __future__ import annotations

import functools
from typing import Callable

from torch import nn

from .._checks import check_choice, check_positive_int
from . import convnext as _convnext
from . import densenet as _densenet
from . import efficientnet as _efficientnet
from . import mobilenet as _mobilenet
from . import regnet as _regnet
from . import resnet as _resnet
from . import shufflenet as _shufflenet
from . import squeezenet as _squeezenet
from . import vgg as _vgg
from .cifar import VGG, ResNet, resnet_cifar, vgg19_cifar
from .digits import DigitsNet, accuracy, load_digits_tensors, trained_digits_net

# name -> stabkern's constructor (name, num_classes) -> nn.Module, family by family.
_OURS: dict[str, Callable[[str, int], nn.Module]] = {
    name: constructor
    for family, constructor in ((_vgg, _vgg.vgg), (_resnet, _resnet.resnet), (_densenet, _densenet.densenet),
                                (_mobilenet, _mobilenet.mobilenet), (_efficientnet, _efficientnet.efficientnet),
                                (_convnext, _convnext.convnext), (_regnet, _regnet.regnet),
                                (_shufflenet, _shufflenet.shufflenet), (_squeezenet, _squeezenet.squeezenet))
    for name in family.NAMES
}
ARCHITECTURES: tuple[str, ...] = tuple(_OURS)


@functools.lru_cache(maxsize=1)
def _torchvision_models():
    """torchvision.models, or None when torchvision is absent or fails to import (e.g. a CUDA build
    of torchvision beside a CPU torch raises at import, not only ImportError)."""
    try:
        import torchvision.models as models
    except Exception:  # noqa: BLE001 - any import failure means "use our definitions"
        return None
    return models


def build(name: str, num_classes: int = 1000, *, prefer_torchvision: bool = True) -> nn.Module:
    """Architecture `name` (one of ARCHITECTURES) with random weights and `num_classes` outputs.

    torchvision's constructor (weights=None) when `prefer_torchvision` and torchvision imports, else
    stabkern's definition (`zoo.vgg`, `zoo.resnet`, ...) with the same module names and state_dict keys:
    a torchvision weights file loads into either with strict=True and gives the same logits.
    "resnet18_gn" has no torchvision constructor and is always stabkern's. Input (N, 3, H, W),
    H, W >= 32 -> logits (N, num_classes). Unknown name -> ValueError listing ARCHITECTURES.
    """
    check_choice("name", name, ARCHITECTURES)
    num_classes = check_positive_int("num_classes", num_classes)
    models = _torchvision_models() if prefer_torchvision and name not in _resnet.NOT_IN_TORCHVISION else None
    if models is not None:
        return getattr(models, name)(weights=None, num_classes=num_classes)
    return _OURS[name](name, num_classes)


__all__ = ["ARCHITECTURES", "VGG", "DigitsNet", "ResNet", "accuracy", "build", "load_digits_tensors",
           "resnet_cifar", "trained_digits_net", "vgg19_cifar"]
