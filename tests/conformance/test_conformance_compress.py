"""`choose_k` and `compress_model` on every zoo family; the user's model is left as it was.

- choose_k returns a k per Conv2d / Linear (None: stays dense) by its rule.
- compress_model at k = n (each layer's whole weight, tensor mode) keeps every layer dense (the call warns
  and lists them): the copy computes exactly what the net does, bit for bit (the same modules, the same
  weights, the same ops). Sketching at k = n (allow_no_compression=True) would not equal the net:
  A_hat = c S / k is unbiased with E||A_hat - A||^2 = (n - 1) ||A||^2 / k, not exact.
- compress_model at k = 2 (filter mode) replaces every layer with a sketched one that computes
  F.conv2d / F.linear with A_hat: each sketched layer, on the dense net's input to it, equals its dense
  layer holding A_hat, and the whole copy equals the net with every weight replaced by its A_hat, bit for
  bit (the same ops on the same tensors): each sketched layer sits where its dense layer was with the same
  stride, padding, dilation and groups (depthwise, grouped, 1x1, SE gates).
"""

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from helpers.conformance_nets import forward_with_pre_hooks
from helpers.model_state import assert_unchanged, snapshot
from stabkern import choose_k, compress_model
from stabkern.compress.choose_k import C_BERNSTEIN as C
from stabkern.sketched import NoCompressionWarning

ETA = 0.05  # choose_k's default


def _weight_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_choose_k_gives_each_layer_its_k(net, inputs):
    snap = snapshot(net)
    kc = choose_k(net, inputs, 0.5, mode="filter", check=False)
    assert_unchanged(net, snap)
    layers = _weight_layers(net)
    assert {r.name for r in kc.layers} == set(layers)
    for r in kc.layers:
        assert r.cap == layers[r.name].weight[0].numel()  # filter mode: one filter's entries
        assert r.samples == inputs.shape[0] and math.isfinite(r.nu_min) and r.nu_min > 0, r
        rule = math.ceil(C * math.log(2 * r.n_out / ETA) / (0.5 * 0.5 * r.nu_min * r.nu_min))
        assert r.k_needed == rule, r
        assert r.k == (rule if rule < r.cap else None), r


def test_dense_at_k_equal_n(net, inputs):
    snap = snapshot(net)
    n = {name: m.weight.numel() for name, m in _weight_layers(net).items()}
    with pytest.warns(NoCompressionWarning):
        small, report = compress_model(net, n, mode="tensor", seed=3)
    assert_unchanged(net, snap)
    assert {s["name"] for s in report.skipped} >= set(n)
    with torch.no_grad():
        assert torch.equal(small(inputs.clone()), net(inputs.clone()))
    assert_unchanged(net, snap)


def _layer_inputs(model, x) -> dict:
    """name -> the input of each Conv2d / Linear in model(x)."""
    seen = {}
    forward_with_pre_hooks(model, x, _weight_layers(model), lambda name, a: seen.setdefault(name, a.clone()))
    return seen


def test_sketched_copy_is_the_net_with_reconstructed_weights(net, inputs):
    snap = snapshot(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoCompressionWarning)  # k = 2 is below every layer's cap
        small, report = compress_model(net, 2, mode="filter", seed=3)
    assert_unchanged(net, snap)
    sketched = dict(small.named_modules())
    twin = copy.deepcopy(net)
    dense_inputs = _layer_inputs(twin, inputs)  # finite: the dense net's own activations
    for name, m in _weight_layers(twin).items():
        assert type(sketched[name]).__name__ == "Sketched" + type(m).__name__, name
        with torch.no_grad():
            m.weight.copy_(sketched[name].weight)
            # each layer alone, on the dense net's input to it: its geometry (stride, padding, groups) kept
            assert torch.equal(sketched[name](dense_inputs[name]), m(dense_inputs[name])), name
    with torch.no_grad():
        # the whole copy: the same bits, NaN included (k = 2 multiplies each layer's output norm by about
        # sqrt(m / 2), so a deep net's logits overflow: ResNet-50, DenseNet-121)
        torch.testing.assert_close(small(inputs.clone()), twin(inputs.clone()), rtol=0, atol=0, equal_nan=True)
    assert_unchanged(net, snap)
