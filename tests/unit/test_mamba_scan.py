"""geoprobe's CPU selective scan equals transformers' Mamba scans in values and gradients."""

import pytest
import torch

from geoprobe.models import ARCHS, ModelSize
from geoprobe.models.architectures import MambaSSM
from geoprobe.models.mamba_scan import SelectiveScan, fast_cpu_scan, selective_scan


def reference_scan(u, delta, A, B, C):
    """The recurrence written out literally: h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t, y_t = C_t . h_t."""
    n_batch, d_inner, T = u.shape
    h = torch.zeros(n_batch, d_inner, A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(T):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, -1)


def random_inputs(n_batch=3, d_inner=5, n_state=4, T=6, dtype=torch.double, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n_batch, d_inner, T, generator=g, dtype=dtype)
    delta = torch.rand(n_batch, d_inner, T, generator=g, dtype=dtype) * 0.5 + 0.01
    A = -(torch.rand(d_inner, n_state, generator=g, dtype=dtype) + 0.1)
    B = torch.randn(n_batch, n_state, T, generator=g, dtype=dtype)
    C = torch.randn(n_batch, n_state, T, generator=g, dtype=dtype)
    return [x.requires_grad_() for x in (u, delta, A, B, C)]


def test_values_equal_the_literal_recurrence():
    args = random_inputs()
    assert torch.allclose(SelectiveScan.apply(*args), reference_scan(*args), atol=1e-13)


def test_analytic_gradients_pass_gradcheck():
    assert torch.autograd.gradcheck(SelectiveScan.apply, tuple(random_inputs(T=5)))


def test_single_step_sequence():
    args = random_inputs(T=1)
    u, delta, A, B, C = args
    expected = (delta[:, :, 0] * u[:, :, 0])[..., None] * B[:, None, :, 0]  # h_1 from h_0 = 0
    assert torch.allclose(SelectiveScan.apply(*args)[:, :, 0], (expected * C[:, None, :, 0]).sum(-1))


def test_float32_entry_point_matches_double_reference():
    args = random_inputs(n_batch=4, d_inner=16, n_state=8, T=20)
    y = selective_scan(*(a.detach().float() for a in args))
    assert y.dtype == torch.float32
    assert torch.allclose(y.double(), reference_scan(*args), atol=1e-5)


SIZE = ModelSize(n_layers=2, n_heads=1, d_model=16, max_positions=24)


@pytest.mark.parametrize("use_mambapy", [False, True])
def test_mamba_model_logits_and_gradients_equal_transformers_scans(use_mambapy):
    """The whole HF Mamba model: geoprobe's scan vs transformers' sequential loop and mambapy's parallel scan."""
    fast = ARCHS.get("mamba")
    slow = MambaSSM(fast_cpu_scan=False)
    model = fast.build(11, SIZE, seed=0).train()
    for layer in model.backbone.layers:
        layer.mixer.use_mambapy = use_mambapy
    tokens = torch.randint(0, 11, (3, 13), generator=torch.Generator().manual_seed(1))
    results = []
    for arch in (fast, slow):
        model.zero_grad()
        logits = arch.logits(model, tokens)
        logits.logsumexp(-1).square().mean().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l_fast, g_fast), (l_slow, g_slow) = results
    assert torch.allclose(l_fast, l_slow, atol=1e-5)
    for name in g_slow:
        scale = g_slow[name].abs().max().item() + 1e-12
        assert (g_fast[name] - g_slow[name]).abs().max().item() <= 1e-4 * scale, name


def test_scan_is_only_active_inside_the_block(monkeypatch):
    import geoprobe.models.mamba_scan as mamba_scan

    calls = []
    monkeypatch.setattr(mamba_scan, "selective_scan", lambda *a: calls.append(1) or selective_scan(*a))
    model = ARCHS.get("mamba").build(11, SIZE, seed=0).eval()
    tokens = torch.randint(0, 11, (2, 7))
    with torch.no_grad():
        inside = ARCHS.get("mamba").logits(model, tokens)
        assert len(calls) == SIZE.n_layers  # one scan per mixer
        outside = model(tokens, use_cache=False).logits  # a plain HF call: transformers' own scan
        assert len(calls) == SIZE.n_layers
        with fast_cpu_scan():
            with fast_cpu_scan(False):
                model(tokens, use_cache=False)
            assert len(calls) == SIZE.n_layers  # the inner block switched it off
            model(tokens, use_cache=False)
            assert len(calls) == 2 * SIZE.n_layers
    assert torch.allclose(outside, inside, atol=1e-5)
