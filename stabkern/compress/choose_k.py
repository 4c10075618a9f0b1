"""Per-layer k from the data: layer cushions, a union-bound rule with explicit constants, a check.

The guarantee (proved here, tested in tests/test_compress_statistics.py). For one vector a
of m entries sketched with k rows of signs, a_hat = S^T S a / k, and any fixed w,

    P(|<a_hat - a, w>| > e ||a|| ||w||) <= 2 exp(-k e^2 / 16)   for 0 < e <= 1,

so k >= C log(2 / eta') / e^2 with C = 16 makes the failure probability at most eta'.
Proof sketch (sub-exponential Chernoff bound): X = (s.a)(s.w) with ||a|| = ||w|| = 1 is
((s.p)^2 - (s.q)^2) / 4, p = a + w, q = a - w. Rademacher sums are 1-sub-Gaussian per unit
norm, so E exp(l((s.p)^2 - ||p||^2)) <= exp(2 l^2 ||p||^4) for l ||p||^2 <= 1/4 (Gaussian
trick), and E exp(-l((s.q)^2 - ||q||^2)) <= exp(1.5 l^2 ||q||^4) (E(s.q)^4 <= 3 ||q||^4).
Cauchy-Schwarz with ||p||^2 + ||q||^2 = 4 gives E exp(l (X - <a, w>)) <= exp(4 l^2) for
|l| <= 1/8; Chernoff with l = e / 8 over k independent rows gives the bound above.

From one coordinate to a layer's output. Layer i has weight W (c_out filters w_o of m
entries), input z (one sample), output A z (A: the whole linear map, bias excluded). Every
output coordinate is <w_o, patch> for a patch of the (padded) input. Asking each of the N_out
coordinates of one sample to err by at most e ||w_o|| ||patch|| (filter mode: <w_o_hat - w_o,
patch>) or e ||W||_F ||patch|| (tensor mode: <W_hat - W, e_o patch^T>), each with failure
probability eta / N_out, the union bound gives with probability >= 1 - eta

    ||A_hat z - A z||^2 <= e^2 B(z),  B(z) = sum_o ||w_o||^2 ||P_o z||_F^2 (filter),
                                      B(z) = ||W||_F^2 sum_o ||P_o z||_F^2 (tensor),

with P_o z the patches output channel o reads (for a Linear layer ||P_o z|| = ||z||). So
||A_hat z - A z|| <= eps ||A z|| needs e = eps nu(z), nu(z) = ||A z|| / sqrt(B(z)) <= 1, and

    k_i = ceil(C log(2 N_out / eta) / (eps^2 nu_i^2)),  nu_i = min over the data of nu(z),

per sample a failure probability <= eta. nu is the paper's layer cushion
mu(z) = ||A z|| / (||A||_F ||z||) up to geometry: for a Linear layer in filter mode nu = mu
exactly (B = ||A||_F^2 ||z||^2), in tensor mode nu = mu / sqrt(c_out); for a conv, ||A||_F
counts every output position (`stabkern.opnorms.frobenius`) and nu = mu ||A||_F ||z|| / sqrt(B).
So k_i is proportional to 1 / (eps^2 mu_i^2) with a per-layer constant. k_i at or above the
entries a sketch covers (n in tensor mode, m in filter mode) is no compression: that layer
stays dense.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import opnorms
from .._checks import check_float, check_names, check_positive, check_positive_int, check_seed
from ..distributed import agree_on_failure, group_rank_size, owner, resolve_group
from ..progress import Tally
from ..sketched import check_mode, conv_padding, row_length
from ..tables import dataframe, flat
from .data import linear_part, run_with_hooks
from .model import compress_model, fold_batchnorm, sketchable_layers
from .report import CompressionReport

C_BERNSTEIN = 16.0  # the constant C of the tail bound above (two-sided, log(2 / eta'))


def _layer_sample_stats(module: nn.Module, z: torch.Tensor, out: torch.Tensor, mode: str) -> dict:
    """Per-sample ||A z||^2, ||z||^2, ||A||_F^2 and B(z) of the module docstring; N_out."""
    w = module.weight.detach().double()
    z = z.detach().double()
    az2 = linear_part(module, out.detach()).double().flatten(1).pow(2).sum(1)
    z2 = z.flatten(1).pow(2).sum(1)
    rows = len(z)
    if isinstance(module, nn.Linear):
        positions = out[0].numel() // module.out_features
        op2 = torch.full((rows,), positions * float(w.pow(2).sum()), dtype=torch.float64)
        # sum_o ||w_o||^2 ||z||^2 (filter) or ||W||^2 c_out ||z||^2 (tensor)
        b = w.pow(2).sum() * z2 * (1 if mode == "filter" else module.out_features)
        return {"az2": az2, "z2": z2, "op2": op2, "b": b, "n_out": out[0].numel()}
    top, bottom, left, right = conv_padding(module.padding, module.kernel_size, module.dilation)
    pad_mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    zpad = F.pad(z, (left, right, top, bottom), mode=pad_mode)
    g = module.groups
    ones = torch.ones(g, module.in_channels // g, *module.kernel_size, dtype=torch.float64, device=z.device)
    # patch energy per group: sum over output positions of ||patch||^2, (rows, groups)
    patch2 = F.conv2d(zpad.pow(2), ones, None, module.stride, 0, module.dilation, g).sum(dim=(2, 3))
    filt2 = w.pow(2).flatten(1).sum(1).reshape(g, -1)  # (groups, c_out / groups)
    if mode == "filter":
        b = patch2 @ filt2.sum(1)
    else:
        b = w.pow(2).sum() * (module.out_channels // g) * patch2.sum(1)
    if module.padding_mode == "zeros":
        op = opnorms.frobenius(module, tuple(z.shape[1:]))
        op2 = torch.full((rows,), op * op, dtype=torch.float64)
    else:
        op2 = torch.full((rows,), float("nan"), dtype=torch.float64)
    return {"az2": az2, "z2": z2, "op2": op2, "b": b, "n_out": out[0].numel()}


@dataclass
class LayerChoice:
    """One layer's cushion and k. mu: layer cushion over the samples (min, q50, max; None where
    the operator norm is not defined, e.g. reflect padding); nu_min: the cushion the rule uses;
    k_needed: the rule's k; k: the k used, None when k_needed >= cap (the layer stays dense)."""

    name: str
    type: str
    stream: int
    n: int
    cap: int
    n_out: int
    samples: int
    zero_input: int
    mu: dict | None
    nu_min: float
    k_needed: int | None
    k: int | None


