"""`noise_attenuation` on every zoo family, each method, against the naive per-layer, per-trial hook loop
(helpers/stability_reference.attenuation_reference) with the same noise: equal up to float32 rounding,
undefined (NaN) at the same entries.

Tolerance: `rounding_tolerance`, derived from float32 arithmetic in its docstring (unit roundoff times
each layer's fan-in and condition estimate, carried through the measured gains): the fast path and the
loop compute the same r[i, j] with other batch sizes, memory formats and summation orders, so they differ
by rounding only. Not a machine's measured spread, and never loosened to pass.
"""

import pytest

from helpers import stability_reference as ref
from helpers.conformance_nets import ALPHA, SEED, TRIALS, assert_matches_reference, reference_of
from stabkern import noise_attenuation


@pytest.mark.parametrize("method", ["auto", "graph", "hooks"])
def test_matches_the_hook_loop_with_the_same_noise(arch, net, inputs, method):
    rep = noise_attenuation(net, inputs, alpha=ALPHA, trials=TRIALS, seed=SEED, method=method)
    assert rep.method in (("graph", "hooks") if method == "auto" else (method,))
    r = reference_of(arch)
    modules = dict(net.named_modules())
    # every Conv2d and Linear, in the order the forward calls them (layer i draws the noise of stream i)
    assert [modules[name] for name in rep.layers] == ref.layers_in_forward_order(net, inputs)
    assert_matches_reference(net, inputs, rep, r)
