"""Value manifold: planted rank-1 manifold, isotropic data, sign convention, variants."""

import pytest
import torch

from geoprobe.errors import UnknownNameError
from geoprobe.probes.heads import concat_heads, expand_kv
from geoprobe.probes.value_manifold import passes_manifold_criterion, value_manifold, value_manifold_rows
from geoprobe.results import rows_to_frame


def _planted(n=60, d=40, sign=1.0, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    entropy = torch.rand(n, generator=g, dtype=torch.float64) * 3
    s = torch.exp(entropy)  # monotone in the entropy
    u = torch.randn(d, generator=g, dtype=torch.float64)
    x = sign * s[:, None] * u[None, :] + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, entropy


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_planted_rank_one_manifold(sign):
    x, h = _planted(sign=sign)
    res = value_manifold(x, h, n_boot=100, null_draws=10)
    assert res.pc1.estimate > 0.95
    assert res.pc1.low <= res.pc1.estimate + 1e-9
    assert res.rho.estimate == pytest.approx(1.0, abs=1e-2)  # noise swaps a few near-tied ranks
    assert res.participation_ratio < 1.2
    assert passes_manifold_criterion(res)
    # the sign is fixed so rho >= 0; the flip is recorded
    z = (x - res.pca.mean) / res.pca.scale
    assert float(((z @ res.axis) * (h - h.mean())).sum()) > 0
    rows = value_manifold_rows(res, layer=23)
    rho_row = [r for r in rows if r.statistic == "spearman_rho_pc1_entropy"][0]
    assert rho_row.meta["sign_flipped"] == res.sign_flipped
    assert rho_row.variant == "values/final"


def test_sign_flip_is_recorded_when_needed():
    x, h = _planted(sign=1.0)
    a = value_manifold(x, h, n_boot=20, null_draws=0)
    b = value_manifold(x, -h, n_boot=20, null_draws=0)  # reversing the entropy ordering forces a flip
    assert a.sign_flipped != b.sign_flipped
    assert b.rho.estimate >= 0


def test_isotropic_data_matches_null():
    g = torch.Generator().manual_seed(3)
    n, d = 50, 200
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    h = torch.rand(n, generator=g, dtype=torch.float64)
    res = value_manifold(x, h, n_boot=50, null_draws=30, site="residual", positions="all_positions")
    assert res.pc1.estimate == pytest.approx(res.null.pc1_mean, rel=0.15)
    assert res.meta["share_ci"] == "jackknife"  # auto: n <= d
    assert res.pc1.low < res.pc1.estimate < res.pc1.high
    boot = value_manifold(x, h, n_boot=50, null_draws=0, share_ci="bootstrap")
    assert boot.pc1.low > boot.pc1.estimate  # duplicated rows inflate PC1 when n << d (why auto avoids it)
    assert not passes_manifold_criterion(res)
    df = rows_to_frame(value_manifold_rows(res))
    assert set(df["variant"]) == {"residual/all_positions"}
    assert set(df["statistic"]) == {"pc1_share", "pc12_share", "participation_ratio", "spearman_rho_pc1_entropy",
                                    "rho_pc1_entropy_perm_p", "best_pc_abs_rho_entropy"}
    with pytest.raises(UnknownNameError):
        value_manifold(x, h, site="keys")


def test_gqa_expansion_does_not_change_shares():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(30, 2, 4, generator=g, dtype=torch.float64)  # 2 KV heads
    v[:, 0, 0] += torch.linspace(0, 5, 30, dtype=torch.float64)
    x_kv, e1 = concat_heads(v)
    x_q, e2 = concat_heads(v, n_heads=6)
    assert (e1, e2) == (False, True) and x_q.shape == (30, 24)
    assert torch.equal(expand_kv(v, 6)[:, 2], v[:, 0]) and torch.equal(expand_kv(v, 6)[:, 3], v[:, 1])
    h = torch.linspace(0, 1, 30)
    a = value_manifold(x_kv, h, n_boot=10, null_draws=0)
    b = value_manifold(x_q, h, n_boot=10, null_draws=0, kv_expanded=True)
    assert a.pc1.estimate == pytest.approx(b.pc1.estimate)
    assert b.meta["kv_expanded"] is True
