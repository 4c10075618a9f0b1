"""A torch.export program as an eager module whose convolutions and linear maps are nn.Conv2d / nn.Linear.

`program.module()` computes with aten operators on attributes (`aten.conv2d(x, get_attr("features.0.weight"),
...)`), so the meters, which inject into and observe nn.Conv2d / nn.Linear modules, would find nothing to
meter. `eager_program` rewrites the graph: each 2-D convolution node (aten.conv2d, aten.convolution) and each
linear node (aten.linear; aten.addmm / aten.mm of a transposed weight, the decomposed form) whose weight is a
parameter `P.weight` becomes a call of an nn.Conv2d / nn.Linear module at P that holds that parameter (and
`P.bias`), built with the node's stride, padding, dilation and groups. Names stay the file's ("features.0",
"se.fc1"); the module computes the same operator on the same tensors, so the outputs are bitwise the program's.

A convolution the rewrite cannot express as a module (a transposed or 1-D / 3-D one, a weight computed in the
graph, a weight whose owner holds other things) stays an operator: it runs, it is not metered.
`conv_layer` / `linear_layer` build the modules; the TorchScript converter (torchscript.py) uses them too.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from .errors import InputError

aten = torch.ops.aten
CONVOLUTIONS = (aten.conv2d.default, aten.conv2d.padding, aten.convolution.default)
LINEARS = (aten.linear.default,)
MATMULS = (aten.addmm.default, aten.mm.default)  # linear decomposed: addmm(bias, x, weight.t()), mm(x, weight.t())
TRANSPOSES = (aten.t.default, aten.permute.default)


def _parameter(t: torch.Tensor) -> nn.Parameter:
    """The same storage as a Parameter (a buffer-held weight keeps requires_grad False)."""
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach(), requires_grad=t.requires_grad)


def conv_layer(weight: torch.Tensor, bias, stride, padding, dilation, groups: int) -> nn.Conv2d:
    """nn.Conv2d computing F.conv2d(x, weight, bias, stride, padding, dilation, groups) with these tensors.

    weight: (out, in / groups, kh, kw); bias: (out,) or None; padding: ints or "same" / "valid"."""
    out_channels, in_per_group, kh, kw = weight.shape
    with torch.device("meta"):  # no throwaway initialization: the file's tensors replace the parameters
        conv = nn.Conv2d(in_per_group * groups, out_channels, (kh, kw), stride=tuple(stride),
                         padding=padding if isinstance(padding, str) else tuple(padding),
                         dilation=tuple(dilation), groups=groups, bias=bias is not None)
    conv.weight = _parameter(weight)
    conv.bias = None if bias is None else _parameter(bias)
    return conv


def linear_layer(weight: torch.Tensor, bias) -> nn.Linear:
    """nn.Linear computing F.linear(x, weight, bias): weight (out, in), bias (out,) or None."""
    with torch.device("meta"):
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.weight = _parameter(weight)
    linear.bias = None if bias is None else _parameter(bias)
    return linear


def bind(target, args, kwargs) -> dict:
    """The arguments of an aten operator call by schema name, defaults filled in."""
    bound = {}
    for i, arg in enumerate(target._schema.arguments):
        if i < len(args):
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        else:
            bound[arg.name] = arg.default_value
    return bound


def _owner(node, leaf: str) -> str | None:
    """P when `node` is get_attr("P.<leaf>") of a tensor, P not the root, else None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr" or not node.target.endswith("." + leaf):
        return None
    return node.target[: -len(leaf) - 1]


