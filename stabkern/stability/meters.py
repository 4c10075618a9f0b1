"""The data-dependent quantities of Arora et al. (2018), section 4, measured per sample on a conv net.

Notation (the paper's, on our layers): layer i (a Conv2d or Linear, forward order) has linear operator
A^i (stabkern/opnorms.py: the map on the whole feature map), input z^i (= phi(x^{i-1}) in the paper: whatever
the model feeds the layer) and output x^i (bias included). M^{i,j} maps x^i to x^j with every other
input of later layers (skip connections from before layer i) held at its clean value; J^{i,j} is its
Jacobian at x^i; h_i = dim x^i.

- layer cushion      mu_i(x)     = ||A^i z^i|| / (||A^i||_F ||z^i||)                     (Definition 4)
- interlayer cushion mu_{i,j}(x) = ||J^{i,j} x^i|| / (||J^{i,j}||_F ||x^i||), j >= i     (Definition 5)
  with mu_{i,i} = 1/sqrt(h_i) (J = I) and mu_{i->}(x) = min_{j >= i} mu_{i,j}(x).
  ||J x^i|| is exact (a forward-mode JVP, torch.autograd.forward_ad, one pass per layer i for every j).
  ||J||_F^2 = E ||J^T v||^2 for v = sqrt(h_j) u, u uniform on the unit sphere of x^j (E v v^T = I:
  Hutchinson with exactly-normed probes, lower variance than Gaussian probes), by reverse mode: one
  forward of the model on `probes` copies of each sample, then one sweep back from each layer j gives
  J^{i,j}^T v at every earlier x^i at once (L sweeps, not one per pair). The standard error of the mean
  over probes gives each sample's 95% interval (half the relative error of ||J||_F^2, delta method).
- activation contraction c_i(x) = ||u|| / ||phi(u)|| at the first activation module (ReLU and kin)
  called after layer i, u its input (for a plain chain u = x^i)                       (Definition 3)
- interlayer smoothness, bias-aware (the one the bound uses)
      rho_{i,j}(x) = ||eta|| ||x^j|| / (||x^i|| ||M^{i,j}(x^i + eta) - M^{i,j}(x^i) - J^{i,j} eta||)
  for j > i and noise eta with ||eta|| = alpha ||x^i|| (the relative size a compression injects),
  minimized over `draws` draws: the first-order remainder of M around the clean point. M(x^i + eta) is
  one plain pass per layer i, J eta rides as a tangent in the forward-mode pass that gives J x^i. The paper asks
  rho >= 3d; large is smooth. The paper's nets have no biases, so its Definition 6 writes the remainder
  as M(x^i + eta) - J(x^i + eta); with biases M(x^i) != J x^i and that literal form also counts the
  constant offset M(x^i) - J x^i, so it shrinks in proportion to alpha for small alpha (on an affine
  map it is exactly proportional) although nothing non-smooth happens. We keep the literal form as
  `rho_literal`; on a bias-free ReLU net M(x^i) = J x^i and the two agree            (Definition 6)
- well-distributed Jacobian (paper section 5, convolutional nets) beta_{i,j}(x)^2 =
  P_i max_p ||J^{i,j}[:, p]||_F^2 / ||J^{i,j}||_F^2, with p one of the P_i = H_i W_i spatial positions of
  x^i and J[:, p] the columns of its C_i channels: beta = 1 when the Jacobian's energy is spread evenly
  over the positions, beta^2 = P_i when it all sits on one. A Linear layer's output is one position
  (beta = 1). Estimated from the same reverse sweeps as ||J||_F (probes v, E v v^T = I on x^j):
  ||J[:, p]||_F^2 = E ||(J^T v)[:, p]||^2, all positions from the same `probes` vector-Jacobian products;
  the max over positions of noisy estimates is biased upwards (a conservative beta). Not checked
  against the paper's text: see `stabkern.stability.bound`.
- noise sensitivity psi_i(x) = E ||f(x; z^i + eta) - f(x)||^2 / (alpha^2 ||f(x)||^2) for eta injected at
  layer i's input with ||eta|| = alpha ||z^i|| and f the output of the last metered layer: Definition 1
  with N the isotropic Gaussian of unit expected square norm, at finite alpha (for a linear map
  exactly ||M||_F^2 ||z||^2 / (h ||M z||^2), any alpha); read off the attenuation run.

Every quantity is kept per sample; reports give its distribution over the data (report.summarize).

Data, ranks, progress (every meter here): data is a tensor (N, ...), a list of tensors, a DataLoader or
any iterable of batches or (inputs, labels) pairs, streamed in chunks (context.DataSource: only
per-sample summaries are kept; a sample's noise and probes depend on its position in the stream, not on
the batching). group: None (one process), a ProcessGroup or "world": every rank passes the same data and
arguments, the (chunk, injection layer) units are shared over the ranks and every rank gets the
one-process bits (context.run_units; the clean-pass meters are computed by every rank). progress: None
(silent) or a callable progress(stage, done, total) (stabkern.progress).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from .. import opnorms
from .. import ops
from .._checks import check_names, check_positive, check_positive_int, check_seed
from ..distributed import resolve_group
from ..progress import Tally
from .autodiff import differentiable
from .bound import logits_of
from .context import (MAX_SAMPLES, DataSource, Prepared, check_finite, count_chunks, metering, plan_chunks,
                      precision_mode, prepare, run_units)
from .propagate import repeat_trials
from .report import interval95, summarize

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.PReLU, nn.Hardtanh,
               nn.Softplus, nn.Tanh)


def check_meterable(prep: Prepared) -> None:
    for layer in prep.layers:
        if not isinstance(layer.module, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"layer {layer.name!r} is a {type(layer.module).__name__}; cushions and the bound "
                             "need Conv2d or Linear layers")


def _activation_after(prep: Prepared, sample: torch.Tensor) -> list:
    """For each layer, the position (in the sequence of activation-module calls of one forward) of the
    first activation called after it and before the next layer, or None."""
    events = []
    layer_of = {id(layer.module): layer.index for layer in prep.layers}
    acts = {id(m): m for m in prep.model.modules() if isinstance(m, ACTIVATIONS)}
    handles = [m.register_forward_pre_hook(lambda m, a: events.append(("act", id(m)))) for m in acts.values()]
    handles += [layer.module.register_forward_pre_hook(lambda m, a: events.append(("layer", layer_of[id(m)])))
                for layer in prep.layers]
    try:
        prep.model(sample)
    finally:
        for h in handles:
            h.remove()
    after, current, calls = [None] * len(prep.layers), None, 0
    for kind, key in events:
        if kind == "layer":
            current = key
        else:
            if current is not None and after[current] is None:
                after[current] = calls
            calls += 1
    return after


def clean_meters(prep: Prepared, data, budget, tally: Tally | None = None) -> dict:
    """Per-sample layer cushion (N, L), activation contraction (N, L; NaN without an activation),
    the model outputs (N, ...) and the squared norms of the metered layers' clean outputs (N, L).

    data: a DataSource (or what one takes), streamed in chunks; tally: stepped once per chunk. One clean
    pass per chunk: not sharded (every rank of a group computes it, the same bits)."""
    source = data if isinstance(data, DataSource) else DataSource(data)
    num = len(prep.layers)
    frob = [opnorms.frobenius(layer.module, layer.in_shape) for layer in prep.layers]
    after = _activation_after(prep, prep.batch(source.first()))
    cushions, contractions = [], []
    outputs = []
    batch = clean_batch(prep, source.n, budget)
    if tally is not None:
        tally.expect(count_chunks(source.n, batch))
    acts = [m for m in prep.model.modules() if isinstance(m, ACTIVATIONS)]
    for s0, xc, _ in source.chunks(batch):
        xb = prep.batch(xc)
        cushion = np.full((xc.shape[0], num), np.nan)
        contraction = np.full((xc.shape[0], num), np.nan)
        pre, post = [], []
        handles = [m.register_forward_pre_hook(lambda m, a: pre.append(a[0].flatten(1).double().norm(dim=1)))
                   for m in acts]
        handles += [m.register_forward_hook(lambda m, a, o: post.append(o.flatten(1).double().norm(dim=1)))
                    for m in acts]
        try:
            with precision_mode("highest", prep.device):
                clean = prep.propagator.clean(xb)
        finally:
            for h in handles:
                h.remove()
        for layer in prep.layers:
            i = layer.index
            check_finite(clean.outputs[i], f"at the output of layer {layer.name!r} on the clean pass")
            bias = layer.module.bias
            # a Conv2d's bias is per channel (dim 1); a Linear's is on the last dim, also on 4-D (N, H, W, C)
            # inputs (ConvNeXt's blocks)
            az = clean.outputs[i] if bias is None else \
                clean.outputs[i] - (bias.view(1, -1, 1, 1) if isinstance(layer.module, nn.Conv2d) else bias)
            z = clean.inputs[i].flatten(1).double().norm(dim=1)
            cushion[:, i] = (az.flatten(1).double().norm(dim=1) / (frob[i] * z)).cpu().numpy()
            if after[i] is not None:
                contraction[:, i] = (pre[after[i]] / post[after[i]]).cpu().numpy()
        outputs.append(logits_of(clean.logits).detach().cpu())
        cushions.append(cushion)
        contractions.append(contraction)
        if tally is not None:
            tally.step()
    return {"cushion": np.concatenate(cushions), "contraction": np.concatenate(contractions), "frobenius": frob,
            "logits": torch.cat(outputs)}


def _rows_per_pass(prep: Prepared) -> int:
    """Noisy-pass rows (context.plan_chunks' unit: about four activations of the largest layer) that hold one
    row of a whole forward kept for a reverse sweep: every layer's input, output and the copy of the
    output the sweep differentiates against, and what autograd saves, kept as copies (autodiff.py): about
    four times the activations."""
    numel = sum(math.prod(layer.in_shape) + math.prod(layer.out_shape) for layer in prep.layers)
    largest = max(max(math.prod(layer.in_shape), math.prod(layer.out_shape)) for layer in prep.layers)
    return max(1, math.ceil(4 * numel / (4 * largest)))


def _whole_sample_batch(prep: Prepared, n: int | None, rows: int, budget, what: str) -> int:
    """Samples per chunk when each sample needs `rows` noisy-pass rows at once (context.plan_chunks' unit),
    or a ValueError saying `what` does not fit the budget."""
    batch, trial_chunk = plan_chunks(prep.layers, n or MAX_SAMPLES, rows, torch.finfo(prep.dtype).bits // 8,
                                     budget, prep.device)
    if trial_chunk < rows:
        raise ValueError(f"memory_budget is too small for {what}")
    return batch


def forward_batch(prep: Prepared, n: int | None, draws: int, budget) -> int:
    """Samples per chunk of `forward_meters` (n: samples, None when unknown): 1 + draws forward-mode rows (a
    primal, a tangent and the work of a dual convolution: three rows each), draws plain rows and the draws
    J eta kept between the two passes."""
    return _whole_sample_batch(prep, n, 3 * (1 + draws) + 2 * draws, budget,
                               f"one sample's {1 + draws} forward-mode and {draws} noisy rows; raise it or lower draws")


def sweep_batch(prep: Prepared, n: int | None, probes: int, budget) -> int:
    """Samples per chunk of `reverse_sweeps`: a whole forward of `probes` rows per sample, kept for autograd."""
    return _whole_sample_batch(prep, n, probes * _rows_per_pass(prep), budget,
                               f"one sample's forward on {probes} probe rows kept for the reverse sweeps; raise it "
                               "or lower probes")


def clean_batch(prep: Prepared, n: int | None, budget) -> int:
    """Samples per chunk of `clean_meters` (the largest chunks: one pass, no trials)."""
    return plan_chunks(prep.layers, n or MAX_SAMPLES, 1, torch.finfo(prep.dtype).bits // 8, budget, prep.device)[0]


def forward_meters(prep: Prepared, data, *, draws: int, alpha: float, seed: int, budget, backend: str, group=None,
                   tally: Tally | None = None) -> dict:
    """Per sample (N, L, L): jx_norm = ||J^{i,j} x^i|| (the diagonal: ||x^i||, J = I) and the smoothness rho
    (bias-aware) and rho_literal (min over `draws` noise draws; NaN when draws = 0).

    One forward-mode pass per injection layer i from x^i on 1 + draws rows (tangents x^i and the noise draws
    eta_d: J x^i and J eta_d at every later layer), then one plain pass on the draws noisy rows x^i + eta_d.
    Noise draw d of sample s at layer i uses stream L + i, trial d (0..L-1 are the attenuation's). Both passes
    run under autodiff.differentiable (a forward's out= calls carry the tangents). NaN where
    j < i (rho: j <= i) and where layer j does not depend on x^i (a parallel branch, e.g. a residual block's
    1x1 downsample conv beside its main path). data, group, tally: as in attenuation_sums (units: chunk x
    injection layer).
    """
    source = data if isinstance(data, DataSource) else DataSource(data)
    num = len(prep.layers)
    batch = forward_batch(prep, source.n, draws, budget)

    def work(s0, xc, injections):
        b = xc.shape[0]
        jx_norm, rho, rho_literal = (np.full((b, num, num), np.nan) for _ in range(3))
        with precision_mode("highest", prep.device):
            clean = prep.propagator.clean(prep.batch(xc))
        y_norm = [y.flatten(1).double().norm(dim=1) for y in clean.outputs]
        for i in injections:
            if tally is not None:
                tally.step()
            jx_norm[:, i, i] = y_norm[i].cpu().numpy()
            if i == num - 1:
                continue
            x_i = clean.outputs[i]
            radius = alpha * y_norm[i]
            eta = ops.sphere_noise(torch.zeros_like(x_i), radius, trials=draws, seed=seed, stream=num + i,
                                   sample0=s0, backend=backend) if draws else x_i[:0]
            if not prep.channels_last and eta.dim() == 4:  # the noise op writes channels_last (see attenuation)
                eta = eta.contiguous()
            linear = {}  # j -> (M(x^i), J x^i, J eta_d): views of the forward-mode pass, as made

            def observe_tangent(j, y, i=i):
                p, t = fwAD.unpack_dual(y)
                if t is None:  # the hooked forward reached a layer that does not depend on x^i
                    return
                jx_norm[:, i, j] = _row_norms(t[:b]).cpu().numpy()
                if draws:
                    linear[j] = (p[:b], t[:b], t[b:])

            with fwAD.dual_level(), precision_mode("highest", prep.device), differentiable():
                prep.propagator.suffix(clean, i, fwAD.make_dual(repeat_trials(x_i, 1 + draws),
                                                                torch.cat([x_i, eta])), "output", observe_tangent)
            if not draws:
                continue

            def observe_noisy(j, y, i=i):
                if j not in linear:
                    return
                m, jx, j_eta = linear.pop(j)
                # in float64: for a map that is affine around x^i the remainder is float32 rounding, which a
                # float32 difference could round to an exact 0 (rho = inf)
                base = (y.double() - j_eta).unflatten(0, (draws, b))  # M(x + eta) - J eta
                remainder = _row_norms(base - m, start=2)  # - M(x)
                literal = _row_norms(base - jx, start=2)  # - J x
                scale = radius * y_norm[j] / y_norm[i]  # ||eta|| ||x^j|| / ||x^i||
                rho[:, i, j] = (scale / remainder).min(0).values.cpu().numpy()
                rho_literal[:, i, j] = (scale / literal).min(0).values.cpu().numpy()

            with precision_mode("highest", prep.device):
                prep.propagator.suffix(clean, i, repeat_trials(x_i, draws) + eta, "output", observe_noisy)
        return jx_norm, rho, rho_literal

    jx_norm, rho, rho_literal = run_units(source, batch, num, 3, work, group=group, tally=tally)
    return {"jx_norm": jx_norm, "rho": rho, "rho_literal": rho_literal}


def _row_norms(v: torch.Tensor, start: int = 1) -> torch.Tensor:
    """v (B, ...) -> (B,) float64 Euclidean norms of the rows (of dims start..: (D, B, ...) -> (D, B) with
    start=2), read in v's memory format (no flattening copy)."""
    return torch.linalg.vector_norm(v, dim=tuple(range(start, v.dim()))).double()


def reverse_sweeps(prep: Prepared, data, *, probes: int, seed: int, budget, backend: str, group=None,
                   tally: Tally | None = None) -> dict:
    """Per sample (N, L, L) [i, j]: the Hutchinson estimate frob2 of ||J^{i,j}||_F^2 with its relative standard
    error frob2_rse, and the well-distributed-Jacobian constant beta (see the module note); positions (L,):
    the number P_i of spatial positions of each layer's output.

    One forward of the model on `probes` copies of each sample, kept for autograd, then one reverse sweep
    per output layer j: a probe v_k (E v v^T = I on x^j: sqrt(h_j) times a point of the unit sphere,
    stream 2L + j, trial k) gives J^{i,j}^T v_k at every earlier layer output x^i at once, whose square
    norm estimates ||J^{i,j}||_F^2 and whose square norm per spatial position ||J^{i,j}[:, p]||_F^2. The
    copy of x^i the rest of the forward reads is what a later in-place op may rewrite; x^i itself is kept
    as the layer made it; the forward's own in-place writes are differentiated as the forward computed them
    (autodiff.differentiable). The diagonal is exact (J = I: frob2 = h_i, rse 0; beta NaN); NaN where j < i
    or layer j does not depend on x^i; beta = 1 where x^i has one position (a Linear layer).
    data, group, tally: as in attenuation_sums (units: chunk x output layer j).
    """
    source = data if isinstance(data, DataSource) else DataSource(data)
    num = len(prep.layers)
    positions = [math.prod(layer.out_shape[1:]) if len(layer.out_shape) == 3 else 1 for layer in prep.layers]
    batch = sweep_batch(prep, source.n, probes, budget)

    def work(s0, xc, outputs):  # arrays indexed [sample, j, i]: the units are the output layers j
        b = xc.shape[0]
        frob2, frob2_rse, beta = (np.full((b, num, num), np.nan) for _ in range(3))
        for j in outputs:
            frob2[:, j, j] = math.prod(prep.layers[j].out_shape)
            frob2_rse[:, j, j] = 0.0
        sweeps = [j for j in outputs if j > 0]
        if tally is not None and len(sweeps) < len(outputs):
            tally.step(len(outputs) - len(sweeps))
        if sweeps:
            _sweep_chunk(prep, prep.batch(xc), s0, sweeps, probes, seed, backend, positions, frob2, frob2_rse,
                         beta, tally)
        return frob2, frob2_rse, beta

    found = run_units(source, batch, num, 3, work, group=group, tally=tally)
    frob2, frob2_rse, beta = (np.ascontiguousarray(a.transpose(0, 2, 1)) for a in found)
    return {"frob2": frob2, "frob2_rse": frob2_rse, "beta": beta, "positions": positions}


def _sweep_chunk(prep, xb, s0, sweeps, probes, seed, backend, positions, frob2, frob2_rse, beta, tally):
    """The forward on probes x b rows and the reverse sweeps from each output layer j in `sweeps` (reverse_sweeps;
    arrays [sample, j, i] filled in place)."""
    b = xb.shape[0]
    made = {}

    def keep(module, args, output, j=0):
        made[j] = output
        return output.clone()  # what the forward goes on with: an in-place op downstream rewrites this copy

    handles = [layer.module.register_forward_hook(lambda m, a, o, j=layer.index: keep(m, a, o, j))
               for layer in prep.layers]
    try:
        # the forward reads a non-leaf copy: a forward that writes its input writes that copy (autograd refuses
        # writes into a leaf that requires grad); differentiable(): in-place writes of the forward (autodiff.py)
        with torch.enable_grad(), precision_mode("highest", prep.device), differentiable():
            prep.model(repeat_trials(xb.detach().requires_grad_(True), probes))
    finally:
        for h in handles:
            h.remove()
    last = max(sweeps)
    for j in sorted(sweeps):
        if tally is not None:
            tally.step()
        y = made.get(j)
        earlier = [i for i in range(j) if i in made and made[i].requires_grad]
        if y is None or not y.requires_grad or not earlier:  # a forward that skipped a layer: nothing to sweep
            continue
        m = y[0].numel()
        v = ops.sphere_noise(torch.zeros_like(y[:b]), torch.full((b,), math.sqrt(m), dtype=torch.float64,
                                                                   device=y.device),
                             trials=probes, seed=seed, stream=2 * len(prep.layers) + j, sample0=s0, backend=backend)
        with precision_mode("highest", prep.device):
            grads = torch.autograd.grad(y, [made[i] for i in earlier], v.to(y.dtype), retain_graph=j != last,
                                        allow_unused=True)
        for i, g in zip(earlier, grads):
            if g is None:  # x^j does not depend on x^i (a parallel branch)
                continue
            g = g.detach().square()  # summed over channels in g's precision (a few hundred terms), then float64
            energy = (g.sum(1) if g.dim() > 2 else g.sum(1, keepdim=True)).double().reshape(probes, b, -1)
            f2 = energy.sum(-1)  # (K, B): ||J^T v_k||^2
            mean = f2.mean(0)
            frob2[:, j, i] = mean.cpu().numpy()
            frob2_rse[:, j, i] = (f2.std(0) / (math.sqrt(probes) * mean)).cpu().numpy() if probes > 1 else math.nan
            if positions[i] == 1:
                beta[:, j, i] = 1.0
            else:
                per_position = energy.mean(0)  # (B, P_i)
                share = per_position.max(1).values / per_position.sum(1)
                beta[:, j, i] = (positions[i] * share).sqrt().cpu().numpy()
    made.clear()


def jacobian_meters(prep: Prepared, data, *, probes: int, draws: int, alpha: float, seed: int,
                    budget, backend: str, group=None, tally: Tally | None = None) -> dict:
    """Per sample (N, L, L): the interlayer cushion mu with its relative standard error mu_rse (delta method:
    mu ~ (||J||_F^2)^(-1/2), so half the Hutchinson estimate's), ||J^{i,j} x^i|| (jx_norm), the smoothness
    rho (bias-aware) and rho_literal, and beta; positions as in `reverse_sweeps`.

    `forward_meters` (||J x^i||, rho) and `reverse_sweeps` (||J||_F, beta) on each chunk of the data, read
    once (chunks of `jacobian_chunk` samples). data, group, tally: as in attenuation_sums (units: see
    `jacobian_units`)."""
    source = data if isinstance(data, DataSource) else DataSource(data)
    parts = []
    for s0, xc, _ in source.chunks(jacobian_chunk(prep, source.n, probes, draws, budget)):
        sub = DataSource(xc, start=s0)
        fwd = forward_meters(prep, sub, draws=draws, alpha=alpha, seed=seed, budget=budget, backend=backend,
                             group=group, tally=tally)
        rev = reverse_sweeps(prep, sub, probes=probes, seed=seed, budget=budget, backend=backend, group=group,
                             tally=tally)
        parts.append((fwd, rev))
    fwd, rev = ({key: np.concatenate([p[k][key] for p in parts]) for key in parts[0][k] if key != "positions"}
                for k in range(2))
    jx_norm, diagonal = fwd["jx_norm"], np.arange(fwd["jx_norm"].shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN where undefined (j < i, a parallel branch)
        jx_rel = jx_norm / jx_norm[:, diagonal, diagonal][:, :, None]  # ||J x^i|| / ||x^i||
        jx_rel[:, diagonal, diagonal] = 1.0
        mu = jx_rel / np.sqrt(rev["frob2"])
    return {"mu": mu, "mu_rse": 0.5 * rev["frob2_rse"], "jx_norm": jx_norm, "rho": fwd["rho"],
            "rho_literal": fwd["rho_literal"], "beta": rev["beta"], "positions": parts[0][1]["positions"]}


def jacobian_chunk(prep: Prepared, n: int | None, probes: int, draws: int, budget) -> int:
    """Samples per chunk `jacobian_meters` reads: the larger of its two meters' chunks (each re-chunks within)."""
    return max(forward_batch(prep, n, draws, budget), sweep_batch(prep, n, probes, budget))


def jacobian_units(prep: Prepared, n: int, probes: int, draws: int, budget) -> int:
    """Progress units of `jacobian_meters` on n samples: one per chunk and layer of each of its two meters."""
    outer, num = jacobian_chunk(prep, n, probes, draws, budget), len(prep.layers)
    sizes = (forward_batch(prep, n, draws, budget), sweep_batch(prep, n, probes, budget))
    return sum(num * count_chunks(min(outer, n - s0), size) for s0 in range(0, n, outer) for size in sizes)


def jacobian_spread(prep: Prepared, data, *, probes: int, seed: int, budget, backend: str, group=None,
                    tally: Tally | None = None) -> dict:
    """Per-sample well-distributed-Jacobian constant beta_{i,j}(x) (N, L, L) and positions (L,): the
    `reverse_sweeps` meter alone."""
    rev = reverse_sweeps(prep, data, probes=probes, seed=seed, budget=budget, backend=backend, group=group,
                         tally=tally)
    return {"beta": rev["beta"], "positions": rev["positions"]}


def _per_layer(names, values) -> dict:
    """{name: summarize(values[:, i])} for (N, L) values."""
    return {name: summarize(values[:, i]) for i, name in enumerate(names)}


def layer_cushion_dict(names, cushion, frob) -> dict:
    out = _per_layer(names, cushion)
    for i, name in enumerate(names):
        out[name]["frobenius"] = frob[i]
    return out


def interlayer_cushion_dict(names, mu, mu_rse, probes: int) -> dict:
    """{name_i: summarize(mu_{i->}(x)) + {"to": {name_j: summarize(mu_{i,j}(x)) + "rel_se_median",
    "min_ci95"}}}: rel_se_median is the median over samples of the relative standard error of the
    Hutchinson estimate over `probes` probes; min_ci95 the data minimum taken over each sample's 95%
    interval ends (report.interval95: the Student-t quantile at probes - 1 degrees of freedom; NaN with one
    probe, which gives no standard error)."""
    if probes >= 2:
        low, high = interval95(mu, mu_rse, probes)
    else:
        low = high = np.full_like(mu, np.nan)
    out = {}
    for i, name in enumerate(names):
        entry = summarize(_quiet(np.nanmin, mu[:, i, i:], 1))
        entry["to"] = {}
        for j in range(i, len(names)):
            s = summarize(mu[:, i, j])
            s["rel_se_median"] = float(_quiet(np.nanmedian, mu_rse[:, i, j], None))
            s["min_ci95"] = [float(_quiet(np.nanmin, low[:, i, j], None)),
                             float(_quiet(np.nanmin, high[:, i, j], None))]
            entry["to"][names[j]] = s
        out[name] = entry
    return out


def _quiet(fn, values, axis):
    """fn (np.nanmin / np.nanmax) along axis, NaN for all-NaN slices without numpy's RuntimeWarning (a layer
    with no metered layer downstream, e.g. in a parallel branch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(values, axis=axis)


def smoothness_dict(names, rho) -> dict:
    """{name_i: summarize(min_{j>i} rho_{i,j}(x)) + {"to": {name_j: summarize(rho_{i,j}(x))}}}, i < L-1."""
    out = {}
    for i, name in enumerate(names[:-1]):
        entry = summarize(_quiet(np.nanmin, rho[:, i, i + 1:], 1))
        entry["to"] = {names[j]: summarize(rho[:, i, j]) for j in range(i + 1, len(names))}
        out[name] = entry
    return out


def spread_dict(names, beta, positions) -> dict:
    """{name_i: summarize(max_{j>i} beta_{i,j}(x)) + "positions": P_i + {"to": {name_j: summarize(beta_{i,j}(x))}}},
    i < L-1 (beta: jacobian_spread's (N, L, L))."""
    out = {}
    for i, name in enumerate(names[:-1]):
        entry = summarize(_quiet(np.nanmax, beta[:, i, i + 1:], 1))
        entry["positions"] = positions[i]
        entry["to"] = {names[j]: summarize(beta[:, i, j]) for j in range(i + 1, len(names))}
        out[name] = entry
    return out


def _run(model, data, layers, method, channels_last, fn, progress, stage, autodiff=False):
    """fn(prep, source, tally) in metering mode, on data streamed through a DataSource (autodiff: fn differentiates
    the forward; see context.metering)."""
    layers = check_names("layers", layers)
    tally = Tally(progress, stage)
    source = DataSource(data)
    with metering(model, channels_last, source.first(), autodiff) as channels_last:
        prep = prepare(model, source, layers, method, channels_last)
        result = fn(prep, source, tally)
    tally.finish()
    return prep, result


def layer_cushion(model, data, *, layers=None, memory_budget=None, method: str = "auto",
                  channels_last: bool = True, group=None, progress=None) -> dict:
    """Layer cushion mu_i per sample, summarized: {name: {min, q05, ..., median, ..., max, mean, n, frobenius}}.

    data, group, progress: see the module note, "Data, ranks, progress". One clean pass: every rank of a
    group computes it (not sharded); progress per chunk."""
    resolve_group(group)  # checked like every meter's group, though nothing is shared

    def fn(prep, source, tally):
        check_meterable(prep)
        return clean_meters(prep, source, memory_budget, tally)
    prep, m = _run(model, data, layers, method, channels_last, fn, progress, "layer cushion")
    return layer_cushion_dict(prep.names, m["cushion"], m["frobenius"])


def activation_contraction_dict(names, contraction) -> dict:
    """{name: summarize(c_i(x))} for layers followed by an activation module, and "c": the max over all
    (NaN when no layer is)."""
    measured = [i for i in range(len(names)) if not np.all(np.isnan(contraction[:, i]))]
    out = {names[i]: summarize(contraction[:, i]) for i in measured}
    out["c"] = float(np.nanmax(contraction[:, measured])) if measured else math.nan
    return out


def activation_contraction(model, data, *, layers=None, memory_budget=None, method: str = "auto",
                           channels_last: bool = True, group=None, progress=None) -> dict:
    """Activation contraction per layer and sample (see `activation_contraction_dict`).

    data, group, progress: see the module note, "Data, ranks, progress". One clean pass: every rank of a
    group computes it (not sharded); progress per chunk."""
    resolve_group(group)  # checked like every meter's group, though nothing is shared

    def fn(prep, source, tally):
        check_meterable(prep)
        return clean_meters(prep, source, memory_budget, tally)
    prep, m = _run(model, data, layers, method, channels_last, fn, progress, "activation contraction")
    return activation_contraction_dict(prep.names, m["contraction"])


def interlayer_cushion(model, data, *, probes: int = 4, layers=None, seed: int = 0, memory_budget=None,
                       method: str = "auto", backend: str = "auto", channels_last: bool = True, group=None,
                       progress=None) -> dict:
    """Interlayer cushions mu_{i,j} and mu_{i->} per sample (see `interlayer_cushion_dict`).

    data, group, progress: see the module note, "Data, ranks, progress"; progress per chunk and injection
    layer."""
    probes = check_positive_int("probes", probes)
    seed = check_seed(seed)

    def fn(prep, source, tally):
        check_meterable(prep)
        if source.n is not None:
            tally.fix(jacobian_units(prep, source.n, probes, 0, memory_budget))
        return jacobian_meters(prep, source, probes=probes, draws=0, alpha=0.1, seed=seed, budget=memory_budget,
                               backend=backend, group=group, tally=tally)
    prep, m = _run(model, data, layers, method, channels_last, fn, progress, "interlayer cushion", autodiff=True)
    return interlayer_cushion_dict(prep.names, m["mu"], m["mu_rse"], probes)


def interlayer_smoothness(model, data, *, alpha: float = 0.1, draws: int = 1, layers=None, seed: int = 0,
                          memory_budget=None, method: str = "auto", backend: str = "auto",
                          channels_last: bool = True, group=None, progress=None) -> dict:
    """Interlayer smoothness per sample: the bias-aware rho_{i,j} (see `smoothness_dict`) and "rho": its min
    over all; "literal": the same for the literal form ||M(x^i + eta) - J(x^i + eta)|| and its "rho" (see
    the module note: on nets with biases the literal form shrinks with alpha).

    data, group, progress: see the module note, "Data, ranks, progress"; progress per chunk and injection
    layer."""
    alpha = check_positive("alpha", alpha)
    draws = check_positive_int("draws", draws)
    seed = check_seed(seed)

    def fn(prep, source, tally):
        check_meterable(prep)
        return forward_meters(prep, source, draws=draws, alpha=alpha, seed=seed, budget=memory_budget,
                              backend=backend, group=group, tally=tally)
    prep, m = _run(model, data, layers, method, channels_last, fn, progress, "interlayer smoothness",
                   autodiff=True)
    out = smoothness_dict(prep.names, m["rho"])
    out["rho"] = min_or_nan(m["rho"])
    out["literal"] = smoothness_dict(prep.names, m["rho_literal"])
    out["literal"]["rho"] = min_or_nan(m["rho_literal"])
    return out


def min_or_nan(values) -> float:
    """The min over the non-NaN entries, NaN when there are none (a one-layer net has no pair i < j)."""
    return float(_quiet(np.nanmin, np.asarray(values, dtype=np.float64), None))


def max_or_nan(values) -> float:
    """The max over the non-NaN entries, NaN when there are none."""
    return float(_quiet(np.nanmax, np.asarray(values, dtype=np.float64), None))


def noise_sensitivity_dict(names, per_sample_sq, alpha: float) -> dict:
    """{name_i: summarize(psi_i(x))}, psi_i(x) = E_trials r[i, last]^2 / alpha^2."""
    return {name: summarize(per_sample_sq[:, i, -1] / alpha ** 2) for i, name in enumerate(names)}


def noise_sensitivity(model, data, *, alpha: float = 0.1, trials: int = 8, layers=None, seed: int = 0,
                      memory_budget=None, method: str = "auto", backend: str = "auto",
                      channels_last: bool = True, group=None, progress=None) -> dict:
    """Noise sensitivity psi_i of the net from layer i's input to its last metered layer, per sample,
    summarized: {name: {...}} and "psi": the max over layers and data (the paper's psi_N(M, S)).

    data, group, progress: see the module note, "Data, ranks, progress". Read off `noise_attenuation` (its
    progress stage: "attenuation")."""
    from .attenuation import noise_attenuation
    rep = noise_attenuation(model, data, alpha=alpha, trials=trials, layers=layers, seed=seed,
                            memory_budget=memory_budget, method=method, backend=backend, channels_last=channels_last,
                            group=group, progress=progress)
    out = noise_sensitivity_dict(rep.layers, rep.per_sample_sq, rep.alpha)
    out["psi"] = float(np.nanmax(rep.per_sample_sq[:, :, -1]) / rep.alpha ** 2)
    return out

