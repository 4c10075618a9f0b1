"""The model's clean and noisy passes around the metered layers: a torch.fx graph or forward hooks.

Design note. Noise injected at the input (or output) of layer i changes only what is computed after
layer i; everything else equals the clean pass. So the clean pass runs once per data chunk and keeps
what the noisy passes need, and a noisy pass runs only the part of the model downstream of layer i,
with trials riding in the batch (row t B + b is trial t of sample b). Two ways to know "downstream":

- `GraphPropagator` (method "graph"): a torch.fx trace of the model. The nodes downstream of layer i
  are those whose inputs depend on it; any other value they read (a skip connection from before layer
  i, a parameter) comes from the clean pass, repeated over the trials when it carries the batch as its
  first dimension (found by running the graph at two batch sizes: `x.new_ones(C, 1, 1)` does not).
  Nothing upstream of layer i is recomputed. Under autocast a clean value is read in the dtype the
  forward under autocast gives it.
- `HookPropagator` (method "hooks"): for models fx cannot trace. The whole model runs on the input
  repeated over the trials, with a forward hook that replaces layer i's input (or output) and hooks
  that observe later layers; the forward stops after the last observed layer. The prefix before
  layer i is recomputed (T times), which is correct for any forward but slower. Which layers depend
  on layer i is probed on the sample (probes.py): forward-mode AD, and a perturbed forward for what no
  tangent follows (`.detach()`, a mask computed from a noisy value).

Both need each sample's outputs to depend on that sample alone (probes.check_samples_independent; batch
statistics are refused), and every pass runs on its own copy of the input: a forward may write into
its input (`x.mul_(2)`), and the user's data is never written.

In-place writes. A forward may write into a tensor after other nodes have read it (`a.relu_()`,
`nn.ReLU(inplace=True)`, `out += identity`, `x[:, 0] = 0`, `out=`). The graph path does not guess
which calls write: on the sample it runs the graph once and reads the tensors' version counters (any
in-place write to a tensor or a view of it bumps the counter its views share) to learn which storage
each node writes and how many writes each argument has received when a node reads it. Then
- "downstream" also takes in every node that reads a storage a downstream node wrote into or aliased
  (`a.add_(noisy_b); fc2(a)`), not only the graph descendants;
- a clean value is kept as it is when the downstream node reads it (after the writes made before that
  read), not as it was made: `a = fc0(x); b = fc1(a); a.relu_(); fc2(b + a)` reads the rectified `a`;
- a clean value that the noisy pass writes into is copied once and that copy is read by every later
  reader, as the forward shares the tensor.
What a copy cannot reproduce (two different clean values aliasing a storage the noisy pass writes, a
node writing a tensor it is not given) makes the graph path refuse; method "auto" then warns and uses
hooks. The graph must also replay the clean outputs with zero noise, and every clean pass checks that
the version counters move as they did on the sample.

Both call `observe(j, y_hat)` with the output of layer j as soon as it exists, before any in-place op
downstream can change it; `downstream(i)` lists the layers whose output depends on layer i's input
(the graph path observes only those). This file is not what the meters compute (attenuation.py, meters.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.autograd.forward_ad as fwAD
from torch import fx, nn
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten

from .layers import Layer, first_tensor
from .probes import check_samples_independent, close_f32, probe_downstream, tensors_of


@dataclass
class Clean:
    """What the noisy passes of one data chunk need from its clean pass (batch B).

    `inputs[i]` / `outputs[i]`: layer i's input (as the layer read it) and output (as it was made),
    copies; `logits`: the model's output; `x`: the chunk itself; `values`: the graph values the noisy
    passes read, keyed by (node, in-place writes it had received when read).
    """

    x: torch.Tensor
    inputs: list
    outputs: list
    logits: object
    values: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.x.shape[0]


def repeat_trials(v: torch.Tensor, trials: int) -> torch.Tensor:
    """(B, ...) -> a new (trials B, ...) tensor, row t B + b = v[b], in v's memory format.

    Always a copy, so in-place ops of the noisy pass never reach the clean pass's values.
    """
    return torch.cat([v] * trials, dim=0)


def _copy(v):
    """v with every tensor in it detached and cloned (v may be a tuple, list or dict of tensors)."""
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, v)


class _Stop(Exception):
    """Ends a hooked forward after its last observed layer."""


class NotTraceable(Exception):
    """The model cannot be run from a torch.fx graph; the reason is the message."""


class HookPropagator:
    """Clean and noisy passes by forward hooks; the prefix is recomputed (see the module note)."""

    method = "hooks"

    def __init__(self, model: nn.Module, layers: list[Layer], sample: torch.Tensor | None = None):
        self.model = model
        self.layers = layers
        self._downstream = probe_downstream(model, layers, sample) if sample is not None else None

    def downstream(self, i: int) -> list[int]:
        """Layers j whose output depends on layer i's input on the sample: reached by a forward-mode tangent or
        changed by a perturbation of the input (probes.probe_downstream); all j >= i without a sample."""
        if self._downstream is None:
            return list(range(i, len(self.layers)))
        return self._downstream[i]

    def clean(self, x: torch.Tensor) -> Clean:
        inputs, outputs = [None] * len(self.layers), [None] * len(self.layers)
        handles = []
        for layer in self.layers:
            # the input is copied before the layer runs (a layer may write into its input)
            def pre(module, args, i=layer.index):
                inputs[i] = first_tensor(args).detach().clone()

            def hook(module, args, output, i=layer.index):
                outputs[i] = output.detach().clone()
            handles.append(layer.module.register_forward_pre_hook(pre))
            handles.append(layer.module.register_forward_hook(hook))
        try:
            logits = self.model(x.clone())  # the forward may write its input: x stays what the noisy passes start from
        finally:
            for h in handles:
                h.remove()
        _check_batch(self.layers, outputs, x.shape[0])
        return Clean(x, inputs, outputs, _copy(logits))

    def suffix(self, clean: Clean, i: int, value: torch.Tensor, at: str, observe) -> None:
        trials = value.shape[0] // clean.batch
        first = i if at == "input" else i + 1
        handles = []

        def replace_input(module, args):
            return (value, *args[1:])

        def replace_output(module, args, output):
            return value

        def watch(module, args, output, j=0):
            observe(j, output)
            if j == len(self.layers) - 1:
                raise _Stop
            return None

        target = self.layers[i].module
        try:
            if at == "input":
                handles.append(target.register_forward_pre_hook(replace_input))
            else:
                handles.append(target.register_forward_hook(replace_output))
            for layer in self.layers[first:]:
                handles.append(layer.module.register_forward_hook(
                    lambda m, a, o, j=layer.index: watch(m, a, o, j)))
            if first < len(self.layers):
                try:
                    self.model(repeat_trials(clean.x, trials))
                except _Stop:
                    pass
        finally:
            for h in handles:
                h.remove()


def _check_batch(layers: list[Layer], outputs: list, batch: int) -> None:
    """ValueError unless every layer's output on a chunk of `batch` samples is (batch, *its traced out_shape)."""
    for layer, y in zip(layers, outputs):
        if tuple(y.shape) != (batch, *layer.out_shape):
            raise ValueError(f"layer {layer.name!r} made an output of shape {tuple(y.shape)} for a chunk of {batch} "
                             f"sample(s), not {(batch, *layer.out_shape)}: the forward drops the batch dimension "
                             "(x.squeeze() on a one-sample chunk?); pass at least two samples and a memory_budget "
                             "that holds two")