@dataclass
class KChoice:
    """The result of `choose_k`: `k` (name -> int, for compress_model), per-layer rows, the check."""

    eps: float
    eta: float
    C: float
    mode: str
    seed: int
    layers: list[LayerChoice] = field(default_factory=list)
    check: CompressionReport | None = None

    @property
    def k(self) -> dict[str, int]:
        return {r.name: r.k for r in self.layers if r.k is not None}

    def to_dict(self) -> dict:
        """{"eps", "eta", "C", "mode", "seed", "k": {name: k}, "layers": [LayerChoice fields],
        "check": CompressionReport.to_dict() or null}."""
        return {"eps": self.eps, "eta": self.eta, "C": self.C, "mode": self.mode, "seed": self.seed, "k": self.k,
                "layers": [asdict(r) for r in self.layers],
                "check": None if self.check is None else self.check.to_dict()}

    def layer_rows(self) -> list:
        """One flat dict per layer (LayerChoice's fields, mu's summary as mu_min, mu_q50, ...)."""
        return [flat({"layer": d.pop("name"), **d}) for d in map(asdict, self.layers)]

    def to_dataframe(self):
        """layer_rows() as a pandas DataFrame indexed by layer name (needs pandas; ImportError otherwise)."""
        return dataframe(self.layer_rows(), "KChoice")

    def __str__(self) -> str:
        lines = [f"choose_k: eps={self.eps:g}, eta={self.eta:g}, C={self.C:g}, mode={self.mode}",
                 f"{'layer':<24}{'mu min':>10}{'mu q50':>10}{'nu min':>10}{'N_out':>8}{'k rule':>12}{'cap':>9}"
                 f"{'k':>9}{'<= eps':>9}"]
        within = {}
        if self.check is not None:
            within = {r.name: r.output_error.within_eps for r in self.check.layers if r.output_error is not None}
        for r in self.layers:
            mu_min = "-" if r.mu is None else f"{r.mu['min']:.4f}"
            mu_q50 = "-" if r.mu is None else f"{r.mu['q50']:.4f}"
            kn = "inf" if r.k_needed is None else str(r.k_needed)
            k = "dense" if r.k is None else str(r.k)
            w = f"{within[r.name]:.1%}" if r.name in within else "-"
            lines.append(f"{r.name:<24}{mu_min:>10}{mu_q50:>10}{r.nu_min:>10.4f}{r.n_out:>8}{kn:>12}{r.cap:>9}"
                         f"{k:>9}{w:>9}")
        return "\n".join(lines)


