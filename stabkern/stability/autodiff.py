"""What the meters' differentiated passes need around a user's forward: in-place writes that autograd accepts.

The forward-mode passes (meters.forward_meters: J x^i, J eta) and the reverse sweeps (meters.reverse_sweeps:
J^T v) differentiate the model's own forward. A forward that `noise_attenuation` runs fine (it only evaluates
the model) can still stop autograd, and `differentiable()` removes each cause without changing a value:

- an in-place write to a tensor an earlier op saved for the backward ("one of the variables needed for
  gradient computation has been modified by an inplace operation"): `b = conv2(a); a.relu_()` (conv2 saved
  `a` to differentiate its weight), an SE gate `h.mul_(gate)` after `adaptive_avg_pool2d` read `h`,
  `masked_fill_`, `index_add_`, `scatter_add_`, setitem. Every tensor saved for the backward is saved as a
  copy (torch.autograd.graph.saved_tensors_hooks), so the backward differentiates each op at the values it
  read, which is what the forward computed; a later write changes nothing it needs.
- an in-place write to a piece of `split`, `chunk`, `unbind` or `tensor_split` of a tensor that requires grad
  (reverse mode refuses writes into views made by a function that returns several; forward mode accepts
  them): those calls return the same pieces, each a single view (`as_strided`) of the same memory, which
  autograd accepts; writes reach the base as before.
- an `out=` call (`torch.add(a, b, out=a)`): neither forward nor reverse mode differentiates out= functions,
  so the call runs without `out=` and its result is copied into `out` (same shape: otherwise torch's own call
  and its own error).

The model's parameters are not copied (a forward does not write into them: autograd refuses in-place writes
to a leaf that requires grad). The model itself is not changed: the hooks and the function mode live for
the duration of the `with` block only.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

# calls that return several views of their first argument (autograd's "multiple views" creation)
MULTI_VIEW = frozenset(getattr(owner, name) for owner in (torch, torch.Tensor)
                       for name in ("split", "split_with_sizes", "chunk", "unbind", "tensor_split", "hsplit",
                                    "vsplit", "dsplit") if hasattr(owner, name))


def _save_copy(t: torch.Tensor) -> torch.Tensor:
    return t if isinstance(t, nn.Parameter) else t.clone()


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


class _WritableViews(TorchFunctionMode):
    """Single views instead of multi-output views, and out= calls as a call and a copy (see the module note)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = kwargs.get("out")
        if out is not None:
            result = func(*args, **{k: v for k, v in kwargs.items() if k != "out"})
            outs, results = tree_leaves(out), tree_leaves(result)
            if len(outs) == len(results) and all(isinstance(o, torch.Tensor) and isinstance(r, torch.Tensor)
                                                  and o.shape == r.shape for o, r in zip(outs, results)):
                for o, r in zip(outs, results):
                    o.copy_(r)
                return out
            return func(*args, **kwargs)
        result = func(*args, **kwargs)
        base = args[0] if args else None
        if func in MULTI_VIEW and isinstance(base, torch.Tensor) and base.requires_grad and torch.is_grad_enabled() \
                and isinstance(result, (tuple, list)):  # (forward mode accepts writes into such views)
            return type(result)(base.as_strided(piece.size(), piece.stride(), piece.storage_offset())
                                for piece in result)
        return result


@contextlib.contextmanager
def differentiable():
    """Within the block, the model's forward can be differentiated (forward or reverse mode) although it writes
    in place (see the module note); values are those of the plain forward."""
    with torch.autograd.graph.saved_tensors_hooks(_save_copy, _unpack), _WritableViews():
        yield


__all__ = ["differentiable"]
