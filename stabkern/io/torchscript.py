"""A TorchScript module (scripted or traced) as an eager module whose convolutions and linear maps are
nn.Conv2d / nn.Linear.

A loaded TorchScript module runs its graph inside the TorchScript interpreter: forward hooks on its
submodules never fire, its submodules cannot be swapped, and its types are not nn.Conv2d, so the meters
find nothing to meter. `eager_torchscript` turns it into a `TorchScriptModel`: an nn.Module with the file's
module tree (the same names, parameters and buffers) that runs the file's inlined forward graph op by op in
Python (each aten node calls the same operator through `torch.ops`, `prim::If` / `prim::Loop` branch and loop
on the values of this call, so nothing is specialized to one input shape). Each 2-D convolution node
(aten::conv2d, aten::_convolution, aten::convolution) and each aten::linear node whose weight is the
parameter `P.weight` of a submodule P holding only its weight and bias is a call of an nn.Conv2d / nn.Linear
at P built from the node's constant stride, padding, dilation and groups: the module computes the same
operator on the same tensors, so the outputs are bitwise the file's, and the meters' hooks and module swaps
(looked up by name at every call) work as on the eager model. Scripted and traced files alike: tracing
records aten::_convolution and aten::linear with the same GetAttr chains.

What this is not: a TorchScript compiler. Ops outside torch.ops and the list / scalar builtins below (a
custom class, a Python op, a `with` block) are refused with an InputError when the file is loaded.
"""

from __future__ import annotations

import operator
import warnings

import torch
from torch import nn

from .errors import InputError
from .exported import conv_layer, linear_layer

CONVOLUTIONS = ("aten::conv2d", "aten::_convolution", "aten::convolution")
LINEARS = ("aten::linear",)
# list, scalar and string builtins: torch.ops cannot take Python lists of a generic element type ("t[]")
_PYTHON_BUILTINS = {
    "__getitem__": operator.getitem, "len": len, "list": list, "add": operator.add, "sub": operator.sub,
    "mul": operator.mul, "floordiv": operator.floordiv, "div": operator.truediv, "remainder": operator.mod,
    "neg": operator.neg, "pow": operator.pow, "eq": operator.eq, "ne": operator.ne, "lt": operator.lt,
    "le": operator.le, "gt": operator.gt, "ge": operator.ge, "__is__": operator.is_, "__isnot__": operator.is_not,
    "__not__": operator.not_, "__and__": operator.and_, "__or__": operator.or_, "__contains__": operator.contains,
    "Int": int, "Float": float, "Bool": bool, "str": str, "abs": abs, "min": min, "max": max,
    "format": lambda fmt, *args: fmt.format(*args), "slice": lambda seq, start, end, step: seq[start:end:step],
    "append": lambda seq, item: (seq.append(item), seq)[1],
    "_set_item": lambda seq, i, v: (seq.__setitem__(i, v), seq)[1],  # the list form returns its list
    "warn": lambda message, stacklevel=2: warnings.warn(message, stacklevel=2),
}
_STRUCTURE = {
    "prim::ListConstruct": lambda *a: list(a), "prim::TupleConstruct": lambda *a: a,
    "prim::DictConstruct": lambda *a: dict(zip(a[::2], a[1::2])), "prim::TupleIndex": operator.getitem,
    "prim::ListUnpack": lambda seq: tuple(seq), "prim::TupleUnpack": lambda seq: tuple(seq),
    "prim::unchecked_cast": lambda v: v, "prim::unchecked_unwrap_optional": lambda v: v,
    "prim::Uninitialized": lambda: None, "prim::min": min, "prim::max": max, "prim::abs": abs,
    "prim::device": lambda t: t.device, "prim::is_cuda": lambda t: t.is_cuda, "prim::data": lambda t: t.detach(),
    "prim::requires_grad": lambda t: t.requires_grad, "prim::shape": lambda t: list(t.shape),
}
_TENSORS = ("Tensor", "Tensor?", "Tensor[]", "Tensor?[]")