class _LeafTracer(fx.Tracer):
    """torch.fx tracer that keeps the metered layers as leaves (call_module nodes)."""

    def __init__(self, leaves):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m, qualname):
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)


def _versions(v) -> tuple:
    """Version counters of the tensors in v (in-place writes so far to each, or to a view of it)."""
    try:
        return tuple(t._version for t in tensors_of(v))
    except RuntimeError as err:  # inference tensors keep no version counter
        raise NotTraceable(f"cannot follow in-place writes: {err}") from err


def _writes_since(v, made: tuple) -> tuple:
    return tuple(now - then for now, then in zip(_versions(v), made))


def _storage(t: torch.Tensor):
    """What identifies the memory t lives in (tensors sharing it alias each other)."""
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        ptr = 0
    return (str(t.device), ptr) if ptr else ("tensor", id(t))


def _arg_nodes(a) -> list:
    found = []
    fx.node.map_arg(a, lambda n: found.append(n) if n not in found else None)
    return found


_TENSOR = object()  # marks a tensor's shape among the leaves `_batch_roles` compares


def _is_shape(leaf) -> bool:
    return isinstance(leaf, tuple) and len(leaf) == 2 and leaf[0] is _TENSOR


@dataclass
class _Run:
    """What one instrumented run of the graph saw, per node: `storages` its value lives in, `writes`
    the storages it wrote in place, `reads` {argument node: writes it had received when read}."""

    storages: dict
    writes: dict
    reads: dict


