"""Sticky Markov chain (Paper II): transition matrix, stationary law, floor and the exact forward-filter
predictive against brute-force enumeration of every path."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from geoprobe.errors import ConfigError
from geoprobe.tasks import make_generator, make_task
from geoprobe.tasks.sticky_markov import (
    bayes_predictive,
    circular_distance,
    conditional_entropy_floor,
    floor_bits,
    sample_chain,
    stationary_distribution,
    sticky_transition_matrix,
    window_predictive,
)


def test_transition_matrix_by_hand():
    P = sticky_transition_matrix(8, 0.3)
    assert torch.allclose(P.sum(1), torch.ones(8, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(P.sum(0), torch.ones(8, dtype=torch.float64), atol=1e-15)  # doubly stochastic
    assert torch.all(P.diagonal() == 0.3)
    z = 1 + 1 + 1 / 2 + 1 / 2 + 1 / 3 + 1 / 3 + 1 / 4  # sum of 1/d over the 7 other symbols
    expected_row0 = [0.3] + [0.7 * (1 / d) / z for d in (1, 2, 3, 4, 3, 2, 1)]
    assert P[0].tolist() == pytest.approx(expected_row0, abs=1e-15)
    assert P[5, 4] == pytest.approx(0.7 / z) and P[2, 6] == pytest.approx(0.7 / 4 / z)
    assert circular_distance(8)[1, 7].item() == 2


def test_stationary_distribution_is_uniform_and_invariant():
    P = sticky_transition_matrix(8, 0.3)
    pi = stationary_distribution(P)
    assert torch.allclose(pi, torch.full((8,), 1 / 8, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(pi @ P, pi, atol=1e-14)
    # a non-circulant chain: the stationary law is not uniform but still invariant
    Q = torch.tensor([[0.9, 0.1], [0.5, 0.5]], dtype=torch.float64)
    assert stationary_distribution(Q).tolist() == pytest.approx([5 / 6, 1 / 6], abs=1e-12)


def test_floor_formula_and_monte_carlo():
    row = sticky_transition_matrix(8, 0.3)[0].tolist()
    by_hand = -sum(p * math.log2(p) for p in row)
    assert floor_bits() == pytest.approx(by_hand, abs=1e-12) == pytest.approx(2.716961, abs=1e-6)
    # Monte Carlo: the average surprisal of y_t given y_{t-1} along a long sampled chain
    P = sticky_transition_matrix(8, 0.3)
    y = sample_chain(4, 50_000, P, torch.Generator().manual_seed(0))
    surprisal = -torch.log2(P[y[:, :-1], y[:, 1:]])
    se = float(surprisal.std() / math.sqrt(surprisal.numel()))
    assert abs(float(surprisal.mean()) - by_hand) < 4 * se
    counts = torch.zeros(8, 8, dtype=torch.float64)
    for a in range(8):  # empirical transition frequencies of the sampler
        nxt = y[:, 1:][y[:, :-1] == a]
        counts[a] = torch.bincount(nxt, minlength=8).double() / nxt.numel()
    assert torch.allclose(counts, P, atol=0.01)
    assert conditional_entropy_floor(P) == pytest.approx(by_hand, abs=1e-12)


def brute_force_predictive(x: torch.Tensor, mu: torch.Tensor, P: torch.Tensor, start: int = 0) -> torch.Tensor:
    """p(y_t | x_{start+1}..x_t) for every t by summing the joint over every path y_start..y_{t-1} (uniform
    y_start), with explicit Gaussian densities: an independent implementation."""
    n, T = P.shape[0], x.shape[0]
    out = torch.zeros(T, n, dtype=torch.float64)
    for t in range(start + 1, T + 1):  # predict y_t from x_{start+1..t}
        L = t - start
        total = torch.zeros(n, dtype=torch.float64)
        for path in itertools.product(range(n), repeat=L):  # y_start..y_{t-1}
            w = 1.0 / n
            for m in range(L):
                if m > 0:
                    w *= float(P[path[m - 1], path[m]])
                diff = x[start + m] - mu[path[m]]
                w *= math.exp(-0.5 * float(diff @ diff)) / (2 * math.pi) ** (x.shape[1] / 2)
            total += w * P[path[-1]]
        out[t - 1] = total / total.sum()
    return out


@pytest.mark.parametrize("n,T,mu_scale", [(4, 5, 0.7), (8, 4, 0.5), (3, 6, 1.2)])
def test_forward_filter_equals_brute_force(n, T, mu_scale):
    task = make_task("sticky", n_symbols=n, d=3, T=T, mu_scale=mu_scale, mu_seed=n)
    x, _ = task.sample_inputs(2, make_generator(n, "test"))
    got = bayes_predictive(x, task.mu, task.P)
    for b in range(2):
        assert torch.allclose(got[b], brute_force_predictive(x[b], task.mu, task.P), atol=1e-12)


def test_window_predictive_equals_brute_force_on_the_last_inputs():
    task = make_task("sticky", n_symbols=4, d=3, T=7, mu_scale=0.6, mu_seed=3)
    x, _ = task.sample_inputs(1, make_generator(1, "test"))
    W = 3
    got = window_predictive(x, task.mu, task.P, W)[0]
    full = bayes_predictive(x, task.mu, task.P)[0]
    assert torch.allclose(got[:W], full[:W], atol=1e-13)  # the window holds the whole prefix
    for t in range(W, 7):  # 0-based position t predicts y_{t+1} from x_{t-W+2..t+1}
        expected = brute_force_predictive(x[0], task.mu, task.P, start=t + 1 - W)[t]
        assert torch.allclose(got[t], expected, atol=1e-12)
    assert not torch.allclose(got[W:], full[W:], atol=1e-6)  # a shorter memory does change the answer


def test_task_batch_fields():
    task = make_task("sticky", T=50)
    batch = task.sample(3, make_generator(5, "train"))
    x, y = task.sample_inputs(3, make_generator(5, "train"))
    assert torch.equal(batch.labels, y[:, 1:]) and torch.equal(batch.extras["previous_symbol"], y[:, :-1])
    assert torch.equal(batch.features, x.float())
    assert torch.equal(batch.readout_ids, torch.arange(1, 9)) and task.vocab_size == 9 and task.n_features == 20
    assert torch.allclose(batch.target_probs.double(), bayes_predictive(x, task.mu, task.P), atol=1e-6)
    # the inputs are the previous symbol's mean plus unit noise
    resid = x - task.mu[y[:, :-1]]
    assert abs(float(resid.mean())) < 0.05 and abs(float(resid.std()) - 1) < 0.05


def test_bayes_cross_entropy_sits_above_the_floor():
    """Knowing x_1..x_t is worth less than knowing y_{t-1}: E[-log2 p(y_t | x_1..t)] >= H(Y_t | Y_{t-1}), with the
    gap shrinking as the inputs become more informative."""
    gaps = []
    for scale in (0.3, 1.0):
        task = make_task("sticky", T=4000, mu_scale=scale)
        batch = task.sample(2, make_generator(0, "eval"))
        ce = float(-torch.log2(batch.target_probs.gather(-1, batch.labels[..., None]).double()).mean())
        gaps.append(ce - task.floor_bits)
    assert gaps[0] > gaps[1] > -0.03 and gaps[0] > 0.1


def test_bad_parameters_are_one_line():
    with pytest.raises(ConfigError, match="p_stay"):
        make_task("sticky", p_stay=1.0)
    with pytest.raises(ConfigError, match="n_symbols=2 needs p_stay > 0"):
        make_task("sticky", n_symbols=2, p_stay=0.0)
