"""Bayesian linear regression: the closed-form predictive against an independent derivation and sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoprobe.errors import ConfigError
from geoprobe.tasks import make_generator, make_task
from geoprobe.tasks.linreg import (
    bin_edges,
    discretised_gaussian,
    gaussian_differential_entropy_bits,
    posterior_predictive,
)


def joint_gaussian_predictive(x: np.ndarray, y: np.ndarray, tau: float, sigma: float, i: int):
    """y_i | y_<i from the joint law y ~ N(0, tau^2 X X^T + sigma^2 I) by Gaussian conditioning (Schur
    complement): no posterior over w is formed, so this is an independent derivation."""
    X = x[: i + 1]
    C = tau**2 * X @ X.T + sigma**2 * np.eye(i + 1)
    if i == 0:
        return 0.0, C[0, 0]
    A, b, c = C[:i, :i], C[:i, i], C[i, i]
    mean = b @ np.linalg.solve(A, y[:i])
    var = c - b @ np.linalg.solve(A, b)
    return mean, var


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 4), K=st.integers(1, 7), tau=st.floats(0.3, 2.0), sigma=st.floats(0.1, 1.5),
       seed=st.integers(0, 10_000))
def test_predictive_equals_gaussian_conditioning_of_the_joint(d, K, tau, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, K, d, generator=g, dtype=torch.float64)
    y = torch.randn(3, K, generator=g, dtype=torch.float64) * 2
    m, s2 = posterior_predictive(x, y, tau, sigma)
    for b in range(3):
        for i in range(K):
            mean, var = joint_gaussian_predictive(x[b].numpy(), y[b].numpy(), tau, sigma, i)
            assert m[b, i].item() == pytest.approx(mean, abs=1e-9)
            assert s2[b, i].item() == pytest.approx(var, rel=1e-9)


def test_prior_predictive_and_shrinking_variance():
    task = make_task("linreg", d=3, K=20, tau=1.0, sigma=0.5)
    batch = task.sample(2000, make_generator(0, "train"))
    var = batch.extras["predictive_var"][:, 0::2]
    x = batch.features[:, 0::2, :3]
    # before any example: s^2 = sigma^2 + tau^2 |x|^2 exactly
    assert torch.allclose(var[:, 0], 0.25 + (x[:, 0] ** 2).sum(-1), rtol=1e-5)
    # the mean predictive variance falls towards sigma^2 as examples accumulate
    mean_var = var.mean(0)
    assert mean_var[0] > 3.0 and mean_var[-1] < 0.35 and (mean_var[1:] < mean_var[:-1] + 1e-3).all()


def test_sampled_answers_are_distributed_as_the_predictive():
    """The realised y_i lands in bin j with the predictive's probability (E over sequences), at every step."""
    task = make_task("linreg", d=2, K=6, n_bins=10)
    batch = task.sample(40_000, make_generator(1, "eval"))
    xs = torch.arange(0, task.seq_len, 2)
    for k, pos in enumerate(xs.tolist()):
        probs = batch.target_probs[:, pos]
        counts = torch.bincount(batch.labels[:, pos], minlength=task.n_bins).double() / len(batch)
        assert (counts - probs.double().mean(0)).abs().max() < 0.01, f"step {k}"


def test_discretised_entropy_approaches_differential_minus_log_bin_width():
    edges = bin_edges(800, 10.0)
    width = 20.0 / 800
    s2 = torch.tensor([1.0, 2.25, 4.0], dtype=torch.float64)
    m = torch.tensor([0.0, 0.5, -1.0], dtype=torch.float64)
    p = discretised_gaussian(m, s2, edges)
    assert torch.allclose(p.sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-12)
    h_disc = -(p * torch.log2(p.clamp_min(1e-300))).sum(-1)
    expected = gaussian_differential_entropy_bits(s2) - math.log2(width)
    assert torch.allclose(h_disc, expected, atol=2e-3)


def test_layout_features_and_labels():
    task = make_task("linreg", d=2, K=5, n_bins=16)
    batch = task.sample(64, make_generator(0, "train"))
    T = task.seq_len
    assert T == 10 and task.vocab_size == 18 and task.n_features == 3
    assert (batch.tokens[:, 0::2] == 0).all() and (batch.tokens[:, 1::2] == 1).all()
    assert batch.loss_mask[:, 0::2].all() and not batch.loss_mask[:, 1::2].any()
    assert (batch.features[:, 0::2, 2] == 0).all() and (batch.features[:, 1::2, :2] == 0).all()
    assert torch.equal(batch.step[:, 0::2], torch.arange(5).expand(64, 5))
    # the label is the bin of the y shown at the following Y slot
    y = batch.features[:, 1::2, 2].double()
    edges = task.edges
    lab = batch.labels[:, 0::2]
    assert ((edges[lab] <= y) & (y < edges[lab + 1])).all()
    assert torch.allclose(batch.target_probs[:, 0::2].sum(-1), torch.ones(64, 5), atol=1e-5)
    # slicing and concatenation keep the features aligned
    both = batch.concat([batch.slice(0, 10), batch.slice(10, 64)])
    assert torch.equal(both.features, batch.features)


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(ConfigError, match="n_bins >= 2"):
        make_task("linreg", n_bins=1)
    with pytest.raises(ConfigError, match="sigma > 0"):
        make_task("linreg", sigma=0.0)