def layer_cushions(model: nn.Module, data, *, mode: str = "filter", layers=None, fold_bn: bool = False,
                   batch_size: int = 256, group=None, tally=None) -> dict[str, dict]:
    """Per-layer, per-sample statistics on the data: name -> {"mu", "nu", "n_out", "zero_input", "stream", ...}.

    mu (samples,): layer cushion ||A z|| / (||A||_F ||z||) (NaN where ||A||_F is undefined);
    nu (samples,): ||A z|| / sqrt(B(z)) for `mode` (module docstring). Samples with z = 0 are
    dropped (A_hat z = A z = 0: nothing to bound) and counted in zero_input; a layer never called
    on the data has no samples. data: a tensor or any iterable of batches or (inputs, labels) pairs,
    streamed (only these per-sample numbers are kept). group: the batches are shared over its ranks (round
    robin) and the numbers gathered in batch order, the same on every rank as in one process; tally: a
    progress.Tally stepped per batch.
    """
    check_mode(mode)
    layers = check_names("layers", layers)
    batch_size = check_positive_int("batch_size", batch_size)
    dense = copy.deepcopy(model) if fold_bn else model  # read only (hooks removed, flags restored) unless folded
    if fold_bn:
        fold_batchnorm(dense)
    found = [(i, name, m) for i, name, m in sketchable_layers(dense) if isinstance(m, (nn.Conv2d, nn.Linear))]
    if layers is not None:
        names = {name for _, name, _ in found}
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise KeyError(f"layers: no Conv2d or Linear named {unknown}; the model's are {sorted(names)}")
        found = [f for f in found if f[1] in set(layers)]
    stats: dict[str, list] = {name: [] for _, name, _ in found}

    batch = [0]

    def hook_for(name):
        def hook(module, inputs, out):
            s = _layer_sample_stats(module, inputs[0], out, mode)
            stats[name].append((batch[0], {key: v.cpu() if isinstance(v, torch.Tensor) else v
                                           for key, v in s.items()}))
        return hook

    rank, size = group_rank_size(group)

    def keep(index):
        batch[0] = index
        return owner(index, size) == rank

    error = None
    try:
        run_with_hooks(dense, {m: hook_for(name) for _, name, m in found}, data, batch_size, keep=keep, tally=tally)
    except Exception as err:  # noqa: BLE001 - raised again below, on every rank (no rank left waiting)
        error = err
    agree_on_failure(error, group)
    if size > 1:  # every rank gets every batch's numbers, in batch order (a stable sort: a layer called twice)
        import torch.distributed as dist

        pieces = [None] * size
        dist.all_gather_object(pieces, stats, group=resolve_group(group))
        stats = {name: sorted((item for p in pieces for item in p[name]), key=lambda item: item[0])
                 for name in stats}
    stats = {name: [s for _, s in items] for name, items in stats.items()}
    result = {}
    empty = {"az2": torch.zeros(0, dtype=torch.float64), "z2": torch.zeros(0, dtype=torch.float64),
             "op2": torch.zeros(0, dtype=torch.float64), "b": torch.zeros(0, dtype=torch.float64), "n_out": 0}
    for stream, name, m in found:
        if not stats[name]:  # never called on the data: no sample (choose_k leaves it dense)
            stats[name] = [empty]
        cat = {key: torch.cat([s[key].cpu() for s in stats[name]]) for key in ("az2", "z2", "op2", "b")}
        keep = cat["z2"] > 0
        az2, z2, op2, b = (cat[key][keep] for key in ("az2", "z2", "op2", "b"))
        result[name] = {"stream": stream, "module": m, "n_out": stats[name][0]["n_out"],
                        "zero_input": int((~keep).sum()), "mu": (az2 / (op2 * z2)).sqrt(),
                        "nu": torch.where(b > 0, az2 / b.clamp_min(1e-300), torch.zeros_like(b)).sqrt()}
    return result


def _tie_ks(rows: list[LayerChoice], cushions: dict) -> None:
    """Layers sharing one weight Parameter share one sketch: give each of them the largest k of the
    group (dense if any of them must stay dense), so every member keeps its guarantee."""
    groups: dict[int, list[LayerChoice]] = {}
    for r in rows:
        groups.setdefault(id(cushions[r.name]["module"].weight), []).append(r)
    for group in groups.values():
        ks = [r.k for r in group]
        k = None if None in ks else max(ks)
        for r in group:
            r.k = k


