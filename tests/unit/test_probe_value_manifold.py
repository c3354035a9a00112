"""Value manifold: planted rank-1 manifold, isotropic data, sign convention, variants."""

import math

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


# ---------------------------------------------------------------------------------- position control (step 8)

def _bijection_samples(replacement, n=40, seed=0):
    from geoprobe.tasks.bijection import BijectionTask

    b = BijectionTask(V=8, L=8, replacement=replacement).sample(n, torch.Generator().manual_seed(seed))
    rows, pos = torch.nonzero(b.loss_mask, as_tuple=True)
    return pos, b.bayes_entropy[rows, pos].double()


def _embed(signal, d=12, noise=0.01, seed=1):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    return signal[:, None] * u[None, :] + noise * torch.randn(len(signal), d, generator=g, dtype=torch.float64)


def test_position_only_model_default_bijection_is_flagged():
    pos, h = _bijection_samples(replacement=False)
    res = value_manifold(_embed(pos.double()), h, n_boot=50, null_draws=0, n_perm=100, position=pos)
    pc = res.position_control
    assert res.rho.estimate > 0.99  # the confound: a position-only model "tracks" entropy perfectly
    assert abs(pc.rho_xz) == pytest.approx(res.rho.estimate, abs=1e-9)
    assert pc.y_determined_by_group and pc.n_groups_varying == 0
    assert math.isnan(pc.partial) and math.isnan(pc.within)  # nothing of H is left once position is known
    assert pc.partial_p is None and pc.within_p is None
    rows = {r.statistic: r for r in value_manifold_rows(res)}
    assert rows["within_position_rho_pc1_entropy"].meta["entropy_determined_by_position"] is True
    from geoprobe.probes.value_manifold import position_control_summary

    s = position_control_summary(res)
    assert s["entropy_determined_by_position"] is True and "replacement=true" in s["position_confound_note"]


def test_position_only_model_on_decoupled_stream_has_no_partial_or_within_rho():
    pos, h = _bijection_samples(replacement=True)
    res = value_manifold(_embed(pos.double()), h, n_boot=50, null_draws=0, n_perm=200, position=pos)
    pc = res.position_control
    assert res.rho.estimate > 0.3  # the raw rho still rewards position
    assert not pc.y_determined_by_group and pc.n_groups_varying >= 6
    assert abs(pc.partial) < 0.1 and abs(pc.within) < 0.1
    assert pc.within_p > 0.05 and pc.partial_p > 0.05


def test_entropy_tracking_model_has_high_within_position_rho():
    pos, h = _bijection_samples(replacement=True)
    res = value_manifold(_embed(h, noise=0.0), h, n_boot=50, null_draws=0, n_perm=200, position=pos)
    pc = res.position_control
    assert not pc.y_determined_by_group
    assert pc.within > 0.99 and pc.partial > 0.99
    assert pc.within_p == pytest.approx(1 / 201) and pc.partial_p == pytest.approx(1 / 201)


def test_report_sentence_states_the_position_control():
    from geoprobe.report_text import describe

    base = {"layer": 1, "site": "values", "positions": "all_positions", "n": 10, "pc1_share": 0.5,
            "pc12_share": 0.6, "participation_ratio": 2.0, "spearman_rho_pc1_entropy": 0.7, "rho_ci": [0.6, 0.8]}
    flagged = dict(base, entropy_determined_by_position=True, spearman_rho_pc1_position=-0.7)
    text = describe({"value_manifold": flagged})[0][1]
    assert "rho(PC1, position) -0.7." in text and "cannot separate entropy from position" in text
    free = dict(base, entropy_determined_by_position=False, spearman_rho_pc1_position=0.1,
                within_position_rho_pc1_entropy=0.42, within_position_rho_perm_p=0.005,
                partial_rho_pc1_entropy_given_position=0.4, partial_rho_perm_p=0.01)
    text = describe({"value_manifold": free})[0][1]
    assert "within-position rho(PC1, entropy) 0.42 (p = 0.005" in text and "cannot separate" not in text
    assert "Position control" not in describe({"value_manifold": base})[0][1]
