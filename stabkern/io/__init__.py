"""User models and data from local files, for the command line and other tools; nothing is downloaded.

- `load_model(spec)` -> `LoadedModel`: an architecture name with a state_dict file, TorchScript,
  torch.export, a pickled model (only when trusted), or the embedded digits net
- `load_data(spec)` -> `LoadedData`: CIFAR-10/100, MNIST / Fashion-MNIST idx files, an ImageFolder
  tree, .npz / .npy arrays, or the embedded digits
- `InputError`: every problem with what the user gave, with a one-line fix
"""

from .data import FORMATS, LoadedData, load_data
from .errors import InputError
from .models import IMAGENET, SOURCES, LoadedModel, load_model

__all__ = ["FORMATS", "IMAGENET", "SOURCES", "InputError", "LoadedData", "LoadedModel", "load_data", "load_model"]