def _batches(data, batch_size: int) -> int | None:
    """Batches `run_with_hooks` will read from data, None when it cannot say without reading."""
    if isinstance(data, torch.Tensor):
        return -(-len(data) // batch_size)
    try:
        return len(data)
    except TypeError:
        return None


def choose_k(model: nn.Module, data, eps: float, *, eta: float = 0.05, C: float = C_BERNSTEIN, mode: str = "filter",
             seed: int = 0, layers=None, fold_bn: bool = False, check: bool = True, backend: str = "auto",
             batch_size: int = 256, group=None, progress=None) -> KChoice:
    """Per-layer k so that, per sample, ||A_hat z - A z|| <= eps ||A z|| with probability >= 1 - eta.

    k_i = ceil(C log(2 N_out,i / eta) / (eps^2 nu_i^2)) from the measured cushions (module
    docstring: C = 16 is proved for 0 < eps <= 1; a smaller C is a heuristic). Layers whose
    k_i reaches the entries one sketch covers stay dense, and so do layers with no sample of
    nonzero input (nu_min NaN: undefined); tied layers (one weight Parameter) take their
    group's largest k. check=True compresses the model with
    these k (seed, mode) and measures, per layer, the fraction of samples whose relative
    output error is <= eps (`KChoice.check`, a CompressionReport). eta is per layer and sample:
    over L layers all hold at once with probability >= 1 - L eta.
    data: a tensor, a list of tensors, a DataLoader or any iterable of batches or (inputs, labels) pairs,
    streamed (a one-shot generator only with check=False: the check reads the data again). group: None,
    a ProcessGroup or "world": the cushion pass's batches and the check's layers are shared over its ranks,
    every rank passing the same arguments and getting the one-process result. progress: None or
    progress(stage, done, total) (stabkern.progress): stage "cushions" per batch, then the check's
    "compress" per layer.
    """
    eps = check_float("eps", eps, 0.0, 1.0, low_open=True)  # (0, 1]: the tail bound needs it
    eta = check_float("eta", eta, 0.0, 1.0, low_open=True, high_open=True)  # checked before the cushion pass
    C = check_positive("C", C)
    seed = check_seed(seed)
    tally = Tally(progress, "cushions")
    tally.expect(_batches(data, batch_size))
    cushions = layer_cushions(model, data, mode=mode, layers=layers, fold_bn=fold_bn, batch_size=batch_size,
                              group=group, tally=tally)
    tally.finish()
    result = k_from_cushions(cushions, eps, eta=eta, C=C, mode=mode, seed=seed)
    if check and result.k:
        ks = {r.name: r.k for r in result.layers}
        _, result.check = compress_model(model, ks, mode=mode, seed=seed, layers=list(ks), fold_bn=fold_bn,
                                         data=data, eps=eps, backend=backend, batch_size=batch_size, group=group,
                                         progress=progress)
    return result


def k_from_cushions(cushions: dict, eps: float, *, eta: float = 0.05, C: float = C_BERNSTEIN, mode: str = "filter",
                    seed: int = 0) -> KChoice:
    """choose_k's rule on cushions already measured (`layer_cushions(model, data, mode=mode, ...)`, the same
    mode), without the check: what choose_k(..., check=False) returns for that data, from one cushion pass
    that a caller also needs for something else (the stability card)."""
    if not isinstance(cushions, dict):
        raise TypeError(f"cushions must be the dict layer_cushions(model, data, mode=mode) returns, got "
                        f"{type(cushions).__name__}")
    eps = check_float("eps", eps, 0.0, 1.0, low_open=True)  # (0, 1]: the tail bound needs it
    eta = check_float("eta", eta, 0.0, 1.0, low_open=True, high_open=True)
    C = check_positive("C", C)
    seed = check_seed(seed)
    result = KChoice(eps=float(eps), eta=float(eta), C=float(C), mode=check_mode(mode), seed=seed)
    for name, c in cushions.items():
        m = c["module"]
        cap = row_length(tuple(m.weight.shape), mode)
        mu, nu = c["mu"], c["nu"]
        nu_min = float(nu.min()) if len(nu) else math.nan  # no sample with a nonzero input: undefined
        k_needed = None
        if nu_min > 0:
            k_needed = math.ceil(C * math.log(2 * c["n_out"] / eta) / (eps * eps * nu_min * nu_min))
        mu_stats = None
        if len(mu) and not bool(torch.isnan(mu).any()):
            mu_stats = {"min": float(mu.min()), "q50": float(mu.quantile(0.5)), "max": float(mu.max())}
        result.layers.append(LayerChoice(
            name=name, type=type(m).__name__, stream=c["stream"], n=m.weight.numel(), cap=cap, n_out=c["n_out"],
            samples=len(nu), zero_input=c["zero_input"], mu=mu_stats, nu_min=nu_min, k_needed=k_needed,
            k=k_needed if k_needed is not None and k_needed < cap else None))
    if all(r.samples == 0 for r in result.layers):
        raise ValueError("every sample's input is zero at every layer (or no layer is called on the data): "
                         "there is nothing to measure")
    _tie_ks(result.layers, cushions)
    return result