def _layer_of(gm: fx.GraphModule, node: fx.Node):
    """(owner path P, module, input node, nodes left unused) when `node` is a conv / linear the rewrite takes."""
    if node.op != "call_function":
        return None
    if node.target in CONVOLUTIONS:
        a = bind(node.target, node.args, node.kwargs)
        if a.get("transposed") or any(p != 0 for p in a.get("output_padding", [0])):
            return None
        weight_node, bias_node = a["weight"], a["bias"]
        stride, padding, dilation = a["stride"], a["padding"], a["dilation"]
        if not all(isinstance(v, (list, tuple)) and len(v) == 2 for v in (stride, dilation)) or not (
                isinstance(padding, str) or len(padding) == 2):
            return None  # a 1-D or 3-D convolution
        build = lambda w, b: conv_layer(w, b, stride, padding, dilation, a["groups"])  # noqa: E731
        x, extra = a["input"], []
    elif node.target in LINEARS:
        a = bind(node.target, node.args, node.kwargs)
        weight_node, bias_node, x, extra, build = a["weight"], a["bias"], a["input"], [], linear_layer
    elif node.target in MATMULS:
        a = bind(node.target, node.args, node.kwargs)
        if a.get("beta", 1) != 1 or a.get("alpha", 1) != 1:
            return None
        wt = a["mat2"]
        if not (isinstance(wt, fx.Node) and wt.target in TRANSPOSES and len(wt.users) == 1
                and (wt.target == aten.t.default or list(wt.args[1]) == [1, 0])):
            return None
        weight_node, bias_node, x, extra, build = wt.args[0], a.get("self"), a["mat1"], [wt], linear_layer
        if node.target == aten.mm.default:
            x, bias_node = a["self"], None
    else:
        return None
    path = _owner(weight_node, "weight")
    if path is None or (bias_node is not None and _owner(bias_node, "bias") != path):
        return None
    owner = gm.get_submodule(path)
    held = {name for name, _ in owner.named_parameters(recurse=False)} | {
        name for name, _ in owner.named_buffers(recurse=False)}
    if held - {"weight", "bias"} or any(True for _ in owner.children()):
        return None  # the owner holds more than this layer: replacing it would drop the rest
    weight = owner.get_parameter("weight") if "weight" in owner._parameters else owner.get_buffer("weight")
    bias = None if bias_node is None else getattr(owner, "bias")
    if weight.dim() != (4 if node.target in CONVOLUTIONS else 2):
        return None
    return path, build(weight, bias), x, [*extra, weight_node, bias_node]  # users before what they read


def eager_program(gm: fx.GraphModule, name: str) -> fx.GraphModule:
    """`gm` (program.module(), owned by the caller) with each convolution / linear node a call of an
    nn.Conv2d / nn.Linear module at its weight's owner (module docstring); changed in place and returned."""
    layers = {}
    for node in list(gm.graph.nodes):
        found = _layer_of(gm, node)
        if found is None:
            continue
        path, module, x, leftovers = found
        if path in layers:  # one weight used by two nodes: one module called twice, as a shared eager layer is
            module = layers[path]
        else:
            layers[path] = module
            parent, _, leaf = path.rpartition(".")
            setattr(gm.get_submodule(parent), leaf, module)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(path, (x,))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        for n in leftovers:
            if isinstance(n, fx.Node) and not n.users:
                gm.graph.erase_node(n)
    if not layers:
        raise InputError(f"{name}: the exported program has no 2-D convolution or linear node whose weight is a "
                         "parameter, so there is nothing to meter")
    _plain_calling_convention(gm)
    gm.graph.lint()
    gm.recompile()
    return gm


def _plain_calling_convention(gm: fx.GraphModule) -> None:
    """forward(x) -> tensor without the pytree flatten / unflatten around the graph, when the program takes one
    tensor and returns one: torch's pytree code warns (FutureWarning) on every call, which the meters'
    thousands of calls would turn into notes. Other signatures keep torch's code."""
    info = getattr(gm.graph._codegen, "pytree_info", None)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    if info is None or len(placeholders) != 1 or info.in_spec.num_leaves != 1 or not info.out_spec.is_leaf() \
            or not isinstance(output.args[0], (tuple, list)) or len(output.args[0]) != 1:
        return
    gm.graph._codegen = fx.graph.CodeGen()
    output.args = (output.args[0][0],)


__all__ = ["bind", "conv_layer", "eager_program", "linear_layer"]
