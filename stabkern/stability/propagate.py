"""The model's clean and noisy passes around the metered layers: a torch.fx graph or forward hooks.

Design note. Noise injected at the input (or output) of layer i changes only what is computed after
layer i; everything else equals the clean pass. So the clean pass runs once per data chunk and keeps
what the noisy passes need, and a noisy pass runs only the part of the model downstream of layer i,
with trials riding in the batch (row t B + b is trial t of sample b). Two ways to know "downstream":

- `GraphPropagator` (method "graph"): a torch.fx trace of the model. The nodes downstream of layer i
  are its descendants in the graph; any other value they read (a skip connection from before layer
  i, a parameter) comes from the clean pass, repeated over the trials when it has a batch dimension.
  Right for any graph, residual nets included, and nothing upstream of layer i is recomputed.
- `HookPropagator` (method "hooks"): for models fx cannot trace. The whole model runs on the input
  repeated over the trials, with a forward hook that replaces layer i's input (or output) and hooks
  that observe later layers; the forward stops after the last observed layer. The prefix before
  layer i is recomputed (T times), which is correct for any graph but slower.

Both call `observe(j, y_hat)` with the output of every layer j >= i as soon as it exists, before any
in-place op downstream can change it, and keep no noisy activation longer than the graph needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

from .layers import Layer, first_tensor


@dataclass
class Clean:
    """What the noisy passes of one data chunk need from its clean pass (batch B).

    `inputs[i]` / `outputs[i]`: layer i's input and output (copies taken when computed), `logits`:
    the model's output, `x`: the chunk itself; `values`: the graph values the noisy passes read.
    """

    x: torch.Tensor
    inputs: list
    outputs: list
    logits: torch.Tensor
    values: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.x.shape[0]


def repeat_trials(v: torch.Tensor, trials: int) -> torch.Tensor:
    """(B, ...) -> a new (trials B, ...) tensor, row t B + b = v[b], in v's memory format.

    Always a copy, so in-place ops of the noisy pass never reach the clean pass's values.
    """
    return torch.cat([v] * trials, dim=0)


class _Stop(Exception):
    """Ends a hooked forward after its last observed layer."""


class HookPropagator:
    """Clean and noisy passes by forward hooks; the prefix is recomputed (see the module note)."""

    method = "hooks"

    def __init__(self, model: nn.Module, layers: list[Layer]):
        self.model = model
        self.layers = layers

    def clean(self, x: torch.Tensor) -> Clean:
        inputs, outputs = [None] * len(self.layers), [None] * len(self.layers)
        handles = []
        for layer in self.layers:
            def hook(module, args, output, i=layer.index):
                inputs[i] = first_tensor(args).detach().clone()
                outputs[i] = output.detach().clone()
            handles.append(layer.module.register_forward_hook(hook))
        try:
            logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        return Clean(x, inputs, outputs, logits.detach().clone() if isinstance(logits, torch.Tensor) else logits)

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


class _LeafTracer(fx.Tracer):
    """torch.fx tracer that keeps the metered layers as leaves (call_module nodes)."""

    def __init__(self, leaves):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m, qualname):
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)


class NotTraceable(Exception):
    """The model cannot be run from a torch.fx graph; the reason is the message."""


def _map_nodes(a, fn):
    return fx.node.map_arg(a, fn)


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
        self.nodes = [n for n in graph.nodes]
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
        position = {n: k for k, n in enumerate(self.nodes)}
        if [position[n] for n in self.layer_nodes] != sorted(position[n] for n in self.layer_nodes):
            raise NotTraceable("the traced graph orders the layers differently from the forward call")
        self.position = position
        self.layer_of = {n: k for k, n in enumerate(self.layer_nodes)}
        self.batched = self._descendants(placeholders[0]) | {placeholders[0]}
        self.plans = {}
        for i, node in enumerate(self.layer_nodes):
            below = self._descendants(node)
            self.plans[(i, "input")] = self._plan([node] + self._ordered(below), replaced=None)
            self.plans[(i, "output")] = self._plan(self._ordered(below), replaced=node)
        self.kept = set()
        for order, boundary, _ in self.plans.values():
            self.kept |= boundary
        self.kept |= {n.args[0] for n in self.layer_nodes if isinstance(n.args[0], fx.Node)}
        with torch.no_grad():  # the graph must reproduce the model on a sample, else use hooks
            ours, theirs = self.clean(sample).logits, model(sample)
            scale = float(torch.nan_to_num(theirs, nan=0.0, posinf=0.0, neginf=0.0).abs().max())
            if not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6 * scale, equal_nan=True):
                raise NotTraceable("the traced graph does not reproduce model(sample)")

    def _descendants(self, node) -> set:
        seen, stack = set(), [node]
        while stack:
            for user in stack.pop().users:
                if user not in seen and user.op != "output":
                    seen.add(user)
                    stack.append(user)
        return seen

    def _ordered(self, nodes) -> list:
        return sorted(nodes, key=self.position.__getitem__)

    def _plan(self, order, replaced):
        """(order, boundary, dies_at): the clean values `order` reads, and after which step each value dies."""
        inside = set(order) | ({replaced} if replaced is not None else set())
        boundary, last_use = set(), {}
        for k, n in enumerate(order):
            reads = []
            _map_nodes((n.args, n.kwargs), lambda a: reads.append(a) or a)
            if k == 0 and replaced is None:  # the layer's own input is replaced
                reads = [a for a in reads if a is not n.args[0]]
            for a in reads:
                last_use[a] = k
                if a not in inside:
                    boundary.add(a)
        dies_at = [[] for _ in order]
        for a, k in last_use.items():
            dies_at[k].append(a)
        for k, n in enumerate(order):
            if n not in last_use:  # nothing downstream reads it
                dies_at[k].append(n)
        return order, boundary, dies_at

    def _run_node(self, n, args, kwargs):
        if n.op == "call_module":
            return self.modules[n.target](*args, **kwargs)
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

    def clean(self, x: torch.Tensor) -> Clean:
        env, values = {}, {}
        inputs, outputs = [None] * len(self.layers), [None] * len(self.layers)
        logits = None
        for n in self.nodes:
            if n.op == "placeholder":
                env[n] = x
            elif n.op == "output":
                logits = _map_nodes(n.args[0], env.__getitem__)
                continue
            else:
                args, kwargs = _map_nodes((n.args, n.kwargs), env.__getitem__)
                env[n] = self._run_node(n, args, kwargs)
            v = env[n]
            if n in self.kept:
                if n in self.batched and not isinstance(v, torch.Tensor):
                    raise NotTraceable(f"graph value {n.name} ({type(v).__name__}) depends on the batch and is "
                                       "read after a metered layer")
                values[n] = v.detach().clone() if isinstance(v, torch.Tensor) else v
            if n in self.layer_of:
                i = self.layer_of[n]
                inputs[i] = values[n.args[0]] if n.args[0] in values else n.args[0]
                outputs[i] = v.detach().clone()
        if not isinstance(logits, torch.Tensor):
            raise NotTraceable("forward does not return a single tensor")
        return Clean(x, inputs, outputs, logits.detach().clone(), values)

    def suffix(self, clean: Clean, i: int, value: torch.Tensor, at: str, observe) -> None:
        order, _, dies_at = self.plans[(i, at)]
        trials = value.shape[0] // clean.batch
        env = {}
        if at == "output":
            env[self.layer_nodes[i]] = value

        def read(a):
            if a in env:
                return env[a]
            v = clean.values[a]
            if isinstance(v, torch.Tensor) and a in self.batched:
                v = repeat_trials(v, trials)
                env[a] = v  # shared by later readers; freed after its last use like any value
            return v

        for k, n in enumerate(order):
            if k == 0 and at == "input":
                args, kwargs = (value, *_map_nodes(n.args[1:], read)), _map_nodes(n.kwargs, read)
            else:
                args, kwargs = _map_nodes((n.args, n.kwargs), read)
            env[n] = self._run_node(n, args, kwargs)
            if n in self.layer_of:
                observe(self.layer_of[n], env[n])
            for a in dies_at[k]:
                env.pop(a, None)


def build_propagator(model: nn.Module, layers: list[Layer], sample: torch.Tensor, method: str = "auto"):
    """`GraphPropagator` when torch.fx can trace the model (method "auto" or "graph"), else hooks.

    sample: (1, ...) a data sample, used to check that the graph reproduces the model.
    """
    if method not in ("auto", "graph", "hooks"):
        raise ValueError(f"method must be 'auto', 'graph' or 'hooks'; got {method!r}")
    if method == "hooks":
        return HookPropagator(model, layers)
    try:
        return GraphPropagator(model, layers, sample)
    except NotTraceable:
        if method == "graph":
            raise
        return HookPropagator(model, layers)


__all__ = ["Clean", "GraphPropagator", "HookPropagator", "NotTraceable",
           "build_propagator", "repeat_trials"]
