"""Snapshot of everything a stabkern call must leave alone in the user's model, and the check.

`snapshot(model)` records, per module (by identity): its training flag, its parameters and
buffers (the tensor objects, their values, requires_grad, dtype, device), its children and its
hooks (forward, forward-pre, backward, state-dict). `assert_unchanged(model, snap)` fails,
naming what changed.
"""

from __future__ import annotations

import torch
from torch import nn

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks")


def _tensors(module: nn.Module) -> dict:
    out = {}
    for kind in ("_parameters", "_buffers"):
        for name, t in getattr(module, kind).items():
            out[(kind, name)] = None if t is None else (t, t.detach().clone(), t.requires_grad, t.dtype, t.device)
    return out


def snapshot(model: nn.Module) -> list:
    return [(name, m, m.training, _tensors(m), dict(m._modules),
             {h: dict(getattr(m, h, {})) for h in _HOOK_DICTS})
            for name, m in model.named_modules(remove_duplicate=False)]


def assert_unchanged(model: nn.Module, snap: list) -> None:
    now = list(model.named_modules(remove_duplicate=False))
    assert [(n, id(m)) for n, m in now] == [(n, id(m)) for n, m, *_ in snap], "the module tree changed"
    for name, m, training, tensors, children, hooks in snap:
        assert m.training == training, f"{name or 'model'}: training flag changed to {m.training}"
        assert dict(m._modules) == children, f"{name or 'model'}: children changed"
        for h, before in hooks.items():
            assert dict(getattr(m, h, {})) == before, f"{name or 'model'}: {h} changed"
        current = _tensors(m)
        assert current.keys() == tensors.keys(), f"{name or 'model'}: parameters / buffers added or removed"
        for key, rec in tensors.items():
            t = current[key]
            if rec is None:
                assert t is None, f"{name}.{key[1]} was set"
                continue
            obj, value, requires_grad, dtype, device = rec
            assert t[0] is obj, f"{name}.{key[1]} was replaced by another tensor"
            assert (obj.requires_grad, obj.dtype, obj.device) == (requires_grad, dtype, device), f"{name}.{key[1]}"
            assert torch.equal(obj.detach(), value), f"{name}.{key[1]} values changed"
