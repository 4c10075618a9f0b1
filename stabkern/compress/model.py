"""Algorithm 1 on a whole model: swap each Conv2d / Linear for its sketched drop-in, and report.

One seed for the model; a layer's `stream` is its 0-based index among the model's Conv2d and
Linear modules (sketched ones included) in `model.modules()` order, so any tool holding the
seed can regenerate any layer's signs: S_i = sign_matrix(k_i, m_i, seed=seed, stream=i).
Layers that share one weight Parameter (tied weights) share one sketch: the first one's
coefficients, seed and stream.

The user's model is never modified, and the compressed copy is built without copying the
weights it replaces: each sketched layer is projected from the original weight, and the copy
of the model takes it in place of the dense layer (deepcopy with those layers pre-filled in its
memo). Peak memory beyond the copy is the projection's scratch plus one piece of about 4M
entries for the weight-error check (see `stabkern.sketched.relative_error`). This module is
not a meter: output errors on data are measured in `data.py`.
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable, Iterable

import torch
from torch import nn

from .. import ops
from .._checks import check_choice, check_names, check_positive, check_positive_int, check_seed
from ..distributed import agree_on_failure, group_rank_size, owner
from ..progress import Tally
from ..sketched import (SKETCHED_TYPES, NoCompressionWarning, SketchedConv2d, SketchedLinear, check_k, check_mode,
                        compresses, no_compression_message, relative_error, row_length)
from .data import measure_output_errors
from .report import CompressionReport, LayerReport

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


def _computed(module: nn.Module) -> list[str]:
    """Which of weight / bias the layer computes rather than holds as its own Parameter (a parametrization
    such as weight_norm / spectral_norm, or torch.nn.utils.prune's mask)."""
    return [n for n in ("weight", "bias") if n not in module._parameters]


def _weight_hooks() -> dict[str, type]:
    """Forward pre-hooks that recompute a layer's weight attribute from its Parameters before each call."""
    import importlib

    from torch.nn.utils import prune

    return {"prune": prune.BasePruningMethod,
            "weight_norm": importlib.import_module("torch.nn.utils.weight_norm").WeightNorm,
            "spectral_norm": importlib.import_module("torch.nn.utils.spectral_norm").SpectralNorm}


def _stand_in(name: str, module: nn.Module) -> nn.Module:
    """The layer itself when it holds its weight and bias as Parameters; else a plain Conv2d / Linear of the
    same hyper-parameters holding the weight (and bias) the layer computes with in eval mode.

    Computed weights: torch.nn.utils.parametrize (parametrizations.weight_norm, spectral_norm, any other
    parametrization), torch.nn.utils.prune (weight_orig * weight_mask), and the older hook-based
    torch.nn.utils.weight_norm / spectral_norm. They are computed in eval mode without power iteration, so
    nothing of the user's changes (spectral_norm in training mode would update its u, v) and the weight is
    the one the data pass (eval mode) runs. Anything else is refused, naming the layer.
    """
    from torch.nn.utils import parametrize

    from .data import eval_mode

    computed = _computed(module)
    if not computed:
        return module
    kinds = _weight_hooks()
    hooks = {}  # tensor name -> the pre-hook that recomputes it
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, tuple(kinds.values())):
            hooks[hook._tensor_name if isinstance(hook, kinds["prune"]) else hook.name] = hook
    unknown = [n for n in computed if n not in hooks and not parametrize.is_parametrized(module, n)]
    if unknown:
        raise ValueError(f"{name}: its {' and '.join(unknown)} is not a Parameter of the layer, nor computed by a "
                         "torch.nn.utils parametrization or pruning: compress_model cannot tell which weight the "
                         "layer uses. Leave it dense (k=None for it, or layers=[...] without it)")
    values = {}
    with eval_mode(module), torch.no_grad():
        for n in ("weight", "bias"):
            hook = hooks.get(n)
            if isinstance(hook, kinds["prune"]):
                values[n] = hook.apply_mask(module)  # orig * mask
            elif isinstance(hook, kinds["spectral_norm"]):
                values[n] = hook.compute_weight(module, do_power_iteration=False)
            elif isinstance(hook, kinds["weight_norm"]):
                values[n] = hook.compute_weight(module)
            else:
                values[n] = getattr(module, n)  # a Parameter, None, or a parametrization's value (eval mode)
    if isinstance(module, nn.Conv2d):
        out = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                        module.dilation, module.groups, False, module.padding_mode, device="meta")
    else:
        out = nn.Linear(module.in_features, module.out_features, False, device="meta")
    out.weight = nn.Parameter(values["weight"].detach(), requires_grad=False)
    if "bias" in module._parameters:
        out.bias = module.bias  # the layer's own bias (kept exactly, and shared if it was)
    elif values["bias"] is not None:
        out.bias = nn.Parameter(values["bias"].detach())
    return out


