"""Entropy-axis operators."""

import pytest
import torch

from geoprobe.errors import ConfigError
from geoprobe.probes.entropy_axis import (
    axis_entropy_correlation,
    cut,
    intervention_rows,
    keep_only,
    make_operator,
    orthogonal_control,
    projection_sigma,
    shift,
    unit,
)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(20, 12, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)


def test_cut_keep_shift():
    v, u = _data()
    uh = unit(u)
    assert (cut(v, u) @ uh).abs().max() < 1e-12
    assert torch.allclose(cut(v, u, lam=0.5) @ uh, 0.5 * (v @ uh))
    kept = keep_only(v, u)
    assert torch.linalg.matrix_rank(kept) == 1
    assert torch.allclose(kept + cut(v, u), v)
    sigma = projection_sigma(v, u)
    assert torch.allclose(shift(v, u, k=-1.0, sigma=sigma) @ uh, v @ uh - sigma)


def test_heads_layout_and_standardised_space():
    v, u = _data()
    v4 = v.reshape(20, 3, 4)  # [..., heads, d_head]
    assert torch.allclose(cut(v4, u, feature_dims=2).reshape(20, 12), cut(v, u))
    mean, scale = v.mean(0), v.std(0)
    out = cut(v, u, space="standardised", mean=mean, scale=scale)
    assert (((out - mean) / scale) @ unit(u)).abs().max() < 1e-12
    with pytest.raises(ConfigError):
        cut(v, u, space="standardised")
    with pytest.raises(ConfigError):
        cut(v[:, :5], u)
    op = make_operator("keep_only", u)
    assert torch.allclose(op(v), keep_only(v, u))
    assert make_operator("cut", u)(v.float()).dtype == torch.float32


def test_control_is_orthogonal_and_seeded():
    _, u = _data()
    r = orthogonal_control(u, seed=1)
    assert abs(float(r @ unit(u))) < 1e-12
    assert float(r.norm()) == pytest.approx(1.0)
    assert torch.equal(r, orthogonal_control(u, seed=1))
    assert not torch.equal(r, orthogonal_control(u, seed=2))


def test_axis_correlation_drops_after_cut_and_rows():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(50, generator=g, dtype=torch.float64)
    u = unit(torch.randn(8, generator=g, dtype=torch.float64))
    x = h[:, None] * u + 0.01 * torch.randn(50, 8, generator=g, dtype=torch.float64)
    assert axis_entropy_correlation(x, u, h) > 0.99
    after = axis_entropy_correlation(cut(x, u) + 1e-3 * torch.randn(50, 8, generator=g, dtype=torch.float64), u, h)
    assert abs(after) < 0.5
    rows = intervention_rows(8, "cut", {"axis_entropy_corr": 0.27}, {"axis_entropy_corr": 0.07}, direction="axis")
    assert rows[0].variant == "cut/axis" and rows[0].meta["change"] == pytest.approx(-0.2)
