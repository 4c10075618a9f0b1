"""Example nets and torchvision-compatible architectures; nothing here is downloaded.

- `build(name)`: torchvision's VGG / ResNet constructors when torchvision imports, else the same
  architectures defined here (`vgg`, `resnet`) with torchvision's module names and state_dict keys
- `cifar`: VGG (VGG-19 in CIFAR shape) and small ResNets (basic and bottleneck blocks)
- `digits`: a small conv net on scikit-learn's 8x8 digits, trained deterministically and cached
"""

from __future__ import annotations

import functools

from torch import nn

from .._checks import check_choice, check_positive_int
from . import resnet as _resnet
from . import vgg as _vgg
from .cifar import VGG, ResNet, resnet_cifar, vgg19_cifar
from .digits import DigitsNet, accuracy, load_digits_tensors, trained_digits_net

ARCHITECTURES: tuple[str, ...] = _vgg.NAMES + _resnet.NAMES


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
    stabkern's definition (`zoo.vgg`, `zoo.resnet`) with the same module names and state_dict keys: a
    torchvision weights file loads into either with strict=True. Input (N, 3, H, W), H, W >= 32 ->
    logits (N, num_classes). Unknown name -> ValueError listing ARCHITECTURES.
    """
    check_choice("name", name, ARCHITECTURES)
    num_classes = check_positive_int("num_classes", num_classes)
    models = _torchvision_models() if prefer_torchvision else None
    if models is not None:
        return getattr(models, name)(weights=None, num_classes=num_classes)
    if name in _vgg.NAMES:
        return _vgg.vgg(name, num_classes)
    return _resnet.resnet(name, num_classes)


__all__ = ["ARCHITECTURES", "VGG", "DigitsNet", "ResNet", "accuracy", "build", "load_digits_tensors",
           "resnet_cifar", "trained_digits_net", "vgg19_cifar"]