@dataclass
class _Plan:
    """A noisy pass: `steps` (node, {argument node: env key}, first argument replaced, keys to free
    after it); `written` the clean-value keys it writes into; `observed` the layers it computes."""

    steps: list
    written: set
    observed: list


class GraphPropagator:
    """Clean and noisy passes on a torch.fx graph of the model (see the module note)."""

    method = "graph"

    def __init__(self, model: nn.Module, layers: list[Layer], sample: torch.Tensor):
        self.model = model
        self.layers = layers
        try:
            graph = _LeafTracer({id(layer.module) for layer in layers}).trace(model)
        except Exception as err:  # noqa: BLE001 - any tracing failure means: use hooks
            raise NotTraceable(f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {err}") from err
        self.nodes = list(graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise NotTraceable(f"forward takes {len(placeholders)} inputs; the graph path needs exactly one")
        self.modules = dict(model.named_modules())
        by_module = {}
        for n in self.nodes:
            if n.op == "call_module":
                by_module.setdefault(id(self.modules[n.target]), []).append(n)
        self.layer_nodes = []
        for layer in layers:
            found = by_module.get(id(layer.module), [])
            if len(found) != 1:
                raise NotTraceable(f"layer {layer.name!r} appears {len(found)} times in the traced graph")
            self.layer_nodes.append(found[0])
        self.position = {n: k for k, n in enumerate(self.nodes)}
        if [self.position[n] for n in self.layer_nodes] != sorted(self.position[n] for n in self.layer_nodes):
            raise NotTraceable("the traced graph orders the layers differently from the forward call")
        self.layer_of = {n: k for k, n in enumerate(self.layer_nodes)}
        with torch.no_grad():
            run = self._instrumented_run(sample.clone())  # a copy: the forward may write its input
            self.batched, batch_sized = self._batch_roles(sample)
        self.plans = {}
        for i, node in enumerate(self.layer_nodes):
            for at in ("input", "output"):
                self.plans[(i, at)] = self._plan(run, node, at)
        self.input_keys = [(n.args[0], run.reads[n][n.args[0]]) if isinstance(n.args[0], fx.Node) else None
                           for n in self.layer_nodes]
        needed = {key for plan in self.plans.values() for _, keys, _, _ in plan.steps for key in keys.values()
                  if isinstance(key, tuple)} | {key for key in self.input_keys if key is not None}
        for a, _ in sorted(needed, key=lambda key: self.position[key[0]]):
            if a in batch_sized:
                raise NotTraceable(f"graph value {a.name} ({a.op} {a.target}) depends on the batch size but does not "
                                   "carry the batch as its first dimension, and is read after a metered layer")
        self.snap_before, self.made_of = {}, {key[0] for key in needed}
        for n in self.nodes:  # copy each kept value just before its first reader that sees it so
            for a, writes in run.reads.get(n, {}).items():
                if (a, writes) in needed:
                    needed.discard((a, writes))
                    self.snap_before.setdefault(n, []).append((a, writes))
        self._sample, self._dtypes = sample.clone(), {}
        with torch.no_grad():
            self._check(model, sample)

    # -- the instrumented run and the plans ------------------------------------------------------------

    def _instrumented_run(self, x: torch.Tensor) -> _Run:
        env, made, live, seen = {}, {}, [], set()
        storages, writes, reads = {}, {}, {}
        for n in self.nodes:
            if n.op == "output":
                continue
            args = _arg_nodes((n.args, n.kwargs))
            reads[n] = {a: _writes_since(env[a], made[a]) for a in args}
            env[n] = self._value(n, env, x)
            written = set()
            for t, key, last in live:
                if t._version != last[0]:
                    written.add(key)
                    last[0] = t._version
            for t in tensors_of(env[n]):
                if id(t) not in seen:
                    seen.add(id(t))
                    live.append((t, _storage(t), [t._version]))
            made[n] = _versions(env[n])
            storages[n] = frozenset(_storage(t) for t in tensors_of(env[n]))
            given = frozenset().union(*(storages[a] for a in args))
            if written - given:
                raise NotTraceable(f"graph node {n.name} ({n.op} {n.target}) writes in place into a tensor it is "
                                   "not given; the graph cannot replay it")
            writes[n] = frozenset(written)
        return _Run(storages, writes, reads)

    def _batch_roles(self, sample: torch.Tensor) -> tuple[set, set]:
        """(batched, batch_sized): the nodes whose values carry the batch as their first dimension (repeated over
        the trials when a noisy pass reads them), and those whose values depend on the batch size otherwise
        (`x.size(0)`, `x.flatten(0)`; the graph cannot replay them after a metered layer). Every other value
        (`x.new_ones(C, 1, 1)`, `torch.linspace(0, 1, x.shape[-1])`, a parameter) is read as it is.

        Found by running the graph on batches of 2 and 3 copies of the sample and comparing what each node made:
        a batched value is tensors (2, ...) and (3, ...), the same beyond the first dimension. Whether the
        values couple samples is `check_samples_independent`'s question."""
        made = []
        for size in (2, 3):
            x, env, shapes = torch.cat([sample[:1]] * size), {}, {}
            for n in self.nodes:
                if n.op != "output":
                    env[n] = self._value(n, env, x)
                    shapes[n] = [(_TENSOR, tuple(t.shape)) if isinstance(t, torch.Tensor) else t
                                 for t in tree_leaves(env[n])]
            made.append(shapes)
        batched, batch_sized = set(), set()
        for n, two in made[0].items():
            three = made[1][n]
            if two == three:
                continue
            if len(two) == len(three) and any(_is_shape(a) for a in two) and all(
                    (a[1][:1], b[1][:1], a[1][1:]) == ((2,), (3,), b[1][1:]) if _is_shape(a) and _is_shape(b) else a == b
                    for a, b in zip(two, three)):
                batched.add(n)
            else:
                batch_sized.add(n)
        return batched, batch_sized

    def _plan(self, run: _Run, src, at: str) -> _Plan:
        """The noisy pass for noise at layer node src's input or output (see the module note)."""
        down = {src}
        noisy = set(run.storages[src])  # memory whose contents depend on the noise
        copies = {}  # storage -> keys of the clean values read into the noisy pass that live in it
        carrier = {}  # storage made before src that the noisy pass writes or aliases -> its one copy
        steps = []
        for n in self.nodes[self.position[src]:]:
            if n.op == "output" or (n is src and at == "output"):
                continue
            first = n is src
            if not first and not any(a in down or run.storages[a] & noisy for a in run.reads[n]):
                continue
            down.add(n)
            keys = {}
            for a in (_arg_nodes((n.args[1:], n.kwargs)) if first else run.reads[n]):
                if a in down:
                    keys[a] = a
                    continue
                held = {carrier[g] for g in run.storages[a] if g in carrier}
                if held:
                    if len(held) != 1 or next(iter(held))[0] is not a:
                        raise NotTraceable(f"node {n.name} reads {a.name}, which aliases memory the noisy pass of "
                                           f"layer node {src.name} wrote through another value")
                    keys[a] = held.pop()
                    continue
                keys[a] = (a, run.reads[n][a])
                for g in run.storages[a]:
                    copies.setdefault(g, set()).add(keys[a])
            given = frozenset().union(*(run.storages[a] for a in keys if a not in down))
            for g in ((run.writes[n] | run.storages[n]) & given) - noisy:  # clean memory written or aliased
                owners = copies.get(g, set())
                if len(owners) != 1:
                    raise NotTraceable(f"node {n.name} writes memory that {len(owners)} clean values read by the "
                                       f"noisy pass of layer node {src.name} share")
                carrier[g] = next(iter(owners))
                noisy.add(g)
            noisy |= run.storages[n] | (run.writes[n] if not first else frozenset())
            steps.append([n, keys, first, []])
        last = {}
        for k, (n, keys, _, _) in enumerate(steps):
            for key in keys.values():
                last[key] = k
            last[n] = k
        for key, k in last.items():
            steps[k][3].append(key)
        observed = [self.layer_of[n] for n in self.nodes if n in down and n in self.layer_of]
        return _Plan([tuple(s) for s in steps], set(carrier.values()), observed)

    def _check(self, model: nn.Module, sample: torch.Tensor) -> None:
        """The graph must reproduce model(sample), and each noisy pass with zero noise the clean outputs."""
        clean = self.clean(sample)
        ours, theirs = tensors_of(clean.logits), tensors_of(model(sample.clone()))
        if len(ours) != len(theirs) or not all(close_f32(a, b) for a, b in zip(ours, theirs)):
            raise NotTraceable("the traced graph does not reproduce model(sample)")
        for (i, at), plan in self.plans.items():
            value = (clean.inputs[i] if at == "input" else clean.outputs[i]).clone()
            bad = []
            self.suffix(clean, i, value, at, lambda j, y: bad.append(j) if not close_f32(y, clean.outputs[j]) else None)
            if bad:
                raise NotTraceable(f"with zero noise at layer {self.layers[i].name!r}'s {at}, the graph does not "
                                   f"replay layer {self.layers[bad[0]].name!r}'s clean output")

    # -- the passes -----------------------------------------------------------------------------------

    def _value(self, n, env, x):
        if n.op == "placeholder":
            return x
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), env.__getitem__)
        return self._run_node(n, args, kwargs)

    def _run_node(self, n, args, kwargs):
        if n.op == "call_module":
            module = self.modules[n.target]
            if type(module) in (nn.Conv2d, nn.Linear) and len(args) == 1 and not kwargs:
                dual = _dual_linear_layer(module, args[0])
                if dual is not None:
                    return dual
            return module(*args, **kwargs)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        if n.op == "get_attr":
            value = self.model
            for part in n.target.split("."):
                value = getattr(value, part)
            return value
        raise NotTraceable(f"unexpected graph node {n.op}")

    def downstream(self, i: int) -> list[int]:
        """Layers j whose output depends on layer i's input (i itself included)."""
        return self.plans[(i, "input")].observed

    def clean(self, x: torch.Tensor) -> Clean:
        x_run = x.clone()  # the forward may write its input: x stays as given
        env, values, made = {}, {}, {}
        outputs = [None] * len(self.layers)
        logits = None
        for n in self.nodes:
            for a, writes in self.snap_before.get(n, ()):
                v = env[a]
                if _writes_since(v, made[a]) != writes:
                    raise RuntimeError(f"graph value {a.name} received other in-place writes than on the sample "
                                       "the graph was checked on; meter with method='hooks'")
                values[(a, writes)] = _copy(v)
            if n.op == "output":
                logits = fx.node.map_arg(n.args[0], env.__getitem__)
                continue
            env[n] = self._value(n, env, x_run)
            if n in self.made_of:
                made[n] = _versions(env[n])
            if n in self.layer_of:
                outputs[self.layer_of[n]] = env[n].detach().clone()
        _check_batch(self.layers, outputs, x.shape[0])
        inputs = [values[key] if key is not None else n.args[0] for key, n in zip(self.input_keys, self.layer_nodes)]
        return Clean(x, inputs, outputs, _copy(logits), values)

    def _autocast_dtypes(self, device_type: str) -> dict | None:
        """{node: dtype of each tensor leaf of its value} when model(x) runs under the autocast now enabled
        for device_type, else None. The clean values come from the float32 clean pass; a noisy pass under
        autocast reads each as the dtype the forward under autocast would have made it (a clean fp32 tensor
        that `index_add_` of a noisy value writes into is bf16 there)."""
        if not torch.is_autocast_enabled(device_type):
            return None
        key = (device_type, torch.get_autocast_dtype(device_type))
        if key not in self._dtypes:
            env, found = {}, {}
            x = self._sample.clone()
            for n in self.nodes:
                if n.op != "output":
                    env[n] = self._value(n, env, x)
                    found[n] = [t.dtype if isinstance(t, torch.Tensor) else None for t in tree_leaves(env[n])]
            self._dtypes[key] = found
        return self._dtypes[key]

    def suffix(self, clean: Clean, i: int, value: torch.Tensor, at: str, observe) -> None:
        plan = self.plans[(i, at)]
        trials = value.shape[0] // clean.batch
        env = {self.layer_nodes[i]: value} if at == "output" else {}
        dtypes = self._autocast_dtypes(value.device.type)

        def fetch(key):
            if key not in env:  # a clean value's first read: a copy over the trials, or a copy to write into
                v = clean.values[key]
                if dtypes is not None:
                    v = _cast_leaves(v, dtypes[key[0]])
                if key[0] in self.batched:
                    v = tree_map(lambda t: repeat_trials(t, trials) if isinstance(t, torch.Tensor) else t, v)
                elif key in plan.written:
                    v = _copy(v)
                env[key] = v
            return env[key]

        for n, keys, first, free in plan.steps:
            def read(a, keys=keys):
                return fetch(keys[a])
            if first and at == "input":
                args, kwargs = (value, *fx.node.map_arg(n.args[1:], read)), fx.node.map_arg(n.kwargs, read)
            else:
                args, kwargs = fx.node.map_arg((n.args, n.kwargs), read)
            env[n] = self._run_node(n, args, kwargs)
            if n in self.layer_of:
                observe(self.layer_of[n], env[n])
            for key in free:
                env.pop(key, None)