class _Op:
    """One graph node: `kind` says how it runs; `ins` / `outs` are value ids; `arg` what the kind needs."""

    __slots__ = ("kind", "fn", "ins", "outs", "blocks", "arg")

    def __init__(self, kind, ins, outs, fn=None, blocks=(), arg=None):
        self.kind, self.fn, self.ins, self.outs, self.blocks, self.arg = kind, fn, ins, outs, blocks, arg


class _Block:
    __slots__ = ("ins", "ops", "outs")

    def __init__(self, ins, ops, outs):
        self.ins, self.ops, self.outs = ins, ops, outs


class _Program:
    """The compiled forward graph. Immutable: copies of the model share it."""

    def __init__(self, block: _Block):
        self.block = block

    def __deepcopy__(self, memo):
        return self


class TorchScriptModel(nn.Module):
    """The eager form of a TorchScript module (module docstring): forward(x) runs its graph."""

    def __init__(self, name: str):
        super().__init__()
        self.source_name = name
        self._program: _Program | None = None

    def forward(self, x):
        if isinstance(x, torch.fx.Proxy):  # said plainly, not as the first op fx trips on
            raise RuntimeError("a TorchScript file runs op by op in Python, with branches on each call's values, "
                               "which torch.fx cannot trace")
        block = self._program.block
        outs = _run(self, block, {block.ins[0]: self, block.ins[1]: x})
        return outs[0] if len(outs) == 1 else tuple(outs)


def _run(model: nn.Module, block: _Block, env: dict) -> list:
    for op in block.ops:
        kind = op.kind
        if kind == "call":
            n_pos, kw_names = op.arg
            values = [env[i] for i in op.ins]
            result = op.fn(*values[:n_pos], **dict(zip(kw_names, values[n_pos:])))
        elif kind == "const":
            result = op.arg
        elif kind == "layer":
            result = model.get_submodule(op.arg)(env[op.ins[0]])
        elif kind == "getattr":
            result = getattr(env[op.ins[0]], op.arg)
        elif kind == "tensor":
            result = model.get_buffer(op.arg)
        elif kind == "if":  # blocks give lists of values, one per output
            env.update(zip(op.outs, _run(model, op.blocks[0 if env[op.ins[0]] else 1], env)))
            continue
        elif kind == "loop":
            env.update(zip(op.outs, _loop(model, op, env)))
            continue
        elif kind == "setattr":
            setattr(env[op.ins[0]], op.arg, env[op.ins[1]])
            continue
        else:  # "raise"
            raise RuntimeError(f"{env[op.ins[1]] if len(op.ins) > 1 else 'Exception'}: {env[op.ins[0]]}")
        if len(op.outs) == 1:
            env[op.outs[0]] = result
        elif op.outs:
            env.update(zip(op.outs, result))
    return [env[i] for i in block.outs]


def _loop(model: nn.Module, op: _Op, env: dict) -> list:
    """prim::Loop(max_trips, condition, *carried): body(i, *carried) -> (condition, *carried)."""
    trips, go, carried = env[op.ins[0]], env[op.ins[1]], [env[i] for i in op.ins[2:]]
    body = op.blocks[0]
    i = 0
    while go and i < trips:
        env[body.ins[0]] = i
        env.update(zip(body.ins[1:], carried))
        go, *carried = _run(model, body, env)
        i += 1
    return carried


# --------------------------------------------------------------------------- conversion


def eager_torchscript(script: torch.jit.ScriptModule, name: str) -> TorchScriptModel:
    """The eager form of `script` (a loaded torch.jit module), sharing its tensors; InputError for ops the
    interpreter does not run and for a file with no convolution or linear layer it can meter."""
    try:
        graph = script.inlined_graph
    except Exception as err:  # noqa: BLE001 - a module without forward, an interface type...
        raise InputError(f"{name}: the TorchScript module has no forward graph to run ({err})") from None
    inputs = list(graph.inputs())
    if len(inputs) != 2:  # self and one input: the meters call model(x)
        raise InputError(f"{name}: the TorchScript module's forward takes {len(inputs) - 1} inputs; stabkern meters "
                         "models of one input tensor (wrap it in a module whose forward(x) calls it)")
    model = TorchScriptModel(name)
    _mirror(script, model)
    compiler = _Compiler(script, model, inputs[0].unique(), name)
    block = compiler.block(inputs, graph.nodes(), graph.outputs())
    if not compiler.layers:
        raise InputError(f"{name}: the TorchScript graph has no 2-D convolution or linear call on a submodule's "
                         "weight, so there is nothing to meter")
    model._program = _Program(block)
    return model.train(script.training)


