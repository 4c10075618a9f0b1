"""Example nets and data the meters and compressors are exercised on; nothing here is downloaded.

- `cifar`: VGG (VGG-19 in CIFAR shape) and small ResNets (basic and bottleneck blocks)
- `digits`: a small conv net on scikit-learn's 8x8 digits, trained deterministically and cached
"""

from .cifar import VGG, ResNet, resnet_cifar, vgg19_cifar
from .digits import DigitsNet, accuracy, load_digits_tensors, trained_digits_net

__all__ = ["VGG", "DigitsNet", "ResNet", "accuracy", "load_digits_tensors", "resnet_cifar", "trained_digits_net",
           "vgg19_cifar"]
