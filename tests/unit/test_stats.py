"""Statistics helpers: bootstrap, ranks, Spearman, PCA, participation ratio, isotropic null, streaming moments."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoprobe.errors import ConfigError
from geoprobe.stats import (
    RunningMoments,
    average_ranks,
    bootstrap_ci,
    isotropic_pca_null,
    jackknife_ci,
    participation_ratio,
    pca,
    pca_from_moments,
    spearman_rho,
    spearman_with_ci,
    standardize,
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=3, max_size=25))
def test_average_ranks_match_scipy(values):
    assert average_ranks(values).numpy() == pytest.approx(scipy.stats.rankdata(values))


def test_spearman_matches_scipy_with_ties_and_batches():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(5, 40)).astype(float)
    y = rng.normal(size=(5, 40)) + x
    got = spearman_rho(x, y).numpy()
    want = [scipy.stats.spearmanr(a, b)[0] for a, b in zip(x, y, strict=True)]
    assert got == pytest.approx(want, abs=1e-12)
    # along dim 0 too
    assert spearman_rho(x.T, y.T, dim=0).numpy() == pytest.approx(want, abs=1e-12)


def test_spearman_constant_is_nan_and_monotone_is_one():
    assert math.isnan(float(spearman_rho([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])))
    assert float(spearman_rho([1, 2, 3, 4], [10, 20, 30, 1000])) == pytest.approx(1.0)
    assert float(spearman_rho([1, 2, 3, 4], [4, 3, 2, 1])) == pytest.approx(-1.0)


def test_bootstrap_mean_ci_covers_and_is_seeded():
    x = torch.randn(200, generator=torch.Generator().manual_seed(1)) + 3.0
    a = bootstrap_ci(x, n_boot=500, seed=7)
    b = bootstrap_ci(x, n_boot=500, seed=7)
    assert a == b
    assert a.estimate == pytest.approx(float(x.double().mean()))
    assert a.low < a.estimate < a.high
    se = float(x.double().std()) / math.sqrt(200)
    assert (a.high - a.low) == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_bootstrap_vectorized_equals_loop():
    x = torch.randn(30, generator=torch.Generator().manual_seed(2))
    loop = bootstrap_ci(x, lambda v: v.median(), n_boot=200, seed=3)
    vec = bootstrap_ci(x, lambda v: v.median(dim=-1).values, n_boot=200, seed=3, vectorized=True, batch_size=17)
    assert loop.as_tuple() == pytest.approx(vec.as_tuple())


def test_bootstrap_paired_spearman():
    x = torch.arange(50.0)
    y = x + torch.randn(50, generator=torch.Generator().manual_seed(0)) * 5
    ci = spearman_with_ci(x, y, n_boot=300)
    assert ci.low <= ci.estimate <= ci.high
    assert ci.estimate == pytest.approx(scipy.stats.spearmanr(x, y)[0])
    with pytest.raises(ConfigError):
        bootstrap_ci((x, y[:10]), lambda a, b: a.mean())


def test_participation_ratio_known_values():
    assert float(participation_ratio([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert float(participation_ratio([2.0, 2.0, 2.0, 2.0])) == pytest.approx(4.0)
    assert float(participation_ratio([3.0, 1.0])) == pytest.approx(16 / 10)


def test_standardize_and_pca_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6))
    x[:, 5] = 2.0  # constant column
    z, mean, std = standardize(x)
    assert z[:, 5].abs().max() == 0
    assert z[:, :5].std(0).numpy() == pytest.approx(np.ones(5))
    res = pca(x)
    corr = np.corrcoef(x[:, :5], rowvar=False)
    ev = np.sort(np.linalg.eigvalsh(corr))[::-1]
    assert res.eigenvalues[:5].numpy() == pytest.approx(ev, abs=1e-10)
    assert res.explained_ratio.sum() == pytest.approx(1.0)
    assert res.n_constant == 1
    assert res.transform(x).numpy() == pytest.approx(res.scores.numpy(), abs=1e-9)
    # covariance PCA (no standardising)
    raw = pca(x, standardized=False)
    ev_raw = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    assert raw.eigenvalues.numpy() == pytest.approx(ev_raw[: raw.eigenvalues.numel()], abs=1e-9)


def test_pca_from_moments_matches_batch_pca():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0)) @ torch.randn(5, 5, generator=torch.Generator().manual_seed(1))
    acc = RunningMoments(5, track_cov=True)
    for chunk in x.split(37):
        acc.update(chunk)
    a, b = pca(x), pca_from_moments(acc)
    assert a.explained_ratio.numpy() == pytest.approx(b.explained_ratio.numpy(), abs=1e-10)
    assert (a.components.T @ b.components).abs().diagonal().numpy() == pytest.approx(np.ones(5), abs=1e-8)


def test_isotropic_null_matches_science_number():
    null = isotropic_pca_null(75, 1024, n_draws=20, seed=0)
    # SCIENCE.md: about 2% PC1 share at n=75, d=1024 (approx (1+sqrt(n/d))^2/(n-1) = 2.17%), not 1/d
    assert 0.018 < null.pc1_mean < 0.025
    assert null.pc1_mean == pytest.approx((1 + math.sqrt(75 / 1024)) ** 2 / 74, rel=0.06)
    assert null.pc1_q95 >= null.pc1_mean
    assert null.pc12_mean > null.pc1_mean


def test_running_moments_match_batch_and_merge():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=g, dtype=torch.float64) * 3 + 1e4  # large offset: cancellation check
    a, b = RunningMoments(4, track_cov=True), RunningMoments(4, track_cov=True)
    for chunk in x[:230].split(50):
        a.update(chunk)
    b.update(x[230:].reshape(27, 10, 4))
    a.merge(b)
    assert a.count == 500
    assert a.mean.numpy() == pytest.approx(x.mean(0).numpy(), rel=1e-12)
    assert a.cov().numpy() == pytest.approx(np.cov(x.numpy(), rowvar=False), rel=1e-9, abs=1e-9)
    v = RunningMoments((2, 2))
    mask = torch.tensor([True, False] * 250)
    v.update(x.reshape(500, 2, 2), mask=mask)
    assert v.count == 250
    assert v.var().numpy() == pytest.approx(x[mask].var(0).reshape(2, 2).numpy(), rel=1e-9)
    clone = RunningMoments.from_state_dict(v.state_dict())
    assert torch.equal(clone.mean, v.mean)
    with pytest.raises(ConfigError):
        v.cov()


def test_jackknife_mean_matches_standard_error():
    x = torch.randn(50, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ci = jackknife_ci(x, lambda v: v.mean())
    se = float(x.std()) / math.sqrt(50)  # the jackknife SE of a mean is exactly s / sqrt(n)
    assert ci.high - ci.estimate == pytest.approx(1.959964 * se, rel=1e-5)
    vec = jackknife_ci(x, lambda v: v.mean(-1), vectorized=True, batch_size=7)
    assert vec.as_tuple() == pytest.approx(ci.as_tuple())


def test_group_controlled_rho_matches_closed_forms():
    import numpy as np
    from scipy.stats import rankdata, spearmanr

    from geoprobe.stats import group_controlled_rho

    g = torch.Generator().manual_seed(3)
    z = torch.arange(6).repeat(30).double()
    y = torch.rand(180, generator=g, dtype=torch.float64) + 0.3 * z
    x = y + 0.5 * z + 0.5 * torch.randn(180, generator=g, dtype=torch.float64)
    y[z == 2] = 1.0  # one position with constant y: contributes nothing to the within-position rho
    res = group_controlled_rho(x, y, z, n_perm=0)
    a, b, c = spearmanr(x, y)[0], spearmanr(x, z)[0], spearmanr(y, z)[0]
    assert res.partial == pytest.approx((a - b * c) / np.sqrt((1 - b * b) * (1 - c * c)), abs=1e-10)
    assert res.rho_xz == pytest.approx(b, abs=1e-12)
    cov = vx = vy = 0.0
    for k in range(6):  # independent within-group implementation
        sel = (z == k).numpy()
        rx, ry = rankdata(x.numpy()[sel]), rankdata(y.numpy()[sel])
        rx, ry = rx - rx.mean(), ry - ry.mean()
        cov, vx, vy = cov + (rx * ry).sum(), vx + (rx * rx).sum(), vy + (ry * ry).sum()
    assert res.within == pytest.approx(cov / np.sqrt(vx * vy), abs=1e-12)
    assert res.n_groups == 6 and res.n_groups_varying == 5 and not res.y_determined_by_group


def test_t_interval_known_answers_and_scipy():
    from geoprobe.stats import t_interval

    lo, hi = t_interval([0.01, 0.03, 0.02])  # mean 0.02, sd 0.01, t(0.975, 2) = 4.302652729911275 (tables)
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert (lo, hi) == pytest.approx((0.02 - half, 0.02 + half), rel=1e-12)
    x = np.random.default_rng(3).normal(2.0, 0.5, 7)
    want = scipy.stats.t.interval(0.9, 6, loc=x.mean(), scale=x.std(ddof=1) / math.sqrt(7))
    assert t_interval([*x, None, float("nan")], level=0.9) == pytest.approx(want, rel=1e-12)  # None/NaN dropped
    assert all(math.isnan(v) for v in t_interval([1.0])) and all(math.isnan(v) for v in t_interval([]))
