"""The card's accuracy-vs-k curve: the model's accuracy with every layer sketched at k = f cap, for each f.

What it is: the same curve as one `compress_model(model, ks, ...)` per fraction (layer i on stream i, the
card's seed and mode), at a fraction of the cost. Row t of a layer's sign matrix does not depend on k
(stabkern-sign-v1: S[t, j] is a function of seed, stream, t, j), so the coefficients at k are the first k
of those at the largest k, and A_hat(k) = (1/k) sum_{t<k} c_t S_t grows from one fraction to the next
(sign_reconstruct with row_offset). Each layer costs one projection and one reconstruction at the largest
k, where compress_model per fraction costs a projection, a reconstruction for its report's error and one
for the forward pass, at every k (on a VGG-11's 25088 x 4096 Linear, ~14e12 sign-MACs become ~5e12).
The accuracy is the model's with each weight replaced by its A_hat, in a copy: what a Sketched layer
computes (the same F.conv2d / F.linear of A_hat, bias kept).

What it is not: a general compressor. Layers this cannot mirror exactly (a weight shared by two layers, a
computed weight such as weight_norm, a subclass of Conv2d / Linear, an already-sketched layer) take the
compress_model path, one call per fraction.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..progress import Progress, silent


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of samples whose argmax output equals the label (model in eval mode, each module's flag
    restored after, also on an exception)."""
    from ..compress.data import eval_mode

    device = next(model.parameters()).device
    correct = 0
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(x), batch_size):
            out = model(x[i:i + batch_size].to(device)).flatten(1)
            correct += int((out.argmax(1).cpu() == y[i:i + batch_size].cpu()).sum())
    return correct / len(x)


def fast_path_ok(model: nn.Module, names) -> bool:
    """Can `sweep` substitute weights for these layers: each a plain Conv2d / Linear holding its own
    float weight Parameter, held by no other module, and no layer already sketched."""
    from ..compress import sketchable_layers
    from ..sketched import SKETCHED_TYPES

    found = sketchable_layers(model)
    if any(isinstance(m, SKETCHED_TYPES) for _, _, m in found):
        return False
    modules = {name: m for _, name, m in found}
    holders: dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                holders[id(p)] = holders.get(id(p), 0) + 1
    for name in names:
        m = modules.get(name)
        if type(m) not in (nn.Conv2d, nn.Linear) or "weight" not in m._parameters:
            return False
        if holders[id(m.weight)] != 1 or m.weight.dtype not in (torch.float32, torch.float64):
            return False
    return True


def sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, caps: dict, fractions, *, mode: str, seed: int,
          backend: str = "auto", batch_size: int = 256, progress: Progress = silent, stage: str = "accuracy vs k"):
    """[{"fraction", "k", "stored", "ratio", "rel_fro_error", "accuracy"}] per fraction (increasing, in (0, 1]):
    the accuracy on (x, y) with every layer of `caps` (name -> entries one sketch covers) sketched at
    k = max(1, round(f cap)).

    Equals one compress_model(model, k, mode=mode, seed=seed, allow_no_compression=True) per fraction up to
    float32 rounding of the reconstruction's sums. The model is read, never changed (a copy is sketched).
    Progress: in thousandths of the stage's sign-MACs (its ETA follows the cost, not the fraction count).
    """
    dense = sum(m.weight.numel() for name, m in model.named_modules() if name in caps)
    curve = []
    for f, ks, sketched, errors in sketched_copies(model, caps, fractions, mode=mode, seed=seed, backend=backend,
                                                   progress=progress, stage=stage):
        stored = sum(ks[name] * (1 if mode == "tensor" else m.weight.shape[0])
                     for name, m in model.named_modules() if name in caps)
        curve.append({"fraction": f, "k": ks, "stored": stored, "ratio": dense / stored, "rel_fro_error": errors,
                      "accuracy": accuracy(sketched, x, y, batch_size)})
    return curve


def sketched_copies(model: nn.Module, caps: dict, fractions, *, mode: str, seed: int, backend: str = "auto",
                    progress: Progress = silent, stage: str = "accuracy vs k"):
    """Yield (f, {name: k}, copy, {name: ||A_hat - A||_F / ||A||_F}) per fraction: `copy` is one deep copy of
    the model (the same object each time) whose layers in `caps` hold A_hat at k = max(1, round(f cap)), layer i on stream i (compress_model's
    streams), A_hat = (1/k) sum_{t<k} c_t S_t with c the coefficients projected once at the largest k."""
    from ..compress import sketchable_layers
    from ..ops import sign_project, sign_reconstruct

    found = {name: (stream, m) for stream, name, m in sketchable_layers(model)}
    ks = [{name: max(1, round(f * cap)) for name, cap in caps.items()} for f in fractions]
    work_of = {name: found[name][1].weight.numel() * ks[-1][name] for name in caps}  # sign-MACs at the largest k
    total_work = 2 * sum(work_of.values()) or 1
    done = 0
    progress(stage, 0, 1000)
    sketched = copy.deepcopy(model)
    copies = dict(sketched.named_modules())
    m_rows, errors = {}, {}  # name -> the dense rows; name -> the relative weight error at the current k
    state = {}  # name -> (stream, rows' shape, coefficients at the largest k, running sum of c_t S_t)
    with torch.no_grad():
        for name in caps:
            stream, m = found[name]
            rows = m.weight.detach().reshape(1 if mode == "tensor" else m.weight.shape[0], -1)
            coefficients = sign_project(rows, ks[-1][name], seed=seed, stream=stream, backend=backend)
            state[name] = (stream, rows.shape, coefficients, torch.zeros_like(rows))
            m_rows[name] = rows
            done += work_of[name]
            progress(stage, min(999, 1000 * done // total_work), 1000)
        previous = {name: 0 for name in caps}
        for f, kf in zip(fractions, ks):
            for name in caps:
                stream, shape, coefficients, running = state[name]
                k0, k = previous[name], kf[name]
                if k > k0:  # rows k0 .. k-1 of S added to the running sum (scale 1: the adjoint of the projection)
                    running += sign_reconstruct(coefficients[:, k0:k].contiguous(), shape[1], seed=seed,
                                                stream=stream, scale=1.0, row_offset=k0, backend=backend)
                    done += work_of[name] * (k - k0) // ks[-1][name]
                previous[name] = k
                weight = copies[name].weight
                weight.copy_((running / k).reshape(weight.shape))
                errors[name] = _relative_error(weight.reshape(shape), m_rows[name])
            yield f, dict(kf), sketched, dict(errors)
            progress(stage, min(999, 1000 * done // total_work), 1000)
    progress(stage, 1000, 1000)


def _relative_error(a_hat: torch.Tensor, a: torch.Tensor, chunk: int = 1 << 22) -> float:
    """||A_hat - A||_F / ||A||_F (0 for A = 0) of two (rows, m) matrices, squared sums in float64 over row blocks
    (no temporary of the weight's size; compress_model's report gives the same figure, sketched.relative_error)."""
    step = max(1, chunk // max(1, a.shape[1]))
    diff2 = norm2 = 0.0
    for i in range(0, a.shape[0], step):
        d = a_hat[i:i + step].double() - a[i:i + step].double()
        diff2 += float(d.square().sum())
        norm2 += float(a[i:i + step].double().square().sum())
    return 0.0 if norm2 == 0 else (diff2 / norm2) ** 0.5
