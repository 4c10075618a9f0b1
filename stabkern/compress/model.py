"""Algorithm 1 on a whole model: swap each Conv2d / Linear for its sketched drop-in, and report.

One seed for the model; a layer's `stream` is its 0-based index among the model's Conv2d and
Linear modules (sketched ones included) in `model.modules()` order, so any tool holding the
seed can regenerate any layer's signs: S_i = sign_matrix(k_i, m_i, seed=seed, stream=i).
The original model is never modified: the work happens on a deep copy.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
from torch import nn

from ..distributed import agree_on_failure, group_rank_size, owner
from ..progress import Tally
from ..sketched import SKETCHED_TYPES, SketchedConv2d, SketchedLinear, check_int, check_k, check_mode
from .report import CompressionReport, LayerReport, OutputError

LAYER_TYPES = (nn.Conv2d, nn.Linear)


def sketchable_layers(model: nn.Module) -> list[tuple[int, str, nn.Module]]:
    """(stream, name, module) of every Conv2d, Linear, SketchedConv2d and SketchedLinear, in modules() order.

    The stream of a layer is its position in this list (a module reachable under two names
    counts once, under its first name, as in `model.modules()`).
    """
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, LAYER_TYPES + SKETCHED_TYPES)]
    return [(i, name, m) for i, (name, m) in enumerate(found)]


def _replace(model: nn.Module, target: nn.Module, new: nn.Module) -> None:
    """Put `new` wherever `target` is a child (every name it is reachable under)."""
    for parent in model.modules():
        for child_name, child in list(parent._modules.items()):
            if child is target:
                setattr(parent, child_name, new)


def fold_batchnorm(model: nn.Module) -> list[dict]:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d into it, in place.

    The pairs come from a torch.fx trace (a BatchNorm2d whose only input is a Conv2d's output,
    used nowhere else, each module called once), so folding is right whatever the registration
    order. conv(x) -> bn: W' = W * g, b' = (b - running_mean) * g + beta, g = gamma / sqrt(var + eps);
    the BatchNorm becomes nn.Identity. Returns [{"conv": name, "batchnorm": name}].
    """
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # noqa: BLE001 - any tracing failure means the same thing to the user
        raise ValueError(f"fold_bn=True needs a model torch.fx can trace, and tracing failed: {err}. "
                         "Fold BatchNorm yourself or pass fold_bn=False") from err
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules[src.target], nn.Conv2d) and len(src.users) == 1
                and calls[src.target] == 1 and calls[node.target] == 1):
            continue
        conv, bn = modules[src.target], modules[node.target]
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"fold_bn: {node.target} keeps no running statistics (track_running_stats=False): "
                             "it cannot be folded")
        with torch.no_grad():
            g = torch.rsqrt(bn.running_var + bn.eps)
            beta = torch.zeros_like(g)
            if bn.weight is not None:
                g = g * bn.weight
                beta = bn.bias
            bias = conv.bias if conv.bias is not None else torch.zeros_like(g)
            new_bias = (bias - bn.running_mean) * g + beta
            conv.weight.mul_(g.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
            if conv.bias is None:
                conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
            else:
                conv.bias.copy_(new_bias)
        _replace(model, bn, nn.Identity())
        folded.append({"conv": src.target, "batchnorm": node.target})
    return folded


def _resolve_k(k, layers, chosen: list[tuple[int, str, nn.Module]]) -> dict[str, int | None]:
    """name -> k (None: leave dense) for the candidate layers, with clear errors for bad k / names."""
    names = [name for _, name, _ in chosen]
    known = set(names)
    if layers is not None:
        if isinstance(layers, str):
            raise TypeError("layers must be an iterable of layer names, got a single str (wrap it in a list)")
        layers = list(layers)
        unknown = [n for n in layers if n not in known]
        if unknown:
            raise KeyError(f"layers: no Conv2d or Linear named {unknown}; the model's are {names}")
        names = [n for n in names if n in set(layers)]
    if isinstance(k, dict):
        unknown = [n for n in k if n not in known]
        if unknown:
            raise KeyError(f"k: no Conv2d or Linear named {unknown}; the model's are {names}")
        if layers is not None:
            missing = [n for n in names if n not in k]
            if missing:
                raise KeyError(f"k has no entry for the selected layers {missing}")
            extra = [n for n in k if n not in set(names)]
            if extra:
                raise KeyError(f"k has entries for layers not in `layers`: {extra}")
        names = [n for n in names if n in k]
        return {n: (None if k[n] is None else check_k(k[n], f"k[{n!r}]")) for n in names}
    if callable(k):
        modules = {name: m for _, name, m in chosen}
        out = {}
        for n in names:
            v = k(n, modules[n])
            out[n] = None if v is None else check_k(v, f"k({n!r}, ...)")
        return out
    k = check_k(k)
    return {n: k for n in names}


def iter_batches(data, batch_size: int, device: torch.device) -> Iterable[torch.Tensor]:
    """Batches of model inputs from a tensor (split along dim 0) or an iterable of tensors / (x, ...) tuples."""
    if isinstance(data, torch.Tensor):
        if data.numel() == 0:
            raise ValueError("data is empty")
        batches = (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    else:
        batches = (b[0] if isinstance(b, (tuple, list)) else b for b in data)
    seen = False
    for x in batches:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"data must be a tensor or an iterable of tensors / (x, ...) tuples, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"data must be floating point, got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("data holds NaN or Inf")
        seen = True
        yield x.to(device)
    if not seen:
        raise ValueError("data is empty")


def run_with_hooks(model: nn.Module, hooks: dict, data, batch_size: int, keep=None, tally=None) -> None:
    """Run `data` through `model` in eval mode without grad, with forward hooks {module: hook}.

    keep: None, or keep(index) -> bool says which batches (numbered from 0) to run (the others are read and
    skipped: a rank's share); tally: a progress.Tally stepped once per batch.
    The hooks are removed and the model's training flag restored whatever happens.
    """
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index, x in enumerate(iter_batches(data, batch_size, _model_device(model))):
                if keep is None or keep(index):
                    model(x)
                if tally is not None:
                    tally.step()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _linear_part(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """A z from a layer's output A z + b (bias broadcast over channels / the last dimension)."""
    if module.bias is None:
        return out
    if isinstance(module, (nn.Conv2d, SketchedConv2d)):
        return out - module.bias.reshape(1, -1, 1, 1)
    return out - module.bias


def measure_output_errors(dense: nn.Module, sketched: dict[str, nn.Module], data, *, eps: float | None = None,
                          batch_size: int = 256) -> dict[str, OutputError]:
    """name -> relative output error of sketched[name] against dense's layer `name`, on its own input.

    Runs `data` through `dense` (in eval mode, no grad) with a forward hook on each named layer
    that feeds the layer's input z to the sketched layer too: per sample
    ||A_hat z - A z|| / ||A z||, A without bias.
    """
    modules = dict(dense.named_modules())
    diffs: dict[str, list] = {name: [] for name in sketched}
    norms: dict[str, list] = {name: [] for name in sketched}

    def hook_for(name):
        def hook(module, inputs, out):
            diff = (sketched[name](inputs[0]) - out).flatten(1).norm(dim=1)
            diffs[name].append(diff.double().cpu())
            norms[name].append(_linear_part(module, out).flatten(1).norm(dim=1).double().cpu())
        return hook

    run_with_hooks(dense, {modules[name]: hook_for(name) for name in sketched}, data, batch_size)
    result = {}
    for name in sketched:
        diff, norm = torch.cat(diffs[name]), torch.cat(norms[name])
        keep = norm > 0
        result[name] = OutputError.from_samples(diff[keep] / norm[keep], int((~keep).sum()), eps)
    return result


def _skipped_modules(model: nn.Module, layer_ids: set[int]) -> list[dict]:
    """Modules that hold parameters themselves but are not Conv2d / Linear: left as they are."""
    out = []
    for name, m in model.named_modules():
        if id(m) in layer_ids or isinstance(m, LAYER_TYPES + SKETCHED_TYPES):
            continue
        if any(p is not None for p in m._parameters.values()):
            out.append({"name": name, "type": type(m).__name__,
                        "reason": "neither Conv2d nor Linear: left as is"})
    return out


def _sketch(module: nn.Module, k: int, *, mode, seed, stream, backend, precision, name) -> tuple[nn.Module, float]:
    """The sketched drop-in of a dense Conv2d / Linear and its relative Frobenius error ||A_hat - A|| / ||A||."""
    cls = SketchedConv2d if isinstance(module, nn.Conv2d) else SketchedLinear
    sk = cls.from_module(module, k, mode=mode, seed=seed, stream=stream, backend=backend, precision=precision,
                         name=name)
    with torch.no_grad():
        w = module.weight.detach().double()
        err = float((sk.weight.double() - w).norm() / w.norm()) if w.norm() > 0 else 0.0
    return sk, err


def _share(built, module: nn.Module, k: int, src: int, group, **sketch) -> tuple[nn.Module, float]:
    """The sketch `src` (a rank of group) built, on every rank: its coefficients and error broadcast; the
    other ranks construct the same module empty (no projection) and copy the dense bias exactly."""
    import torch.distributed as dist

    from ..distributed import _collective_device, resolve_group

    group = resolve_group(group)
    if built is None:
        cls = SketchedConv2d if isinstance(module, nn.Conv2d) else SketchedLinear
        w = module.weight
        if cls is SketchedLinear:
            sk = cls(module.in_features, module.out_features, k, bias=module.bias is not None, device=w.device,
                     dtype=w.dtype, **sketch)
        else:
            sk = cls(module.in_channels, module.out_channels, module.kernel_size, k, stride=module.stride,
                     padding=module.padding, dilation=module.dilation, groups=module.groups,
                     bias=module.bias is not None, padding_mode=module.padding_mode, device=w.device, dtype=w.dtype,
                     **sketch)
        if module.bias is not None:
            with torch.no_grad():
                sk.bias.copy_(module.bias.detach())
            sk.bias.requires_grad_(module.bias.requires_grad)
        err = 0.0
    else:
        sk, err = built
    device = _collective_device(group)
    coeff = sk.coefficients.detach().to(device).contiguous()
    err_t = torch.tensor([err], dtype=torch.float64, device=device)
    src_global = dist.get_global_rank(group, src) if group is not dist.group.WORLD else src
    dist.broadcast(coeff, src=src_global, group=group)
    dist.broadcast(err_t, src=src_global, group=group)
    with torch.no_grad():
        sk.coefficients.copy_(coeff.to(sk.coefficients.device))
    return sk, float(err_t.item())


def compress_model(model: nn.Module, k: int | dict | Callable, *, mode: str = "tensor", seed: int,
                   layers: Iterable[str] | None = None, fold_bn: bool = False, data=None, eps: float | None = None,
                   backend: str = "auto", precision: str = "highest",
                   batch_size: int = 256, group=None, progress=None) -> tuple[nn.Module, CompressionReport]:
    """A compressed copy of `model` (Algorithm 1 on every chosen Conv2d / Linear) and its report.

    k: an int for every layer; a dict name -> int (the layers it names; None leaves one dense);
    or a callable (name, module) -> int or None. mode: "tensor" (the whole weight as one
    vector, k coefficients) or "filter" (every output channel's filter against one shared set
    of k sign vectors, c_out * k coefficients). seed in [0, 2^64); layer i (see
    `sketchable_layers`) uses stream i. layers: names to compress (default all). Biases stay
    exact. fold_bn: fold eval-mode BatchNorm2d into the Conv2d before it first (the copy's
    BatchNorm becomes Identity). data (a tensor or iterable of batches) adds each layer's
    relative output error on its own dense input; eps adds the fraction of samples within eps.

    group: None (one process), a ProcessGroup or "world": the layers are shared over its ranks (round robin),
    each rank sketching its own and broadcasting the coefficients, so every rank returns the same model, bit
    for bit the one-process model (each layer's coefficients depend only on its weight, seed and stream);
    every rank passes the same model and arguments. progress: None or progress(stage, done, total)
    (stabkern.progress), stage "compress", one unit per compressed layer.

    Non-float weights are refused; k >= the entries a sketch covers warns NoCompressionWarning (on the rank
    that sketches the layer).
    Modules that are neither Conv2d nor Linear are left as they are and listed in report.skipped.
    """
    mode = check_mode(mode)
    seed = check_int("seed", seed, 0, 1 << 64)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if eps is not None and not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    dense = copy.deepcopy(model) if fold_bn else model  # read, never written, unless BatchNorm is folded
    folded = fold_batchnorm(dense) if fold_bn else []
    found = sketchable_layers(dense)
    candidates = [(i, name, m) for i, name, m in found if not isinstance(m, SKETCHED_TYPES)]
    ks = _resolve_k(k, layers, candidates)

    compressed = copy.deepcopy(dense)
    comp_modules = dict(compressed.named_modules())
    report = CompressionReport(seed=seed, mode=mode, backend=backend, folded=folded, eps=eps)
    sketched: dict[str, nn.Module] = {}
    todo = [(stream, name, module) for stream, name, module in found
            if not isinstance(module, SKETCHED_TYPES) and ks.get(name) is not None]
    rank, size = group_rank_size(group)
    tally = Tally(progress, "compress")
    tally.expect(len(todo))
    built, error = {}, None
    try:  # each rank sketches its layers (round robin); the others are filled from its coefficients below
        for u, (stream, name, module) in enumerate(todo):
            if owner(u, size) == rank:
                built[name] = _sketch(module, ks[name], mode=mode, seed=seed, stream=stream, backend=backend,
                                      precision=precision, name=name)
            tally.step()
    except Exception as err:  # noqa: BLE001 - raised again on every rank
        error = err
    agree_on_failure(error, group)
    for u, (stream, name, module) in enumerate(todo):
        if size > 1:
            built[name] = _share(built.get(name), module, ks[name], owner(u, size), group, mode=mode, seed=seed,
                                 stream=stream, backend=backend, precision=precision)
    tally.finish()
    for stream, name, module in found:
        if isinstance(module, SKETCHED_TYPES):
            report.skipped.append({"name": name, "type": type(module).__name__, "reason": "already sketched"})
            continue
        if ks.get(name) is None:
            reason = "not selected" if name not in ks else "k is None: left dense"
            report.skipped.append({"name": name, "type": type(module).__name__, "reason": reason})
            continue
        sk, err = built[name]
        _replace(compressed, comp_modules[name], sk)
        sketched[name] = sk
        report.layers.append(LayerReport(name=name, type=type(sk).__name__.replace("Sketched", ""), stream=stream,
                                         mode=mode, shape=list(module.weight.shape), n=module.weight.numel(),
                                         k=ks[name], stored=sk.stored, rel_fro_error=err))
    report.skipped += _skipped_modules(dense, {id(m) for _, _, m in found})
    if data is not None and sketched:
        errors = measure_output_errors(dense, sketched, data, eps=eps, batch_size=batch_size)
        for r in report.layers:
            r.output_error = errors[r.name]
    return compressed, report


__all__ = ["compress_model", "fold_batchnorm", "iter_batches", "measure_output_errors", "sketchable_layers"]
