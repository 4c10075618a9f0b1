"""stabkern: seeded random-sign sketches and noise-stability meters for conv nets.

Ops (spec stabkern-sign-v1, see `stabkern.reference`): `sign_project`, `sign_reconstruct`,
`sign_compress`, `sign_matrix`. `python -m stabkern.info` says which backends are usable here.
"""

from .ops import BackendUnavailableError, sign_compress, sign_matrix, sign_project, sign_reconstruct
from .reference import SPEC

__version__ = "0.1.0"

__all__ = ["SPEC", "BackendUnavailableError", "sign_compress", "sign_matrix", "sign_project",
           "sign_reconstruct", "__version__"]
