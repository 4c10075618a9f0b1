"""traker's gradient projector on stabkern's sign ops: one Rademacher matrix on every device.

traker (TRAK data attribution, MadryLab, `pip install traker`) projects per-sample gradients
g (B, grad_dim) to g P, P a (grad_dim, proj_dim) matrix of +-1 signs. Its CudaProjector draws the
signs inside a CUDA-only kernel (fast_jl) from per-thread generator states, so the matrix depends on
the GPU's tiling and does not exist on a CPU; its BasicProjector draws them with torch.Generator,
whose stream differs between CPU and CUDA. `StabkernProjector` computes

    project(g, model_id) = g @ stabkern.sign_matrix(proj_dim, grad_dim, seed=seed, stream=model_id).T

with `stabkern.sign_project` (spec stabkern-sign-v1): the same signs on the CPU, with Triton and
CUDA, never materializing P. Like traker's projectors it does not scale the result (TRAKer divides
the gradients by sqrt(grad_dim) itself), so E ||project(g)||^2 = proj_dim ||g||^2.

What this is not: a Gaussian projector (proj_type "normal" is refused), and not imported by
`import stabkern`: importing this module needs traker (`pip install traker --no-deps` is enough
beside torch, numpy and tqdm; its CUDA extra `traker[fast]` is not needed).
"""

from __future__ import annotations

import torch

from .._checks import check_int, check_positive_int, check_seed
from ..ops import sign_project

try:
    from trak.projectors import AbstractProjector, ProjectionType
except ImportError as err:  # the optional dependency is missing: say how to get it
    raise ImportError("stabkern.adapters.traker needs traker: pip install traker "
                      "(the CUDA extra traker[fast] is not needed)") from err

MAX_MODEL_ID = 1 << 32  # model_id is the sign stream, a 32-bit Philox counter word


class StabkernProjector(AbstractProjector):
    """traker projector: (B, grad_dim) gradients, or traker's dict of per-parameter gradients ->
    (B, proj_dim) = grads @ S.T, S = sign_matrix(proj_dim, grad_dim, seed=seed, stream=model_id).

    seed in [0, 2^64) is used as stabkern's seed unchanged, model_id in [0, 2^32) as the stream, so
    every checkpoint gets an independent matrix and every device the same one. dtype: the gradients
    are cast to it and the result returned in it, as traker's BasicProjector does (accumulation is
    float32, float64 for float64). backend: stabkern's backend name ("auto" picks by device).
    Pass it as `TRAKer(..., projector=StabkernProjector(grad_dim, proj_dim, seed, device=device))`.
    """

    def __init__(self, grad_dim: int, proj_dim: int, seed: int = 0,
                 proj_type: str | ProjectionType = ProjectionType.rademacher, device="cpu",
                 dtype: torch.dtype = torch.float32, backend: str = "auto", *args, **kwargs) -> None:
        grad_dim = check_positive_int("grad_dim", grad_dim)
        proj_dim = check_positive_int("proj_dim", proj_dim)
        seed = check_seed(seed)
        if proj_type not in (ProjectionType.rademacher, "rademacher"):
            raise ValueError(f"proj_type must be 'rademacher' (stabkern's signs), got {proj_type!r}; "
                             f"for Gaussian projections use traker's BasicProjector")
        super().__init__(grad_dim, proj_dim, seed, ProjectionType.rademacher, torch.device(device))
        self.dtype = dtype
        self.backend = backend

    def project(self, grads: torch.Tensor | dict, model_id: int) -> torch.Tensor:
        """grads: (B, grad_dim), or {name: (B, ...)} flattened and concatenated in dict order as traker
        does -> (B, proj_dim) in self.dtype on self.device."""
        if isinstance(grads, dict):
            grads = torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)
        if not isinstance(grads, torch.Tensor) or grads.dim() != 2 or grads.shape[1] != self.grad_dim:
            shape = tuple(grads.shape) if isinstance(grads, torch.Tensor) else type(grads).__name__
            raise ValueError(f"grads must be (batch, grad_dim={self.grad_dim}), got {shape}")
        model_id = check_int("model_id", model_id, 0, MAX_MODEL_ID)
        grads = grads.detach().to(device=self.device, dtype=self.dtype)
        return sign_project(grads, self.proj_dim, seed=self.seed, stream=model_id, backend=self.backend)

    def free_memory(self) -> None:
        """Nothing to free: the matrix is regenerated inside the kernel, never stored."""