def _cast_leaves(v, dtypes: list):
    """v with each floating tensor leaf cast to its dtype in `dtypes` (the leaves in tree_leaves order)."""
    leaves, spec = tree_flatten(v)
    leaves = [t.to(d) if isinstance(t, torch.Tensor) and t.is_floating_point() and d is not None and d.is_floating_point
              and t.dtype != d else t for t, d in zip(leaves, dtypes)]
    return tree_unflatten(leaves, spec)


def _dual_linear_layer(module: nn.Module, x):
    """module(x) for a Conv2d or Linear and a forward-mode dual x: the primal through the module and the tangent
    through its weight alone (the same bits as torch's rule, which also convolves the primal with a zero
    weight tangent: a third product, 1.6x the time on CPU). None when x carries no tangent."""
    if not isinstance(x, torch.Tensor):
        return None
    primal, tangent = fwAD.unpack_dual(x)
    if tangent is None or fwAD.unpack_dual(module.weight).tangent is not None:
        return None
    if isinstance(module, nn.Conv2d):
        return fwAD.make_dual(module(primal), module._conv_forward(tangent, module.weight, None))
    return fwAD.make_dual(module(primal), nn.functional.linear(tangent, module.weight))


def build_propagator(model: nn.Module, layers: list[Layer], sample: torch.Tensor, method: str = "auto"):
    """`GraphPropagator` when torch.fx can trace the model and replay it (method "auto" or "graph"),
    else hooks (method "auto" warns why the graph path was not taken).

    sample: (b, ...) data samples (b >= 1), used to check that the graph reproduces the model. ValueError
    when the model couples the samples of a batch (`check_samples_independent`).
    """
    if method not in ("auto", "graph", "hooks"):
        raise ValueError(f"method must be 'auto', 'graph' or 'hooks'; got {method!r}")
    check_samples_independent(model, layers, sample)
    if method == "hooks":
        return HookPropagator(model, layers, sample)
    try:
        return GraphPropagator(model, layers, sample)
    except NotTraceable as err:
        if method == "graph":
            raise
        warnings.warn(f"metering {type(model).__name__} with forward hooks (exact, slower) instead of its "
                      f"torch.fx graph: {err}", stacklevel=4)
        return HookPropagator(model, layers, sample)


__all__ = ["Clean", "GraphPropagator", "HookPropagator", "NotTraceable", "build_propagator",
           "check_samples_independent", "repeat_trials"]