def _mirror(script: torch.jit.ScriptModule, model: nn.Module) -> None:
    """Give `model` the script module's tree: the same submodule names, parameters and buffers (shared)."""
    containers = {"": model}
    for path, sub in script.named_modules():
        if path:
            parent, _, leaf = path.rpartition(".")
            containers[path] = nn.Module()
            containers[parent].add_module(leaf, containers[path])
        for key, p in sub.named_parameters(recurse=False):
            containers[path].register_parameter(key, nn.Parameter(p.detach(), requires_grad=p.requires_grad))
        for key, b in sub.named_buffers(recurse=False):
            containers[path].register_buffer(key, b)


class _Compiler:
    """torch._C graph -> _Block, resolving GetAttr chains and choosing the nodes that become layers."""

    def __init__(self, script, model: TorchScriptModel, self_id: int, name: str):
        self.script, self.model, self.self_id, self.name = script, model, self_id, name
        self.layers: dict[str, tuple] = {}  # path -> (kind, configuration)
        self.constants = 0

    def block(self, inputs, nodes, outputs) -> _Block:
        return _Block([v.unique() for v in inputs], [op for n in nodes for op in self.node(n)],
                      [v.unique() for v in outputs])

    def node(self, n) -> list[_Op]:
        kind = n.kind()
        ins = [v.unique() for v in n.inputs()]
        outs = [v.unique() for v in n.outputs()]
        if kind == "prim::Constant":
            return [self.constant(n, outs)] if n.output().uses() else []
        if kind == "prim::GetAttr":
            self.attribute(n)
            return [_Op("getattr", ins, outs, arg=n.s("name"))]
        if kind == "prim::SetAttr":
            return [_Op("setattr", ins, outs, arg=n.s("name"))]
        if kind in ("prim::If", "prim::Loop"):
            blocks = tuple(self.block(list(b.inputs()), b.nodes(), b.outputs()) for b in n.blocks())
            return [_Op(kind[6:].lower(), ins, outs, blocks=blocks)]
        if kind == "prim::RaiseException":
            return [_Op("raise", ins, outs)]
        if kind in CONVOLUTIONS or kind in LINEARS:
            path = self.layer(n)
            if path is not None:
                return [_Op("layer", ins[:1], outs, arg=path)]
        if kind in _STRUCTURE:
            return [_Op("call", ins, outs, fn=_STRUCTURE[kind], arg=(len(ins), ()))]
        return [self.operator(n, ins, outs)]

    def constant(self, n, outs) -> _Op:
        if n.output().type().kind() == "TensorType":
            key = f"_constant{self.constants}"
            self.constants += 1
            self.model.register_buffer(key, n.t("value"), persistent=False)
            return _Op("tensor", [], outs, arg=key)
        try:
            return _Op("const", [], outs, arg=n.output().toIValue())
        except Exception as err:  # noqa: BLE001 - a function or class constant still in use
            raise self.unsupported(n, err) from None

    def operator(self, n, ins, outs) -> _Op:
        schema_text = n.schema()
        if schema_text == "(no schema)":
            raise self.unsupported(n)
        schema = torch._C.parse_schema(schema_text)
        namespace, op_name = schema.name.split("::")
        typed = [str(a.type) for a in schema.arguments] + [str(r.type) for r in schema.returns]
        if namespace == "aten" and op_name in _PYTHON_BUILTINS and not any(t in _TENSORS for t in typed):
            fn = _PYTHON_BUILTINS[op_name]
        else:
            try:
                fn = getattr(getattr(getattr(torch.ops, namespace), op_name), schema.overload_name or "default")
            except (AttributeError, RuntimeError) as err:
                raise self.unsupported(n, err) from None
        kw_names = tuple(a.name for a in schema.arguments if a.kwarg_only)
        return _Op("call", ins, outs, fn=fn, arg=(len(ins) - len(kw_names), kw_names))

    def unsupported(self, n, err=None) -> InputError:
        why = f" ({str(err).splitlines()[0]})" if err else ""
        return InputError(f"{self.name}: the TorchScript graph uses {n.kind()}, which stabkern cannot run op by "
                          f"op{why}; save the model as a state_dict (ARCH:WEIGHTS.pt) or a torch.export program")

    def path(self, value) -> list[str] | None:
        """The attribute names from the module itself to `value` when it is a GetAttr chain, else None."""
        names = []
        while value.node().kind() == "prim::GetAttr":
            names.insert(0, value.node().s("name"))
            value = value.node().input()
        return names if value.unique() == self.self_id else None

    def attribute(self, n) -> None:
        """A GetAttr of a plain attribute (not a submodule, parameter or buffer): copy it onto the mirror."""
        names = self.path(n.output())
        if names is None or names[-1] == "training":
            return  # read from a value computed in the graph, or nn.Module's own flag
        owner = self.model.get_submodule(".".join(names[:-1]))
        if names[-1] in owner._modules or names[-1] in owner._parameters or names[-1] in owner._buffers:
            return
        value = self.script
        for key in names:
            value = getattr(value, key)
        if isinstance(value, torch._C.ScriptObject):
            raise InputError(f"{self.name}: attribute {'.'.join(names)} is a TorchScript object, which stabkern "
                             "cannot run; save the model as a state_dict or a torch.export program")
        setattr(owner, names[-1], value)

    def layer(self, n) -> str | None:
        """P when node `n` (a convolution or linear) can be the call of an nn.Conv2d / nn.Linear at P."""
        schema = torch._C.parse_schema(n.schema())
        args = dict(zip([a.name for a in schema.arguments], n.inputs()))
        weight_path = self.path(args["weight"])
        if weight_path is None or len(weight_path) < 2 or weight_path[-1] != "weight":
            return None
        path = ".".join(weight_path[:-1])
        bias = args["bias"]
        if not (bias.node().kind() == "prim::Constant" and bias.type().kind() == "NoneType") and \
                self.path(bias) != [*weight_path[:-1], "bias"]:
            return None
        try:
            config = {k: self.static(v) for k, v in args.items() if k not in ("input", "weight", "bias")}
        except ValueError:
            return None  # a stride or padding computed in the graph
        if path in self.layers:
            return path if self.layers[path] == (n.kind(), config) else None
        owner = self.model.get_submodule(path)
        tensors = {**owner._buffers, **owner._parameters}
        if set(tensors) - {"weight", "bias"} or owner._modules:
            return None  # the submodule holds more than this layer: replacing it would drop the rest
        weight = tensors.get("weight")
        bias_tensor = None if bias.type().kind() == "NoneType" else tensors.get("bias")
        if n.kind() in LINEARS:
            if weight.dim() != 2:
                return None
            module = linear_layer(weight, bias_tensor)
        else:
            if weight.dim() != 4 or config.get("transposed") or any(config.get("output_padding", [0, 0])):
                return None
            module = conv_layer(weight, bias_tensor, config["stride"], config["padding"], config["dilation"],
                                config["groups"])
        for key, value in vars(owner).items():  # plain attributes the graph read before this node
            if not key.startswith("_") and key != "training":
                setattr(module, key, value)
        parent, _, leaf = path.rpartition(".")
        setattr(self.model.get_submodule(parent), leaf, module)
        self.layers[path] = (n.kind(), config)
        return path

    def static(self, value):
        """The value of a constant or a list of constants; ValueError for anything computed."""
        node = value.node()
        if node.kind() == "prim::Constant":
            return value.toIValue()
        if node.kind() == "prim::ListConstruct":
            return [self.static(v) for v in node.inputs()]
        raise ValueError("not a constant")


__all__ = ["TorchScriptModel", "eager_torchscript"]
