"""The sketched layers under torch's execution modes: inference_mode with a cold weight cache, and
torch.compile(fullgraph=True) with trainable coefficients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import stabkern
from stabkern.sketched import SketchedConv2d, SketchedLinear


def test_first_forward_under_inference_mode_with_a_cold_cache():
    """A model fresh from compress_model(data=...) (every cache cold) runs under inference_mode and gives the
    dense math on A_hat exactly (the same float ops); the weight built there serves a later forward that
    records autograd."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    x = torch.randn(5, 2, 5, 5)
    comp, _ = stabkern.compress_model(m, 7, seed=1, data=x)
    for layer in (comp[0], comp[3]):
        layer.clear_weight_cache()
    with torch.inference_mode():
        out = comp(x)
    w0, w3 = (layer._regenerate().detach() for layer in (comp[0], comp[3]))
    expected = F.linear(torch.relu(F.conv2d(x, w0, comp[0].bias)).flatten(1), w3, comp[3].bias)
    assert torch.equal(out, expected)
    xg = x.clone().requires_grad_(True)
    comp(xg).sum().backward()  # the cached weights are ordinary tensors: autograd can save them
    assert xg.grad is not None and bool(torch.isfinite(xg.grad).all())


@pytest.mark.parametrize("cls", [SketchedLinear, SketchedConv2d])
def test_compile_fullgraph_with_trainable_coefficients(cls):
    """torch.compile(fullgraph=True) of a layer being fine-tuned: no data-dependent guard (the seed and
    stream are not read from their buffers into Python inside the graph); the output and the coefficients'
    gradient equal eager mode's bit for bit (the same ops, aot_eager runs them unfused). A seed buffer
    changed behind the compiled graph's back is caught in the graph; after an eager call the graph follows."""
    torch.manual_seed(3)
    dense, x = (nn.Linear(30, 4), torch.randn(3, 30)) if cls is SketchedLinear else (nn.Conv2d(2, 3, 3),
                                                                                     torch.randn(2, 2, 5, 5))
    sk = cls.from_module(dense, 5, seed=11)
    sk.coefficients.requires_grad_(True)
    compiled = torch.compile(sk, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.square().sum().backward()
    grad = sk.coefficients.grad.clone()
    sk.coefficients.grad = None
    expected = sk(x)
    expected.square().sum().backward()
    assert torch.equal(out, expected) and torch.equal(grad, sk.coefficients.grad)
    with torch.no_grad():
        sk.seed[0] += 1  # in place: no Python-side code sees it
    with pytest.raises(RuntimeError, match="the seed or stream buffer changed"):
        compiled(x)
    expected = sk(x)  # eager: reads the new seed
    assert torch.equal(compiled(x), expected)
