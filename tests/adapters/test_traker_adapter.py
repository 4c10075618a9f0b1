"""StabkernProjector (traker's projector interface) against a dense Rademacher projection with the same signs.

Skipped when traker is not installed (`pip install traker --no-deps`; it needs only torch, numpy, tqdm).
Tolerances: the adapter and the dense reference are the same +-1 sums in a different order, so they
differ by at most 2 * n * u * sum_j |g_j| per output (u = unit roundoff of the accumulation dtype).
"""

import math

import pytest
import torch

pytest.importorskip("trak")

from helpers.backends import interpreted  # noqa: E402
from stabkern import sign_matrix  # noqa: E402
from stabkern.adapters.traker import StabkernProjector  # noqa: E402
from trak.projectors import AbstractProjector, BasicProjector, ProjectionType  # noqa: E402


def dense(grads, proj_dim, seed, model_id):
    """grads @ S.T in float64, S = the stabkern-sign-v1 matrix of (seed, stream=model_id)."""
    s = sign_matrix(proj_dim, grads.shape[1], seed=seed, stream=model_id, dtype=torch.float64)
    return grads.double().cpu() @ s.T


def sum_bound(grads, dtype):
    u = torch.finfo(dtype).eps / 2
    return 2 * grads.shape[1] * u * grads.double().abs().sum(1, keepdim=True).cpu()


def test_is_a_traker_projector():
    proj = StabkernProjector(grad_dim=10, proj_dim=4, seed=1)
    assert isinstance(proj, AbstractProjector)
    assert proj.proj_type == ProjectionType.rademacher and proj.proj_dim == 4 and proj.grad_dim == 10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_dense_rademacher_projection(device_backend, dtype):
    device, backend = device_backend
    grad_dim, proj_dim = (300, 40) if interpreted(backend, device) else (1031, 129)  # odd sizes
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(5, grad_dim, generator=gen, dtype=torch.float64)
    for seed, model_id in [(0, 0), (2**63 + 5, 3)]:
        proj = StabkernProjector(grad_dim, proj_dim, seed=seed, device=device, dtype=dtype, backend=backend)
        out = proj.project(grads.to(device), model_id=model_id)
        assert out.shape == (5, proj_dim) and out.dtype == dtype and out.device.type == device
        ref = dense(grads.to(dtype), proj_dim, seed, model_id)
        assert ((out.double().cpu() - ref).abs() <= sum_bound(grads.to(dtype), dtype)).all()


def test_model_id_is_the_stream_and_seed_is_used_unchanged():
    grads = torch.randn(2, 200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    proj = StabkernProjector(200, 16, seed=9, dtype=torch.float64)
    a, b = proj.project(grads, model_id=0), proj.project(grads, model_id=1)
    assert not torch.allclose(a, b)  # independent matrices per checkpoint
    torch.testing.assert_close(b, dense(grads, 16, 9, 1), rtol=0, atol=sum_bound(grads, torch.float64).max().item())
    torch.testing.assert_close(proj.project(grads, model_id=0), a, rtol=0, atol=0)  # regenerated identically


def test_dict_of_per_parameter_gradients_is_flattened_in_order():
    gen = torch.Generator().manual_seed(2)
    parts = {"w": torch.randn(3, 4, 5, generator=gen, dtype=torch.float64),
             "b": torch.randn(3, 4, generator=gen, dtype=torch.float64)}
    flat = torch.cat([parts["w"].reshape(3, -1), parts["b"]], 1)
    proj = StabkernProjector(24, 8, seed=3, dtype=torch.float64)
    torch.testing.assert_close(proj.project(parts, 0), proj.project(flat, 0), rtol=0, atol=0)


def test_same_scale_as_traker_basic_projector():
    """Neither scales: E ||g P||^2 = proj_dim ||g||^2 for +-1 entries, whoever draws them.

    For a Rademacher P, ||g P||^2 / (k ||g||^2) has mean 1 and variance (2/k)(1 - sum g^4 / ||g||^4)
    <= 2/k; averaged over B independent rows the standard deviation is <= sqrt(2 / (k B)). Both
    projectors must land within 6 of those of 1 (fixed seeds); a 1/sqrt(k) or 1/k scaling would not.
    """
    n, k, batch = 2000, 256, 16
    grads = torch.randn(batch, n, generator=torch.Generator().manual_seed(4))
    ours = StabkernProjector(n, k, seed=11).project(grads, model_id=0)
    theirs = BasicProjector(n, k, seed=11, proj_type=ProjectionType.rademacher, device="cpu",
                            block_size=64).project(grads, model_id=0)
    sigma = math.sqrt(2 / (k * batch))
    for out in (ours, theirs):
        ratio = (out.double().pow(2).sum(1) / (k * grads.double().pow(2).sum(1))).mean().item()
        assert abs(ratio - 1) < 6 * sigma


def test_trak_end_to_end_features_are_our_projection(tmp_path):
    """TRAKer with the adapter: the stored features are project(per-sample grads) / sqrt(grad_dim)."""
    from trak import TRAKer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.ReLU(),
                                torch.nn.Linear(5, 3)).eval()
    grad_dim = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(8, 1, 3, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    proj = StabkernProjector(grad_dim, 16, seed=7)
    traker = TRAKer(model=model, task="image_classification", train_set_size=8, save_dir=str(tmp_path),
                    device="cpu", projector=proj, use_half_precision=False, logging_level=40)
    traker.load_checkpoint(model.state_dict(), model_id=0)
    traker.featurize(batch=(x, y), num_samples=8)
    stored = torch.from_numpy(traker.saver.current_store["grads"][:8].copy()).double()

    grads = traker.gradient_computer.compute_per_sample_grad(batch=(x, y))
    flat = torch.cat([g.reshape(8, -1) for g in grads.values()], 1)
    ref = dense(flat, 16, 7, 0) / math.sqrt(grad_dim)
    bound = sum_bound(flat, torch.float32) / math.sqrt(grad_dim)
    assert ((stored - ref).abs() <= bound + 4 * torch.finfo(torch.float32).eps * ref.abs()).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="rademacher"):
        StabkernProjector(10, 4, seed=0, proj_type=ProjectionType.normal)
    with pytest.raises(ValueError, match="seed"):
        StabkernProjector(10, 4, seed=-1)
    with pytest.raises(TypeError, match="proj_dim"):
        StabkernProjector(10, 4.0, seed=0)
    proj = StabkernProjector(10, 4, seed=0)
    with pytest.raises(ValueError, match="grad_dim=10"):
        proj.project(torch.zeros(2, 11), model_id=0)
    with pytest.raises(ValueError, match="model_id"):
        proj.project(torch.zeros(2, 10), model_id=2**32)