def fold_batchnorm(model: nn.Module) -> list[dict]:
    """Fold every BatchNorm2d that directly follows a Conv2d into it, in place; each must be in eval mode.

    The pairs come from a torch.fx trace (a BatchNorm2d whose only input is a Conv2d's output,
    used nowhere else, each module called once), so folding is right whatever the registration
    order. conv(x) -> bn: W' = W * g, b' = (b - running_mean) * g + beta, g = gamma / sqrt(var + eps);
    the BatchNorm becomes nn.Identity. Returns [{"conv": name, "batchnorm": name}]. W' and b' are
    new Parameters of the conv: a weight or bias it shared with another module (tied weights) is left
    as it was, so the other module computes what it did, and the folded conv is no longer tied to it.

    A BatchNorm in training mode normalizes with the batch's statistics, not the running ones
    folding would bake in: it is refused (ValueError naming it), as is one without running
    statistics. Every pair is checked before any is folded, so a refusal changes nothing.
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
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules[src.target], nn.Conv2d) and len(src.users) == 1
                and calls[src.target] == 1 and calls[node.target] == 1):
            continue
        bn = modules[node.target]
        if bn.training:
            raise ValueError(f"fold_bn: BatchNorm2d {node.target!r} is in training mode (it normalizes with each "
                             "batch's statistics, not the running ones folding would use): put it in eval mode "
                             "first (model.eval()), or pass fold_bn=False")
        if _computed(modules[src.target]):
            raise ValueError(f"fold_bn: Conv2d {src.target!r} computes its weight (a parametrization such as "
                             "weight_norm / spectral_norm, or pruning): folding cannot write into it. Make it plain "
                             "first (torch.nn.utils.parametrize.remove_parametrizations, prune.remove), or pass "
                             "fold_bn=False")
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"fold_bn: {node.target} keeps no running statistics (track_running_stats=False): "
                             "it cannot be folded")
        pairs.append((src.target, node.target))
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        with torch.no_grad():
            g = torch.rsqrt(bn.running_var + bn.eps)
            beta = torch.zeros_like(g)
            if bn.weight is not None:
                g = g * bn.weight
                beta = bn.bias
            bias = conv.bias if conv.bias is not None else torch.zeros_like(g)
            new_bias = (bias - bn.running_mean) * g + beta
            new_weight = conv.weight * g.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
        # Fresh Parameters, never a write into the old ones: a weight or bias tied to another module (or
        # still the user's) must keep its values; the folded conv no longer shares them.
        conv.weight = nn.Parameter(new_weight, requires_grad=conv.weight.requires_grad)
        conv.bias = nn.Parameter(new_bias.to(new_weight.dtype),
                                 requires_grad=conv.bias.requires_grad if conv.bias is not None else True)
        _replace(model, bn, nn.Identity())
    return [{"conv": conv_name, "batchnorm": bn_name} for conv_name, bn_name in pairs]


def _resolve_k(k, layers, chosen: list[tuple[int, str, nn.Module]]) -> dict[str, int | None]:
    """name -> k (None: leave dense) for the candidate layers, with clear errors for bad k / names."""
    names = [name for _, name, _ in chosen]
    known = set(names)
    if layers is not None:
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


def _skipped_modules(model: nn.Module, layer_names: list[str]) -> list[dict]:
    """Modules that hold parameters themselves but are not Conv2d / Linear (nor a layer's parametrizations,
    which hold its original weight): left as they are."""
    parts = tuple(f"{n}.parametrizations." if n else "parametrizations." for n in layer_names)
    out = []
    for name, m in model.named_modules():
        if isinstance(m, LAYER_TYPES + SKETCHED_TYPES) or f"{name}.".startswith(parts):
            continue
        if any(p is not None for p in m._parameters.values()):
            out.append({"name": name, "type": type(m).__name__,
                        "reason": "neither Conv2d nor Linear: left as is"})
    return out


def _weight_ties(model: nn.Module, ks: dict[str, int | None], candidates) -> dict[str, str]:
    """name -> the first layer whose weight Parameter it shares, for the layers to be sketched.

    A tie is kept only when every module holding that Parameter is a Conv2d / Linear sketched
    with the same k (one sketch can then serve them all); anything else is refused, naming the
    holders, because sketching one of them would silently untie the rest.
    """
    holders: dict[int, list[tuple[str, str]]] = {}
    for name, m in model.named_modules():
        for pname, p in m._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append((name, pname))
    layer_names = {name for _, name, _ in candidates}
    ties = {}
    for _, name, m in candidates:
        if ks.get(name) is None:
            continue
        shared = holders.get(id(m.weight), [])  # a stand-in's computed weight is held by no module
        if len(shared) <= 1:
            continue
        where = ", ".join(f"{n}.{p}" for n, p in shared)
        for other, pname in shared:
            if pname != "weight" or other not in layer_names or ks.get(other) != ks[name]:
                raise ValueError(f"tied weights: {name}.weight is one Parameter with {where}; compressing "
                                 f"{name} would untie them. Compress every Conv2d / Linear holding it with the same "
                                 f"k (they then share one sketch), or none of them")
        first = shared[0][0]
        if first != name:
            ties[name] = first
    return ties


_CALL_HOOKS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks")


def _carry_hooks(layer: nn.Module, sketch: nn.Module) -> None:
    """The layer's forward and backward hooks on its sketched replacement, as deepcopy gives every layer of
    the copy that is not replaced (the same hook objects, under the same ids). Pruning's and the hook-based
    weight_norm / spectral_norm's pre-hooks are left behind: they compute the dense weight the sketch was
    made from. State-dict hooks belong to the dense layout and are not carried."""
    kinds = tuple(_weight_hooks().values())
    left = {hid for hid, h in layer._forward_pre_hooks.items() if isinstance(h, kinds)}
    for attr in _CALL_HOOKS:
        getattr(sketch, attr).update((hid, h) for hid, h in getattr(layer, attr).items() if hid not in left)
    sketch._is_full_backward_hook = layer._is_full_backward_hook


def _backend_that_runs(requested: str, weight: torch.Tensor) -> str:
    """The backend the sign ops pick for this weight (the one place the compressors ask the registry)."""
    return ops.select_backend(requested, weight.device, weight.dtype).name


def _empty_sketch(module: nn.Module, k: int, **sketch) -> nn.Module:
    """The sketched drop-in of a dense Conv2d / Linear with its bias copied and its coefficients not yet
    computed (zeros): for a layer whose coefficients come from elsewhere (a tied layer, another rank)."""
    cls = SketchedConv2d if isinstance(module, nn.Conv2d) else SketchedLinear
    w = module.weight
    if cls is SketchedLinear:
        sk = cls(module.in_features, module.out_features, k, bias=module.bias is not None, device=w.device,
                 dtype=w.dtype, allow_no_compression=True, **sketch)
    else:
        sk = cls(module.in_channels, module.out_channels, module.kernel_size, k, stride=module.stride,
                 padding=module.padding, dilation=module.dilation, groups=module.groups,
                 bias=module.bias is not None, padding_mode=module.padding_mode, device=w.device, dtype=w.dtype,
                 allow_no_compression=True, **sketch)
    if module.bias is not None:
        with torch.no_grad():
            sk.bias.copy_(module.bias.detach())
        sk.bias.requires_grad_(module.bias.requires_grad)
    return sk


def _share(built, module: nn.Module, k: int, src: int, group, **sketch) -> tuple[nn.Module, float]:
    """The sketch `src` (a rank of group) built, on every rank: its coefficients and error broadcast; the
    other ranks construct the same module empty (no projection) and copy the dense bias exactly."""
    import torch.distributed as dist

    from ..distributed import collective_device, resolve_group

    group = resolve_group(group)
    sk, err = built if built is not None else (_empty_sketch(module, k, **sketch), 0.0)
    device = collective_device(group)
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
                   backend: str = "auto", precision: str = "highest", batch_size: int = 256,
                   allow_no_compression: bool = False, group=None,
                   progress=None) -> tuple[nn.Module, CompressionReport]:
    """A compressed copy of `model` (Algorithm 1 on every chosen Conv2d / Linear) and its report.

    k: an int for every layer; a dict name -> int (the layers it names; None leaves one dense);
    or a callable (name, module) -> int or None. mode: "tensor" (the whole weight as one
    vector, k coefficients) or "filter" (every output channel's filter against one shared set
    of k sign vectors, c_out * k coefficients). seed in [0, 2^64); layer i (see
    `sketchable_layers`) uses stream i. layers: names to compress (default all). Biases stay
    exact. fold_bn: fold BatchNorm2d into the Conv2d before it first (the copy's BatchNorm
    becomes Identity); every BatchNorm folded must be in eval mode, else ValueError. data (a
    tensor or iterable of batches) adds each layer's relative output error on its own dense
    input (NaN where a layer's output is zero on every sample); eps adds the fraction of
    samples within eps.

    A layer whose k is at least the entries a sketch covers (n in tensor mode, n / c_out in
    filter mode) stays dense, is listed in report.skipped, and the call warns once
    (NoCompressionWarning naming every such layer); allow_no_compression=True sketches it anyway.
    Layers sharing one weight Parameter share one sketch (report: tied_to), or are refused when
    that cannot be kept. Non-float weights are refused; modules that are neither Conv2d nor
    Linear are left as they are and listed in report.skipped. The user's model is not changed
    (parameters, buffers, training flags, hooks), also when the call raises. Each sketched layer
    takes its dense layer's training flag and forward / backward hooks, as the copy's other layers do.

    group: None (one process), a ProcessGroup or "world": the layers are shared over its ranks (round robin),
    each rank sketching its own and broadcasting the coefficients, so every rank returns the same model, bit
    for bit the one-process model (each layer's coefficients depend only on its weight, seed and stream);
    every rank passes the same model and arguments. progress: None or progress(stage, done, total)
    (stabkern.progress), stage "compress", one unit per sketched layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    mode = check_mode(mode)
    seed = check_seed(seed)
    layers = check_names("layers", layers)
    eps = None if eps is None else check_positive("eps", eps)
    backend = check_choice("backend", backend, ops.BACKEND_NAMES)
    precision = check_choice("precision", precision, ops.PRECISIONS)
    batch_size = check_positive_int("batch_size", batch_size)
    dense = copy.deepcopy(model) if fold_bn else model  # read, never written, unless BatchNorm is folded
    folded = fold_batchnorm(dense) if fold_bn else []
    found = sketchable_layers(dense)
    candidates = [(i, name, m) for i, name, m in found if not isinstance(m, SKETCHED_TYPES)]
    ks = _resolve_k(k, layers, candidates)
    # What each layer to sketch computes with: itself, or a plain stand-in holding its computed weight.
    source = {name: _stand_in(name, m) for _, name, m in candidates if ks.get(name) is not None}
    ties = _weight_ties(dense, ks, [(i, name, source.get(name, m)) for i, name, m in candidates])

    report = CompressionReport(seed=seed, mode=mode, backend=backend, folded=folded, eps=eps)
    sketched: dict[str, nn.Module] = {}
    memo: dict[int, object] = {}  # deepcopy memo: original module / bias -> its replacement
    streams, backends, dense_left, report_of = {}, [], [], {}
    rank, size = group_rank_size(group)
    tally = Tally(progress, "compress")
    tally.expect(sum(1 for _, name, m in candidates if ks.get(name) is not None))
    unit = 0  # sketches built so far (tied layers reuse one): unit u is built by rank owner(u, size)
    for stream, name, module in found:
        if isinstance(module, SKETCHED_TYPES):
            report.skipped.append({"name": name, "type": type(module).__name__, "reason": "already sketched"})
            continue
        kk = ks.get(name)
        if kk is None:
            reason = "not selected" if name not in ks else "k is None: left dense"
            report.skipped.append({"name": name, "type": type(module).__name__, "reason": reason})
            continue
        layer, module = module, source[name]  # layer: the model's module; module: what it computes with
        shape = tuple(module.weight.shape)
        if not allow_no_compression and not compresses(kk, shape, mode):
            dense_left.append(f"{name} (k = {kk} >= {row_length(shape, mode)})")
            report.skipped.append({"name": name, "type": type(module).__name__,
                                   "reason": no_compression_message(kk, shape, mode, name).split(": ", 1)[1]
                                   + ": left dense"})
            continue
        tied_to = ties.get(name)
        stream = streams[tied_to] if tied_to else stream
        cls = SketchedConv2d if isinstance(module, nn.Conv2d) else SketchedLinear
        if tied_to:  # one sketch: the same coefficients Parameter and seed / stream buffers
            sk = _empty_sketch(module, kk, mode=mode, seed=seed, stream=stream, backend=backend, precision=precision)
            first = sketched[tied_to]
            sk.coefficients, sk.seed, sk.stream = first.coefficients, first.seed, first.stream
            err = report_of[tied_to].rel_fro_error
        else:
            built, error = None, None
            if owner(unit, size) == rank:
                try:
                    sk = cls.from_module(module, kk, mode=mode, seed=seed, stream=stream, backend=backend,
                                         precision=precision, name=name, allow_no_compression=True)
                    built = (sk, relative_error(sk.coefficients, module.weight, mode=mode, seed=seed, stream=stream,
                                                backend=backend, precision=precision))
                except Exception as err:  # noqa: BLE001 - raised again on every rank
                    error = err
            if size > 1:
                agree_on_failure(error, group)
                built = _share(built, module, kk, owner(unit, size), group, mode=mode, seed=seed, stream=stream,
                               backend=backend, precision=precision)
            elif error is not None:
                raise error
            sk, err = built
            unit += 1
        if module.bias is not None:  # a bias shared with another module stays shared
            sk.bias = memo.setdefault(id(module.bias), sk.bias)
        sk.train(layer.training)  # the copy's flags and hooks are the model's, layer by layer
        _carry_hooks(layer, sk)
        memo[id(layer)] = sk
        streams[name] = stream
        sketched[name] = sk
        ran = _backend_that_runs(backend, module.weight)
        backends += [] if ran in backends else [ran]
        report_of[name] = LayerReport(name=name, type=cls.__name__.replace("Sketched", ""), stream=stream,
                                      mode=mode, shape=list(shape), n=module.weight.numel(), k=kk,
                                      stored=sk.stored, rel_fro_error=err, tied_to=tied_to)
        report.layers.append(report_of[name])
        tally.step()
    if dense_left:
        warnings.warn(f"{len(dense_left)} layer(s) left dense, k at least the entries one sketch covers ({mode} "
                      f"mode: no compression): {', '.join(dense_left)}; pass allow_no_compression=True to sketch "
                      "them anyway", NoCompressionWarning, stacklevel=2)
    tally.finish()
    report.backend = "+".join(backends) or "none"
    report.skipped += _skipped_modules(dense, [name for _, name, _ in found])
    if dense is model or data is not None:
        compressed = copy.deepcopy(dense, memo)  # the replaced layers (and their weights) are not copied
    else:
        compressed = dense  # our own folded copy: replace in place
        modules = {name: m for _, name, m in found}
        for name, sk in sketched.items():
            _replace(compressed, modules[name], sk)
    if data is not None and sketched:
        errors = measure_output_errors(dense, sketched, data, eps=eps, batch_size=batch_size)
        for r in report.layers:
            r.output_error = errors[r.name]
    return compressed, report


__all__ = ["compress_model", "fold_batchnorm", "sketchable_layers"]
